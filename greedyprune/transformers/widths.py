"""Per-layer MLP widths for a global budget: the marginal rule on measured error curves, or FLAP's rule.

Both rules measure the *dense* decoder once, layer by layer on the calibration windows (each layer on the
dense outputs of the one below), and split a global number of kept MLP neurons ``K = round(f * N * L)``
across the L layers.

``rule="gfs"`` (greedyprune's): for layer l, the neurons are ordered by forward selection with
least-squares weights (``criteria.ls_select`` on the down-projection's input statistics) and the error
curve ``e_l(k)`` of the best least-squares fit of the block output on the first k neurons is read off one
Cholesky factorisation of their covariance ``C = L L'`` in that order: with ``Z = L^-1 C_{:,all} W'``,

    e_l(k) = trace(W C W') - sum_{j <= k} ||Z_j||^2      (centred: the bias absorbs the mean),

divided by a scale: ``scale="block"`` (default) the block's own dense error ``e_l(0)`` (its centred output
energy), so every layer's curve runs from 1 down to 0; ``scale="residual"`` the energy ``sum_t ||h_l(t)||^2``
of the residual stream at the layer's output. On SmolLM2 the residual scale starved the middle layers (30 to
60 of 1,536 neurons kept in layers 11-17): its energy is dominated by a few tokens' massive activations,
which grow with depth, so the later layers' errors looked cheap. Then, as for the CNN budgets, neurons are
removed one at a time from the layer whose error rises least, ``e_l(k_l - 1) - e_l(k_l)``, until ``K`` are
left (at least ``min_keep`` per layer).

``rule="flap"`` (An et al. 2024, "adaptive structure"): the fluctuation scores ``var(x_i) ||W[:, i]||^2`` of
each layer are standardised (minus the layer's mean, over its standard deviation) and the ``K`` highest
over all layers are kept.
"""
from __future__ import annotations

import heapq

import torch

from ..errors import InvalidOptionError
from . import criteria
from .stats import input_stats, module_inputs, run_layer

__all__ = ["SCALES", "WIDTH_RULES", "allocate_widths", "curve_from_order", "flap_allocation", "layer_steps",
           "measure_dense_mlps"]

WIDTH_RULES = ("uniform", "gfs", "flap")


def curve_from_order(weight: torch.Tensor, stats, order: torch.Tensor) -> torch.Tensor:
    """``e(k)`` for k = 0..N: the centred squared error of the least-squares fit of ``W x`` on the first k
    channels of ``order`` (float64, non-increasing)."""
    w = weight.to(torch.float64)
    cov = stats.covariance
    n = cov.shape[0]
    c = cov[order][:, order]
    jitter = 1e-9 * float(torch.diagonal(c).mean().clamp_min(1e-300))
    chol, info = torch.linalg.cholesky_ex(c + jitter * torch.eye(n, dtype=torch.float64))
    if int(info):  # numerically rank-deficient: a larger jitter
        chol = torch.linalg.cholesky(c + 1e3 * jitter * torch.eye(n, dtype=torch.float64))
    z = torch.linalg.solve_triangular(chol, cov[order] @ w.T, upper=False)
    total = float(((w @ cov) * w).sum())
    explained = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((z * z).sum(1), 0)])
    return (total - explained).clamp_min(0.0)


def allocate_widths(curves: list[torch.Tensor], total: int, min_keep: int = 1) -> list[int]:
    """Kept neurons per layer by the marginal rule (see the module docstring).

    Args:
        curves: per layer, ``e(k)`` for k = 0..N_l.
        total: neurons to keep over all layers.
        min_keep: fewest per layer.

    Raises:
        ValueError: ``total`` is below ``min_keep`` per layer or above the layers' widths.
    """
    widths = [len(c) - 1 for c in curves]
    if not len(curves) * min_keep <= total <= sum(widths):
        raise InvalidOptionError(f"cannot keep {total} MLP neurons in {len(curves)} layers of {widths[0]}: between "
                                 f"{len(curves) * min_keep} and {sum(widths)}")
    best = [torch.cummin(c, 0).values for c in curves]  # made non-increasing in k
    heap = [(float(best[i][w - 1] - best[i][w]), i) for i, w in enumerate(widths) if w > min_keep]
    heapq.heapify(heap)
    kept = sum(widths)
    while kept > total:
        _, i = heapq.heappop(heap)
        widths[i] -= 1
        kept -= 1
        if widths[i] > min_keep:
            heapq.heappush(heap, (float(best[i][widths[i] - 1] - best[i][widths[i]]), i))
    return widths


def flap_allocation(scores: list[torch.Tensor], total: int, min_keep: int = 1) -> list[int]:
    """FLAP's adaptive widths: the ``total`` highest standardised scores over all layers (at least
    ``min_keep`` per layer, taken from each layer's best)."""
    z = [(s - s.mean()) / s.std().clamp_min(1e-300) for s in scores]
    widths = [min_keep] * len(z)
    rest = []
    for i, s in enumerate(z):
        top = torch.sort(s, descending=True).values
        rest += [(float(v), i) for v in top[min_keep:]]
    rest.sort(key=lambda item: -item[0])
    for _, i in rest[:total - min_keep * len(z)]:
        widths[i] += 1
    return widths


def layer_steps(n_layers: int, progress: bool, desc: str):
    """``range(n_layers)``, under a progress bar when ``progress``."""
    if not progress:
        return range(n_layers)
    from tqdm.auto import tqdm

    return tqdm(range(n_layers), desc=desc, unit="layer")


SCALES = ("block", "residual")


def measure_dense_mlps(base, inputs, layer_set, rule: str, progress: bool = False,
                       scale: str = "block") -> dict[int, torch.Tensor]:
    """Per pruned layer: its error curve (``rule="gfs"``, divided by ``scale``, see the module docstring) or
    FLAP scores (``"flap"``), on the dense model."""
    out = {}
    n_layers = len(base.layers)
    masks = [item.mask for item in inputs]
    for li in layer_steps(n_layers, progress, f"measuring widths ({rule})"):
        layer = base.layers[li]
        if li in layer_set:
            mlp = layer.mlp
            xs = module_inputs(layer, mlp, inputs)
            stats = input_stats(xs, masks, full=rule == "gfs", transform=lambda x: mlp.act_fn(mlp.gate_proj(x))
                                * mlp.up_proj(x))
            weight = mlp.down_proj.weight.detach()
            del xs
        if li < n_layers - 1 or li in layer_set:
            inputs = run_layer(layer, inputs)
        if li in layer_set:
            if rule == "gfs":
                order = criteria.ls_select(weight, stats, 1, weight.shape[1])
                curve = curve_from_order(weight, stats, order)
                if scale == "residual":
                    energy = sum(float((item.hidden[item.mask].double() ** 2).sum()) for item in inputs)
                else:
                    energy = float(curve[0].clamp_min(1e-300))
                out[li] = curve / energy
            else:
                out[li] = criteria.unit_scores("flap", weight, stats, 1)
    return out
