"""Block reconstruction: which input units of a linear map to keep so that a least-squares fit on the kept
inputs reproduces a target output, and that fit (the ridge refit). One engine for channel groups of CNNs
and for the neurons and heads of transformer blocks.

The problem. A *reader* is a linear map ``y_t = V p_t`` from input columns ``p_t`` (C,) to outputs
``y_t`` (d,) at positions t (a linear layer's tokens; a convolution's ``unfold`` patches, whose columns are
input channels times kernel positions). The columns are owned by U *units* (a channel, a neuron, an
attention head: ``g`` columns each) or are *fixed* (kept whatever is chosen: the reader's inputs from other
channel groups). Several readers may read the same units (a residual stream is read by every block that
adds to it). Everything the selection needs is in three sums over the calibration positions::

    gram  = sum_t p_t p_t'   (C, C)        cross = sum_t p_t y_t'   (C, d)        target_sq = sum_t y_t^2   (d,)

where ``y_t`` is the *target*: the dense network's output of the reader (so each block also corrects the
error that the already-pruned blocks below it left), or the reader's own output at full width.

Selection (``gfs-ls``: greedy forward selection with least-squares weights, i.e. orthogonal matching
pursuit over blocks of columns). With K the chosen columns (fixed ones included), the residual of the best
fit is ``E(K) = sum_o w_o (||y_o||^2 - c_o' A_KK^-1 c_o)``, summed over the readers, with ``A = gram`` and
``c_o`` the cross column of output o weighted by ``w_o``. Each step adds the unit u that lowers E most::

    gain(u) = sum_readers trace(R_u' Ahat_uu^-1 R_u),   Ahat = A - B B',   R = cross - B (L^-1 cross_K)

where B holds the chosen columns' Cholesky-orthogonalised Gram columns: a step costs one rank-g update of
B, R and the per-unit g x g blocks ``Ahat_uu`` (O(C * (chosen + d)) per reader), never a solve from
scratch. :func:`select_units` returns the units in the order chosen and the relative residual after each
step (the reconstruction-error curve that adaptive budgets read). Ties go to the lowest unit index.

Refit: one ridge convention for channel groups and transformer blocks. :func:`ridge_refit` re-solves the kept
columns by ridge regression towards a prior ``V0`` (the kept columns' pretrained or folded weights)::

    V* = argmin_V ||V P_K - Y||^2 + lam ||V - V0||^2,   lam = ridge * mean(diag A_KK) * |K| / T = ridge * tr(A_KK) / T

from the raw sums over the T rows of the regression (a reader's positions: images times output positions; a
transformer layer's real tokens): ``A = sum_t p_t p_t'``, ``cross = sum_t p_t y_t'``. ``lam`` is ``ridge`` times
|K| times the kept columns' mean second moment per row, so ``ridge`` is free of the inputs' scale; relative to
the data term (which grows with T) the penalty fades as the calibration set grows. ``ridge = 0`` is plain least
squares (minimum-norm where singular). The callers:

* the network objective's channel refit (``channels/refit.py``) re-solves only the reader's weight (its bias
  stays): :func:`ridge_refit` on ``A``, the raw second moments of the patches; the local objective's
  (``channels/reconstruct.py``) re-solves the bias too by default (``compensate``), on the centred sums as below;
* the transformer refit re-solves the bias too, unpenalised: :func:`ridge_refit_with_bias`. Eliminating a free
  bias centres the rows, so the same formula runs on the centred sums ``A - s s' / T`` (``s = sum_t p_t``): its
  ``lam`` is ``ridge * |K|`` times the kept columns' mean variance per token.

:data:`DEFAULT_RIDGE` is the default of both families. With few calibration examples the refit can fit them
rather than the function (positions of one image are far from independent): :func:`cross_validated_ridge`
picks ``ridge`` from :data:`RIDGE_GRID` by two-fold cross-validation on the statistics of two halves of the
calibration set (one eigendecomposition per half serves every value); the CNN local objective does so by default.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidOptionError

__all__ = ["DEFAULT_RIDGE", "RIDGE_GRID", "ReaderProblem", "Selected", "cross_validated_ridge", "ridge_lambda",
           "ridge_refit", "ridge_refit_with_bias", "select_units"]

DEFAULT_RIDGE = 0.5
"""The ``ridge`` of the refit when none is given and none is cross-validated, for CNNs and transformers alike
(the same ``lam`` formula, :func:`ridge_lambda`): chosen from held-out block errors on all-MiniLM-L6-v2 at 874 to
15,870 calibration tokens (``bench/transformer.py --ridge-sweep``; README), where plain least squares overfits
few tokens; it is inside :data:`RIDGE_GRID`, which the CNN local objective cross-validates by default."""


@dataclass
class ReaderProblem:
    """One reader's sums over the calibration positions (float64), and which columns each unit owns.

    Attributes:
        gram: ``sum_t p_t p_t'`` (C, C).
        cross: ``sum_t p_t y_t'`` (C, d) with y the target.
        target_sq: ``sum_t y_t^2`` per output (d,).
        unit_columns: (U, g) column indices of each unit (the same g for every unit of this reader).
        fixed: (F,) columns that are kept whatever is chosen (may be empty).
        tokens: the number of positions T.
        out_weight: (d,) weight of each output in the selection objective (None: 1 each).
    """

    gram: torch.Tensor
    cross: torch.Tensor
    target_sq: torch.Tensor
    unit_columns: torch.Tensor
    fixed: torch.Tensor
    tokens: int
    out_weight: torch.Tensor | None = None


@dataclass
class Selected:
    """What :func:`select_units` chose: ``order`` (units in the order chosen) and ``errors[k-1]``, the
    weighted residual after k units relative to the weighted target energy (1 = nothing explained)."""

    order: torch.Tensor
    errors: torch.Tensor
    start_error: float
    residuals: torch.Tensor | None = None  # (steps, readers): each reader's weighted residual after each step


class _Reader:
    """The running state of one reader during a selection (see the module docstring)."""

    def __init__(self, problem: ReaderProblem, capacity: int):
        gram = problem.gram.to(torch.float64)
        cross = problem.cross.to(torch.float64)
        target = problem.target_sq.to(torch.float64)
        if problem.out_weight is not None:
            w = problem.out_weight.to(torch.float64)
            cross, target = cross * w.sqrt(), target * w
        self.gram, self.r = gram, cross.clone()
        self.energy = float(target.sum())
        self.cols = problem.unit_columns.long()
        self.g = self.cols.shape[1]
        first = self.cols[:, 0]
        # one column a unit: its rows of r read directly (no gather) when the units are the columns in order
        self.rows = None if torch.equal(first, torch.arange(gram.shape[0])) else first
        self.blocks = gram[self.cols[:, :, None], self.cols[:, None, :]].clone()  # (U, g, g)
        self.basis = torch.zeros(gram.shape[0], capacity, dtype=torch.float64)
        self.used = 0
        self.floor = 1e-10 * float(torch.diagonal(gram).max().clamp_min(1e-300)) if gram.numel() else 1e-300
        self.explained = 0.0

    def gains(self) -> torch.Tensor:
        if self.g == 1:
            rs = self.r if self.rows is None else self.r.index_select(0, self.rows)  # (U, d)
            pivots = self.blocks.reshape(-1)
            gain = torch.linalg.vector_norm(rs, dim=1).square_() / pivots.clamp_min(self.floor)
            return torch.where(pivots > self.floor, gain, torch.zeros_like(gain))
        rs = self.r[self.cols]  # (U, g, d)
        eye = torch.eye(self.g, dtype=torch.float64)
        blocks = (self.blocks + self.blocks.transpose(1, 2)) / 2
        solved, info = torch.linalg.solve_ex(blocks + self.floor * eye, rs)
        gain = (rs * solved).sum(dim=(1, 2))
        bad = info != 0
        if bool(bad.any()):  # a unit (numerically) spanned by the chosen columns: its gain from a pseudo-inverse
            vals, vecs = torch.linalg.eigh(blocks[bad])
            inv = torch.where(vals > self.floor, 1.0 / vals.clamp_min(self.floor), torch.zeros_like(vals))
            proj = vecs.transpose(1, 2) @ rs[bad]
            gain[bad] = (proj * proj * inv.unsqueeze(-1)).sum(dim=(1, 2))
        return gain.clamp_min(0.0)

    def add(self, columns: torch.Tensor) -> None:
        m = columns.numel()
        if m == 0:
            return
        used = self.used
        a_cols = self.gram[:, columns] - self.basis[:, :used] @ self.basis[columns, :used].T  # Ahat[:, cols]
        eye = torch.eye(m, dtype=torch.float64)
        jitter = self.floor
        while True:
            chol, info = torch.linalg.cholesky_ex(a_cols[columns] + jitter * eye)
            if int(info) == 0:
                break
            jitter *= 100.0  # columns already (numerically) spanned: a tiny ridge keeps the update finite
        new = torch.linalg.solve_triangular(chol, a_cols.T, upper=False).T  # (C, m)
        coeff = torch.linalg.solve_triangular(chol, self.r[columns], upper=False)  # (m, d)
        self.explained += float((coeff * coeff).sum())
        self.r.addmm_(new, coeff, alpha=-1.0)
        if used + m > self.basis.shape[1]:
            grown = torch.zeros(self.basis.shape[0], used + m, dtype=torch.float64)
            grown[:, :used] = self.basis[:, :used]
            self.basis = grown
        self.basis[:, used:used + m] = new
        self.used = used + m
        if self.g == 1:  # (U, 1, 1) pivots: minus each unit's squared row of the new basis columns
            unit_rows = new if self.rows is None else new.index_select(0, self.rows)  # (U, m)
            self.blocks.view(-1).sub_(unit_rows.square().sum(dim=1))
            return
        unit_rows = new[self.cols]  # (U, g, m)
        self.blocks -= unit_rows @ unit_rows.transpose(1, 2)


def select_units(problems: list[ReaderProblem], n_keep: int, step: int = 1) -> Selected:
    """Greedy forward selection with least-squares weights of ``n_keep`` units over every reader at once.

    Args:
        problems: the readers of the units (each with a row of ``unit_columns`` per unit, all with U rows).
        n_keep: units to choose (1..U).
        step: units added per step (1: the exact greedy order). With ``step > 1`` the best ``step`` units by
            gain are added together (one block update), and every unit of a step gets the error after it:
            a cheaper, coarser curve, for budgets.

    Returns:
        :class:`Selected` with the order chosen and the relative residual after each step.
    """
    if not problems:
        raise InvalidOptionError("select_units needs at least one reader problem")
    n_units = problems[0].unit_columns.shape[0]
    if any(p.unit_columns.shape[0] != n_units for p in problems):
        raise InvalidOptionError(f"every reader must list the same {n_units} units")
    if not 1 <= n_keep <= n_units:
        raise InvalidOptionError(f"n_keep={n_keep} must be between 1 and the {n_units} units")
    readers = [_Reader(p, p.fixed.numel() + n_keep * p.unit_columns.shape[1]) for p in problems]
    for reader, p in zip(readers, problems):
        reader.add(p.fixed.long())
    total = sum(r.energy for r in readers) or 1.0
    start = 1.0 - sum(r.explained for r in readers) / total
    free = torch.ones(n_units, dtype=torch.bool)
    order = torch.empty(n_keep, dtype=torch.long)
    errors = torch.empty(n_keep, dtype=torch.float64)
    residuals = torch.empty(n_keep, len(readers), dtype=torch.float64)
    done = 0
    while done < n_keep:
        gain = readers[0].gains()
        for reader in readers[1:]:
            gain = gain + reader.gains()
        gain = torch.where(free, gain, -torch.inf)
        take = min(step, n_keep - done)
        units = torch.argmax(gain).reshape(1) if take == 1 else torch.sort(-gain, stable=True).indices[:take]
        order[done:done + take] = units
        free[units] = False
        for reader in readers:
            reader.add(reader.cols[units].reshape(-1))
        errors[done:done + take] = 1.0 - sum(r.explained for r in readers) / total
        residuals[done:done + take] = torch.tensor([max(r.energy - r.explained, 0.0) for r in readers],
                                                   dtype=torch.float64)
        done += take
    return Selected(order=order, errors=errors.clamp_min(0.0), start_error=max(start, 0.0), residuals=residuals)


def ridge_lambda(gram_kept: torch.Tensor, tokens: int, ridge: float) -> float:
    """The penalty of :func:`ridge_refit`: ``ridge * mean(diag A_KK) * |K| / T`` from the kept columns' Gram
    ``A_KK`` (a sum over ``tokens`` = T rows; centred when a free bias is re-solved too)."""
    k = gram_kept.shape[0]
    if k == 0:
        return 0.0
    return ridge * float(torch.diagonal(gram_kept).mean()) * k / max(int(tokens), 1)


def ridge_refit(gram: torch.Tensor, cross: torch.Tensor, columns: torch.Tensor, prior: torch.Tensor,
                tokens: int, ridge: float) -> torch.Tensor:
    """``V*`` (d, |K|): the kept columns re-solved by ridge regression towards ``prior`` (d, |K|).

    Solves ``min ||V P_K - Y||^2 + lam ||V - prior||^2`` from ``gram = sum_t p_t p_t'`` (C, C) and
    ``cross = sum_t p_t y_t'`` (C, d), sums over ``tokens`` = T rows, with ``lam`` from :func:`ridge_lambda`
    (the module docstring); normal equations by Cholesky in float64 (the minimum-norm least-squares solution
    where they are singular). ``columns`` are K.
    """
    columns = columns.long()
    a = gram.to(torch.float64)[columns][:, columns]
    lam = ridge_lambda(a, tokens, ridge)
    lhs = a + lam * torch.eye(a.shape[0], dtype=torch.float64)
    rhs = cross.to(torch.float64)[columns] + lam * prior.to(torch.float64).T  # (|K|, d)
    chol, info = torch.linalg.cholesky_ex(lhs)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, chol)
    else:
        solution = torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution
    return solution.T


def ridge_refit_with_bias(gram: torch.Tensor, total: torch.Tensor, tokens: int, weight: torch.Tensor,
                          bias: torch.Tensor, columns: torch.Tensor, ridge: float,
                          prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's kept input columns K and its bias re-solved to reproduce its own dense output.

    Solves ``min ||P_K' V' + 1 c' - (P' W' + 1 b')||^2 + lam ||V - V0||^2`` over V (d, |K|) and the unpenalised
    bias c, from the raw sums over ``tokens`` = T rows ``gram = sum_t p_t p_t'`` (C, C) and ``total = sum_t p_t``
    (C,); ``weight`` W (d, C) and ``bias`` b (d,) are the dense layer's, ``prior`` V0 defaults to ``W[:, K]``.
    Eliminating c centres the rows: this is :func:`ridge_refit` on ``A = gram - total total' / T`` and
    ``cross = A W'``, so ``lam = ridge * |K| * (the kept columns' mean variance per row)``; then
    ``c = b + W mean - V mean_K``. ``ridge -> inf`` returns the prior with the best bias for it.

    Returns ``(V, c)``, float64.
    """
    w = weight.to(torch.float64)
    prior = w[:, columns] if prior is None else prior.to(torch.float64)
    cov = gram - torch.outer(total, total) / tokens
    v = ridge_refit(cov, cov @ w.T, columns, prior, tokens, ridge)
    mean = total / tokens
    c = bias.to(torch.float64) + w @ mean - v @ mean[columns]
    return v, c


_RANGE_MARGIN = 8
"""Columns beyond a Gram's rank bound that :func:`_low_rank` samples its range with."""


def _low_rank(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, vals)`` with orthonormal ``Q`` (k, m) and ``gram = Q diag(vals) Q'`` for a symmetric PSD ``gram``
    (k, k) of rank at most ``rank`` (a sum over ``rank`` positions), ``m = rank + 8``: its range sampled by
    ``gram @ Omega`` with a seeded Gaussian ``Omega`` (exact for that rank, up to rounding), then the
    eigendecomposition of the m x m projection. Cost ``O(k^2 m)`` instead of an ``O(k^3)`` eigendecomposition."""
    k = gram.shape[0]
    omega = torch.randn(k, min(k, rank + _RANGE_MARGIN), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    q, _ = torch.linalg.qr(gram @ omega)
    small = q.T @ gram @ q
    vals, w = torch.linalg.eigh((small + small.T) / 2)
    return q @ w, vals


RIDGE_GRID = (0.01, 0.1, 0.5, 2.0, 8.0, 32.0, 128.0, 512.0, 4096.0)
"""The ``ridge`` values :func:`cross_validated_ridge` chooses from (large ones keep the prior weights)."""


def cross_validated_ridge(folds: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]], columns: torch.Tensor,
                          prior: torch.Tensor, out_weight: torch.Tensor | None = None,
                          grid: tuple[float, ...] = RIDGE_GRID) -> float:
    """The ``ridge`` of :data:`RIDGE_GRID` whose refit on one half of the calibration set best predicts the other.

    Args:
        folds: two ``(gram, cross, target_sq, tokens)`` of disjoint halves of the calibration set.
        columns: the kept columns K.
        prior: the refit's prior (d, |K|).
        out_weight: (d,) weight of each output in the held-out error (None: 1 each).
        grid: the candidate values.

    Returns:
        The value with the lowest held-out squared error summed over both directions (ties: the larger).
    """
    columns = columns.long()
    prior = prior.to(torch.float64)
    errors = torch.zeros(len(grid), dtype=torch.float64)
    w = torch.ones(prior.shape[0], dtype=torch.float64) if out_weight is None else out_weight.to(torch.float64)
    for (g_fit, c_fit, _, t_fit), (g_out, c_out, sq_out, t_out) in ((folds[0], folds[1]), (folds[1], folds[0])):
        a = g_fit.to(torch.float64)[columns][:, columns]
        a_out = g_out.to(torch.float64)[columns][:, columns]
        k, d = a.shape[0], prior.shape[0]
        sq = sq_out.to(torch.float64)
        c_fit, c_out = c_fit.to(torch.float64)[columns], c_out.to(torch.float64)[columns]
        if 2 * (max(int(t_fit), int(t_out)) + _RANGE_MARGIN) <= k:
            # fewer positions than kept columns (a wide linear reader on few images): each Gram has rank at most
            # its positions, so both are solved in their ranges, V' = prior' + Q delta (the ridge leaves the
            # null space at the prior), never decomposing a k x k matrix
            vecs, vals = _low_rank(a, int(t_fit))
            out_vecs, out_vals = _low_rank(a_out, int(t_out))
            fit_b, prior_b, out_b = vecs.T @ c_fit, vecs.T @ prior.T, vecs.T @ c_out  # (m, d)
            out_prior, out_fit = out_vecs.T @ prior.T, out_vecs.T @ vecs  # (m', d), (m', m)
            prior_lin = (prior.T * c_out).sum(0)
            for i, ridge in enumerate(grid):
                lam = ridge_lambda(a, t_fit, ridge)
                delta = (fit_b + lam * prior_b) / (vals.clamp_min(0) + lam + 1e-300).unsqueeze(1) - prior_b
                u = out_prior + out_fit @ delta
                quad = (u * u * out_vals.clamp_min(0).unsqueeze(1)).sum(0)
                per_out = quad - 2 * (prior_lin + (delta * out_b).sum(0)) + sq
                errors[i] += float((per_out * w).sum())
            continue
        vals, vecs = torch.linalg.eigh(a)
        # everything in the fit fold's eigenbasis Q, computed once for the whole grid: V' = Q z with
        # z = (Q' c_fit + lam Q' prior') / (vals + lam); held-out ||V P - Y||^2 per output is
        # v' A_out v - 2 v' c_out + ||y||^2 = z' (Q' A_out Q) z - 2 z' (Q' c_out) + ||y||^2
        fit_b, prior_b = vecs.T @ c_fit, vecs.T @ prior.T  # (|K|, d)
        out_b = vecs.T @ c_out
        rotated = vecs.T @ a_out @ vecs if 2 * k < len(grid) * d else None  # cheaper than two products per value
        for i, ridge in enumerate(grid):
            lam = ridge_lambda(a, t_fit, ridge)
            z = (fit_b + lam * prior_b) / (vals.clamp_min(0) + lam + 1e-300).unsqueeze(1)
            if rotated is not None:
                quad = (z * (rotated @ z)).sum(0)
            else:
                v_t = vecs @ z
                quad = (v_t * (a_out @ v_t)).sum(0)
            per_out = quad - 2 * (z * out_b).sum(0) + sq
            errors[i] += float((per_out * w).sum())
    errors = torch.nan_to_num(errors, nan=float("inf"))
    best = float(errors.min())
    if best == float("inf"):
        return max(grid)
    return max(r for r, e in zip(grid, errors.tolist()) if e <= best + 1e-9 * abs(best))
