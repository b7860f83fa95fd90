"""Distributed greedy forward selection: Algorithm 2 (Appendix D) on ``torch.distributed``.

The N candidate neurons are split into contiguous slices, one per process (rank). Every rank holds the
data's target and its own rows of the (N, m[, C]) output matrix, in an ordinary scorer from
``scorers.py`` told where its rows sit (:class:`~greedyprune.selection.scorers.Placement`), composed into a
:class:`ShardedScorer` that the engine's one loop (:func:`~greedyprune.selection.engine.run_selection`)
drives on every rank, with the same candidate draws everywhere. At each step::

    every rank:  (loss_r, i_r) = its scorer's best local candidate and that candidate's exact score
    all ranks:   i_k = the (loss, global index) pair with the lowest loss; ties -> lowest global index
    phi_{i_k} reaches every rank, which adds it to its scorer's running sum s = k * u_k

A step costs one ``all_gather`` of (score, index) pairs that also carries each rank's best row when
rows are small (else a broadcast from the owner follows). For the logistic and cross-entropy losses a
scorer evaluates exactly only the candidates whose lower bound can still beat the best score found;
after a step in which some rank had to evaluate more than a first small batch, the next step also
shares the best score after that batch (one all-reduce of a number), so that a rank without the winner
does not evaluate more than its share. Every rank ends with the same
:class:`~greedyprune.selection.SelectionResult` (global indices, counts over all N neurons, losses, the
final averaged output).

Exactness. The selections are those of the single-process engine. Where the engine's arithmetic for a
row depends on the row's position in a batched product, each rank computes its rows as if they sat at
their global positions (the scorers' placement and ``position`` arguments), so the squared loss's
scores and all candidate-subset scores are bitwise those of the single-process run on one thread.
Exact duplicate rows (dead ReLU units, copied channels), also across ranks, go to the lowest eligible
global index, as in the engine. The one remaining difference: the logistic and cross-entropy scorers
evaluate the candidates that can still win in batches whose make-up depends on the other candidates,
and float32 SIMD kernels round the last elements of a batch differently - so two *distinct* neurons
whose losses agree to about 1e-12 relative may be ordered differently (the engine's own result has the
same sensitivity to its batching).

Example::

    from greedyprune.distributed import init_process_group, rank, split_range, world_size
    from greedyprune.selection.sharded import greedy_forward_selection

    init_process_group()                                     # under torchrun
    offset, n = split_range(N, world_size(), rank())
    result = greedy_forward_selection(outputs[offset:offset + n], target, 100, offset=offset, loss="logistic")
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.distributed as dist

from ..checks import check_int
from ..errors import InvalidOptionError, InvalidTypeError
from ..distributed.parallel import DistributedSelectionError, is_initialised
from .engine import prepare_outputs, run_selection
from .losses import get_loss, validate_inputs
from .result import SelectionResult
from .scorers import FIRST_BATCH, LogisticScorer, Placement, ScorerBase

__all__ = ["ShardedScorer", "greedy_forward_selection", "row_digests"]

# Rows up to this many bytes (as float64, times the ranks) travel with the per-step all_gather.
FUSED_BYTES = 1 << 20

_SETTING_NAMES = {
    "row_shape": "the outputs' row shape (m,) or (m, C)",
    "dtype": "the outputs' dtype",
    "device_type": "the outputs' device type",
    "target_shape": "target's shape",
}


def row_digests(phi: torch.Tensor) -> list[int]:
    """A 64-bit digest of each row's bits, the same on every process (unlike Python's ``hash``).

    A fixed pseudo-random linear form of the rows' bit patterns, modulo 2**64: equal rows always get
    equal digests; rows that merely share a digest are told apart by an exact comparison when it matters.
    """
    n = phi.shape[0]
    if n == 0:
        return []
    flat = phi.reshape(n, -1)
    bits = flat.view(torch.int32) if flat.element_size() == 4 else flat.view(torch.int64)
    weights = torch.randint(-(1 << 62), 1 << 62, (flat.shape[1],), generator=torch.Generator().manual_seed(20240601),
                            dtype=torch.int64).bitwise_or_(1).to(phi.device)
    out = torch.empty(n, dtype=torch.int64, device=phi.device)
    step = max(1, (1 << 16) // max(1, flat.shape[1]))
    for a in range(0, n, step):
        out[a:a + step] = (bits[a:a + step].to(torch.int64) * weights).sum(dim=1)
    return out.cpu().tolist()


class _Comm:
    """The process group, with every collective's failure turned into a DistributedSelectionError."""

    def __init__(self, process_group, k: int):
        self.group, self.k = process_group, k
        self.rank, self.world = dist.get_rank(process_group), dist.get_world_size(process_group)
        if self.rank < 0:
            raise RuntimeError("this process is not a member of the given process group")

    def device(self, data_device: torch.device) -> torch.device:
        """Where the collectives' tensors live: the data's GPU under NCCL, else the CPU."""
        backend = str(dist.get_backend(self.group))
        if "nccl" in backend:
            if data_device.type == "cuda":
                return data_device
            if backend == "nccl":
                return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def run(self, what: str, step: int, call):
        try:
            return call()
        except RuntimeError as err:
            raise DistributedSelectionError(
                f"rank {self.rank} of {self.world}: {what} failed at step {step + 1} of {self.k} - another rank "
                f"probably died, hung past the process group's timeout, or called with different arguments: {err}"
            ) from err

    def global_rank(self, r: int) -> int:
        return dist.get_global_rank(self.group, r) if self.group is not None else r


def _exchange_inputs(comm: _Comm, local_outputs, target, k, offset, loss, replacement, candidates, seed,
                     chunk_elements):
    """Every rank checks its own input; one exchange makes any rank's problem every rank's error.

    Returns ``(k, phi, target, infos, digests)``: k as an int, this rank's prepared rows and target, every rank's
    description, and every rank's row digests."""
    info: dict = {"error": None}
    digests: list[int] = []
    own_error = phi = None
    try:
        check_int("offset", offset, 0)
        empty = isinstance(local_outputs, torch.Tensor) and local_outputs.dim() in (2, 3) \
            and local_outputs.shape[0] == 0
        probe = local_outputs.new_zeros((1,) + tuple(local_outputs.shape[1:])) if empty else local_outputs
        k = validate_inputs(probe, target, k, loss, replacement, candidates, seed, check_rows=False)
        check_int("chunk_elements", chunk_elements, 1, allow_none=True)
        phi, target = prepare_outputs(local_outputs, target, loss)
        target_bytes = target.reshape(-1).cpu().contiguous().numpy()
        info.update(
            n=int(phi.shape[0]), offset=offset, k=k, loss=loss, replacement=replacement, candidates=candidates,
            seed=seed, chunk_elements=chunk_elements, dtype=str(phi.dtype), device_type=phi.device.type,
            row_shape=tuple(phi.shape[1:]), target_shape=tuple(target.shape),
            target_digest=hashlib.blake2b(target_bytes.data, digest_size=16).hexdigest(),
        )
        digests = row_digests(phi)
    except Exception as err:  # noqa: BLE001 - shared with the other ranks below, then raised
        own_error = err
        kind = type(err).__name__ if isinstance(err, (TypeError, ValueError)) else "RuntimeError"
        info["error"] = (kind, f"{type(err).__name__}: {err}")
    try:
        gathered: list = [None] * comm.world
        dist.all_gather_object(gathered, (info, digests), group=comm.group)
    except RuntimeError as err:
        raise DistributedSelectionError(f"rank {comm.rank}: exchanging the inputs' description failed: {err}") \
            from err
    failed = [(r, i["error"]) for r, (i, _) in enumerate(gathered) if i["error"] is not None]
    if failed:
        if own_error is not None:
            raise own_error
        r, (kind, text) = failed[0]
        refusals = {"TypeError": InvalidTypeError, "InvalidTypeError": InvalidTypeError,
                    "ValueError": InvalidOptionError, "InvalidOptionError": InvalidOptionError}
        error_type = refusals.get(kind, RuntimeError)
        raise error_type(f"rank {r}'s input is invalid: {text}")
    infos = [i for i, _ in gathered]
    _agree(infos, ("k", "loss", "replacement", "candidates", "seed", "chunk_elements", "dtype", "device_type",
                   "row_shape", "target_shape", "target_digest"))
    return k, phi, target, infos, [d for _, d in gathered]


def _agree(infos: list[dict], names: tuple[str, ...]) -> None:
    """Raise ValueError naming the first setting that differs between ranks."""
    for name in names:
        values = [info[name] for info in infos]
        if any(v != values[0] for v in values[1:]):
            if name == "target_digest":
                differ = [r for r, v in enumerate(values) if v != values[0]]
                raise InvalidOptionError(
                    f"target must be the same on every rank; it differs between rank 0 and rank(s) "
                    f"{differ}")
            listing = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise InvalidOptionError(f"{_SETTING_NAMES.get(name, name)} must be the same on every rank, got {listing}")


def _check_tiling(infos: list[dict]) -> int:
    """The slices must tile [0, N) exactly; returns N."""
    spans = sorted((info["offset"], info["n"], r) for r, info in enumerate(infos))
    listing = ", ".join(f"rank {r}: rows [{o}, {o + n})" for o, n, r in sorted(spans, key=lambda t: t[2]))
    position = 0
    for o, n, r in spans:
        if o != position:
            what = "overlap" if o < position else "leave a gap"
            raise InvalidOptionError(
                f"the ranks' slices of candidate rows must be contiguous and non-overlapping, covering 0 .. N-1; "
                f"they {what} at row {min(o, position)} ({listing}); use split_range(N, world_size(), rank())"
            )
        position += n
    if position == 0:
        raise InvalidOptionError(f"no rank holds any candidate rows ({listing})")
    return position


class ShardedScorer(ScorerBase):
    """Algorithm 2 as a scorer: one rank's ``local`` scorer of its rows ``offset .. offset + n - 1`` of a
    ``total``-row problem, composed with the per-step exchange so that the engine's loop
    (:func:`~greedyprune.selection.engine.run_selection`) runs unchanged on every rank.

    ``pick`` returns the global choice - the lowest (score, global index) over the ranks' local bests - and
    brings its output row to every rank (``row`` then returns it); ``resolve_duplicate`` agrees on the lowest
    eligible exact copy across the ranks (one all-reduce); ``add`` and ``loss`` are the local scorer's.
    """

    def __init__(self, comm: _Comm, local, phi: torch.Tensor, offset: int, total: int,
                 slices: list[tuple[int, int, int]]):
        self.comm, self.local, self.phi = comm, local, phi
        self.n, self.offset, self.total, self.slices = phi.shape[0], offset, total, slices
        self.device = phi.device
        self.bounded = isinstance(local, LogisticScorer)
        self.first_batch = -(-FIRST_BATCH // comm.world)  # the engine's first batch, shared out between ranks
        # each step exchanges every rank's (score, global index, exact evaluations) - and, when rows are
        # small, its best row too (exactly, as float64), which saves the broadcast
        self.comm_device = comm.device(phi.device)
        self.row_shape = tuple(phi.shape[1:])
        row_numel = math.prod(self.row_shape)
        self.fused = comm.world * (3 + row_numel) * 8 <= FUSED_BYTES
        self.pair = torch.zeros(3 + (row_numel if self.fused else 0), dtype=torch.float64, device=self.comm_device)
        self.gathered = [torch.empty_like(self.pair) for _ in range(comm.world)]
        self.row_buf = torch.empty(self.row_shape, dtype=phi.dtype, device=self.comm_device)
        self.one = torch.empty(1, dtype=torch.int64, device=self.comm_device)
        self.bound_buf = torch.empty(1, dtype=torch.float64, device=self.comm_device)
        self.share_bound = False
        self.evaluated_before = local.evaluated
        self.chosen_row: torch.Tensor | None = None

    @property
    def s(self) -> torch.Tensor:
        return self.local.s

    def owner_of(self, j: int) -> int:
        for lo, hi, r in self.slices:
            if lo <= j < hi:
                return r
        raise RuntimeError(f"internal error: no rank owns row {j}")

    def pick(self, k: int, available: torch.Tensor | None, rows: torch.Tensor | None) -> int:
        score, i = self.local_best(k, available, rows)
        best, self.chosen_row = self.global_best(k, score, i)
        return best

    def row(self, i: int) -> torch.Tensor:
        """The output row of this step's choice (or of an exact copy of it), on every rank."""
        return self.chosen_row

    def add(self, row: torch.Tensor, key: int) -> None:
        self.local.add(row, key)

    def loss(self, k: int) -> float:
        return self.local.loss(k)

    def local_best(self, step: int, available: torch.Tensor | None, rows_cpu: torch.Tensor | None) -> tuple[float, int]:
        """``(score, local index)`` of this rank's best candidate; ``(inf, -1)`` if it has none."""
        if rows_cpu is None:
            share = None
            if self.bounded and self.share_bound:
                def share(score: float) -> float:
                    self.bound_buf[0] = score
                    self.comm.run("sharing the best score so far", step, lambda: dist.all_reduce(
                        self.bound_buf, op=dist.ReduceOp.MIN, group=self.comm.group))
                    return float(self.bound_buf[0])
            if self.n == 0:
                if share is not None:
                    share(math.inf)
                return math.inf, -1
            local = None if available is None else available[self.offset:self.offset + self.n].to(self.phi.device)
            return self.local.best(step, local, share=share, first_batch=self.first_batch)
        lo = int(torch.searchsorted(rows_cpu, self.offset))
        hi = int(torch.searchsorted(rows_cpu, self.offset + self.n))
        if hi <= lo:
            return math.inf, -1
        local_rows = (rows_cpu[lo:hi] - self.offset).to(self.phi.device)
        values = self.local.scores(local_rows, step, position=(lo, rows_cpu.numel()))
        j = int(torch.argmin(values))
        return float(values[j]), int(local_rows[j])

    def global_best(self, step: int, score: float, i: int) -> tuple[int, torch.Tensor]:
        """The lowest (score, global index) over the ranks, and its output row on every rank."""
        evaluated = self.local.evaluated
        self.pair[0], self.pair[1] = score, (self.offset + i if i >= 0 else self.total)
        self.pair[2] = evaluated - self.evaluated_before
        self.evaluated_before = evaluated
        if self.fused and i >= 0:
            self.pair[3:].copy_(self.phi[i].reshape(-1))
        self.comm.run("gathering the ranks' best candidates", step,
                      lambda: dist.all_gather(self.gathered, self.pair, group=self.comm.group))
        table = torch.stack([g[:3] for g in self.gathered]).cpu()
        # share the bound next step only if a rank needed more than its first batch this step
        self.share_bound = self.bounded and self.comm.world > 1 and float(table[:, 2].max()) > 2 * self.first_batch
        best_score = float(table[:, 0].min())
        best = int(table[table[:, 0] == best_score, 1].min())
        if best >= self.total:
            raise DistributedSelectionError(f"no rank found a candidate at step {step + 1} (scores {table[:, 0]})")
        src = self.owner_of(best)
        if self.fused:
            return best, self.gathered[src][3:].view(self.row_shape).to(device=self.phi.device, dtype=self.phi.dtype)
        if src == self.comm.rank:
            self.row_buf.copy_(self.phi[best - self.offset])
        self.comm.run("broadcasting the chosen neuron's output", step, lambda: dist.broadcast(
            self.row_buf, src=self.comm.global_rank(src), group=self.comm.group))
        return best, self.row_buf.to(self.phi.device)

    def resolve_duplicate(self, k: int, best: int, copies: list[int]) -> int:
        """The lowest eligible copy whose row its owner finds exactly equal to the chosen one (the copies
        were found by digest); the same answer on every rank."""
        lower = [j for j in copies if j < best]
        if not lower:
            return best
        mine = [j for j in lower if self.offset <= j < self.offset + self.n
                and torch.equal(self.phi[j - self.offset], self.chosen_row)]
        self.one[0] = min(mine, default=best)
        self.comm.run("resolving a tie between duplicate neurons", k, lambda: dist.all_reduce(
            self.one, op=dist.ReduceOp.MIN, group=self.comm.group))
        return int(self.one[0])


def _sharded_scorer(comm: _Comm, phi, target, infos, digests, *, loss, candidates, chunk_elements):
    """This rank's :class:`ShardedScorer` around a scorer of its rows told where they sit, and the exact
    duplicates anywhere (rows with the same 64-bit digest; equality is confirmed when it matters)."""
    n, offset, total = phi.shape[0], infos[comm.rank]["offset"], _check_tiling(infos)
    objective = get_loss(loss)
    chunk = objective.chunk_elements(phi.device) if chunk_elements is None else chunk_elements
    holder = phi if n else phi.new_zeros((1,) + tuple(phi.shape[1:]))  # a rank without rows keeps s
    placement = Placement(offset, total) if n else Placement(0, 1)
    local = objective.make_scorer(holder, target, chunk, candidates=candidates, total=total, placement=placement)
    owners: dict[int, list[int]] = {}
    for info, rank_digests in zip(infos, digests):
        for j, d in enumerate(rank_digests):
            owners.setdefault(d, []).append(info["offset"] + j)
    duplicates = {j: sorted(m) for m in owners.values() if len(m) > 1 for j in m}
    slices = sorted((i["offset"], i["offset"] + i["n"], r) for r, i in enumerate(infos) if i["n"])
    return ShardedScorer(comm, local, phi, offset, total, slices), duplicates


def greedy_forward_selection(
    local_outputs: torch.Tensor,
    target: torch.Tensor,
    k: int,
    *,
    offset: int,
    loss: str = "squared",
    replacement: bool = True,
    candidates: int | None = None,
    seed: int = 0,
    process_group=None,
    chunk_elements: int | None = None,
    progress: bool = False,
) -> SelectionResult:
    """Greedy forward selection over candidates split across ranks (Algorithm 2).

    Call it on every rank of ``process_group`` with that rank's contiguous slice of the candidates'
    outputs. The result - the same on every rank - is the selection the single-process
    :func:`greedyprune.greedy_forward_selection` makes on the whole (N, m[, C]) matrix.

    Args:
        local_outputs: (n_r, m) or (n_r, m, C): rows ``offset .. offset + n_r - 1`` of the global output
            matrix. May be empty (n_r = 0). On CPU with gloo, on this rank's GPU with NCCL.
        target: as for the single-process function; the same on every rank, on ``local_outputs``' device.
        k: selection steps; without replacement ``k <= N``.
        offset: global index of this rank's first row. The slices of all ranks must tile ``[0, N)``; see
            :func:`greedyprune.distributed.split_range`.
        loss, replacement, candidates, seed, chunk_elements: as for the single-process function; the
            candidate subsets are drawn from all N with ``seed``, identically on every rank.
        process_group: the ranks that share the work; default the world group.
        progress: show a progress bar (on the group's rank 0).

    Returns:
        A :class:`SelectionResult` with global ``indices`` (k,), ``counts`` (N,), ``losses`` (k,) and the
        final averaged ``output``; ``world_size`` holds the number of ranks.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised.
        ValueError, TypeError: on every rank, if any rank's input is invalid (the message names the rank),
            if k, loss or the other settings differ between ranks, if the target differs, or if the
            slices do not tile ``[0, N)``.
        DistributedSelectionError: a collective failed - typically another rank died or hung; raised within
            the process group's timeout.
    """
    if not is_initialised():
        raise RuntimeError(
            "torch.distributed is not initialised: call greedyprune.distributed.init_process_group() first "
            "(or run under greedyprune.distributed.launch() or torchrun), or use "
            "greedyprune.greedy_forward_selection for a single process"
        )
    comm = _Comm(process_group, k)
    k, phi, target, infos, digests = _exchange_inputs(comm, local_outputs, target, k, offset, loss, replacement,
                                                   candidates, seed, chunk_elements)
    scorer, duplicates = _sharded_scorer(comm, phi, target, infos, digests, loss=loss, candidates=candidates,
                                         chunk_elements=chunk_elements)
    if not replacement and k > scorer.total:
        raise InvalidOptionError(f"k={k} exceeds the number of neurons N={scorer.total}; without replacement k must "
                                 f"be <= N")
    progress_text = f"distributed greedy selection ({loss}, {comm.world} ranks)" if progress and comm.rank == 0 \
        else None
    indices, counts, losses = run_selection(scorer, scorer.total, k, replacement=replacement, candidates=candidates,
                                            seed=seed, duplicates=duplicates, progress=progress_text)
    return SelectionResult(indices=indices, counts=counts, losses=losses, output=scorer.s / k, loss=loss,
                           replacement=replacement, candidates=candidates, seed=seed,
                           world_size=comm.world)
