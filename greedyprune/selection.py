"""Greedy forward selection: Algorithm 1 of "How much pre-training is enough to discover a
good subnetwork?" (after "Good Subnetworks Provably Exist: Pruning via Greedy Forward Selection").

Given the output vectors ``phi_i`` of N neurons over m examples, build a multiset S of k neurons one
at a time, each step adding the neuron whose inclusion gives the lowest loss of the averaged output::

    S_0 = {}, u_0 = 0
    i_k     = argmin_i  l((k * u_k + phi_i) / (k + 1))
    u_{k+1} = (k * u_k + phi_{i_k}) / (k + 1)

The engine never loops over candidates in Python and never evaluates a candidate network. Writing
``s = k * u_k`` for the running sum of the chosen outputs:

* squared loss ``l(u) = ||u - y||^2 / m``: ``argmin_i  ||phi_i||^2 - 2 (k+1) <phi_i, y> + 2 <phi_i, s>``.
  ``<phi_i, s>`` for all i is kept up to date with one matrix-vector product per *newly* chosen neuron
  (a neuron chosen again reuses its cached column), so a step costs one (N x m) product or O(N).
* logistic loss (binary cross-entropy on logits) and softmax cross-entropy: the linear part
  ``-<y, z>`` is precomputed per neuron, and the non-linear part (softplus / log-sum-exp of
  ``(s + phi_i) / (k + 1)``) is one pass over the (N, m[, C]) outputs, in row chunks sized to stay in
  cache (CPU) or within a memory budget (GPU).

Ties are broken by the lowest neuron index, as a brute-force loop with ``argmin`` would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSSES = ("squared", "logistic", "cross_entropy")

# Rows per chunk are chosen so that one chunk holds about this many elements. On CPU a chunk that
# fits in L2 cache keeps the add -> softplus -> sum sequence out of main memory.
_CPU_CHUNK_ELEMENTS = 1 << 18
_GPU_CHUNK_ELEMENTS = 1 << 26
_MAX_MAGNITUDE = 1e15


@dataclass
class SelectionResult:
    """What :func:`greedy_forward_selection` returns.

    Attributes:
        indices: (k,) int64 - the neuron chosen at each step, in order; repeats allowed.
        counts: (N,) int64 - how many times each neuron was chosen (sums to k).
        losses: (k,) float64 - the loss of the averaged output after each step, ``l(u_1) .. l(u_k)``.
        output: the final averaged output ``u_k``, shape (m,) or (m, C), on the outputs' device.
        loss: the loss name used.
        replacement: whether a neuron could be chosen more than once.
    """

    indices: torch.Tensor
    counts: torch.Tensor
    losses: torch.Tensor
    output: torch.Tensor
    loss: str
    replacement: bool
    candidates: int | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def k(self) -> int:
        """Number of selection steps (the size of the multiset S_k)."""
        return int(self.indices.numel())

    @property
    def num_neurons(self) -> int:
        """N, the number of candidate neurons."""
        return int(self.counts.numel())

    @property
    def selected(self) -> torch.Tensor:
        """The distinct chosen neurons, ascending."""
        return torch.nonzero(self.counts, as_tuple=False).flatten()

    @property
    def weights(self) -> torch.Tensor:
        """(N,) float64 - each neuron's weight in the average, ``count_i / k``."""
        return self.counts.to(torch.float64) / max(self.k, 1)

    def gap(self, reference_loss: float) -> torch.Tensor:
        """Per-step gap ``l(u_j) - reference_loss`` (e.g. the dense network's loss; Lemma 1)."""
        return self.losses - float(reference_loss)

    def gap_rate(self, reference_loss: float, k_min: int = 1) -> dict:
        """Lemma 1 in practice: fit ``gap(K) ~ C * K^rate`` over the steps K >= k_min with a positive gap.

        Lemma 1 bounds the gap to the dense network's loss by O(1/K) (rate -1 or faster). A gap can turn
        negative - greedy selection with replacement can beat the dense net - and such steps are left out
        of the fit. Returns ``{"rate", "stderr", "prefactor", "steps_used"}`` (NaN rate if fewer than 3).
        """
        from .fitting import fit_power_law

        gaps = self.gap(reference_loss).numpy()
        ks = torch.arange(1, self.k + 1).numpy()
        keep = (ks >= k_min) & (gaps > 0)
        if keep.sum() < 3:
            return {"rate": math.nan, "stderr": math.nan, "prefactor": math.nan, "steps_used": int(keep.sum())}
        rate, stderr, prefactor = fit_power_law(ks[keep], gaps[keep])
        return {"rate": rate, "stderr": stderr, "prefactor": prefactor, "steps_used": int(keep.sum())}

    def __repr__(self) -> str:
        return (
            f"SelectionResult(k={self.k}, distinct={int(self.selected.numel())}/{self.num_neurons}, "
            f"loss={self.loss!r}, final_loss={float(self.losses[-1]):.6g})"
        )


def loss_value(u: torch.Tensor, target: torch.Tensor, loss: str) -> float:
    """The loss ``l(u)`` of one output (m,) or (m, C) against the target, in float64.

    squared: ``||u - y||^2 / m`` (summed over outputs when C > 1); logistic: mean binary
    cross-entropy with ``u`` as logits; cross_entropy: mean softmax cross-entropy with ``u`` as logits.
    """
    u = u.double()
    if loss == "squared":
        return float(((u - target.double()) ** 2).sum() / u.shape[0])
    if loss == "logistic":
        return float(F.binary_cross_entropy_with_logits(u, target.double()))
    if loss == "cross_entropy":
        return float(F.cross_entropy(u, target))
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _validate(outputs, target, k, loss, replacement, candidates, seed) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(f"outputs must be a torch.Tensor of shape (N, m) or (N, m, C), got {type(outputs).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if not outputs.is_floating_point():
        raise TypeError(f"outputs must be a floating-point tensor, got dtype {outputs.dtype}; convert with outputs.float()")
    if outputs.dim() not in (2, 3):
        raise ValueError(
            f"outputs must have shape (N, m) or (N, m, C) - row i is neuron i's output over the m examples - "
            f"got shape {tuple(outputs.shape)}"
        )
    n, m = outputs.shape[0], outputs.shape[1]
    if n == 0 or m == 0 or (outputs.dim() == 3 and outputs.shape[2] == 0):
        raise ValueError(f"outputs must be non-empty, got shape {tuple(outputs.shape)}")
    if target.device != outputs.device:
        raise ValueError(
            f"target is on {target.device} but outputs are on {outputs.device}; move it with target.to(outputs.device)"
        )
    _check_int("k", k, 1)
    if not isinstance(replacement, bool):
        raise TypeError(f"replacement must be True or False, got {replacement!r}")
    if not replacement and k > n:
        raise ValueError(f"k={k} exceeds the number of neurons N={n}; without replacement k must be <= N")
    if candidates is not None:
        _check_int("candidates", candidates, 1)
    _check_int("seed", seed, 0)

    if loss == "cross_entropy":
        if outputs.dim() != 3:
            raise ValueError(
                f"loss='cross_entropy' needs outputs of shape (N, m, C) holding logits, got shape {tuple(outputs.shape)}"
            )
        if target.shape != (m,):
            raise ValueError(f"target must have shape (m,) = ({m},) of class indices, got {tuple(target.shape)}")
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"cross_entropy target must hold integer class indices, got dtype {target.dtype}")
        c = outputs.shape[2]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
            raise ValueError(f"cross_entropy target must lie in [0, {c - 1}] (C={c} classes), got values in "
                             f"[{int(target.min())}, {int(target.max())}]")
    elif loss == "logistic":
        if outputs.dim() != 2:
            raise ValueError(f"loss='logistic' needs outputs of shape (N, m) holding logits, got shape {tuple(outputs.shape)}")
        if target.shape != (m,):
            raise ValueError(f"target must have shape (m,) = ({m},), got {tuple(target.shape)}")
        if target.is_complex():
            raise TypeError(f"target must be real, got dtype {target.dtype}")
        bad = (target != 0) & (target != 1)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0])
            raise ValueError(f"loss='logistic' needs labels in {{0, 1}}; target[{j}] = {target[j].item()!r}")
    else:  # squared
        expected = tuple(outputs.shape[1:])
        if tuple(target.shape) != expected:
            raise ValueError(f"target must have shape {expected} (the outputs' shape without N), got {tuple(target.shape)}")
        if not target.is_floating_point():
            raise TypeError(f"loss='squared' needs a floating-point target, got dtype {target.dtype}; use target.float()")
        if not bool(torch.isfinite(target).all()):
            raise ValueError("target contains NaN or inf")
    low, high = torch.aminmax(outputs.detach())  # one pass; NaN propagates, inf shows as +-inf
    low, high = float(low), float(high)
    finite = math.isfinite(low) and math.isfinite(high)
    if finite and max(-low, high) > _MAX_MAGNITUDE:
        raise ValueError(f"outputs reach magnitude {max(-low, high):.3g}; values beyond "
                         f"{_MAX_MAGNITUDE:.0e} are not supported - rescale them")
    if not finite:
        bad_rows = torch.nonzero(~torch.isfinite(outputs.reshape(n, -1)).all(dim=1)).flatten()
        raise ValueError(
            f"outputs contain NaN or inf (in {bad_rows.numel()} of {n} neurons, first: neuron {int(bad_rows[0])}); "
            f"check the network's weights and inputs"
        )


def _draw_candidates(generator: torch.Generator, pool: torch.Tensor, c: int | None) -> torch.Tensor:
    """The candidates evaluated at one step: all of ``pool`` or a uniform random subset of c of them.

    ``pool`` is ascending; the subset is returned ascending so that argmin breaks ties by lowest index.
    The generator is always a CPU generator so the same seed gives the same subsets on any device.
    """
    if c is None or c >= pool.numel():
        return pool
    pick = torch.randperm(pool.numel(), generator=generator)[:c]
    return pool[pick.sort().values]


class _Scorer:
    """Loss-specific part of the engine: ``scores(rows, k)`` is monotone in the candidate loss."""

    def __init__(self, phi: torch.Tensor, target: torch.Tensor, chunk_elements: int):
        self.phi = phi
        self.n = phi.shape[0]
        self.per_row = phi[0].numel()
        self.chunk_rows = max(1, chunk_elements // self.per_row)
        self.s = torch.zeros(phi.shape[1:], dtype=phi.dtype, device=phi.device)  # running sum of chosen outputs

    def add(self, i: int) -> None:
        self.s += self.phi[i]

    def best(self, k: int, available: torch.Tensor | None) -> int:
        """The lowest-index minimiser over all neurons (``available`` masks out taken ones)."""
        score = self.scores(None, k)
        if available is not None:
            score = score.masked_fill(~available, math.inf)
        return int(torch.argmin(score))


class _SquaredScorer(_Scorer):
    def __init__(self, phi, target, chunk_elements):
        super().__init__(phi, target, chunk_elements)
        flat = phi.reshape(self.n, -1)
        self.flat = flat
        y = target.reshape(-1).to(phi.dtype)
        self.sq = (flat * flat).sum(dim=1, dtype=torch.float64) if phi.dtype != torch.float64 else (flat * flat).sum(dim=1)
        self.py = (flat @ y).double()
        self.g = torch.zeros(self.n, dtype=torch.float64, device=phi.device)  # <phi_i, s> for every i
        self.cache: dict[int, torch.Tensor] = {}

    def scores(self, rows: torch.Tensor | None, k: int) -> torch.Tensor:
        base = self.sq - (2.0 * (k + 1)) * self.py + 2.0 * self.g
        return base if rows is None else base[rows]

    def add(self, i: int) -> None:
        super().add(i)
        col = self.cache.get(i)
        if col is None:
            col = (self.flat @ self.flat[i]).double()
            self.cache[i] = col
        self.g += col


class _SubsetSquaredScorer(_SquaredScorer):
    """Squared loss when only a few candidates are evaluated per step: <phi_i, s> for just those rows."""

    def scores(self, rows, k):
        if rows is None:
            rows = torch.arange(self.n, device=self.phi.device)
        g = (self.flat[rows] @ self.s.reshape(-1)).double()
        return self.sq[rows] - (2.0 * (k + 1)) * self.py[rows] + 2.0 * g

    def add(self, i):
        _Scorer.add(self, i)


class _LogisticScorer(_Scorer):
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

    def __init__(self, phi, target, chunk_elements):
        super().__init__(phi, target, chunk_elements)
        self.flat = phi.reshape(self.n, -1)
        self._prepare_target(target)
        self.norm = (self.flat * self.flat).sum(dim=1, dtype=torch.float64).sqrt()
        self.eps = torch.finfo(phi.dtype).eps
        # softplus(x) is returned as x past this point: exp(-threshold) must be below the dtype's precision
        self.threshold = 20.0 if phi.dtype == torch.float32 else 40.0
        self.sqrt_m = math.sqrt(self.flat.shape[1])
        self.anchor = None  # (b, F(b), F'(b), <phi_i, F'(b)> for all i, rounding margin)
        self.refresh_after = max(32, self.n // 16)  # exact evaluations in one step that trigger a new anchor
        self.evaluated = 0  # exact candidate evaluations, for diagnostics

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

    def scores(self, rows, k):
        count = self.n if rows is None else rows.numel()
        self.evaluated += count
        out = torch.empty(count, dtype=torch.float64, device=self.phi.device)
        step = self.chunk_rows
        buf = torch.empty((min(step, count),) + tuple(self.phi.shape[1:]), dtype=self.phi.dtype,
                          device=self.phi.device)
        for a in range(0, count, step):
            b = min(a + step, count)
            block = self.phi[a:b] if rows is None else self.phi[rows[a:b]]
            out[a:b] = self._nonlinear(block, k, buf[: b - a])
        return out

    def set_anchor(self, k: int) -> None:
        """Linearise at the current ``a = s / (k+1)``: one matrix-vector product over all candidates."""
        b = self.s / (k + 1)
        fb, grad = self._f_and_grad(b)
        g = (self.flat @ grad.reshape(-1)).double()
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

    def best(self, k, available):
        lower, margin = self.lower_bounds(k)
        lower = lower - margin
        if available is not None:
            lower = lower.masked_fill(~available, math.inf)
        order = torch.argsort(lower, stable=True)
        best_score, best_index = math.inf, -1
        start, batch, before = 0, 32, self.evaluated
        while start < self.n and float(lower[order[start]]) <= best_score:
            rows = order[start:start + batch]
            rows = rows[(lower[rows] <= best_score) & (lower[rows] != math.inf)]  # rows that can still win
            if rows.numel():
                rows = rows.sort().values
                score = self.scores(rows, k)
                top = float(score.min())
                index = int(rows[score == top].min())
                if top < best_score or (top == best_score and index < best_index):
                    best_score, best_index = top, index
            start += batch
            batch *= 2
        if best_index < 0:
            raise RuntimeError(f"greedy selection found no candidate at step {k}; please report this with the inputs")
        if self.evaluated - before > self.refresh_after:
            self.anchor = None  # bounds have grown loose: re-linearise at the next step
        return best_index


class _CrossEntropyScorer(_LogisticScorer):
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


def _duplicate_groups(phi: torch.Tensor) -> dict[int, list[int]]:
    """Rows that are exactly equal, as {row: all rows equal to it, ascending}; empty when none are.

    Equal rows have equal losses, and a brute-force loop picks the lowest of them; the engine's
    vectorised arithmetic may round them differently, so ties among exact duplicates are resolved here.
    Rows are bucketed by a hash of their bytes and then compared exactly.
    """
    rows = phi.reshape(phi.shape[0], -1).cpu().numpy()
    buckets: dict[int, list[int]] = {}
    for i in range(rows.shape[0]):
        buckets.setdefault(hash(rows[i].tobytes()), []).append(i)
    groups: dict[int, list[int]] = {}
    for members in buckets.values():
        while len(members) > 1:
            first = members[0]
            same = [j for j in members if (rows[j] == rows[first]).all()]
            if len(same) > 1:
                for j in same:
                    groups[j] = same
            members = [j for j in members if j not in same]
    return groups


def greedy_forward_selection(
    outputs: torch.Tensor,
    target: torch.Tensor,
    k: int,
    loss: str = "squared",
    replacement: bool = True,
    candidates: int | None = None,
    seed: int = 0,
    *,
    chunk_elements: int | None = None,
    progress: bool = False,
) -> SelectionResult:
    """Select k neurons greedily (Algorithm 1) from their output vectors.

    Args:
        outputs: (N, m) - row i is neuron i's output over the m examples - or (N, m, C) for C outputs.
            For "logistic" and "cross_entropy" the outputs are logits. float32 or float64 (float16 and
            bfloat16 are computed in float32), magnitudes up to 1e15, CPU or CUDA; the work runs on this
            tensor's device. Inputs that require grad are detached.
        target: "squared": floats shaped like ``outputs[0]``; "logistic": (m,) labels in {0, 1};
            "cross_entropy": (m,) integer class indices in [0, C). Same device as ``outputs``.
        k: number of selection steps (>= 1). With replacement the result has at most k distinct neurons.
        loss: "squared" (the theory), "logistic" or "cross_entropy" (the experiments).
        replacement: True (the paper's multiset: a neuron may be chosen again, which re-weights it);
            False never picks a neuron twice (then k <= N).
        candidates: None evaluates every neuron at every step; an int c evaluates a random subset of c
            per step (drawn with ``seed``), as the public deep-network implementation does.
        seed: seeds the candidate subsets.
        chunk_elements: advanced - elements per row chunk for the logistic / cross-entropy passes.
        progress: show a progress bar over the k steps.

    Returns:
        A :class:`SelectionResult` with ``indices``, ``counts``, ``losses`` and ``output``.

    The selected indices are exactly those of a brute-force loop that forms each candidate's averaged
    output and evaluates its loss, with ties broken by the lowest index (up to floating-point rounding
    of near-ties; the statistics are accumulated in float64).
    """
    _validate(outputs, target, k, loss, replacement, candidates, seed)
    phi = outputs.detach()
    if phi.dtype in (torch.float16, torch.bfloat16):
        phi = phi.float()  # half precision cannot hold the running sums and scores: computed in float32
    phi = phi.contiguous()
    target = target.detach()
    target = target.long() if loss == "cross_entropy" else target.to(phi.dtype)
    n = phi.shape[0]
    device = phi.device
    if chunk_elements is None:
        # cross-entropy's passes are several short ops per chunk: bigger chunks amortise their overhead
        cpu = _CPU_CHUNK_ELEMENTS * (4 if loss == "cross_entropy" else 1)
        chunk_elements = _GPU_CHUNK_ELEMENTS if device.type == "cuda" else cpu
    else:
        _check_int("chunk_elements", chunk_elements, 1)

    if loss == "squared":
        subset = candidates is not None and candidates < n // 2
        scorer = (_SubsetSquaredScorer if subset else _SquaredScorer)(phi, target, chunk_elements)
    elif loss == "logistic":
        scorer = _LogisticScorer(phi, target, chunk_elements)
    else:
        scorer = _CrossEntropyScorer(phi, target, chunk_elements)

    duplicates = _duplicate_groups(phi)
    generator = torch.Generator().manual_seed(seed)
    all_rows = torch.arange(n)
    available = torch.ones(n, dtype=torch.bool)
    indices = torch.empty(k, dtype=torch.int64)
    losses = torch.empty(k, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.int64)

    steps = range(k)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"greedy selection ({loss})", unit="step", leave=False)
    for step in steps:
        if candidates is None:
            rows_cpu = None
            best = scorer.best(step, None if replacement else available.to(device))
        else:
            pool = all_rows if replacement else all_rows[available]
            rows_cpu = _draw_candidates(generator, pool, candidates)
            score = scorer.scores(rows_cpu.to(device), step)
            best = int(rows_cpu[int(torch.argmin(score))])
        if best in duplicates:  # an exact copy with a lower index, if eligible, ties and wins
            eligible = set(rows_cpu.tolist()) if rows_cpu is not None else None
            best = min(j for j in duplicates[best]
                       if (replacement or available[j]) and (eligible is None or j in eligible))
        indices[step] = best
        counts[best] += 1
        available[best] = False
        scorer.add(best)
        losses[step] = loss_value(scorer.s / (step + 1), target, loss)

    output = scorer.s / k
    return SelectionResult(
        indices=indices,
        counts=counts,
        losses=losses,
        output=output,
        loss=loss,
        replacement=replacement,
        candidates=candidates,
        seed=seed,
    )
