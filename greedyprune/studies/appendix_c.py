"""The numerical checks of Appendix C of "How much pre-training is enough to discover a good subnetwork?".

(a) Figure 2: the smallest singular value ``lambda_min`` of the hidden-feature matrix at initialisation
    grows like ``sqrt(N)`` in the width ``N`` for a fixed data set (``m`` points in dimension ``d``).
    Inputs ``x_i ~ N(0, I_d)`` are normalised onto the unit sphere, weights ``w_j ~ N(0, I_d)``, and
    ``H = sigma(X W^T)`` is the ``(m, N)`` matrix of hidden-neuron outputs, ``sigma`` a bounded smooth
    activation (Assumption 1): ``tanh`` (default), ``sigmoid`` or ``erf``.  Widths satisfy ``N >= m``
    (``H`` has full row rank), so ``lambda_min`` is the ``m``-th singular value.

(b) Figure 3: the condition number ``kappa = s_max / s_min`` of a standard Gaussian ``(rows, cols)``
    matrix grows with the number of rows (data points) at a fixed number of columns (``rows <= cols``).
    For reference the figure also shows the Marchenko-Pastur edge ratio
    ``(1 + sqrt(rows/cols)) / (1 - sqrt(rows/cols))``, the large-size limit of ``kappa``.

A note on reading the exponent of (a): for finite ``N`` the spectrum of ``H H^T / N`` fluctuates around
its ``N -> infinity`` limit by ``O(sqrt(m / N))``, which pulls ``lambda_min`` down most at the smallest
widths; a power-law fit over a width range starting close to ``m`` therefore gives an exponent somewhat
above 0.5 that approaches 0.5 as ``N / m`` grows.  ``exponent_fits`` reports the fit over all widths
(``exponent``) and over the upper half of the widths (``tail_exponent``) so that the trend is visible.

Every random draw comes from a :class:`torch.Generator` seeded from ``seed`` and the indices of the
draw alone, so results do not depend on the order of the loops.  In (a) the data ``X`` of a repeat is
shared by all widths (seeded from ``(seed, m, d, repeat)``: a fixed data set, widened network) and the
weights ``W`` are drawn per ``(seed, m, d, width, repeat)``.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import InvalidOptionError
from ..fitting import fit_power_law  # noqa: F401 - part of this module's API
from .common import override, pick_preset

__all__ = [
    "ACTIVATIONS",
    "AppendixCConfig",
    "AppendixCResult",
    "PRESETS",
    "get_preset",
    "config_with",
    "sample_unit_inputs",
    "hidden_feature_matrix",
    "smallest_singular_value",
    "condition_number",
    "fit_power_law",
    "fit_sqrt_prefactor",
    "mp_condition_number",
    "run_appendix_c",
    "summary_text",
    "plot_figure2",
    "plot_figure3",
]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
}

SINGULAR_CSV = "singular_values.csv"
CONDITION_CSV = "condition_numbers.csv"
FITS_CSV = "exponent_fits.csv"
FIGURE2 = "figure2.png"
FIGURE3 = "figure3.png"
_DPI = 130

# Tags that keep the random streams of the three kinds of draws apart.
_TAG_INPUTS, _TAG_WEIGHTS, _TAG_GAUSSIAN = 1, 2, 3


# ----------------------------------------------------------------------------- config
def _check_int_tuple(name: str, values, minimum: int) -> None:
    if not isinstance(values, (tuple, list)):
        raise InvalidOptionError(f"{name} must be a tuple of ints, got {type(values).__name__} ({values!r})")
    if len(values) == 0:
        raise InvalidOptionError(f"{name} must hold at least one value, got an empty tuple")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidOptionError(f"{name} must hold ints, got {v!r} ({type(v).__name__})")
        if v < minimum:
            raise InvalidOptionError(f"each of {name} must be >= {minimum}, got {v}")
    if len(set(values)) != len(values):
        raise InvalidOptionError(f"{name} has repeated values: {tuple(values)!r}")


@dataclass(frozen=True)
class AppendixCConfig:
    """Everything that defines the results of the Appendix C checks."""

    ms: tuple[int, ...] = (50, 100)  # data sizes for (a)
    ds: tuple[int, ...] = (10, 50)  # input dimensions for (a)
    widths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768)  # N for (a), each >= max(ms)
    activation: str = "tanh"  # "tanh" | "sigmoid" | "erf"
    repeats: int = 10
    rows: tuple[int, ...] = (10, 25, 50, 100, 150, 200)  # row counts for (b)
    cols: tuple[int, ...] = (250, 500, 1000)  # column counts for (b), each >= max(rows)
    seed: int = 0

    def validate(self) -> None:
        _check_int_tuple("ms", self.ms, 1)
        _check_int_tuple("ds", self.ds, 1)
        _check_int_tuple("widths", self.widths, 1)
        if len(self.widths) < 2:
            raise InvalidOptionError(f"widths needs at least two values to fit an exponent, got {tuple(self.widths)!r}")
        small = [w for w in self.widths if w < max(self.ms)]
        if small:
            raise InvalidOptionError(
                f"widths {small} are smaller than the largest m = {max(self.ms)}; every width must be "
                f">= every m (the over-parameterised regime, H of full row rank)")
        if self.activation not in ACTIVATIONS:
            raise InvalidOptionError(f"unknown activation {self.activation!r}; expected one of {tuple(ACTIVATIONS)}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise InvalidOptionError(f"repeats must be an int >= 1, got {self.repeats!r}")
        _check_int_tuple("rows", self.rows, 1)
        _check_int_tuple("cols", self.cols, 1)
        narrow = [c for c in self.cols if c < max(self.rows)]
        if narrow:
            raise InvalidOptionError(
                f"cols {narrow} are smaller than the largest rows = {max(self.rows)}; every cols value "
                f"must be >= every rows value (rows <= cols)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidOptionError(f"seed must be an int >= 0, got {self.seed!r}")


PRESETS: dict[str, AppendixCConfig] = {
    # about 5-10 s on one CPU thread (measured on a shared 2-core machine). Widths span a factor 64 from
    # N/m >= 5; fitted exponents 0.52-0.59 over all widths, 0.505-0.53 over the upper half.
    "quick": AppendixCConfig(),
    # a bigger grid: more data sizes and dimensions, widths over a factor 64, and (b) at cols up to 2000
    # with rows up to 90% of the smallest cols. About 2 minutes on one CPU thread.
    "paper": AppendixCConfig(
        ms=(50, 100, 200),
        ds=(10, 50, 100),
        widths=(1000, 2000, 4000, 8000, 16000, 32000, 64000),
        rows=(50, 100, 200, 300, 400, 500, 600, 700, 800, 900),
        cols=(1000, 2000),
    ),
}


def get_preset(name: str) -> AppendixCConfig:
    return pick_preset(PRESETS, name)


def config_with(base: AppendixCConfig, **overrides) -> AppendixCConfig:
    """``base`` with the given fields replaced, e.g. ``config_with(get_preset("quick"), trials=1)``."""
    return override(base, "Appendix C", **overrides)


# ----------------------------------------------------------------------------- numerics
def _generator(*indices: int) -> torch.Generator:
    """A generator whose seed depends only on ``indices`` (via numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(i) for i in indices]).generate_state(2, dtype=np.uint32)
    seed = (int(state[0]) << 31) ^ int(state[1])  # < 2**63
    return torch.Generator().manual_seed(seed)


def sample_unit_inputs(m: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``m`` inputs ``x_i ~ N(0, I_d)`` normalised onto the unit sphere: a float64 ``(m, d)`` tensor."""
    X = torch.randn(m, d, generator=generator, dtype=torch.float64)
    return X / X.norm(dim=1, keepdim=True)


def hidden_feature_matrix(m: int, d: int, width: int, activation: str = "tanh",
                          generator: torch.Generator | None = None, *,
                          inputs: torch.Tensor | None = None) -> torch.Tensor:
    """``H = sigma(X W^T)``, the float64 ``(m, width)`` matrix of hidden-neuron outputs at initialisation.

    ``X`` holds ``m`` unit-norm inputs (:func:`sample_unit_inputs`, drawn first from ``generator``) unless
    ``inputs`` gives them; ``W`` holds ``width`` weights ``w_j ~ N(0, I_d)``, drawn from ``generator`` after
    ``X``.
    """
    if activation not in ACTIVATIONS:
        raise InvalidOptionError(f"unknown activation {activation!r}; expected one of {tuple(ACTIVATIONS)}")
    if inputs is None:
        X = sample_unit_inputs(m, d, generator)
    else:
        if tuple(inputs.shape) != (m, d):
            raise InvalidOptionError(f"inputs must have shape (m, d) = ({m}, {d}), got {tuple(inputs.shape)}")
        X = inputs.to(torch.float64)
    W = torch.randn(width, d, generator=generator, dtype=torch.float64)
    return ACTIVATIONS[activation](X @ W.T)


def _singular_values(A) -> torch.Tensor:
    A = torch.as_tensor(A, dtype=torch.float64)
    if A.dim() != 2 or A.numel() == 0:
        raise InvalidOptionError(f"expected a non-empty 2-d matrix, got shape {tuple(A.shape)}")
    return torch.linalg.svdvals(A)  # descending


def smallest_singular_value(H) -> float:
    """The smallest (the ``min(rows, cols)``-th) singular value of ``H``, computed in float64."""
    return float(_singular_values(H)[-1])


def condition_number(A) -> float:
    """``s_max / s_min`` of ``A`` over its ``min(rows, cols)`` singular values (``inf`` when ``s_min = 0``)."""
    s = _singular_values(A)
    if s[-1] == 0:
        return math.inf
    return float(s[0] / s[-1])


def mp_condition_number(rows: int, cols: int) -> float:
    """The Marchenko-Pastur limit ``(1 + sqrt(q)) / (1 - sqrt(q))``, ``q = min/max`` of the shape."""
    q = min(rows, cols) / max(rows, cols)
    return math.inf if q >= 1 else (1 + math.sqrt(q)) / (1 - math.sqrt(q))


def fit_sqrt_prefactor(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares ``c`` in ``values ~ c * sqrt(widths)``: ``c = sum(v sqrt(w)) / sum(w)``."""
    w = np.asarray(widths, dtype=float)
    v = np.asarray(values, dtype=float)
    if w.shape != v.shape or w.ndim != 1 or w.size == 0:
        raise InvalidOptionError(
            f"widths and values must be 1-d of the same non-zero length, got {w.shape} and {v.shape}")
    if np.any(w < 0):
        raise InvalidOptionError("widths must be non-negative")
    denom = float(w.sum())
    if denom == 0:
        raise InvalidOptionError("widths must not all be zero")
    return float((v * np.sqrt(w)).sum() / denom)


# ----------------------------------------------------------------------------- the study
@dataclass
class AppendixCResult:
    singular_rows: list[dict] = field(default_factory=list)  # m, d, width, mean, std, repeats
    condition_rows: list[dict] = field(default_factory=list)  # rows, cols, mean, std, repeats, mp_limit
    exponent_fits: list[dict] = field(default_factory=list)  # m, d, exponent, stderr, prefactor, ...
    config: AppendixCConfig | None = None
    seconds: float = 0.0


def _singular_values_study(config: AppendixCConfig, tick: Callable[[], None]) -> list[dict]:
    act = config.activation
    widths = sorted(config.widths)
    out = []
    for m in sorted(config.ms):
        for d in sorted(config.ds):
            values = {w: [] for w in widths}
            for r in range(config.repeats):
                X = sample_unit_inputs(m, d, _generator(config.seed, _TAG_INPUTS, m, d, r))
                for w in widths:
                    g = _generator(config.seed, _TAG_WEIGHTS, m, d, w, r)
                    H = hidden_feature_matrix(m, d, w, act, g, inputs=X)
                    values[w].append(smallest_singular_value(H))
                    tick()
            for w in widths:
                v = np.asarray(values[w])
                out.append({"m": m, "d": d, "width": w, "mean": float(v.mean()), "std": float(v.std()),
                            "repeats": config.repeats})
    return out


def _condition_study(config: AppendixCConfig, tick: Callable[[], None]) -> list[dict]:
    out = []
    for c in sorted(config.cols):
        for r in sorted(config.rows):
            vals = []
            for k in range(config.repeats):
                g = _generator(config.seed, _TAG_GAUSSIAN, r, c, k)
                vals.append(condition_number(torch.randn(r, c, generator=g, dtype=torch.float64)))
                tick()
            v = np.asarray(vals)
            out.append({"rows": r, "cols": c, "mean": float(v.mean()), "std": float(v.std()),
                        "repeats": config.repeats, "mp_limit": mp_condition_number(r, c)})
    return out


def _fits(singular_rows: list[dict]) -> list[dict]:
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in singular_rows:
        groups.setdefault((row["m"], row["d"]), []).append(row)
    fits = []
    for (m, d), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r["width"])
        x = [r["width"] for r in rows]
        y = [r["mean"] for r in rows]
        a, se, pref = fit_power_law(x, y)
        half = len(x) // 2
        tail = (x[half:], y[half:]) if len(x) - half >= 2 else (x[-2:], y[-2:])
        ta, tse, _ = fit_power_law(*tail)
        fits.append({"m": m, "d": d, "exponent": a, "stderr": se, "prefactor": pref,
                     "tail_exponent": ta, "tail_stderr": tse, "tail_min_width": tail[0][0],
                     "sqrt_prefactor": fit_sqrt_prefactor(x, y)})
    return fits


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        if not rows:
            return
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def run_appendix_c(config: AppendixCConfig, out_dir, *, progress: bool = True,
                   log: Callable[[str], None] = print) -> AppendixCResult:
    """Run both checks, write the CSVs and figures into ``out_dir``, and return the result.

    Files: ``singular_values.csv``, ``condition_numbers.csv``, ``exponent_fits.csv``, ``figure2.png``
    (``lambda_min`` against ``N``) and ``figure3.png`` (``kappa`` against rows).
    """
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = config.repeats * (len(config.ms) * len(config.ds) * len(config.widths)
                              + len(config.rows) * len(config.cols))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="appendix C", unit="matrix")

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    t0 = time.perf_counter()
    try:
        singular_rows = _singular_values_study(config, tick)
        condition_rows = _condition_study(config, tick)
    finally:
        if bar is not None:
            bar.close()
    result = AppendixCResult(singular_rows, condition_rows, _fits(singular_rows), config,
                             time.perf_counter() - t0)

    _write_csv(out / SINGULAR_CSV, result.singular_rows)
    _write_csv(out / CONDITION_CSV, result.condition_rows)
    _write_csv(out / FITS_CSV, result.exponent_fits)
    plot_figure2(result, out / FIGURE2)
    plot_figure3(result, out / FIGURE3)
    log(f"appendix C: {total} matrices in {result.seconds:.1f} s; wrote {SINGULAR_CSV}, {CONDITION_CSV}, "
        f"{FITS_CSV}, {FIGURE2}, {FIGURE3} to {out}")
    return result


# ----------------------------------------------------------------------------- reporting
def _fmt_pm(value: float, err: float) -> str:
    return f"{value:.3f} +- {err:.3f}" if math.isfinite(err) else f"{value:.3f} +- n/a"


def summary_text(result: AppendixCResult) -> str:
    """A readable table of the fitted exponents (a) and the condition numbers (b)."""
    lines = []
    act = result.config.activation if result.config is not None else "?"
    lines.append(f"(a) lambda_min(H) ~ prefactor * N^exponent  (activation {act}; 0.5 = sqrt(N))")
    head = f"{'m':>6} {'d':>5} {'widths':>13} {'exponent':>14} {'upper-half exp.':>16} {'c in c*sqrt(N)':>15}"
    lines.append(head)
    widths = sorted({r["width"] for r in result.singular_rows})
    span = f"{widths[0]}-{widths[-1]}" if widths else ""
    for f in result.exponent_fits:
        lines.append(f"{f['m']:>6} {f['d']:>5} {span:>13} {_fmt_pm(f['exponent'], f['stderr']):>14} "
                     f"{_fmt_pm(f['tail_exponent'], f['tail_stderr']):>16} {f['sqrt_prefactor']:>15.4g}")
    lines.append("")
    lines.append("(b) condition number s_max/s_min of Gaussian (rows x cols) matrices: mean +- std "
                 "[Marchenko-Pastur limit]")
    cols = sorted({r["cols"] for r in result.condition_rows})
    rows = sorted({r["rows"] for r in result.condition_rows})
    cell = {(r["rows"], r["cols"]): r for r in result.condition_rows}
    lines.append(f"{'rows':>6} " + " ".join(f"{'cols=' + str(c):>24}" for c in cols))
    for r in rows:
        parts = []
        for c in cols:
            row = cell.get((r, c))
            parts.append(f"{row['mean']:.3g} +- {row['std']:.2g} [{row['mp_limit']:.3g}]" if row else "")
        lines.append(f"{r:>6} " + " ".join(f"{p:>24}" for p in parts))
    return "\n".join(lines)


def _pm_plot(value: float, err: float) -> str:
    return f"{value:.3f} ± {err:.3f}" if math.isfinite(err) else f"{value:.3f}"


def _plain_log_ticks(axis, subs=(1.0, 2.0, 5.0)) -> None:
    """Plain numbers (2, 5, 10, 20) instead of 2×10^0 on a log axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_figure2(result: AppendixCResult, path) -> None:
    """``lambda_min`` against ``N`` (log-log), one panel per ``d``, one curve per ``m`` (mean +- std over
    repeats), each with its least-squares ``c * sqrt(N)`` dashed and the fitted exponent in the legend."""
    from matplotlib.figure import Figure

    ds = sorted({r["d"] for r in result.singular_rows})
    ms = sorted({r["m"] for r in result.singular_rows})
    fits = {(f["m"], f["d"]): f for f in result.exponent_fits}
    colors = [f"C{i}" for i in range(10)]
    fig = Figure(figsize=(4.8 * len(ds) + 0.4, 3.9 + 0.2 * len(ms)), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, len(ds), squeeze=False)[0]
    act = result.config.activation if result.config is not None else ""
    for ax, d in zip(axes, ds):
        handles = []
        for i, m in enumerate(ms):
            rows = sorted((r for r in result.singular_rows if r["m"] == m and r["d"] == d), key=lambda r: r["width"])
            if not rows:
                continue
            N = np.array([r["width"] for r in rows], dtype=float)
            mean = np.array([r["mean"] for r in rows])
            std = np.array([r["std"] for r in rows])
            f = fits[(m, d)]
            color = colors[i % len(colors)]
            eb = ax.errorbar(N, mean, yerr=std, fmt="o-", color=color, ms=4, lw=1.4, capsize=3,
                        label=f"m={m}: exponent {_pm_plot(f['exponent'], f['stderr'])} (all N), "
                              f"{_pm_plot(f['tail_exponent'], f['tail_stderr'])} (N≥{f['tail_min_width']})")
            grid = np.geomspace(N.min(), N.max(), 100)
            (fit_line,) = ax.plot(grid, f["sqrt_prefactor"] * np.sqrt(grid), "--", color=color, lw=1.2, alpha=0.8,
                                  label=f"{f['sqrt_prefactor']:.3g}·√N (least-squares c·√N)")
            handles += [eb, fit_line]
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel("width N (hidden neurons)")
        ax.set_ylabel("λ_min(H)  (smallest singular value)")
        ax.set_title(f"d = {d}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    reps = result.singular_rows[0]["repeats"] if result.singular_rows else 0
    fig.suptitle(f"Smallest singular value of H = {act}(X Wᵀ) at initialisation (mean ± std over {reps} repeats)",
                 fontsize=11)
    fig.savefig(path, dpi=_DPI, facecolor="white")


def plot_figure3(result: AppendixCResult, path) -> None:
    """``kappa`` against rows, one curve per cols (mean with a +- std band), with the Marchenko-Pastur
    limit dotted."""
    from matplotlib.figure import Figure

    cols = sorted({r["cols"] for r in result.condition_rows})
    colors = [f"C{i}" for i in range(10)]
    fig = Figure(figsize=(6.4, 4.4), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    for i, c in enumerate(cols):
        rows = sorted((r for r in result.condition_rows if r["cols"] == c), key=lambda r: r["rows"])
        x = np.array([r["rows"] for r in rows], dtype=float)
        mean = np.array([r["mean"] for r in rows])
        std = np.array([r["std"] for r in rows])
        color = colors[i % len(colors)]
        ax.plot(x, mean, "o-", color=color, ms=4, lw=1.5, label=f"cols = {c}")
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.25, lw=0)
        finite = x < c
        if finite.any():
            grid = np.linspace(x[finite].min(), x[finite].max(), 200)
            q = np.sqrt(grid / c)
            ax.plot(grid, (1 + q) / (1 - q), ":", color=color, lw=1.2)
    ax.plot([], [], ":", color="gray", label="Marchenko–Pastur limit (1+√q)/(1−√q)")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis, subs=(1.0, 1.5, 2.0, 3.0, 5.0))
    ax.set_xlabel("rows (data points)")
    ax.set_ylabel("condition number κ = s_max / s_min")
    reps = result.condition_rows[0]["repeats"] if result.condition_rows else 0
    ax.set_title(f"Condition number of Gaussian matrices (mean ± std over {reps} repeats)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(path, dpi=_DPI, facecolor="white")
