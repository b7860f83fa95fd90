import csv
import math

import numpy as np
import pytest
import torch

from greedyprune.studies.appendix_c import (
    PRESETS,
    AppendixCConfig,
    condition_number,
    config_with,
    fit_power_law,
    fit_sqrt_prefactor,
    get_preset,
    hidden_feature_matrix,
    mp_condition_number,
    run_appendix_c,
    sample_unit_inputs,
    smallest_singular_value,
    summary_text,
)

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- hidden_feature_matrix
def test_hidden_feature_matrix_shape_dtype_and_range():
    H = hidden_feature_matrix(7, 3, 20, "tanh", torch.Generator().manual_seed(1))
    assert H.shape == (7, 20) and H.dtype == torch.float64
    assert H.abs().max() < 1
    S = hidden_feature_matrix(7, 3, 20, "sigmoid", torch.Generator().manual_seed(1))
    assert ((S > 0) & (S < 1)).all()


def test_sample_unit_inputs_are_on_the_sphere():
    X = sample_unit_inputs(50, 4, torch.Generator().manual_seed(0))
    assert X.shape == (50, 4) and X.dtype == torch.float64
    torch.testing.assert_close(X.norm(dim=1), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("activation, fn", [("tanh", np.tanh), ("sigmoid", lambda z: 1 / (1 + np.exp(-z))),
                                            ("erf", np.vectorize(math.erf))])
def test_hidden_feature_matrix_uses_unit_inputs_then_gaussian_weights(activation, fn):
    m, d, width = 6, 4, 9
    H = hidden_feature_matrix(m, d, width, activation, torch.Generator().manual_seed(3))
    # reconstruct by hand from the same stream: raw Gaussian inputs (normalised here), then the weights
    g = torch.Generator().manual_seed(3)
    X = torch.randn(m, d, generator=g, dtype=torch.float64).numpy()
    W = torch.randn(width, d, generator=g, dtype=torch.float64).numpy()
    X = X / np.sqrt((X ** 2).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(H.numpy(), fn(X @ W.T), rtol=1e-12, atol=1e-14)


def test_hidden_feature_matrix_given_inputs_draws_only_weights():
    X = sample_unit_inputs(5, 3, torch.Generator().manual_seed(0))
    H = hidden_feature_matrix(5, 3, 8, generator=torch.Generator().manual_seed(1), inputs=X)
    W = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(H, torch.tanh(X @ W.T))
    with pytest.raises(ValueError, match="inputs must have shape"):
        hidden_feature_matrix(5, 4, 8, inputs=X)


def test_hidden_feature_matrix_is_deterministic_by_seed():
    a = hidden_feature_matrix(10, 5, 30, generator=torch.Generator().manual_seed(42))
    b = hidden_feature_matrix(10, 5, 30, generator=torch.Generator().manual_seed(42))
    c = hidden_feature_matrix(10, 5, 30, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_hidden_feature_matrix_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        hidden_feature_matrix(3, 2, 4, "relu")


# ----------------------------------------------------------------------------- singular values
@pytest.mark.parametrize("shape", [(5, 12), (12, 5), (8, 8)])
def test_singular_value_helpers_match_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    A = rng.standard_normal(shape)
    s = np.linalg.svd(A, compute_uv=False)
    assert smallest_singular_value(torch.from_numpy(A)) == pytest.approx(s.min(), rel=1e-10)
    assert condition_number(torch.from_numpy(A)) == pytest.approx(s.max() / s.min(), rel=1e-10)
    assert smallest_singular_value(A) == pytest.approx(s.min(), rel=1e-10)  # numpy input accepted too


def test_singular_value_helpers_on_known_diagonal():
    D = torch.zeros(3, 5, dtype=torch.float64)
    D[0, 0], D[1, 1], D[2, 2] = -4.0, 0.5, 2.0  # singular values |diag| = 4, 2, 0.5
    assert smallest_singular_value(D) == pytest.approx(0.5)
    assert condition_number(D) == pytest.approx(8.0)
    assert condition_number(torch.eye(4)) == pytest.approx(1.0)
    assert condition_number(torch.tensor([[1.0, 0.0], [0.0, 0.0]])) == math.inf


def test_mp_condition_number():
    assert mp_condition_number(25, 100) == pytest.approx(3.0)  # q = 1/4: (1 + 1/2) / (1 - 1/2)
    assert mp_condition_number(10, 10) == math.inf


# ----------------------------------------------------------------------------- fits
def test_fit_power_law_exact():
    x = np.array([10.0, 20, 40, 80, 160])
    a, se, pref = fit_power_law(x, 3 * x ** 0.5)
    assert a == pytest.approx(0.5, abs=1e-12)
    assert pref == pytest.approx(3.0, rel=1e-10)
    assert se == pytest.approx(0.0, abs=1e-10)


def test_fit_power_law_noisy_within_stderr():
    rng = np.random.default_rng(0)
    x = np.geomspace(100, 10_000, 12)
    y = 3 * x ** 0.5 * np.exp(0.05 * rng.standard_normal(x.size))
    a, se, pref = fit_power_law(x, y)
    assert 0 < se < 0.05
    assert abs(a - 0.5) < 4 * se
    assert pref == pytest.approx(3.0, rel=0.3)


def test_fit_power_law_two_points_and_bad_input():
    a, se, pref = fit_power_law([1, 4], [2, 8])
    assert a == pytest.approx(1.0) and pref == pytest.approx(2.0) and math.isnan(se)
    with pytest.raises(ValueError, match="at least two points"):
        fit_power_law([1], [1])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2], [1, 0])
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([2, 2], [1, 3])


def test_fit_sqrt_prefactor():
    w = np.array([100.0, 400, 900])
    assert fit_sqrt_prefactor(w, 0.7 * np.sqrt(w)) == pytest.approx(0.7)
    # closed form of the least-squares slope through the origin in sqrt(w)
    v = np.array([1.0, 3.0, 2.0])
    c = fit_sqrt_prefactor(w, v)
    cs = np.linspace(c - 0.1, c + 0.1, 201)
    sse = [((v - k * np.sqrt(w)) ** 2).sum() for k in cs]
    assert cs[int(np.argmin(sse))] == pytest.approx(c, abs=1e-3)


# ----------------------------------------------------------------------------- the study
TINY = AppendixCConfig(ms=(10, 20), ds=(5,), widths=(160, 320, 640, 1280, 2560), repeats=4,
                       rows=(5, 20, 40), cols=(50, 100), seed=7)


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("appc")
    messages = []
    result = run_appendix_c(TINY, out, progress=False, log=messages.append)
    return out, result, messages


def test_run_writes_files(tiny_run):
    out, result, messages = tiny_run
    for name in ("figure2.png", "figure3.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    sv = _read_csv(out / "singular_values.csv")
    assert len(sv) == 2 * 1 * 5 == len(result.singular_rows)
    assert {"m", "d", "width", "mean", "std", "repeats"} <= set(sv[0])
    cn = _read_csv(out / "condition_numbers.csv")
    assert len(cn) == 3 * 2 == len(result.condition_rows)
    assert {"rows", "cols", "mean", "std", "repeats"} <= set(cn[0])
    fits = _read_csv(out / "exponent_fits.csv")
    assert len(fits) == 2 == len(result.exponent_fits)
    assert {"m", "d", "exponent", "stderr", "prefactor"} <= set(fits[0])
    assert float(fits[0]["exponent"]) == result.exponent_fits[0]["exponent"]  # full precision in the CSV
    assert messages and "figure2.png" in messages[0]


def test_singular_value_exponent_is_about_one_half(tiny_run):
    _, result, _ = tiny_run
    for f in result.exponent_fits:
        assert abs(f["exponent"] - 0.5) < 0.2, f
        assert f["prefactor"] > 0 and f["sqrt_prefactor"] > 0
    for row in result.singular_rows:
        assert row["mean"] > 0 and row["std"] >= 0 and row["repeats"] == 4


def test_condition_number_grows_with_rows(tiny_run):
    _, result, _ = tiny_run
    for c in TINY.cols:
        by_rows = {r["rows"]: r["mean"] for r in result.condition_rows if r["cols"] == c}
        assert by_rows[max(TINY.rows)] > by_rows[min(TINY.rows)]
        assert all(v >= 1 for v in by_rows.values())
    # and more columns make it better conditioned at the same rows
    at = {r["cols"]: r["mean"] for r in result.condition_rows if r["rows"] == max(TINY.rows)}
    assert at[100] < at[50]


def test_summary_text(tiny_run):
    _, result, _ = tiny_run
    text = summary_text(result)
    f = result.exponent_fits[0]
    assert f"{f['exponent']:.3f} +- {f['stderr']:.3f}" in text
    assert "cols=50" in text and "cols=100" in text


def test_run_is_deterministic_and_order_independent(tmp_path, tiny_run):
    _, first, _ = tiny_run
    # same draws whatever the order of the grid in the config
    shuffled = config_with(TINY, ms=(20, 10), widths=(2560, 160, 640, 1280, 320), rows=(40, 5, 20), cols=(100, 50))
    again = run_appendix_c(shuffled, tmp_path, progress=False, log=lambda _: None)
    assert again.singular_rows == first.singular_rows
    assert again.condition_rows == first.condition_rows
    # a subset of the grid reproduces the same cells
    part = run_appendix_c(config_with(TINY, ms=(20,), widths=(320, 2560), rows=(20,), cols=(100,)),
                          tmp_path / "part", progress=False, log=lambda _: None)
    cells = {(r["m"], r["d"], r["width"]): r for r in first.singular_rows}
    for r in part.singular_rows:
        assert r == cells[(r["m"], r["d"], r["width"])]
    other = run_appendix_c(config_with(TINY, seed=8), tmp_path / "other", progress=False, log=lambda _: None)
    assert other.singular_rows != first.singular_rows


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, match", [
    (dict(widths=(15, 160)), r"widths \[15\].*largest m = 20"),
    (dict(ms=()), "ms must hold at least one value"),
    (dict(ds=()), "ds must hold at least one value"),
    (dict(widths=()), "widths must hold at least one value"),
    (dict(rows=()), "rows must hold at least one value"),
    (dict(cols=()), "cols must hold at least one value"),
    (dict(widths=(160,)), "at least two values"),
    (dict(repeats=0), "repeats must be an int >= 1, got 0"),
    (dict(activation="softplus"), "unknown activation 'softplus'"),
    (dict(cols=(30, 100)), r"cols \[30\].*largest rows = 40"),
    (dict(ms=(0, 10)), "each of ms must be >= 1, got 0"),
    (dict(widths=(160, 160)), "widths has repeated values"),
    (dict(ds=(2.5,)), "ds must hold ints"),
    (dict(seed=-1), "seed must be an int >= 0"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_with(TINY, **overrides).validate()


def test_presets_and_helpers():
    for cfg in PRESETS.values():
        cfg.validate()
    assert get_preset("quick") is PRESETS["quick"]
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown Appendix C settings"):
        config_with(TINY, width=3)
    with pytest.raises(ValueError, match="width"):
        run_appendix_c(config_with(TINY, widths=(5, 160)), "/nonexistent/never-created", progress=False)
