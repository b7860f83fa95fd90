"""Tests of greedyprune.plotting (Figure 1 analysis and figures)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


from greedyprune.studies import pretraining_report as plotting  # noqa: E402

threshold_iterations = plotting.threshold_iterations
summarize = plotting.summarize

NAN = float("nan")


# ------------------------------------------------------------ red-line rule
def test_threshold_basic_with_nan_cell():
    sizes = [10, 20, 40]
    iterations = [0, 5, 10]
    pm = [[0.50, 0.90, 0.95],
          [0.40, NAN, 0.85],
          [0.30, 0.70, 0.80]]
    # reference = best of the largest size (40) = 0.80
    ref, th = threshold_iterations(sizes, iterations, pm)
    assert ref == pytest.approx(0.80)
    assert th == [5, 10, 10]  # size 20: the NaN at iteration 5 is skipped
    assert all(type(t) is int for t in th)


def test_threshold_never_and_equality():
    sizes = [1, 2, 3]
    iterations = [0, 100, 200, 300]
    pm = np.array([[0.2, 0.6, 0.6, 0.6],    # equal to the reference at 100
                   [0.1, 0.3, 0.5, 0.59],   # never
                   [0.1, 0.4, 0.6, 0.55]])  # reference 0.6 reached at 200, then drops
    ref, th = threshold_iterations(sizes, iterations, pm)
    assert ref == pytest.approx(0.6)
    assert th == [100, None, 200]


def test_threshold_largest_size_not_last_and_unsorted_iterations():
    # the largest size is found by value; iterations are scanned in ascending order
    sizes = [40, 10]
    iterations = [20, 0, 10]
    pm = [[0.9, 0.1, 0.5],   # size 40: reference 0.9 at iteration 20
          [0.95, 0.2, 0.91]]  # size 10: first iteration >= 0.9 is 10
    ref, th = threshold_iterations(sizes, iterations, pm)
    assert ref == pytest.approx(0.9)
    assert th == [20, 10]


def test_threshold_reference_all_nan_and_shape_check():
    ref, th = threshold_iterations([1, 2], [0, 1], [[0.5, 0.6], [NAN, NAN]])
    assert math.isnan(ref) and th == [None, None]
    with pytest.raises(ValueError):
        threshold_iterations([1, 2], [0, 1, 2], [[0.5, 0.6], [0.1, 0.2]])


# --------------------------------------------------------------- summarize
WIDTHS = (4, 16)
SIZES = (50, 100, 200)
ITERS = (0, 10, 20, 30)
TRIALS = 3


def synthetic_rows(seed=0):
    """Rows with known per-trial values; the cell (16, 100, it=20) has no rows
    and (4, 200, it=10) lacks trial 2."""
    rng = np.random.default_rng(seed)
    values = {}  # (width, size, iteration) -> (pruned array, dense array) over trials
    rows = []
    for w in WIDTHS:
        for si, s in enumerate(SIZES):
            for it in ITERS:
                if (w, s, it) == (16, 100, 20):
                    continue
                n = 2 if (w, s, it) == (4, 200, 10) else TRIALS
                base = 0.3 + 0.6 * (1 - np.exp(-it / (8.0 * (si + 1))))
                p = np.clip(base + rng.normal(0, 0.02, n), 0, 1)
                d = np.clip(p + 0.05, 0, 1)
                values[(w, s, it)] = (p, d)
                for t in range(n):
                    rows.append(dict(width=w, size=s, trial=t, iteration=it,
                                     pruned_accuracy=float(p[t]), dense_accuracy=float(d[t]),
                                     pruned_loss=1.0, dense_loss=0.5, distinct=3, k=3,
                                     prune_seconds=0.0, losses=[1.0, 0.5, 0.2],
                                     created="2024-01-01T00:00:00"))
    rng.shuffle(rows)  # order must not matter
    return rows, values


def test_summarize_matches_numpy():
    rows, values = synthetic_rows()
    summaries = summarize(rows)
    assert [s.width for s in summaries] == list(WIDTHS)
    for s in summaries:
        assert s.sizes == list(SIZES)
        assert s.iterations == list(ITERS)
        assert s.pruned_mean.shape == (len(SIZES), len(ITERS))
        for i, size in enumerate(SIZES):
            for j, it in enumerate(ITERS):
                key = (s.width, size, it)
                if key not in values:
                    assert math.isnan(s.pruned_mean[i, j]) and math.isnan(s.pruned_std[i, j])
                    assert math.isnan(s.dense_mean[i, j])
                    assert s.trials[i, j] == 0
                    continue
                p, d = values[key]
                assert s.pruned_mean[i, j] == pytest.approx(np.mean(p), abs=1e-12)
                assert s.pruned_std[i, j] == pytest.approx(np.std(p), abs=1e-12)
                assert s.dense_mean[i, j] == pytest.approx(np.mean(d), abs=1e-12)
                assert s.trials[i, j] == len(p)
        ref, th = threshold_iterations(s.sizes, s.iterations, s.pruned_mean)
        assert s.reference == pytest.approx(ref)
        assert s.reference == pytest.approx(np.nanmax(s.pruned_mean[-1]))
        assert s.thresholds == th
        assert s.k_values == [3]
    assert summaries[0].trials[2, 1] == 2


def test_summarize_empty_and_bad_rows():
    with pytest.raises(ValueError, match="no results"):
        summarize([])
    with pytest.raises(ValueError, match="pruned_accuracy"):
        summarize([{"width": 1, "size": 1, "trial": 0, "iteration": 0, "dense_accuracy": 0.5}])


# -------------------------------------------------------- figures and table
def staircase_rows(never_size=None):
    """2 widths x 4 sizes x 2 trials x 5 iterations; size index i reaches 0.9
    (the reference of the largest size) at iteration index i+1.  Trials
    differ by +-0.01 so the mean is exact."""
    sizes = [100, 200, 400, 800]
    iters = [0, 25, 50, 75, 100]
    rows = []
    for w in (8, 32):
        for i, s in enumerate(sizes):
            for j, it in enumerate(iters):
                acc = 0.9 if j >= i + 1 else 0.3 + 0.1 * j
                if s == never_size:
                    acc = min(acc, 0.85)
                for t, delta in enumerate((-0.01, 0.01)):
                    rows.append(dict(width=w, size=s, trial=t, iteration=it,
                                     pruned_accuracy=acc + delta, dense_accuracy=0.95 + delta / 2,
                                     k=2))
    return rows


def test_staircase_thresholds():
    for s in summarize(staircase_rows(never_size=200)):
        assert s.reference == pytest.approx(0.9)
        assert s.thresholds == [25, None, 75, 100]


def _assert_png(path):
    path = Path(path)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000


def test_plot_figure1_and_curves(tmp_path):
    rows = staircase_rows(never_size=200)
    plotting.plot_figure1(rows, tmp_path / "f1.png")
    plotting.plot_accuracy_curves(rows, tmp_path / "curves.png")
    _assert_png(tmp_path / "f1.png")
    _assert_png(tmp_path / "curves.png")


def test_plot_with_missing_cells_and_single_width(tmp_path):
    rows, _ = synthetic_rows()
    rows = [r for r in rows if r["width"] == 16]
    plotting.plot_figure1(rows, tmp_path / "f1.png")
    plotting.plot_accuracy_curves(rows, tmp_path / "c.png")
    _assert_png(tmp_path / "f1.png")
    _assert_png(tmp_path / "c.png")


def test_plot_study(tmp_path):
    out = tmp_path / "figs"
    paths = plotting.plot_study(staircase_rows(), out)
    assert [p.name for p in paths] == ["figure1.png", "accuracy_curves.png"]
    assert all(p.parent == out for p in paths)
    for p in paths:
        _assert_png(p)


def test_plot_empty_rows(tmp_path):
    with pytest.raises(ValueError, match="no results"):
        plotting.plot_study([], tmp_path)


def test_summary_table():
    text = plotting.summary_table(staircase_rows(never_size=200))
    assert "width 8" in text and "width 32" in text
    assert "reference" in text and "0.9000" in text
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 2
    lines = blocks[0].splitlines()
    body = [ln for ln in lines if ln.strip()[:1].isdigit()]
    cells = [[c.strip() for c in ln.split("|")] for ln in body]
    assert [c[0] for c in cells] == ["100", "200", "400", "800"]
    assert [c[1] for c in cells] == ["25", "never", "75", "100"]
    # per trial: trial 0 sits 0.01 below the reference everywhere, trial 1 reaches it where the mean does
    assert [c[2] for c in cells] == ["never/25", "never/never", "never/75", "never/100"]
    from scipy.stats import t
    half = t.ppf(0.975, 1) * np.std([0.29, 0.31], ddof=1) / np.sqrt(2)  # 95% interval of 2 trials
    assert [c[3] for c in cells] == ["0"] * 4  # the dense net (0.95 throughout) is above the reference from the start
    assert [c[4] for c in cells] == [f"0.3000 ± {half:.4f}"] * 4  # pruned accuracy at iteration 0
    assert cells[0][5] == "0.9000 (25)"
    assert cells[1][5] == "0.8500 (50)"
    dense_half = t.ppf(0.975, 1) * np.std([0.945, 0.955], ddof=1) / np.sqrt(2)
    assert all(c[6] == f"0.9500 ± {dense_half:.4f}" for c in cells)  # final dense accuracy

# ---- the figure-content tests (issue 14)


# -------------------------------------------------------- what the figures draw
@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figure objects the plotting functions would save (not rendered: the tests above check
    that the files are written)."""
    figures = []

    def capture(fig, path):
        figures.append(fig)
        return Path(path)

    from greedyprune.studies import pretraining_figures

    monkeypatch.setattr(pretraining_figures, "_save", capture)
    return figures


def _cell_means(rows, key="pruned_accuracy"):
    """{(width, size, iteration): mean of key over the cell's rows}, straight from the rows."""
    cells = {}
    for r in rows:
        cells.setdefault((r["width"], r["size"], r["iteration"]), []).append(r[key])
    return {cell: float(np.mean(v)) for cell, v in cells.items()}


def _panels(fig, n):
    """The first n axes of a figure: one panel per width (a colour bar, if any, comes after them)."""
    return fig.axes[:n]


def _varied_rows(never_size=None, third_trial_size=None):
    """staircase_rows made harder to fool: the smallest size beats the reference from iteration 50 on (so
    only the largest size's best is the reference; its threshold stays 25), width 32's pruned accuracies
    sit 0.05 lower (same thresholds, another reference), the dense accuracy differs per (width, size,
    iteration) cell, and optionally the cells of one size of width 32 get a third trial (so the bands
    need t with 2 degrees of freedom)."""
    sizes, iters = [100, 200, 400, 800], [0, 25, 50, 75, 100]
    rows = []
    for r in staircase_rows(never_size):
        r = dict(r)
        i, j = sizes.index(r["size"]), iters.index(r["iteration"])
        delta = 0.005 if r["trial"] else -0.005
        r["dense_accuracy"] = 0.5 + 0.1 * i + 0.02 * j + (0.03 if r["width"] == 32 else 0.0) + delta
        if r["size"] == 100 and r["iteration"] >= 50:
            r["pruned_accuracy"] += 0.05
        if r["width"] == 32:
            r["pruned_accuracy"] -= 0.05
        rows.append(r)
        if r["width"] == 32 and r["size"] == third_trial_size and r["trial"] == 1:
            rows.append(dict(r, trial=2, pruned_accuracy=r["pruned_accuracy"] + 0.03,
                             dense_accuracy=r["dense_accuracy"] - 0.02))
    return rows


def _cells(rows, key):
    """{(width, size, iteration): [key of each of the cell's rows]}, straight from the rows."""
    cells = {}
    for r in rows:
        cells.setdefault((r["width"], r["size"], r["iteration"]), []).append(r[key])
    return cells


def _red_line_thresholds(means, width, sizes, iters):
    """The paper's red line (Section 5), computed here: the reference is the best mean pruned accuracy of
    the largest size; a size's threshold is the first iteration (ascending) whose mean reaches it, up to
    the documented float slack THRESHOLD_RTOL; None if none does."""
    reference = max(means[(width, max(sizes), it)] for it in iters)
    cutoff = reference - plotting.THRESHOLD_RTOL * max(1.0, abs(reference))
    thresholds = [next((it for it in sorted(iters) if means[(width, s, it)] >= cutoff), None) for s in sizes]
    return reference, thresholds


def _t975(df):
    """Student's t quantile at 0.975 (the two-sided 95% interval), in closed form: df=1 is the Cauchy
    distribution, tan(pi (p - 1/2)); df=2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    if df == 1:
        return math.tan(math.pi * 0.475)
    if df == 2:
        a = 2 * 0.975 - 1
        return a * math.sqrt(2 / (1 - a * a))
    raise AssertionError(f"no closed form here for {df} degrees of freedom")


def _ci95(values):
    """Half width of the 95% t-interval of the mean: t * sd (n - 1 in the denominator) / sqrt(n)."""
    n, mean = len(values), sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return _t975(n - 1) * sd / math.sqrt(n)


def _trials_suffix(counts):
    lo, hi = min(counts), max(counts)
    return f", {lo} trials" if lo == hi else f", {lo}-{hi} trials"


def test_figure1_draws_the_cell_means_and_the_red_line_through_the_thresholds(tmp_path, drawn):
    rows = _varied_rows(never_size=200)
    plotting.plot_figure1(rows, tmp_path / "f1.png")
    (fig,) = drawn
    pruned = {c: float(np.mean(v)) for c, v in _cells(rows, "pruned_accuracy").items()}
    dense = {c: float(np.mean(v)) for c, v in _cells(rows, "dense_accuracy").items()}
    counts = {c: len(v) for c, v in _cells(rows, "pruned_accuracy").items()}
    sizes, iters = [100, 200, 400, 800], [0, 25, 50, 75, 100]
    # one colour scale for both maps of every width: the range of all the cell means
    lo, hi = min(min(pruned.values()), min(dense.values())), max(max(pruned.values()), max(dense.values()))
    panels = _panels(fig, 4)  # per width (rows of panels, ascending): the pruned map, then the dense map
    for width, (pax, dax) in zip((8, 32), (panels[0:2], panels[2:4])):
        suffix = _trials_suffix([n for (w, _, _), n in counts.items() if w == width])
        assert pax.get_title() == f"pruned, width {width}{suffix}" == f"pruned, width {width}, 2 trials"
        assert dax.get_title() == f"dense, width {width}{suffix}"
        for ax, means in ((pax, pruned), (dax, dense)):
            image = ax.images[0]
            expected = np.array([[means[(width, s, it)] for it in iters] for s in sizes])  # rows = sizes, bottom up
            np.testing.assert_allclose(np.ma.getdata(image.get_array()), expected, rtol=0, atol=1e-12)
            assert image.origin == "lower"
            assert image.norm.vmin == pytest.approx(lo, abs=1e-12) and image.norm.vmax == pytest.approx(hi, abs=1e-12)
            assert [t.get_text() for t in ax.get_yticklabels()] == [str(s) for s in sizes]
            assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in iters]
            texts = {tuple(t.get_position()): t.get_text() for t in ax.texts}
            assert texts == {(j, i): f"{means[(width, s, it)]:.2f}"
                             for i, s in enumerate(sizes) for j, it in enumerate(iters)}
        # the red line, on the pruned map only, through each size's threshold cell (x = column, y = size row)
        reference, thresholds = _red_line_thresholds(pruned, width, sizes, iters)
        assert thresholds == [25, None, 75, 100]  # the staircase: 200 never reaches it (guards this helper)
        red = [line for line in pax.lines if line.get_color() == "red" and line.get_linestyle() == "-"]
        assert len(red) == 1
        xs = [iters.index(t) if t is not None else np.nan for t in thresholds]
        np.testing.assert_array_equal(red[0].get_xdata(), xs)
        np.testing.assert_array_equal(red[0].get_ydata(), range(len(sizes)))
        boxes = sorted((p.get_x() + 0.5, p.get_y() + 0.5) for p in pax.patches)  # the threshold cells, outlined
        assert boxes == sorted((float(x), float(i)) for i, x in enumerate(xs) if not np.isnan(x))
        never = [line for line in pax.lines if line.get_marker() == "<"]
        assert len(never) == 1
        assert list(never[0].get_ydata()) == [i for i, t in enumerate(thresholds) if t is None]
        assert list(never[0].get_xdata()) == [len(iters) - 0.5]  # at the right edge
        assert not dax.lines and not dax.patches  # no red line on the dense map


def test_figure1_leaves_missing_cells_blank(tmp_path, drawn):
    rows, values = synthetic_rows()
    plotting.plot_figure1([r for r in rows if r["width"] == 16], tmp_path / "f1.png")
    image = _panels(drawn[0], 1)[0].images[0].get_array()
    assert image.mask[SIZES.index(100), ITERS.index(20)]  # the cell without rows
    assert int(image.mask.sum()) == 1
    p, _ = values[(16, 200, 30)]
    assert image[SIZES.index(200), ITERS.index(30)] == pytest.approx(np.mean(p), abs=1e-12)


def test_accuracy_curves_draw_pruned_and_dense_means_and_the_reference(tmp_path, drawn):
    rows = _varied_rows(never_size=800, third_trial_size=400)  # the reference (0.85) is below 0.9
    plotting.plot_accuracy_curves(rows, tmp_path / "c.png")
    (fig,) = drawn
    pruned_cells, dense_cells = _cells(rows, "pruned_accuracy"), _cells(rows, "dense_accuracy")
    pruned = {c: sum(v) / len(v) for c, v in pruned_cells.items()}
    dense = {c: sum(v) / len(v) for c, v in dense_cells.items()}
    sizes, iters = [100, 200, 400, 800], [0, 25, 50, 75, 100]
    colours = []
    for ax, width in zip(_panels(fig, 2), (8, 32)):
        counts = [len(v) for (w, _, _), v in pruned_cells.items() if w == width]
        assert ax.get_title() == f"width {width}{_trials_suffix(counts)}"
        solid = [line for line in ax.lines if line.get_linestyle() == "-"]
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        dotted = [line for line in ax.lines if line.get_linestyle() == ":"]
        assert len(solid) == len(dashed) == len(ax.collections) == len(sizes) and len(dotted) == 1
        for s, line, dline, band in zip(sizes, solid, dashed, ax.collections):
            np.testing.assert_array_equal(line.get_xdata(), iters)
            np.testing.assert_array_equal(dline.get_xdata(), iters)
            np.testing.assert_allclose(line.get_ydata(), [pruned[(width, s, it)] for it in iters], rtol=0, atol=1e-12)
            np.testing.assert_allclose(dline.get_ydata(), [dense[(width, s, it)] for it in iters], rtol=0, atol=1e-12)
            # a size's pruned curve, its band and its dense curve share a colour
            assert line.get_color() == dline.get_color()
            np.testing.assert_allclose(band.get_facecolor()[0][:3], matplotlib.colors.to_rgb(line.get_color()))
            colours.append(matplotlib.colors.to_hex(line.get_color()))
            # the band: the 95% t-interval of the pruned mean over the cell's trials, at every iteration
            vertices = band.get_paths()[0].vertices
            assert set(vertices[:, 0]) == set(iters)
            for it in iters:
                ys = vertices[vertices[:, 0] == it, 1]
                half = _ci95(pruned_cells[(width, s, it)])
                assert ys.min() == pytest.approx(pruned[(width, s, it)] - half, abs=1e-9)
                assert ys.max() == pytest.approx(pruned[(width, s, it)] + half, abs=1e-9)
        # the reference: the best mean pruned accuracy of the largest size
        reference, _ = _red_line_thresholds(pruned, width, sizes, iters)
        np.testing.assert_allclose(dotted[0].get_ydata(), [reference, reference], rtol=0, atol=1e-12)
    assert len(set(colours[:4])) == 4 and colours[:4] == colours[4:]  # one colour per size, the same in each panel


def lemma_rows():
    """Per-step losses with a known mean gap: trial t of (width, iteration) has gap c_it * K^-1 * (1 +- 0.1),
    except that one checkpoint beats the dense net at steps 3 and 4 (negative gaps, not drawn)."""
    rows = []
    for width in (6, 12):
        for size in (50, 100):
            for iteration, c in ((0, 2.0), (10, 1.0), (20, 0.5)):
                for trial, wobble in enumerate((0.9, 1.1)):
                    gaps = c * wobble / np.arange(1, 9)
                    if iteration == 20:
                        gaps[2:4] = -0.01
                    dense = 0.3 + 0.01 * trial
                    rows.append(dict(width=width, size=size, trial=trial, iteration=iteration,
                                     pruned_accuracy=0.5, dense_accuracy=0.6, dense_loss=dense,
                                     losses=list(dense + gaps), k=8))
    return rows


def test_lemma1_plot_draws_the_mean_gaps_of_the_largest_size(tmp_path, drawn):
    rows = lemma_rows()
    plotting.plot_lemma1(rows, tmp_path / "l.png")
    (fig,) = drawn
    ks = np.arange(1, 9)
    for ax, width in zip(_panels(fig, 2), (6, 12)):
        assert ax.get_title() == f"width {width}, dataset size 100"
        curves = [line for line in ax.lines if line.get_label().startswith("iter ")]
        assert [c.get_label().split(",")[0] for c in curves] == ["iter 0", "iter 10", "iter 20"]
        for line, iteration in zip(curves, (0, 10, 20)):
            cell = [r for r in rows if r["width"] == width and r["size"] == 100 and r["iteration"] == iteration]
            gap = np.mean([np.array(r["losses"]) - r["dense_loss"] for r in cell], axis=0)
            expected = np.where(gap > 0, gap, np.nan)
            np.testing.assert_array_equal(line.get_xdata(), ks)
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
            keep = gap > 0
            rate = np.polyfit(np.log(ks[keep]), np.log(gap[keep]), 1)[0]
            assert line.get_label().endswith(f"K^{rate:.2f}")
        guide = [line for line in ax.lines if line.get_label() == "1/K"]
        assert len(guide) == 1  # anchored at the largest first-step gap
        np.testing.assert_allclose(guide[0].get_ydata(), 2.0 / ks, rtol=1e-12)
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_lemma1_gaps_match_a_direct_fit():
    curves = plotting.lemma1_gaps(lemma_rows())
    assert [(c["width"], c["size"], c["iteration"]) for c in curves] == [
        (w, 100, it) for w in (6, 12) for it in (0, 10, 20)]
    for c in curves:
        assert c["positive_steps"] == (6 if c["iteration"] == 20 else 8)
        # a mean gap of exactly c / K: rate -1, no scatter
        assert c["rate"] == pytest.approx(-1.0, abs=1e-9) and c["stderr"] == pytest.approx(0.0, abs=1e-9)


def test_plot_study_draws_the_lemma1_figure_only_with_per_step_losses(tmp_path, drawn):
    paths = plotting.plot_study(lemma_rows(), tmp_path / "figs")
    assert [p.name for p in paths] == ["figure1.png", "accuracy_curves.png", "lemma1_gap.png"]
    assert len(drawn) == 3 and drawn[2].axes[0].get_xlabel() == "selection step K"
    drawn.clear()
    plotting.plot_study(staircase_rows(), tmp_path / "figs")  # no per-step losses: no Lemma 1 figure
    assert len(drawn) == 2
