"""The loss-specific part of greedy selection: scorers.

A scorer holds the candidates' outputs (or, for :class:`GramScorer`, their inner products) and the
running sum ``s`` of the outputs chosen so far, and answers three questions at step k::

    scores(rows, k)       -> float64 scores of those candidates, monotone in the candidate's loss
    best(k, available)    -> (score, index) of the lowest-index minimiser over all candidates
    add(row, key)         -> add a chosen output ``row`` (``key`` is its global index) to the sum

The engine (``engine.py``) drives a scorer one step at a time through two more methods, whose defaults
(:class:`ScorerBase`) are written with the three above::

    pick(k, available, rows)          -> the step's choice: ``best`` over all, or the argmin of ``scores(rows)``
    resolve_duplicate(k, best, copies) -> which of the eligible exact copies of ``best`` is taken (the lowest)

That is the whole protocol (:class:`Scorer`). Algorithm 2 (``sharded.py``) is a scorer composed around one
of these per process, overriding ``pick`` and ``resolve_duplicate`` with collectives.

A loss (``losses.py``: a registered :class:`~greedyprune.selection.losses.Loss`) makes its scorer and hands it
itself as ``objective``, whose ``value`` gives the loss the scorer reports. A loss without a scorer of its own
gets :class:`BruteForceScorer`, which evaluates ``value`` for every candidate; a fast scorer is one new class
here, returned by its loss's ``make_scorer``.

Exact arithmetic across processes. Where a row's rounding depends on where it sits in a batched product
(BLAS matrix-vector kernels treat rows in blocks; SIMD loops round a buffer's last elements
differently), a scorer computes its rows as they would be computed at their place in the whole
problem: :class:`Placement` says where its rows sit, and ``scores(rows, k, position=(start, total))``
says where a candidate subset's entries sit in the whole subset. On a single process both are the
identity and cost nothing.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from ..errors import InvalidOptionError

__all__ = [
    "CPU_CHUNK_ELEMENTS",
    "GPU_CHUNK_ELEMENTS",
    "BruteForceScorer",
    "CrossEntropyScorer",
    "GramScorer",
    "LogisticScorer",
    "Placement",
    "Scorer",
    "ScorerBase",
    "SquaredScorer",
    "SubsetSquaredScorer",
    "draw_candidates",
    "duplicate_groups",
]

# Rows per chunk are chosen so that one chunk holds about this many elements. On CPU a chunk that
# fits in L2 cache keeps the add -> softplus -> sum sequence out of main memory.
CPU_CHUNK_ELEMENTS = 1 << 18
GPU_CHUNK_ELEMENTS = 1 << 26
# The bounded search evaluates this many candidates exactly before it prunes by the lower bounds.
FIRST_BATCH = 32
# Rows are re-blocked on this grid when a slice does not start on it (any multiple of the BLAS row block).
ROW_BLOCK = 64


def draw_candidates(generator: torch.Generator, pool: torch.Tensor, c: int | None) -> torch.Tensor:
    """The candidates evaluated at one step: all of ``pool`` or a uniform random subset of c of them.

    ``pool`` is ascending; the subset is returned ascending so that argmin breaks ties by lowest index.
    The generator is always a CPU generator so the same seed gives the same subsets on any device.
    """
    if c is None or c >= pool.numel():
        return pool
    pick = torch.randperm(pool.numel(), generator=generator)[:c]
    return pool[pick.sort().values]


def duplicate_groups(rows: torch.Tensor) -> dict[int, list[int]]:
    """Rows that are exactly equal, as {row: all rows equal to it, ascending}; empty when none are.

    Equal rows have equal losses, and a brute-force loop picks the lowest of them; vectorised arithmetic
    may round them differently, so ties among exact duplicates are resolved by the caller with this map.
    Rows are bucketed by a hash of their bytes and then compared exactly.
    """
    flat = rows.reshape(rows.shape[0], -1).cpu().numpy()
    buckets: dict[int, list[int]] = {}
    for i in range(flat.shape[0]):
        buckets.setdefault(hash(flat[i].tobytes()), []).append(i)
    groups: dict[int, list[int]] = {}
    for members in buckets.values():
        while len(members) > 1:
            first = members[0]
            same = [j for j in members if (flat[j] == flat[first]).all()]
            if len(same) > 1:
                for j in same:
                    groups[j] = same
            members = [j for j in members if j not in same]
    return groups


class Placement:
    """Where a scorer's rows sit: rows ``offset .. offset + n - 1`` of a ``total``-row problem.

    :meth:`matvec` computes ``a @ x`` for those rows rounded as the whole matrix's product would round
    them: BLAS kernels process rows in blocks, and a row's result depends on whether it falls in a full
    block or in the left-over rows at the end, so the partial blocks at either end are padded with zero
    rows to their place in the grid. With ``offset=0`` and ``total=n`` it is a plain product.
    """

    def __init__(self, offset: int = 0, total: int | None = None):
        self.offset, self.total = offset, total

    def matvec(self, a: torch.Tensor, x: torch.Tensor, start: int | None = None,
               total: int | None = None) -> torch.Tensor:
        start = self.offset if start is None else start
        total = (self.total if self.total is not None else start + a.shape[0]) if total is None else total
        n = a.shape[0]
        end = start + n
        lo = min(-(-start // ROW_BLOCK) * ROW_BLOCK, end)  # first grid position at or after start
        hi = end if end == total else max(end // ROW_BLOCK * ROW_BLOCK, lo)
        if lo == start and hi == end:
            return a @ x
        out = torch.empty(n, dtype=torch.result_type(a, x), device=a.device)
        if hi > lo:
            out[lo - start:hi - start] = a[lo - start:hi - start] @ x
        for seg_lo, seg_hi in ((start, lo), (hi, end)):
            if seg_hi > seg_lo:
                block_lo = seg_lo // ROW_BLOCK * ROW_BLOCK
                block = a.new_zeros((min(block_lo + ROW_BLOCK, total) - block_lo,) + tuple(a.shape[1:]))
                block[seg_lo - block_lo:seg_hi - block_lo] = a[seg_lo - start:seg_hi - start]
                out[seg_lo - start:seg_hi - start] = (block @ x)[seg_lo - block_lo:seg_hi - block_lo]
        return out


class Scorer(Protocol):
    """What the engine needs from a loss (see the module docstring)."""

    n: int
    s: torch.Tensor
    device: torch.device

    def scores(self, rows: torch.Tensor | None, k: int, position: tuple[int, int] | None = None) -> torch.Tensor:
        ...

    def best(self, k: int, available: torch.Tensor | None, share: Callable[[float], float] | None = None,
             first_batch: int = FIRST_BATCH) -> tuple[float, int]:
        ...

    def row(self, i: int) -> torch.Tensor:
        ...

    def add(self, row: torch.Tensor, key: int) -> None:
        ...

    def loss(self, k: int) -> float:
        ...

    def pick(self, k: int, available: torch.Tensor | None, rows: torch.Tensor | None) -> int:
        ...

    def resolve_duplicate(self, k: int, best: int, copies: list[int]) -> int:
        ...


class ScorerBase:
    """The engine's two per-step questions, answered with a scorer's ``best`` and ``scores``."""

    device: torch.device

    def pick(self, k: int, available: torch.Tensor | None, rows: torch.Tensor | None) -> int:
        """The index chosen at step k: the lowest-index minimiser over every row (``rows=None``; only the
        ``available`` ones when that CPU mask is given) or over the ascending CPU index tensor ``rows``."""
        if rows is None:
            _, best = self.best(k, None if available is None else available.to(self.device))
            if best < 0:
                raise RuntimeError(f"greedy selection found no candidate at step {k}; please report this "
                                   f"with the inputs")
            return best
        score = self.scores(rows.to(self.device), k)
        return int(rows[int(torch.argmin(score))])

    def resolve_duplicate(self, k: int, best: int, copies: list[int]) -> int:
        """The row taken when ``best`` has exact copies: ``copies`` are the eligible ones (``best`` among
        them), all with its loss; a brute-force loop takes the lowest."""
        return min(copies)


class _PhiScorer(ScorerBase):
    """Shared state of the scorers that hold the outputs ``phi`` (N, m[, C])."""

    def __init__(self, phi: torch.Tensor, target: torch.Tensor, chunk_elements: int,
                 placement: Placement | None = None, objective=None):
        self.phi = phi
        self.n = phi.shape[0]
        self.flat = phi.reshape(self.n, -1)
        self.per_row = max(1, phi[0].numel()) if self.n else 1
        self.chunk_rows = max(1, chunk_elements // self.per_row)
        self.placement = placement or Placement(0, self.n)
        self.target = target
        self.objective = objective  # the Loss whose value(u, target) loss(k) reports
        self.s = torch.zeros(phi.shape[1:], dtype=phi.dtype, device=phi.device)  # running sum of chosen outputs
        self.device = phi.device
        self.evaluated = 0  # exact candidate evaluations, for diagnostics

    def row(self, i: int) -> torch.Tensor:
        return self.phi[i]

    def loss(self, k: int) -> float:
        if self.objective is None:
            raise InvalidOptionError(f"this {type(self).__name__} was built without its loss; build scorers with "
                                     f"get_loss(name).make_scorer(...) or pass objective=get_loss(name)")
        return self.objective.value(self.s / k, self.target)

    def best(self, k, available, share=None, first_batch=FIRST_BATCH):
        """Lowest-index minimiser over all rows by a full pass (``(inf, -1)`` when none is available)."""
        if self.n == 0 or (available is not None and not bool(available.any())):
            if share is not None:
                share(math.inf)
            return math.inf, -1
        score = self.scores(None, k)
        if available is not None:
            score = score.masked_fill(~available, math.inf)
        i = int(torch.argmin(score))
        if share is not None:
            share(float(score[i]))
        return float(score[i]), i


class SquaredScorer(_PhiScorer):
    """``l(u) = ||u - y||^2 / m``: ``argmin_i ||phi_i||^2 - 2 (k+1) <phi_i, y> + 2 <phi_i, s>``.

    ``<phi_i, s>`` for all i is kept up to date with one matrix-vector product per *newly* chosen output
    (a repeat reuses its cached column), so a step costs one (N x m) product or O(N).
    """

    def __init__(self, phi, target, chunk_elements, placement=None, objective=None):
        super().__init__(phi, target, chunk_elements, placement, objective)
        flat = self.flat
        y = target.reshape(-1).to(phi.dtype)
        self.sq = (flat * flat).sum(dim=1, dtype=torch.float64) if phi.dtype != torch.float64 \
            else (flat * flat).sum(dim=1)
        self.py = self.placement.matvec(flat, y).double()
        self.g = torch.zeros(self.n, dtype=torch.float64, device=phi.device)  # <phi_i, s> for every i
        self.cache: dict[int, torch.Tensor] = {}

    def scores(self, rows, k, position=None):
        self.evaluated += self.n if rows is None else rows.numel()
        base = self.sq - (2.0 * (k + 1)) * self.py + 2.0 * self.g
        return base if rows is None else base[rows]

    def add(self, row, key):
        self.s += row
        col = self.cache.get(key)
        if col is None:
            col = self.placement.matvec(self.flat, row.reshape(-1)).double()
            self.cache[key] = col
        self.g += col


class SubsetSquaredScorer(SquaredScorer):
    """Squared loss when only a few candidates are evaluated per step: ``<phi_i, s>`` for just those rows."""

    def scores(self, rows, k, position=None):
        if rows is None:
            rows = torch.arange(self.n, device=self.phi.device)
        self.evaluated += rows.numel()
        start, total = position if position is not None else (0, rows.numel())
        g = self.placement.matvec(self.flat[rows], self.s.reshape(-1), start, total).double()
        return self.sq[rows] - (2.0 * (k + 1)) * self.py[rows] + 2.0 * g

    def add(self, row, key):
        self.s += row


class BruteForceScorer(_PhiScorer):
    """Any loss, by its definition: candidate i's score at step k is ``objective.value((s + phi_i) / (k+1), y)``,
    one evaluation per candidate per step (what a brute-force loop computes; slow, for a loss without a scorer
    of its own). Each score depends on its own row only, so a slice of the rows scores them as the whole does."""

    def __init__(self, phi, target, chunk_elements, placement=None, objective=None):
        if objective is None:
            raise InvalidOptionError("BruteForceScorer needs objective=, the Loss whose value(u, target) it evaluates")
        super().__init__(phi, target, chunk_elements, placement, objective)

    def scores(self, rows, k, position=None):
        rows = range(self.n) if rows is None else rows.tolist()
        self.evaluated += len(rows)
        value = self.objective.value
        return torch.tensor([value((self.s + self.phi[i]) / (k + 1), self.target) for i in rows],
                            dtype=torch.float64, device=self.device)

    def add(self, row, key):
        self.s += row


class GramScorer(ScorerBase):
    """The squared loss from inner products alone: ``gram[i, j] = <phi_i, phi_j>``, ``cross[i] = <phi_i, y>``.

    The scores are those of :class:`SquaredScorer`, ``G_ii - 2 (k+1) c_i + 2 sum_{j in S} G_ij``, and the
    loss of the average is ``(n'Gn / k^2 - 2 n'c / k + ||y||^2) / m`` for the selection counts n. The
    (N, m[, C]) outputs are never formed: a problem whose outputs are too large to hold (a transformer
    block's per-unit contributions over many tokens) fits in one N x N matrix.
    """

    def __init__(self, gram: torch.Tensor, cross: torch.Tensor, target_norm: float = 0.0, examples: int = 1):
        dtype = torch.float64
        self.gram = gram
        self.n = gram.shape[0]
        self.device = gram.device
        self.sq = torch.diagonal(gram).to(dtype)
        self.py = cross.to(dtype)
        self.g = torch.zeros(self.n, dtype=dtype, device=gram.device)
        self.target_norm, self.examples = float(target_norm), int(examples)
        self.s = torch.zeros((), dtype=dtype)  # unused: kept for the protocol
        self.ss = 0.0  # n'Gn
        self.sy = 0.0  # n'c
        self.evaluated = 0

    def row(self, i: int) -> torch.Tensor:
        return self.gram[i]

    def scores(self, rows, k, position=None):
        self.evaluated += self.n if rows is None else rows.numel()
        base = self.sq - (2.0 * (k + 1)) * self.py + 2.0 * self.g
        return base if rows is None else base[rows]

    best = _PhiScorer.best

    def add(self, row, key):
        self.ss += 2.0 * float(self.g[key]) + float(self.sq[key])
        self.sy += float(self.py[key])
        self.g += row.to(self.g.dtype)

    def loss(self, k: int) -> float:
        return (self.ss / (k * k) - 2.0 * self.sy / k + self.target_norm) / self.examples


class LogisticScorer(_PhiScorer):
    """Binary cross-entropy on logits; exact scores are one chunked softplus pass over the candidates.

    The per-example loss is written ``softplus(sign * z)`` with ``sign = 1 - 2y``, which equals
    ``softplus(z) - y z`` without the cancellation when predictions are confident.

    ``best`` evaluates exactly only the candidates that can still win. The loss F is convex in the
    logits, so for any anchor b (m[, C]) and candidate logits ``z_i = a + phi_i / (k+1)`` with
    ``a = s / (k+1)``, ``F(z_i) >= F(b) + <F'(b), z_i - b>``; the scaled score ``(k+1) F(z_i)`` is then
    bounded below by::

        L_i = (k+1) [F(b) + <F'(b), a - b>] + <phi_i, F'(b)>

    ``<phi_i, F'(b)>`` is one matrix-vector product, cached across steps for as long as the anchor b is
    kept, so a step costs O(N) plus the exact passes. Candidates are evaluated in ascending order of L
    until the next L exceeds the best exact score found: no candidate left out can win or tie. The anchor
    is moved to the current ``a`` (one new product) when a step needed many exact evaluations.
    """

    def __init__(self, phi, target, chunk_elements, placement=None, objective=None):
        super().__init__(phi, target, chunk_elements, placement, objective)
        self._prepare_target(target)
        self.norm = (self.flat * self.flat).sum(dim=1, dtype=torch.float64).sqrt()
        self.eps = torch.finfo(phi.dtype).eps
        # softplus(x) is returned as x past this point: exp(-threshold) must be below the dtype's precision
        self.threshold = 20.0 if phi.dtype == torch.float32 else 40.0
        self.sqrt_m = math.sqrt(self.flat.shape[1])
        self.anchor = None  # (b, F(b), F'(b), <phi_i, F'(b)> for all i, rounding margin)
        self.refresh_after = max(32, self.n // 16)  # exact evaluations in one step that trigger a new anchor

    def _prepare_target(self, target):
        self.sign = 1 - 2 * target.to(self.phi.dtype)

    def _f_and_grad(self, a: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``F(a)`` (the loss summed over the data) and its gradient ``F'(a)``."""
        t = self.sign * a
        return float(F.softplus(t).sum(dtype=torch.float64)), self.sign * torch.sigmoid(t)

    def _nonlinear(self, block: torch.Tensor, k: int, buf: torch.Tensor) -> torch.Tensor:
        # (k+1) * sum_j softplus(sign_j (s_j + phi_ij) / (k+1)), via softplus's beta = 1/(k+1)
        torch.add(block, self.s, out=buf)
        buf.mul_(self.sign)
        torch._C._nn.softplus(buf, 1.0 / (k + 1), self.threshold, out=buf)
        return buf.sum(dim=1, dtype=torch.float64)

    def scores(self, rows, k, position=None):
        """Exact scores of ``rows`` (None: all rows), in chunks of ``chunk_rows``.

        ``position=(start, total)``: the rows are entries ``start ..`` of a ``total``-entry candidate list
        whose chunks are laid out from entry 0; each chunk is rebuilt at its full size (zero rows stand in
        for entries held elsewhere), so every score is rounded as in the whole list's pass.
        """
        count = self.n if rows is None else rows.numel()
        self.evaluated += count
        out = torch.empty(count, dtype=torch.float64, device=self.phi.device)
        if count == 0:
            return out
        start, total = position if position is not None else (0, count)
        step, end = self.chunk_rows, start + count
        shape = tuple(self.phi.shape[1:])
        buf = torch.empty((min(step, total),) + shape, dtype=self.phi.dtype, device=self.phi.device)
        for a in range(start // step * step, end, step):
            b = min(a + step, total)
            lo, hi = max(a, start), min(b, end)
            mine = self.phi[lo - start:hi - start] if rows is None else self.phi[rows[lo - start:hi - start]]
            if lo > a or hi < b:
                block = self.phi.new_zeros((b - a,) + shape)
                block[lo - a:hi - a] = mine
            else:
                block = mine
            out[lo - start:hi - start] = self._nonlinear(block, k, buf[:b - a])[lo - a:hi - a]
        return out

    def set_anchor(self, k: int) -> None:
        """Linearise at the current ``a = s / (k+1)``: one matrix-vector product over all candidates."""
        b = self.s / (k + 1)
        fb, grad = self._f_and_grad(b)
        g = self.placement.matvec(self.flat, grad.reshape(-1)).double() if self.n else \
            torch.zeros(0, dtype=torch.float64, device=self.phi.device)
        # rounding of the product, generously bounded
        margin = 64 * self.eps * self.sqrt_m * self.norm * float(grad.double().norm())
        self.anchor = (b, fb, grad, g, margin)

    def lower_bounds(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, margin)``: every candidate's score at step k is at least ``L - margin``."""
        if self.anchor is None:
            self.set_anchor(k)
        b, fb, grad, g, margin = self.anchor
        a = self.s / (k + 1)
        inner = float((grad.double() * (a - b).double()).sum())
        shared = (k + 1) * (fb + inner)
        # rounding of the shared term and of the exact scores it is compared with
        slack = 64 * self.eps * (k + 1) * (abs(fb) + abs(inner) + 1.0)
        return shared + g, margin + slack

    def best(self, k, available, share=None, first_batch=FIRST_BATCH):
        """The lowest-index minimiser, evaluating exactly only the candidates whose bound can still win.

        ``share(score)``, if given, is called once after the first ``first_batch`` exact evaluations and
        returns the lowest score any process has found (Algorithm 2: a process without the overall winner
        then stops early). Returns ``(inf, -1)`` when every candidate is unavailable or beaten.
        """
        if self.n == 0 or (available is not None and not bool(available.any())):
            if share is not None:
                share(math.inf)
            return math.inf, -1
        lower, margin = self.lower_bounds(k)
        lower = lower - margin
        if available is not None:
            lower = lower.masked_fill(~available, math.inf)
        order = torch.argsort(lower, stable=True)
        best_score, best_index = math.inf, -1
        before = self.evaluated

        def evaluate(rows: torch.Tensor, bound: float) -> None:
            nonlocal best_score, best_index
            rows = rows[(lower[rows] <= bound) & (lower[rows] != math.inf)]  # rows that can still win
            if rows.numel():
                rows = rows.sort().values
                score = self.scores(rows, k)
                top = float(score.min())
                index = int(rows[score == top].min())
                if top < best_score or (top == best_score and index < best_index):
                    best_score, best_index = top, index

        evaluate(order[:first_batch], math.inf)
        bound = best_score if share is None else min(best_score, share(best_score))
        start, batch = first_batch, 2 * first_batch
        while start < self.n and float(lower[order[start]]) <= bound:
            evaluate(order[start:start + batch], bound)
            bound = min(bound, best_score)
            start += batch
            batch *= 2
        if self.evaluated - before > self.refresh_after:
            self.anchor = None  # bounds have grown loose: re-linearise at the next step
        return best_score, best_index

    def add(self, row, key):
        self.s += row


class CrossEntropyScorer(LogisticScorer):
    """Softmax cross-entropy on logits (N, m, C). With ``d_c = z_c - z_y`` (so ``d_y = 0``),
    ``top = max_c d_c >= 0`` and ``R = sum_{c != y} exp(d_c - top)``, the per-example loss is
    ``log1p(R)`` when the right class wins (``top = 0``) and ``top + log(exp(-top) + R)`` otherwise: no
    cancellation when the right class wins by a wide margin, and no overflow when it loses."""

    def _prepare_target(self, target):
        self.labels = target.long()
        self.onehot = F.one_hot(self.labels, self.phi.shape[2]).to(self.phi.dtype)
        self.label_index = self.labels.view(1, -1, 1).expand(self.chunk_rows, -1, 1)
        self.ones = torch.ones(self.phi.shape[2], dtype=self.phi.dtype, device=self.phi.device)

    def _f_and_grad(self, a):
        value = torch.logsumexp(a, dim=1) - a.gather(1, self.labels.view(-1, 1)).squeeze(1)
        return float(value.sum(dtype=torch.float64)), torch.softmax(a, dim=1) - self.onehot

    def _nonlinear(self, block, k, buf):
        index = self.label_index[: buf.shape[0]]
        torch.add(block, self.s, out=buf)
        buf.mul_(1.0 / (k + 1))
        buf.sub_(buf.gather(2, index))
        top = buf.amax(dim=2, keepdim=True)
        buf.sub_(top).exp_()
        buf.scatter_(2, index, 0.0)
        rest = (buf.view(-1, buf.shape[2]) @ self.ones).view(buf.shape[0], buf.shape[1])  # sum over classes
        top = top.squeeze(2)
        loss = torch.where(top > 0, top + torch.log(torch.exp(-top) + rest), torch.log1p(rest))
        return loss.sum(dim=1, dtype=torch.float64) * (k + 1)

