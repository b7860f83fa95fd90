"""greedyprune.theory: Definition 1 against an independent numpy computation, the least-squares constant,
the threshold table of a tiny real study (equal to a direct recomputation), its files, and clear errors."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from greedyprune.data import balanced_subsample
from greedyprune.studies.pretraining import DB_NAME, SCHEMA, config_with, get_preset, run_pretraining_study
from greedyprune.studies.store import ResultsStore, Schema
from greedyprune.studies.theory import (
    Definition1,
    ThresholdRow,
    definition1,
    fit_constant,
    plot_thresholds,
    predicted_order,
    run_threshold,
    threshold_table,
    threshold_text,
)
from greedyprune.twolayer import TwoLayerNet

torch.set_num_threads(1)

TINY = dict(data="digits", widths=(20,), sizes=(200, 400), trials=1, iterations=40, eval_every=20, k=5,
            reference="largest", direct=False, parameterization="standard")
QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_study")
    run_pretraining_study(config_with(get_preset("quick"), **TINY), out, **QUIET)
    return out


def numpy_hidden(model, X):
    """H = act(X W^T + b) in float64 numpy, straight from the weights (independent of the library)."""
    W = model[0].weight.detach().double().numpy()
    b = model[0].bias.detach().double().numpy()
    Z = X.double().numpy() @ W.T + b
    return {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[model.activation_name](Z)


# ------------------------------------------------------------------------------------------ Definition 1
@pytest.mark.parametrize("m, activation", [(6, "tanh"), (12, "tanh"), (30, "relu")])
def test_definition1_matches_numpy_svd(m, activation):
    width = 8
    model = TwoLayerNet(5, width, activation=activation, seed=3)
    X = torch.randn(m, 5, generator=torch.Generator().manual_seed(m))
    before = [p.detach().clone() for p in model.parameters()]
    d = definition1(model, X)
    s = np.linalg.svd(numpy_hidden(model, X), compute_uv=False)  # min(m, width) values, descending
    assert isinstance(d, Definition1)
    assert (d.m, d.width) == (m, width)
    assert d.rank_deficient == (m > width)
    assert len(s) == min(m, width) and d.rank == min(m, width)  # generic data: full rank
    assert d.lambda_0 == pytest.approx(s[-1], rel=1e-9) and d.s_min == pytest.approx(s[-1], rel=1e-9)
    assert d.s_max == pytest.approx(s[0], rel=1e-9)
    assert d.kappa == pytest.approx(s[0] / s[-1], rel=1e-9) and d.kappa >= 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # model untouched (no float64 cast)
    assert model[0].weight.dtype == torch.float32


def test_definition1_dead_neuron_uses_the_nonzero_spectrum():
    model = TwoLayerNet(4, 6, activation="relu", seed=0)
    with torch.no_grad():
        model[0].bias[2] = -1e3  # neuron 2 is dead on every example: a zero column of H
    X = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))  # m = 5 <= width = 6
    d = definition1(model, X)
    H = numpy_hidden(model, X)
    assert np.all(H[:, 2] == 0)
    s = np.linalg.svd(H, compute_uv=False)
    rank = np.linalg.matrix_rank(H)
    assert d.rank == rank < 5 and not d.rank_deficient
    assert d.s_min == pytest.approx(0.0, abs=1e-12)  # strict smallest singular value: 0
    assert d.lambda_0 == pytest.approx(s[rank - 1], rel=1e-9) and d.lambda_0 > 1e-6
    assert d.kappa == pytest.approx(s[0] / s[rank - 1], rel=1e-9)


def test_definition1_rejects_bad_input():
    model = TwoLayerNet(3, 4, seed=0)
    with pytest.raises(ValueError, match="2-D"):
        definition1(model, torch.zeros(3))
    with pytest.raises(ValueError, match="no examples"):
        definition1(model, torch.zeros(0, 3))


def test_predicted_order():
    assert predicted_order(3.0, 100) == pytest.approx(3.0 * math.log(100))
    assert predicted_order(2.5, 1) == 0.0
    assert predicted_order(math.inf, 10) == math.inf
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="m must be"):
            predicted_order(1.0, bad)
    with pytest.raises(ValueError, match="kappa"):
        predicted_order(float("nan"), 10)


# ------------------------------------------------------------------------------------------ fit_constant
def test_fit_constant_closed_form():
    assert fit_constant([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(2.0)
    assert fit_constant([1.0, 2.0, 3.0], [2.0, None, 6.0]) == pytest.approx(2.0)  # None skipped
    # sum(p*o) / sum(p*p) = (1*1 + 2*3) / (1 + 4)
    assert fit_constant([1.0, 2.0], [1.0, 3.0]) == pytest.approx(7 / 5)
    assert fit_constant([1.0, math.inf], [4.0, 5.0]) == pytest.approx(4.0)  # non-finite prediction skipped
    with pytest.raises(ValueError, match="no size has an observed threshold"):
        fit_constant([1.0, 2.0], [None, None])
    with pytest.raises(ValueError, match="pair up"):
        fit_constant([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="every predicted value is 0"):
        fit_constant([0.0, 0.0], [1.0, 2.0])


# ------------------------------------------------------------------------------ the table of a real study
def test_threshold_table_equals_direct_recomputation(tiny_study, digits_unit):
    rows, constants = threshold_table(tiny_study)
    assert [(r.width, r.size) for r in rows] == [(20, 200), (20, 400)]
    assert all(isinstance(r, ThresholdRow) and r.trials == 1 and r.rank_deficient for r in rows)

    ds = digits_unit  # load_dataset("digits", normalize="unit", seed=0)
    for r in rows:  # the study's seed 0, trial 0: seeds 0 * 1_000_003 + 0
        idx = balanced_subsample(ds.labels, r.size, seed=0)
        d = definition1(TwoLayerNet(ds.in_features, 20, activation="relu", seed=0), ds.X[idx])
        assert (r.lambda_0, r.kappa, r.rank) == (d.lambda_0, d.kappa, d.rank)
        assert r.predicted == pytest.approx(d.kappa * math.log(r.size), rel=1e-12)
        assert r.kappa >= 1
    # deterministic on this tiny case: the predicted order grows with m here
    assert rows[1].predicted > rows[0].predicted

    with ResultsStore(tiny_study / DB_NAME) as store:
        stored = store.rows()
    # the red line straight from the stored rows: per (size, iteration) the mean pruned accuracy over trials;
    # the reference is the best mean of the largest size; a size's threshold is its first iteration reaching it
    cells = {}
    for r in stored:
        cells.setdefault((r["size"], r["iteration"]), []).append(r["pruned_accuracy"])
    means = {cell: sum(v) / len(v) for cell, v in cells.items()}
    iterations = sorted({it for _, it in means})
    reference = max(means[(400, it)] for it in iterations)
    expected = [next((it for it in iterations if means[(size, it)] >= reference * (1 - 1e-9)), None)
                for size in (200, 400)]
    assert [r.observed for r in rows] == expected
    assert iterations == [0, 20, 40]
    assert rows[-1].observed is not None  # the largest size always reaches its own best
    c = fit_constant([r.predicted for r in rows], [r.observed for r in rows])
    assert constants == {20: pytest.approx(c)}
    for r in rows:
        assert r.fitted == pytest.approx(c * r.predicted)

    text = threshold_text(rows, constants)
    assert "width 20" in text
    for r in rows:
        assert ("never" if r.observed is None else str(r.observed)) in text.splitlines()[3 + rows.index(r)]


def test_max_trials_and_run_threshold_files(tiny_study, tmp_path):
    rows, _ = threshold_table(tiny_study, max_trials=1)
    assert all(r.trials == 1 for r in rows)
    with pytest.raises(ValueError, match="max_trials"):
        threshold_table(tiny_study, max_trials=0)

    lines = []
    out = tmp_path / "theory"
    got = run_threshold(tiny_study, out, progress=False, log=lines.append)
    assert [(r.size, r.kappa) for r in got] == [(r.size, r.kappa) for r in rows]
    assert "kappa*log m" in "\n".join(lines)
    with open(out / "thresholds.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [int(t["size"]) for t in table] == [200, 400]
    for t, r in zip(table, got):
        assert float(t["kappa"]) == pytest.approx(r.kappa)
        assert t["observed"] == ("" if r.observed is None else str(r.observed))
    png = (out / "thresholds.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (tiny_study / "thresholds.csv").exists()  # out_dir given: the study directory is not written


def test_plot_thresholds_with_never_and_no_fit(tmp_path):
    rows = [ThresholdRow(10, 100, 2, 0.1, 5.0, 5 * math.log(100), None, None, True),
            ThresholdRow(10, 200, 2, 0.1, 6.0, 6 * math.log(200), None, None, True),
            ThresholdRow(50, 100, 2, 0.2, 3.0, 3 * math.log(100), 20, 20.0, False)]
    plot_thresholds(rows, {50: 20 / (3 * math.log(100))}, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    text = threshold_text(rows, {50: 1.0})
    assert "no fit possible" in text and "never" in text
    with pytest.raises(ValueError, match="no threshold rows"):
        plot_thresholds([], {}, tmp_path / "u.png")


# ------------------------------------------------------------------------------------------------ errors
def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such directory.*greedyprune study pretraining --out"):
        threshold_table(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no results\.sqlite.*greedyprune study pretraining --out"):
        threshold_table(tmp_path)
    (tmp_path / DB_NAME).write_bytes(b"")
    with pytest.raises(ValueError, match="empty database file"):
        threshold_table(tmp_path)
    assert (tmp_path / DB_NAME).stat().st_size == 0  # left as it was


def test_database_without_rows_or_config(tmp_path, tiny_study):
    config = json.loads((tiny_study / "config.json").read_text())
    with ResultsStore(tmp_path / "a" / DB_NAME, SCHEMA) as store:
        store.bind_config(config)
    with pytest.raises(ValueError, match=r"no result rows.*run `greedyprune study pretraining --out .*a` first"):
        threshold_table(tmp_path / "a")

    with ResultsStore(tmp_path / "b" / DB_NAME, SCHEMA):
        pass  # no config bound, no rows
    with pytest.raises(ValueError, match="no pre-training study config"):
        threshold_table(tmp_path / "b")

    with ResultsStore(tmp_path / "c" / DB_NAME, Schema("other", SCHEMA.columns, SCHEMA.key)) as store:
        store.bind_config(config)
    with pytest.raises(ValueError, match="not of a 'pretraining' study"):
        threshold_table(tmp_path / "c")

    with ResultsStore(tmp_path / "d" / DB_NAME, SCHEMA) as store:
        store.bind_config({"hello": 1})
    with pytest.raises(ValueError, match="not a pre-training study config"):
        threshold_table(tmp_path / "d")


def copy_rows(src, dst, config):
    with ResultsStore(src / DB_NAME) as store:
        rows = store.rows()
    with ResultsStore(dst / DB_NAME, SCHEMA) as store:
        store.bind_config(config)
        for row in rows:
            store.add(row)


def test_mismatched_database_and_unloadable_data(tmp_path, tiny_study):
    config = json.loads((tiny_study / "config.json").read_text())
    copy_rows(tiny_study, tmp_path / "sizes", {**config, "sizes": [200, 300]})  # rows have size 400
    with pytest.raises(ValueError, match=r"mismatched database.*\(20, 400\)"):
        threshold_table(tmp_path / "sizes")

    copy_rows(tiny_study, tmp_path / "widths", {**config, "widths": [30]})
    with pytest.raises(ValueError, match="mismatched database"):
        threshold_table(tmp_path / "widths")

    copy_rows(tiny_study, tmp_path / "data", {**config, "data": "mnist:" + str(tmp_path / "no-mnist-here")})
    with pytest.raises(ValueError, match=r"cannot load the study's data set 'mnist:.*no-mnist-here'"):
        threshold_table(tmp_path / "data")
