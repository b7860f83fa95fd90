"""Distributed greedy forward selection: Algorithm 2 (Appendix D) on ``torch.distributed``.

The N candidate neurons are split into contiguous slices, one per process (rank). Every rank holds the
data's target and its own rows of the (N, m[, C]) output matrix. At each step::

    every rank:  (loss_r, i_r) = its best local candidate and that candidate's exact score
    all ranks:   i_k = the (loss, global index) pair with the lowest loss; ties -> lowest global index
    phi_{i_k} reaches every rank, which adds it to the shared running sum s = k * u_k

A step costs one ``all_gather`` of (score, index) pairs that also carries each rank's best row when
rows are small (else a broadcast from the owner follows). For the logistic and cross-entropy losses
the engine's search evaluates exactly only the candidates whose lower bound can still beat the best
score found; after a step in which some rank had to evaluate more than a first small batch, the next
step also shares the best score after that batch (one all-reduce of a number), so that a rank without
the winner does not evaluate more than its share. Every rank ends with the same
:class:`~greedyprune.selection.SelectionResult` (global indices, counts over all N neurons, losses,
the final averaged output).

Exactness
---------
The selections are those of the single-process engine
(:func:`greedyprune.selection.greedy_forward_selection`), which this module reuses: its scorers compute
the per-candidate scores, and the candidate subsets (``candidates=c``) are drawn with the same
generator. Where the engine's arithmetic for a row depends on the row's position in a batched product
(MKL's matrix-vector kernels treat rows in blocks, so a row's rounding depends on where it sits), each
rank computes its rows *as if* they sat at their global positions (see :func:`_matvec_as_in_full` and
the chunk mirroring for candidate subsets), so the squared loss's scores and all candidate-subset
scores are bitwise those of the single-process run on one thread. Exact duplicate rows (dead ReLU
units, copied channels), also across ranks, go to the lowest eligible global index, as in the engine.
The one remaining difference: the logistic and cross-entropy scorers evaluate the candidates that can
still win in batches whose make-up depends on the other candidates, and float32 SIMD kernels round the
last elements of a batch differently - so two *distinct* neurons whose losses agree to about 1e-12
relative may be ordered differently (the engine's own result has the same sensitivity to its batching).

Process groups
--------------
:func:`init_process_group` picks gloo (CPU) or NCCL (CUDA), reads torchrun's ``RANK`` / ``WORLD_SIZE``
environment, and sets a bounded timeout so that when a rank dies or hangs the others raise instead of
waiting forever. :func:`launch` starts P local worker processes itself (no torchrun needed) and returns
rank 0's result. :func:`split_range` gives each rank its balanced contiguous slice.

Example
-------
>>> def work(outputs, target):                                     # doctest: +SKIP
...     offset, length = split_range(outputs.shape[0], world_size(), rank())
...     return greedy_forward_selection(outputs[offset:offset + length], target, 100,
...                                     offset=offset, loss="logistic")
>>> result = launch(work, 2, outputs, target)                      # doctest: +SKIP
"""
from __future__ import annotations

import datetime
import hashlib
import math
import os
import pickle
import time
import traceback
from multiprocessing import connection as mp_connection

import torch
import torch.distributed as dist

from .selection import (
    _CPU_CHUNK_ELEMENTS,
    _GPU_CHUNK_ELEMENTS,
    SelectionResult,
    _check_int,
    _CrossEntropyScorer,
    _draw_candidates,
    _LogisticScorer,
    _SquaredScorer,
    _SubsetSquaredScorer,
    _validate,
    loss_value,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedSelectionError",
    "WorkerError",
    "greedy_forward_selection",
    "init_process_group",
    "is_main",
    "launch",
    "rank",
    "split_range",
    "world_size",
]

DEFAULT_TIMEOUT_S = 300.0
"""Default bound, in seconds, on any one collective (and on the rendezvous)."""

# Rows are re-blocked on this grid when a rank's slice does not start on it (see _matvec_as_in_full).
# Any multiple of the BLAS kernel's row block works; MKL's single-precision kernels use 4.
_ROW_BLOCK = 64
# The engine's logistic / cross-entropy search evaluates this many candidates exactly before it prunes.
_FIRST_BATCH = 32
# Rows up to this many bytes (as float64, times the ranks) travel with the per-step all_gather.
_FUSED_BYTES = 1 << 20


class DistributedSelectionError(RuntimeError):
    """A collective failed during distributed selection: another rank died, hung or disagreed."""


class WorkerError(RuntimeError):
    """One or more worker processes started by :func:`launch` failed.

    Attributes
    ----------
    failures : dict[int, str]
        For each failed rank, its traceback text or how it ended (exit code, terminated).
    results : dict[int, object]
        The return values of the ranks that finished.
    """

    def __init__(self, failures: dict[int, str], results: dict[int, object], workers: int):
        self.failures = dict(sorted(failures.items()))
        self.results = results
        parts = [f"{len(self.failures)} of {workers} worker(s) failed"]
        for r, text in self.failures.items():
            parts.append(f"--- rank {r}: {text.rstrip()}")
        super().__init__("\n".join(parts))


# --- process-group helpers -------------------------------------------------------------------------

def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank(group=None) -> int:
    """This process's rank in ``group`` (the default group if None); 0 when not distributed.

    Parameters
    ----------
    group : ProcessGroup, optional
        A process group; None for the default (world) group.

    Returns
    -------
    int
    """
    return dist.get_rank(group) if _initialised() else 0


def world_size(group=None) -> int:
    """The number of processes in ``group``; 1 when not distributed.

    Parameters
    ----------
    group : ProcessGroup, optional
        A process group; None for the default (world) group.

    Returns
    -------
    int
    """
    return dist.get_world_size(group) if _initialised() else 1


def is_main(group=None) -> bool:
    """True on rank 0 of ``group`` and when not distributed (the process that should print / save).

    Parameters
    ----------
    group : ProcessGroup, optional
        A process group; None for the default (world) group.

    Returns
    -------
    bool
    """
    return rank(group) == 0


def split_range(n: int, world: int, r: int) -> tuple[int, int]:
    """Rank ``r``'s balanced contiguous share of ``n`` rows: ``(offset, length)``.

    The first ``n % world`` ranks get one row more than the others; the slices tile ``[0, n)`` in rank
    order. A rank gets an empty slice when ``world > n``.

    Parameters
    ----------
    n : int
        Number of rows (candidate neurons), >= 0.
    world : int
        Number of ranks, >= 1.
    r : int
        The rank, ``0 <= r < world``.

    Returns
    -------
    tuple of int
        ``(offset, length)``: the rank owns rows ``offset .. offset + length - 1``.

    Examples
    --------
    >>> [split_range(10, 3, r) for r in range(3)]
    [(0, 4), (4, 3), (7, 3)]
    """
    _check_int("n", n, 0)
    _check_int("world", world, 1)
    _check_int("r", r, 0)
    if r >= world:
        raise ValueError(f"rank r={r} must be < world={world}")
    base, extra = divmod(n, world)
    return r * base + min(r, extra), base + (1 if r < extra else 0)


def init_process_group(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                       rank: int | None = None, world_size: int | None = None, init_method: str | None = None,
                       store=None):
    """Initialise ``torch.distributed`` for distributed selection, with a bounded timeout.

    Under torchrun (``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set) no argument is
    needed. Does nothing if the default group is already initialised.

    Parameters
    ----------
    backend : str, optional
        "gloo" (CPU tensors) or "nccl" (CUDA tensors); None picks nccl when CUDA and NCCL are available,
        else gloo.
    timeout_s : float
        Bound, in seconds, on the rendezvous and on every collective: when a rank dies or hangs, the
        others fail within about this time instead of waiting forever. gloo raises an error (at once
        when a peer's connection closes); with NCCL, torch's watchdog enforces it by tearing the
        process down (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default).
    rank, world_size : int, optional
        This process's rank and the number of processes; default from ``RANK`` / ``WORLD_SIZE``.
    init_method : str, optional
        A rendezvous URL (``"tcp://host:port"``, ``"file:///path"``); default ``"env://"``.
    store : torch.distributed.Store, optional
        A key-value store to rendezvous through instead of ``init_method`` (what :func:`launch` uses).

    Returns
    -------
    str
        The backend in use.

    Raises
    ------
    RuntimeError
        If ``torch.distributed`` is unavailable or the rank / world size cannot be determined.
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if dist.is_initialized():
        return dist.get_backend()
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if rank is None:
        rank = _env_int("RANK")
    if world_size is None:
        world_size = _env_int("WORLD_SIZE")
    if rank is None or world_size is None:
        raise RuntimeError(
            "cannot tell this process's rank and the world size: launch the processes with torchrun "
            "(which sets RANK and WORLD_SIZE), use greedyprune.distributed.launch(fn, workers, ...), or pass "
            "rank= and world_size= (with init_method= or store=)"
        )
    if store is None and init_method is None:
        init_method = "env://"
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(f"env:// rendezvous needs {' and '.join(missing)} in the environment "
                               f"(torchrun sets them), or pass init_method= / store=")
    if "nccl" in backend and torch.cuda.is_available():
        local = _env_int("LOCAL_RANK")
        torch.cuda.set_device((local if local is not None else rank) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=init_method, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=float(timeout_s)))
    return dist.get_backend()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


# --- launching local workers -----------------------------------------------------------------------

def _worker_main(fn, args, r, workers, port, backend, timeout_s, threads, conn) -> None:
    """Entry point of one process started by :func:`launch`: rendezvous, run ``fn``, report back."""
    payload = None
    try:
        if threads:
            torch.set_num_threads(threads)
        os.environ.update(RANK=str(r), WORLD_SIZE=str(workers), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(workers),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        store = dist.TCPStore("127.0.0.1", port, workers, False, timeout=datetime.timedelta(seconds=timeout_s))
        init_process_group(backend, timeout_s, rank=r, world_size=workers, store=store)
        payload = ("ok", fn(*args))
    except BaseException:  # noqa: BLE001 - everything is reported to the parent
        payload = ("error", f"raised:\n{traceback.format_exc()}")
    try:
        data = pickle.dumps(payload)
    except Exception as err:  # noqa: BLE001
        data = pickle.dumps(("error", f"returned a value that cannot be pickled: {err!r}"))
    try:
        conn.send_bytes(data)
        conn.close()
    finally:
        if _initialised():
            dist.destroy_process_group()


def launch(fn, workers: int, *args, timeout_s: float = DEFAULT_TIMEOUT_S, backend: str = "gloo",
           threads: int | None = None, grace_s: float = 10.0):
    """Run ``fn(*args)`` in ``workers`` new local processes that form a process group; rank 0's result.

    The processes are started with the ``spawn`` method and rendezvous on a free localhost port (the
    parent hosts the store). Inside ``fn``, :func:`rank` and :func:`world_size` tell each process which
    part of the work is its own. Used by the command line's ``--workers P``; torchrun launches need
    only :func:`init_process_group`.

    Parameters
    ----------
    fn : callable
        A picklable (module-level) function; its return value must be picklable.
    workers : int
        Number of processes, >= 1.
    *args
        Passed to ``fn`` in every worker (CPU tensors travel through shared memory).
    timeout_s : float
        The process group's timeout (see :func:`init_process_group`).
    backend : str
        "gloo" or "nccl".
    threads : int, optional
        torch threads per worker; default ``max(1, cpu_count // workers)`` so that workers do not
        oversubscribe the cores.
    grace_s : float
        After a worker fails, how much longer than ``timeout_s`` the others may take to finish (they
        normally fail on their next collective) before they are terminated.

    Returns
    -------
    object
        What ``fn`` returned on rank 0.

    Raises
    ------
    WorkerError
        If any worker raised (its traceback text is in the message and in ``.failures``), exited
        without a result (killed, ``os._exit``, a crash) or had to be terminated.
    """
    import multiprocessing

    _check_int("workers", workers, 1)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    procs, pipes = [], []
    results: dict[int, object] = {}
    failures: dict[int, str] = {}
    try:
        for r in range(workers):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, name=f"greedyprune-worker-{r}",
                               args=(fn, args, r, workers, store.port, backend, timeout_s, threads, send))
            proc.start()
            send.close()
            procs.append(proc)
            pipes.append(recv)
        reported: set[int] = set()
        running = set(range(workers))
        deadline = None
        while running:
            waiting = [procs[r].sentinel for r in running] + [pipes[r] for r in running - reported]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = mp_connection.wait(waiting, left)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                for r in sorted(running):
                    if r not in reported:
                        failures[r] = (f"still running {timeout_s + grace_s:.0f} s after another worker failed; "
                                       f"terminated")
                    procs[r].terminate()
                break
            for r in sorted(running):
                if r not in reported and pipes[r].poll():
                    try:
                        status, value = pickle.loads(pipes[r].recv_bytes())
                        (results if status == "ok" else failures)[r] = value
                    except EOFError:
                        pass
                    except Exception as err:  # noqa: BLE001
                        failures[r] = f"sent a result that could not be read: {err!r}"
                    reported.add(r)
                if not procs[r].is_alive():
                    procs[r].join()
                    if r not in results and r not in failures:
                        code = procs[r].exitcode
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        failures[r] = f"exited without a result ({how}: killed, os._exit or a crash)"
                    reported.add(r)
                    running.discard(r)
            if deadline is None and (failures or reported >= set(range(workers))):
                deadline = time.monotonic() + (timeout_s + grace_s if failures else grace_s)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
            proc.join()
        for pipe in pipes:
            pipe.close()
        del store
    if failures:
        raise WorkerError(failures, results, workers)
    return results[0]


# --- exact row-wise arithmetic on a slice ----------------------------------------------------------

def _matvec_as_in_full(a: torch.Tensor, x: torch.Tensor, start: int, total: int) -> torch.Tensor:
    """``a @ x`` for rows that sit at positions ``start .. start+len(a)-1`` of a ``total``-row matrix,
    rounded as that whole matrix's product would round them.

    BLAS matrix-vector kernels process rows in blocks, and a row's result depends on whether it falls
    in a full block or in the left-over rows at the end. The rows here are computed on the same block
    grid as in the full product: the aligned middle as it is, the partial blocks at either end padded
    with zero rows to their place in the grid.
    """
    n = a.shape[0]
    end = start + n
    lo = min(-(-start // _ROW_BLOCK) * _ROW_BLOCK, end)  # first grid position at or after start
    hi = end if end == total else max(end // _ROW_BLOCK * _ROW_BLOCK, lo)
    if lo == start and hi == end:
        return a @ x
    out = torch.empty(n, dtype=torch.result_type(a, x), device=a.device)
    if hi > lo:
        out[lo - start:hi - start] = a[lo - start:hi - start] @ x
    for seg_lo, seg_hi in ((start, lo), (hi, end)):
        if seg_hi > seg_lo:
            block_lo = seg_lo // _ROW_BLOCK * _ROW_BLOCK
            block = a.new_zeros((min(block_lo + _ROW_BLOCK, total) - block_lo,) + tuple(a.shape[1:]))
            block[seg_lo - block_lo:seg_hi - block_lo] = a[seg_lo - start:seg_hi - start]
            out[seg_lo - start:seg_hi - start] = (block @ x)[seg_lo - block_lo:seg_hi - block_lo]
    return out


class _SliceMixin:
    """What a rank's scorer needs beyond the engine's: its rows' global place, adding a row it may not
    own, its best candidate *with* that candidate's score, and candidate-subset scores computed as the
    single-process engine computes them."""

    offset = 0
    total = 0
    empty = False

    def add_row(self, row: torch.Tensor, key: int) -> None:
        self.s += row

    def local_best(self, k: int, available: torch.Tensor | None, share=None) -> tuple[float, int]:
        """``(score, local index)`` of the lowest-index minimiser; ``(inf, -1)`` if none is available.

        ``share(score)``, if given, returns the lowest of the ranks' scores; every rank calls it once.
        """
        raise NotImplementedError

    def subset_scores(self, rows: torch.Tensor, start: int, total: int, k: int) -> torch.Tensor:
        """Scores of local ``rows`` that are entries ``start ..`` of a ``total``-entry candidate subset."""
        return self.scores(rows, k)


class _DistSquared(_SliceMixin, _SquaredScorer):
    def __init__(self, phi, target, chunk_elements, offset, total):
        super().__init__(phi, target, chunk_elements)
        self.offset, self.total = offset, total
        if not (offset % _ROW_BLOCK == 0 and (offset + self.n == total or (offset + self.n) % _ROW_BLOCK == 0)):
            y = target.reshape(-1).to(phi.dtype)
            self.py = _matvec_as_in_full(self.flat, y, offset, total).double()

    def local_best(self, k, available, share=None):
        if self.empty or (available is not None and not bool(available.any())):
            return math.inf, -1
        score = self.scores(None, k)
        if available is not None:
            score = score.masked_fill(~available, math.inf)
        i = int(torch.argmin(score))
        return float(score[i]), i

    def add_row(self, row, key):
        self.s += row
        col = self.cache.get(key)
        if col is None:
            col = _matvec_as_in_full(self.flat, row.reshape(-1), self.offset, self.total).double()
            self.cache[key] = col
        self.g += col


class _DistSubsetSquared(_DistSquared, _SubsetSquaredScorer):
    def add_row(self, row, key):
        self.s += row

    def subset_scores(self, rows, start, total, k):
        g = _matvec_as_in_full(self.flat[rows], self.s.reshape(-1), start, total).double()
        return self.sq[rows] - (2.0 * (k + 1)) * self.py[rows] + 2.0 * g


class _BoundedSliceMixin(_SliceMixin):
    """Logistic / cross-entropy on a slice: the engine's lower-bound search, with the ranks' bounds shared.

    Like the engine, a rank evaluates exactly only the candidates whose lower bound does not exceed the
    best exact score known (see ``_LogisticScorer``), starting with a first batch of the candidates with
    the lowest bounds (the engine's first batch, shared out between the ranks). Alone, a rank only knows
    its own best, which for the ranks without the overall winner is looser; so when ``share`` is given,
    the ranks share the lowest score found after the first batch (one all-reduce) and each goes on only
    with candidates that can still beat it. The candidate chosen is the same either way: no candidate
    left out can win or tie.
    """

    def local_best(self, k, available, share=None):
        if self.empty or (available is not None and not bool(available.any())):
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
        first = self.first_batch

        def evaluate(rows, bound):
            nonlocal best_score, best_index
            rows = rows[(lower[rows] <= bound) & (lower[rows] != math.inf)]  # rows that can still win
            if rows.numel():
                rows = rows.sort().values
                score = self.scores(rows, k)
                top = float(score.min())
                index = int(rows[score == top].min())
                if top < best_score or (top == best_score and index < best_index):
                    best_score, best_index = top, index

        evaluate(order[:first], math.inf)
        bound = best_score if share is None else min(best_score, share(best_score))
        start, batch = first, 2 * first
        while start < self.n and float(lower[order[start]]) <= bound:
            evaluate(order[start:start + batch], bound)
            bound = min(bound, best_score)
            start += batch
            batch *= 2
        if self.evaluated - before > self.refresh_after:
            self.anchor = None  # bounds have grown loose: re-linearise at the next step
        if best_index < 0:
            return math.inf, -1  # every local candidate is beaten by another rank's
        return best_score, best_index

    first_batch = _FIRST_BATCH


class _ChunkMirrorMixin(_SliceMixin):
    def subset_scores(self, rows, start, total, k):
        # the engine scores a subset in chunks of chunk_rows entries; a SIMD pass rounds a buffer's last
        # elements differently, so each chunk is rebuilt at its full size (zero rows stand in for the
        # entries other ranks own) and the local rows keep their place in it
        count = rows.numel()
        out = torch.empty(count, dtype=torch.float64, device=self.phi.device)
        if count == 0:
            return out
        step, end = self.chunk_rows, start + count
        shape = tuple(self.phi.shape[1:])
        buf = torch.empty((min(step, total),) + shape, dtype=self.phi.dtype, device=self.phi.device)
        for a in range(start // step * step, end, step):
            b = min(a + step, total)
            lo, hi = max(a, start), min(b, end)
            mine = self.phi[rows[lo - start:hi - start]]
            if lo > a or hi < b:
                block = self.phi.new_zeros((b - a,) + shape)
                block[lo - a:hi - a] = mine
            else:
                block = mine
            out[lo - start:hi - start] = self._nonlinear(block, k, buf[:b - a])[lo - a:hi - a]
        self.evaluated += count
        return out


class _DistLogistic(_ChunkMirrorMixin, _BoundedSliceMixin, _LogisticScorer):
    pass


class _DistCrossEntropy(_ChunkMirrorMixin, _BoundedSliceMixin, _CrossEntropyScorer):
    pass


# --- the selection ---------------------------------------------------------------------------------

def _row_digests(phi: torch.Tensor) -> list[int]:
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


def _comm_device(group, data_device: torch.device) -> torch.device:
    """Where the collectives' tensors live: the data's GPU under NCCL, else the CPU."""
    backend = str(dist.get_backend(group))
    if "nccl" in backend:
        if data_device.type == "cuda":
            return data_device
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _local_check(local_outputs, target, k, offset, loss, replacement, candidates, seed, chunk_elements):
    """The engine's input checks on this rank's slice (k against N is checked once N is known)."""
    _check_int("offset", offset, 0)
    if isinstance(local_outputs, torch.Tensor) and local_outputs.dim() in (2, 3) and local_outputs.shape[0] == 0:
        probe = local_outputs.new_zeros((1,) + tuple(local_outputs.shape[1:]))  # an empty slice is allowed
    else:
        probe = local_outputs
    _validate(probe, target, k, loss, True, candidates, seed)
    if chunk_elements is not None:
        _check_int("chunk_elements", chunk_elements, 1)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


_SETTING_NAMES = {
    "row_shape": "the outputs' row shape (m,) or (m, C)",
    "dtype": "the outputs' dtype",
    "device_type": "the outputs' device type",
    "target_shape": "target's shape",
}


def _agree(infos: list[dict], names: tuple[str, ...]) -> None:
    """Raise ValueError naming the first setting that differs between ranks."""
    for name in names:
        values = [info[name] for info in infos]
        if any(v != values[0] for v in values[1:]):
            if name == "target_digest":
                differ = [r for r, v in enumerate(values) if v != values[0]]
                raise ValueError(f"target must be the same on every rank; it differs between rank 0 and rank(s) "
                                 f"{differ}")
            listing = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise ValueError(f"{_SETTING_NAMES.get(name, name)} must be the same on every rank, got {listing}")


def _check_tiling(infos: list[dict]) -> int:
    """The slices must tile [0, N) exactly; returns N."""
    spans = sorted((info["offset"], info["n"], r) for r, info in enumerate(infos))
    listing = ", ".join(f"rank {r}: rows [{o}, {o + n})" for o, n, r in sorted(spans, key=lambda t: t[2]))
    position = 0
    for o, n, r in spans:
        if o != position:
            what = "overlap" if o < position else "leave a gap"
            raise ValueError(
                f"the ranks' slices of candidate rows must be contiguous and non-overlapping, covering 0 .. N-1; "
                f"they {what} at row {min(o, position)} ({listing}); use split_range(N, world_size(), rank())"
            )
        position += n
    if position == 0:
        raise ValueError(f"no rank holds any candidate rows ({listing})")
    return position


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
    group=None,
    chunk_elements: int | None = None,
    progress: bool = False,
) -> SelectionResult:
    """Greedy forward selection over candidates split across ranks (Algorithm 2).

    Call it on every rank of ``group`` with that rank's contiguous slice of the candidates' outputs.
    The result - the same on every rank - is the selection the single-process
    :func:`greedyprune.greedy_forward_selection` makes on the whole (N, m[, C]) matrix.

    Parameters
    ----------
    local_outputs : torch.Tensor
        (n_r, m) or (n_r, m, C): rows ``offset .. offset + n_r - 1`` of the global output matrix
        (row i is neuron i's output over the m examples). May be empty (n_r = 0). On CPU with gloo, on
        this rank's GPU with NCCL.
    target : torch.Tensor
        As for the single-process function; the same on every rank, on ``local_outputs``' device.
    k : int
        Selection steps; without replacement ``k <= N``.
    offset : int
        Global index of this rank's first row. The slices of all ranks must tile ``[0, N)``; see
        :func:`split_range`.
    loss : str
        "squared", "logistic" or "cross_entropy".
    replacement : bool
        Whether a neuron may be chosen again (the paper's multiset).
    candidates : int, optional
        Evaluate a random subset of this many candidates per step (drawn from all N with ``seed``,
        identically on every rank) instead of all of them.
    seed : int
        Seeds the candidate subsets.
    group : ProcessGroup, optional
        The ranks that share the work; default the world group.
    chunk_elements : int, optional
        Advanced: elements per row chunk of the logistic / cross-entropy passes.
    progress : bool
        Show a progress bar (on the group's rank 0).

    Returns
    -------
    SelectionResult
        Global ``indices`` (k,), ``counts`` (N,), ``losses`` (k,) and the final averaged ``output``;
        ``extra["world_size"]`` holds the number of ranks.

    Raises
    ------
    RuntimeError
        If ``torch.distributed`` is not initialised.
    ValueError, TypeError
        On every rank, if any rank's input is invalid (the message names the rank), if k, loss or the
        other settings differ between ranks, if the target differs, or if the slices do not tile
        ``[0, N)``.
    DistributedSelectionError
        If a collective fails - typically another rank died or hung; raised within the process
        group's timeout.
    """
    if not _initialised():
        raise RuntimeError(
            "torch.distributed is not initialised: call greedyprune.distributed.init_process_group() first "
            "(or run under greedyprune.distributed.launch() or torchrun), or use "
            "greedyprune.greedy_forward_selection for a single process"
        )
    me, world = dist.get_rank(group), dist.get_world_size(group)
    if me < 0:
        raise RuntimeError("this process is not a member of the given process group")

    # 1. every rank checks its own input; one exchange makes any rank's problem every rank's error
    info: dict = {"error": None}
    digests: list[int] = []
    own_error = None
    try:
        _local_check(local_outputs, target, k, offset, loss, replacement, candidates, seed, chunk_elements)
        phi = local_outputs.detach()
        if phi.dtype in (torch.float16, torch.bfloat16):
            phi = phi.float()
        phi = phi.contiguous()
        target = target.detach()
        target = target.long() if loss == "cross_entropy" else target.to(phi.dtype)
        target_bytes = target.reshape(-1).cpu().contiguous().numpy()
        info.update(
            n=int(phi.shape[0]), offset=offset, k=k, loss=loss, replacement=replacement, candidates=candidates,
            seed=seed, chunk_elements=chunk_elements, dtype=str(phi.dtype), device_type=phi.device.type,
            row_shape=tuple(phi.shape[1:]), target_shape=tuple(target.shape),
            target_digest=hashlib.blake2b(target_bytes.data, digest_size=16).hexdigest(),
        )
        digests = _row_digests(phi)
    except Exception as err:  # noqa: BLE001 - shared with the other ranks below, then raised
        own_error = err
        info["error"] = (type(err).__name__ if isinstance(err, (TypeError, ValueError)) else "RuntimeError",
                         _describe(err))
    try:
        infos: list = [None] * world
        dist.all_gather_object(infos, (info, digests), group=group)
    except RuntimeError as err:
        raise DistributedSelectionError(f"rank {me}: exchanging the inputs' description failed: {err}") from err
    failed = [(r, i["error"]) for r, (i, _) in enumerate(infos) if i["error"] is not None]
    if failed:
        if own_error is not None:
            raise own_error
        r, (kind, text) = failed[0]
        error_type = {"TypeError": TypeError, "ValueError": ValueError}.get(kind, RuntimeError)
        raise error_type(f"rank {r}'s input is invalid: {text}")
    all_digests = [d for _, d in infos]
    infos = [i for i, _ in infos]
    _agree(infos, ("k", "loss", "replacement", "candidates", "seed", "chunk_elements", "dtype", "device_type",
                   "row_shape", "target_shape", "target_digest"))
    n_total = _check_tiling(infos)
    if not replacement and k > n_total:
        raise ValueError(f"k={k} exceeds the number of neurons N={n_total}; without replacement k must be <= N")

    # 2. this rank's scorer - the engine's, told where its rows sit
    n = phi.shape[0]
    device = phi.device
    if chunk_elements is None:
        cpu = _CPU_CHUNK_ELEMENTS * (4 if loss == "cross_entropy" else 1)
        chunk_elements = _GPU_CHUNK_ELEMENTS if device.type == "cuda" else cpu
    if loss == "squared":
        subset = candidates is not None and candidates < n_total // 2
        cls = _DistSubsetSquared if subset else _DistSquared
    else:
        cls = _DistLogistic if loss == "logistic" else _DistCrossEntropy
    holder = phi if n else phi.new_zeros((1,) + tuple(phi.shape[1:]))  # a rank without rows still keeps s
    if cls in (_DistSquared, _DistSubsetSquared):
        scorer = cls(holder, target, chunk_elements, offset if n else 0, n_total if n else 1)
    else:
        scorer = cls(holder, target, chunk_elements)
        scorer.offset, scorer.total = offset, n_total
    scorer.empty = n == 0
    if isinstance(scorer, _BoundedSliceMixin):  # the engine's first batch of exact evaluations, shared out
        scorer.first_batch = -(-_FIRST_BATCH // world)

    # exact duplicates anywhere (the same 64-bit digest; equality is confirmed when it matters)
    owners: dict[int, list[int]] = {}
    starts = [i["offset"] for i in infos]
    for r in range(world):
        for j, d in enumerate(all_digests[r]):
            owners.setdefault(d, []).append(starts[r] + j)
    duplicates = {j: sorted(members) for members in owners.values() if len(members) > 1 for j in members}
    del owners, all_digests
    slice_of = sorted((i["offset"], i["offset"] + i["n"], r) for r, i in enumerate(infos) if i["n"])

    def owner_of(j: int) -> int:
        for lo, hi, r in slice_of:
            if lo <= j < hi:
                return r
        raise RuntimeError(f"internal error: no rank owns row {j}")

    # each step exchanges every rank's (score, global index, exact evaluations) - and, when rows are
    # small, its best row too (exactly, as float64), which saves the broadcast
    comm = _comm_device(group, device)
    row_shape = tuple(phi.shape[1:])
    row_numel = math.prod(row_shape)
    fused = world * (3 + row_numel) * 8 <= _FUSED_BYTES
    pair = torch.zeros(3 + (row_numel if fused else 0), dtype=torch.float64, device=comm)
    gathered = [torch.empty_like(pair) for _ in range(world)]
    row_buf = torch.empty(tuple(phi.shape[1:]), dtype=phi.dtype, device=comm)
    one = torch.empty(1, dtype=torch.int64, device=comm)

    generator = torch.Generator().manual_seed(seed)
    all_rows = torch.arange(n_total)
    available = torch.ones(n_total, dtype=torch.bool)
    indices = torch.empty(k, dtype=torch.int64)
    losses = torch.empty(k, dtype=torch.float64)
    counts = torch.zeros(n_total, dtype=torch.int64)
    steps = range(k)
    if progress and me == 0:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"distributed greedy selection ({loss}, {world} ranks)", unit="step", leave=False)

    def collective(what: str, step: int, call):
        try:
            return call()
        except RuntimeError as err:
            raise DistributedSelectionError(
                f"rank {me} of {world}: {what} failed at step {step + 1} of {k} - another rank probably died, "
                f"hung past the process group's timeout, or called with different arguments: {err}"
            ) from err

    bound_buf = torch.empty(1, dtype=torch.float64, device=comm)
    step, evaluated_before, share_bound = 0, getattr(scorer, "evaluated", 0), world > 1

    def share(score: float) -> float:
        bound_buf[0] = score
        collective("sharing the best score so far", step,
                   lambda: dist.all_reduce(bound_buf, op=dist.ReduceOp.MIN, group=group))
        return float(bound_buf[0])

    for step in steps:
        # 3. the best local candidate and its exact score
        if candidates is None:
            rows_cpu = None
            local_available = None if replacement else available[offset:offset + n].to(device)
            score, i = scorer.local_best(step, local_available, share if share_bound else None)
        else:
            pool = all_rows if replacement else all_rows[available]
            rows_cpu = _draw_candidates(generator, pool, candidates)  # the same draw on every rank
            lo = int(torch.searchsorted(rows_cpu, offset))
            hi = int(torch.searchsorted(rows_cpu, offset + n))
            score, i = math.inf, -1
            if hi > lo:
                local_rows = (rows_cpu[lo:hi] - offset).to(device)
                values = scorer.subset_scores(local_rows, lo, rows_cpu.numel(), step)
                j = int(torch.argmin(values))
                score, i = float(values[j]), int(local_rows[j])
        evaluated = getattr(scorer, "evaluated", 0)
        pair[0], pair[1], pair[2] = score, (offset + i if i >= 0 else n_total), evaluated - evaluated_before
        evaluated_before = evaluated
        if fused and i >= 0:
            pair[3:].copy_(phi[i].reshape(-1))

        # 4. the global best: lowest score, then lowest global index
        collective("gathering the ranks' best candidates", step, lambda: dist.all_gather(gathered, pair, group=group))
        table = torch.stack([g[:3] for g in gathered]).cpu()
        # share the bound next step only if a rank needed more than its first batch this step
        share_bound = world > 1 and float(table[:, 2].max()) > 2 * getattr(scorer, "first_batch", math.inf)
        best_score = float(table[:, 0].min())
        best = int(table[table[:, 0] == best_score, 1].min())
        if best >= n_total:
            raise DistributedSelectionError(f"no rank found a candidate at step {step + 1} (scores {table[:, 0]})")

        # 5. its output row reaches every rank
        src = owner_of(best)
        if fused:
            row = gathered[src][3:].view(row_shape).to(device=device, dtype=phi.dtype)
        else:
            if src == me:
                row_buf.copy_(phi[best - offset])
            src_global = dist.get_global_rank(group, src) if group is not None else src
            collective("broadcasting the chosen neuron's output", step,
                       lambda src=src_global: dist.broadcast(row_buf, src=src, group=group))
            row = row_buf.to(device) if comm != device else row_buf

        # 6. an exact copy with a lower index, if eligible, ties and wins (as in the engine)
        if best in duplicates:
            eligible = set(rows_cpu.tolist()) if rows_cpu is not None else None
            lower = [j for j in duplicates[best] if j < best and (replacement or bool(available[j]))
                     and (eligible is None or j in eligible)]
            if lower:
                mine = [j for j in lower if offset <= j < offset + n and torch.equal(phi[j - offset], row)]
                one[0] = min(mine, default=best)
                collective("resolving a tie between duplicate neurons", step,
                           lambda: dist.all_reduce(one, op=dist.ReduceOp.MIN, group=group))
                best = int(one[0])

        indices[step] = best
        counts[best] += 1
        available[best] = False
        scorer.add_row(row, best)
        losses[step] = loss_value(scorer.s / (step + 1), target, loss)

    return SelectionResult(
        indices=indices,
        counts=counts,
        losses=losses,
        output=scorer.s / k,
        loss=loss,
        replacement=replacement,
        candidates=candidates,
        seed=seed,
        extra={"world_size": world},
    )
