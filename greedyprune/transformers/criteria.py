"""What to keep in one block, by each method, from the statistics of the block's output projection.

A *block* is an output projection ``y = W x + b`` (W: d x D) whose D input channels form N units of
``group`` channels each: the FFN's output projection (units = intermediate neurons, group 1) or the
attention's output projection (units = heads, group = head size). Unit i's contribution to the block
output at token t is ``P_i(t) = W[:, ch(i)] x_ch(i)(t)``, and the dense output is ``y = sum_i P_i + b``.

GFS (the local objective of "Greedy Optimization Provably Wins the Lottery", Algorithm 1 with
replacement): ``phi_i = N * P_i`` over all calibration tokens, target ``y - b``; the engine minimises the
squared error of ``(1/k) sum_{S} phi_i`` from the N x N Gram matrix

    <phi_i, phi_j> = N^2 sum_{c in ch(i), c' in ch(j)} (X'X)[c, c'] (W'W)[c, c'],   <phi_i, y> = N sum_j G_ij,

which for an FFN neuron is ``N^2 (a_i . a_j)(w2_i . w2_j)``. The (N x tokens x d) tensor is never formed.
A unit chosen ``count_i`` times in k steps keeps its channels with weight ``N * count_i / k``.

Two more greedy forward selections on the same block objective, for the block's own parameterisation:

* ``gfs-sum``: the standard (sum) parameterisation. Kept units keep their weights, the bias takes the
  removed units' mean contribution, and each step adds (without replacement) the unit that most lowers
  ``||sum_S (P_i - mean P_i) - (y - mean y)||^2``, from the centred unit Gram: O(N) per step.
* ``gfs-ls``: forward selection with least-squares weights (orthogonal matching pursuit on the block's
  inputs): each step adds the unit whose channels most lower the error of the best least-squares fit of
  y on the chosen channels, from the centred input Gram (a rank-``group`` update per step, never a
  refit from scratch). It picks the units for ``refit="lstsq"``; without a refit it keeps the chosen
  units' own weights and, like ``gfs-sum``, compensates the bias.

Baselines (one score per unit, the top ``n_keep`` kept, ties to the lower index):

* ``magnitude``: ``sum_c ||W_in[c, :]|| ||W[:, c]||`` (for an FFN neuron ``||w1_i|| ||w2_i||``; for a head,
  its value-projection rows against its output-projection columns);
* ``wanda`` (Wanda-sp, An et al. 2024): ``sum_c rms_t(x_c) * mean_j |W[j, c]|``;
* ``flap`` (An et al. 2024, fluctuation metric WIFV): ``var_t(x_c) * ||W[:, c]||^2``, summed over a unit's
  channels after squaring for heads as FLAP does, with bias compensation: the removed channels' mean
  contribution ``W[:, removed] mean(x_removed)`` is added to b;
* ``random``: a uniform draw of ``n_keep`` units (seeded).

``refit="lstsq"`` re-solves the kept columns of W and the bias by ridge regression on the calibration
tokens, towards the kept units' pretrained columns (see :func:`refit_lstsq`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidOptionError
from ..selection.block import ReaderProblem, ridge_refit, select_units
from ..selection.engine import MAX_STEPS, greedy_forward_selection
from ..selection.result import SelectionResult
from .stats import InputStats

__all__ = ["BIAS_COMPENSATED", "GREEDY", "METHODS", "Plan", "gfs_select", "keep_count", "ls_select", "plan_block",
           "plan_from_keep", "reconstruction_error",
           "refit_lstsq", "sum_select", "unit_gram", "unit_scores"]

METHODS = ("gfs", "gfs-sum", "gfs-ls", "magnitude", "wanda", "flap", "random")

GREEDY = ("gfs", "gfs-sum", "gfs-ls")
"""The greedy forward selections (the others are one-score baselines)."""

NEEDS_FULL_STATS = {"gfs": True, "gfs-sum": True, "gfs-ls": True, "magnitude": False, "wanda": False, "flap": False,
                    "random": False}
"""Whether a method reads the whole Gram of the inputs (else its diagonal and the means are enough)."""


def keep_count(fraction: float, n: int) -> int:
    """Units kept for a keep fraction: ``round(fraction * n)`` (halves up), at least 1."""
    return max(1, min(n, int(fraction * n + 0.5)))


def _channel_products(weight: torch.Tensor, stats: InputStats, group: int, centred: bool = False) -> torch.Tensor:
    """``G[i, j] = sum over the channel blocks of (X'X) * (W'W)`` = ``sum_t <P_i(t), P_j(t)>`` (N, N);
    ``centred``: of the contributions minus their means over the tokens (the covariance for X'X)."""
    w = weight.to(torch.float64)
    per_channel = (stats.covariance if centred else stats.gram) * (w.T @ w)
    n = per_channel.shape[0] // group
    return per_channel.reshape(n, group, n, group).sum(dim=(1, 3))


def unit_gram(weight: torch.Tensor, stats: InputStats, group: int = 1) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The Gram form of the block's local objective: ``(gram, cross, target_norm)`` for the engine.

    Args:
        weight: the output projection W (d, D).
        stats: its input statistics with the full Gram.
        group: channels per unit (D = N * group).

    Returns:
        ``gram[i, j] = <phi_i, phi_j>``, ``cross[i] = <phi_i, y>`` and ``||y||^2`` with ``phi_i = N P_i`` and
        ``y = sum_i P_i`` over all calibration tokens (float64).
    """
    g = _channel_products(weight, stats, group)
    n = g.shape[0]
    return (n * n) * g, n * g.sum(dim=1), float(g.sum())


def gfs_select(gram: torch.Tensor, cross: torch.Tensor, target_norm: float, tokens: int, n_keep: int, *,
               replacement: bool = True, max_steps: int | None = None) -> SelectionResult:
    """Algorithm 1 run until ``n_keep`` distinct units are chosen.

    With replacement, the number of steps this takes is not known in advance: the engine's loop stops after
    the step that chose the ``n_keep``-th distinct unit (``distinct=``; the first T steps of a longer run are
    exactly a T-step run). ``max_steps`` (default ``50 * N``) bounds the steps; if the selection keeps
    re-choosing the units it has before reaching ``n_keep``, the result holds fewer (and a warning says so).

    Returns:
        The (cut) :class:`SelectionResult`: its ``counts`` weight the kept units.
    """
    n = gram.shape[0]
    if not replacement:
        return greedy_forward_selection(None, None, n_keep, replacement=False, gram=gram, cross=cross,
                                        target_norm=target_norm, examples=tokens)
    limit = min(MAX_STEPS, 50 * n if max_steps is None else max_steps)
    res = greedy_forward_selection(None, None, limit, replacement=True, gram=gram, cross=cross,
                                   target_norm=target_norm, examples=tokens, distinct=n_keep)
    distinct = int((res.counts > 0).sum())
    if distinct < n_keep:
        import warnings

        warnings.warn(f"greedy selection chose {distinct} distinct units of {n} in {res.k} steps, fewer than the "
                      f"{n_keep} asked for (max_steps={limit}); keeping {distinct}", stacklevel=3)
    return _cut(res, res.k, n_keep)


def _cut(res: SelectionResult, steps: int, n_keep: int) -> SelectionResult:
    indices = res.indices[:steps].clone()
    counts = torch.bincount(indices, minlength=res.num_neurons)
    return SelectionResult(indices=indices, counts=counts, losses=res.losses[:steps].clone(), output=None,
                           loss=res.loss, replacement=res.replacement, extra={"target_distinct": n_keep,
                                                                             "steps_run": res.k})


def sum_select(weight: torch.Tensor, stats: InputStats, group: int, n_keep: int) -> torch.Tensor:
    """``gfs-sum``: greedy forward selection of ``n_keep`` units for the sum ``sum_S P_i`` (see the module
    docstring), from the centred unit Gram. Returns the chosen units in the order chosen."""
    g = _channel_products(weight, stats, group, centred=True)
    cross = g.sum(dim=1)  # <P_j - mean, y - mean y>
    diag = torch.diagonal(g)
    current = torch.zeros_like(cross)  # <P_j, sum of the chosen>
    free = torch.ones(g.shape[0], dtype=torch.bool)
    order = []
    for _ in range(n_keep):
        # ||s + P_j - y||^2 - ||s - y||^2 = ||P_j||^2 + 2 <P_j, s> - 2 <P_j, y>
        delta = torch.where(free, diag + 2.0 * (current - cross), torch.inf)
        j = int(torch.argmin(delta))
        order.append(j)
        free[j] = False
        current += g[:, j]
    return torch.tensor(order, dtype=torch.long)


def ls_select(weight: torch.Tensor, stats: InputStats, group: int, n_keep: int) -> torch.Tensor:
    """``gfs-ls``: forward selection of ``n_keep`` units with least-squares weights (see the module docstring),
    by the shared block-reconstruction engine (:func:`greedyprune.selection.block.select_units`) on the
    centred input Gram, with the dense block's output ``W x`` as the target. Returns the chosen units in the
    order chosen."""
    w = weight.to(torch.float64)
    cov = stats.covariance
    n = cov.shape[0] // group
    problem = ReaderProblem(gram=cov, cross=cov @ w.T, target_sq=torch.einsum("dc,ce,de->d", w, cov, w),
                            unit_columns=torch.arange(n * group).reshape(n, group),
                            fixed=torch.empty(0, dtype=torch.long), tokens=stats.tokens)
    return select_units([problem], n_keep).order


def unit_scores(method: str, weight: torch.Tensor, stats: InputStats | None, group: int,
                weight_in: torch.Tensor | None = None) -> torch.Tensor:
    """One score per unit for the baselines (higher is kept first); see the module docstring."""
    w = weight.to(torch.float64)
    n = w.shape[1] // group
    if method == "magnitude":
        per_channel = weight_in.to(torch.float64).norm(dim=1) * w.norm(dim=0)
    elif method == "wanda":
        per_channel = (stats.sq / stats.tokens).sqrt() * w.abs().mean(dim=0)
    elif method == "flap":
        per_channel = stats.variance * (w * w).sum(dim=0)
        if group > 1:
            per_channel = per_channel ** 2  # FLAP squares the head metric before summing a head's channels
    else:
        raise InvalidOptionError(f"no score for method {method!r}")
    return per_channel.reshape(n, group).sum(dim=1)


@dataclass
class Plan:
    """What a method keeps in one block: unit indices, a weight per unit (0 for removed) applied to its
    channels of W, a change to the bias, and the selection's counts (GFS) ."""

    keep: torch.Tensor  # (n_keep,) ascending unit indices
    scale: torch.Tensor  # (N,) float64
    bias_delta: torch.Tensor | None  # (d,) float64 or None
    counts: torch.Tensor | None
    selection: SelectionResult | None


def plan_block(method: str, weight: torch.Tensor, stats: InputStats | None, group: int, n_keep: int, *,
               weight_in: torch.Tensor | None = None, generator: torch.Generator | None = None,
               replacement: bool = True, max_steps: int | None = None) -> Plan:
    """Choose the units of one block by ``method`` (one of :data:`METHODS`)."""
    n = weight.shape[1] // group
    if method == "gfs":
        gram, cross, target_norm = unit_gram(weight, stats, group)
        # the selection is invariant to a common positive scale; a decoder's massive activations (and the N^2
        # of phi = N P) can push the Gram past what the engine accepts, so it is brought to order 1
        unit = float(torch.diagonal(gram).max().clamp_min(1e-300))
        gram, cross, target_norm = gram / unit, cross / unit, target_norm / unit
        sel = gfs_select(gram, cross, target_norm, stats.tokens, n_keep, replacement=replacement, max_steps=max_steps)
        sel.losses.mul_(unit)  # back in the block's own units
        scale = n * sel.counts.to(torch.float64) / sel.k
        return Plan(keep=sel.selected, scale=scale, bias_delta=None, counts=sel.counts, selection=sel)
    if method in ("gfs-sum", "gfs-ls"):
        keep = (sum_select if method == "gfs-sum" else ls_select)(weight, stats, group, n_keep).sort().values
    elif method == "random":
        keep = torch.randperm(n, generator=generator)[:n_keep].sort().values
    else:
        scores = unit_scores(method, weight, stats, group, weight_in)
        order = torch.sort(-scores, stable=True).indices
        keep = order[:n_keep].sort().values
    return plan_from_keep(method, weight, stats, group, keep)


BIAS_COMPENSATED = ("flap", "gfs-sum", "gfs-ls")
"""Methods that keep the kept units' weights and move the removed units' mean contribution into the bias."""


def plan_from_keep(method: str, weight: torch.Tensor, stats: InputStats | None, group: int,
                   keep: torch.Tensor) -> Plan:
    """The plan of a method that keeps the units ``keep`` with their own weights (scale 1): for the methods of
    :data:`BIAS_COMPENSATED`, the bias takes the removed channels' mean contribution ``W[:, removed] mean(x)``."""
    n = weight.shape[1] // group
    keep = keep.sort().values
    scale = torch.zeros(n, dtype=torch.float64)
    scale[keep] = 1.0
    bias_delta = None
    if method in BIAS_COMPENSATED:
        removed = (scale == 0).repeat_interleave(group)
        bias_delta = weight.to(torch.float64)[:, removed] @ stats.mean[removed]
    return Plan(keep=keep, scale=scale, bias_delta=bias_delta, counts=None, selection=None)


def channels_of(units: torch.Tensor, group: int) -> torch.Tensor:
    """The channel indices of the given units, ascending with them."""
    return (units.reshape(-1, 1) * group + torch.arange(group).reshape(1, -1)).reshape(-1)


def refit_lstsq(weight: torch.Tensor, bias: torch.Tensor, stats: InputStats, channels: torch.Tensor,
                ridge: float, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-solve the kept columns of W and the bias by ridge regression on the calibration tokens.

    Solves ``min ||X_K V' + 1 c' - (X W' + 1 b')||^2 + lam ||V - V0||^2`` over V (d x |K|) and c: the
    target is the dense block's output on the same inputs, the prior ``V0 = start`` defaults to the
    kept units' own (pretrained) columns ``W[:, K]``, and the bias is not penalised. The penalty is

        lam = ridge * (|K| / T) * mean_c Var_T(x_c) * T  =  ridge * |K| * (mean per-token variance),

    so it weighs more when there are few calibration tokens per kept unit and fades as T grows; with
    ``T < |K|`` the problem is underdetermined and only the penalty keeps it well-posed. ``ridge = 0`` is
    plain least squares (minimum-norm where singular), ``ridge -> inf`` returns the prior with the best
    bias for it. The normal equations are solved in float64 by Cholesky.

    Returns:
        ``(V, c)``: the new kept columns (d, |K|) and bias (d,), float64.
    """
    w = weight.to(torch.float64)
    prior = w[:, channels] if start is None else start.to(torch.float64)
    cov = stats.covariance
    v = ridge_refit(cov, cov @ w.T, channels, prior, stats.tokens, ridge)
    mean = stats.mean
    c = bias.to(torch.float64) + w @ mean - v @ mean[channels]
    return v, c


def reconstruction_error(weight: torch.Tensor, stats: InputStats, new_weight: torch.Tensor,
                         bias_delta: torch.Tensor | None) -> float:
    """``||y_pruned - y_dense||^2 / ||y_dense - b||^2`` over the calibration tokens, from the statistics.

    ``new_weight`` is the pruned block's W at full width (zeros in removed channels); ``bias_delta`` the
    change to its bias. Needs the full Gram.
    """
    w = weight.to(torch.float64)
    delta = new_weight.to(torch.float64) - w
    err = float(((delta @ stats.gram) * delta).sum())
    if bias_delta is not None:
        db = bias_delta.to(torch.float64)
        err += 2.0 * float(db @ (delta @ stats.total)) + stats.tokens * float(db @ db)
    ref = float(((w @ stats.gram) * w).sum())
    return err / ref if ref > 0 else float("nan")
