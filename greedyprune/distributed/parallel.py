"""Processes working together: ``torch.distributed`` process groups, local worker launch, work splits.

Used by distributed greedy selection (:mod:`greedyprune.selection.sharded`, Algorithm 2) and by the deep
search's candidate split (``prune_model(distributed=True)``).

* :func:`init_process_group` picks gloo (CPU) or NCCL (CUDA), reads torchrun's ``RANK`` / ``WORLD_SIZE``
  environment, and sets a bounded timeout so that when a rank dies or hangs the others raise instead of
  waiting forever.
* :func:`launch` starts P local worker processes itself (no torchrun needed) and returns rank 0's result.
* :func:`split_range` gives each rank its balanced contiguous slice; :class:`CandidateSplit` scores a
  list of candidates split that way and gathers every rank's scores.
"""
from __future__ import annotations

import datetime
import os
import pickle
import time
import traceback
from multiprocessing import connection as mp_connection

import torch
import torch.distributed as dist

from ..checks import check_int
from ..errors import GreedyPruneError, InvalidOptionError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "CandidateSplit",
    "DistributedSelectionError",
    "WorkerError",
    "init_process_group",
    "is_initialised",
    "is_main",
    "launch",
    "rank",
    "split_range",
    "world_size",
]

DEFAULT_TIMEOUT_S = 300.0
"""Default bound, in seconds, on any one collective (and on the rendezvous)."""


class DistributedSelectionError(GreedyPruneError, RuntimeError):
    """A collective failed during distributed work: another rank died, hung or disagreed."""


class WorkerError(GreedyPruneError, RuntimeError):
    """One or more worker processes started by :func:`launch` failed.

    Attributes:
        failures: for each failed rank, its traceback text or how it ended (exit code, terminated).
        results: the return values of the ranks that finished.
    """

    def __init__(self, failures: dict[int, str], results: dict[int, object], workers: int):
        self.failures = dict(sorted(failures.items()))
        self.results = results
        parts = [f"{len(self.failures)} of {workers} worker(s) failed"]
        for r, text in self.failures.items():
            parts.append(f"--- rank {r}: {text.rstrip()}")
        super().__init__("\n".join(parts))


def is_initialised() -> bool:
    """Whether a default ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank(process_group=None) -> int:
    """This process's rank in ``process_group`` (default: the world); 0 when not distributed."""
    return dist.get_rank(process_group) if is_initialised() else 0


def world_size(process_group=None) -> int:
    """The number of processes in ``process_group`` (default: the world); 1 when not distributed."""
    return dist.get_world_size(process_group) if is_initialised() else 1


def is_main(process_group=None) -> bool:
    """True on rank 0 of ``process_group`` and when not distributed (the process that prints and saves)."""
    return rank(process_group) == 0


def split_range(n: int, world: int, r: int) -> tuple[int, int]:
    """Rank ``r``'s balanced contiguous share of ``n`` rows: ``(offset, length)``.

    The first ``n % world`` ranks get one row more than the others; the slices tile ``[0, n)`` in rank
    order. A rank gets an empty slice when ``world > n``.

    Args:
        n: number of rows (candidate neurons), >= 0.
        world: number of ranks, >= 1.
        r: the rank, ``0 <= r < world``.

    Returns:
        ``(offset, length)``: the rank owns rows ``offset .. offset + length - 1``.

    Examples:
        >>> [split_range(10, 3, r) for r in range(3)]
        [(0, 4), (4, 3), (7, 3)]
    """
    check_int("n", n, 0)
    check_int("world", world, 1)
    check_int("r", r, 0)
    if r >= world:
        raise InvalidOptionError(f"rank r={r} must be < world={world}")
    base, extra = divmod(n, world)
    return r * base + min(r, extra), base + (1 if r < extra else 0)


def init_process_group(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                       rank: int | None = None, world_size: int | None = None, init_method: str | None = None,
                       store=None):
    """Initialise ``torch.distributed`` for distributed selection, with a bounded timeout.

    Under torchrun (``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set) no argument is
    needed. Does nothing if the default group is already initialised.

    Args:
        backend: "gloo" (CPU tensors) or "nccl" (CUDA tensors); None picks nccl when CUDA and NCCL are
            available, else gloo.
        timeout_s: bound, in seconds, on the rendezvous and on every collective: when a rank dies or hangs,
            the others fail within about this time instead of waiting forever. gloo raises an error (at once
            when a peer's connection closes); with NCCL, torch's watchdog enforces it by tearing the process
            down (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default).
        rank, world_size: this process's rank and the number of processes; default from ``RANK`` /
            ``WORLD_SIZE``.
        init_method: a rendezvous URL (``"tcp://host:port"``, ``"file:///path"``); default ``"env://"``.
        store: a key-value store to rendezvous through instead of ``init_method`` (what :func:`launch` uses).

    Returns:
        The backend in use.

    Raises:
        RuntimeError: ``torch.distributed`` is unavailable or the rank / world size cannot be determined.
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if dist.is_initialized():
        return dist.get_backend()
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise InvalidOptionError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
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


# ------------------------------------------------------------------------------------------ launching local workers

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
        if is_initialised():
            dist.destroy_process_group()


def launch(fn, workers: int, *args, timeout_s: float = DEFAULT_TIMEOUT_S, backend: str = "gloo",
           threads: int | None = None, grace_s: float = 10.0):
    """Run ``fn(*args)`` in ``workers`` new local processes that form a process group; rank 0's result.

    The processes are started with the ``spawn`` method and rendezvous on a free localhost port (the
    parent hosts the store). Inside ``fn``, :func:`rank` and :func:`world_size` tell each process which
    part of the work is its own. Used by the command line's ``--workers P``; torchrun launches need
    only :func:`init_process_group`.

    Args:
        fn: a picklable (module-level) function; its return value must be picklable.
        workers: number of processes, >= 1.
        *args: passed to ``fn`` in every worker (CPU tensors travel through shared memory).
        timeout_s: the process group's timeout (see :func:`init_process_group`).
        backend: "gloo" or "nccl".
        threads: torch threads per worker; default ``max(1, cpu_count // workers)`` so that workers do not
            oversubscribe the cores.
        grace_s: after a worker fails, how much longer than ``timeout_s`` the others may take to finish (they
            normally fail on their next collective) before they are terminated.

    Returns:
        What ``fn`` returned on rank 0.

    Raises:
        WorkerError: a worker raised (its traceback text is in the message and in ``.failures``), exited
            without a result (killed, ``os._exit``, a crash) or had to be terminated.
    """
    import multiprocessing

    check_int("workers", workers, 1)
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


class CandidateSplit:
    """Each rank scores a contiguous share of a list of candidates; every rank gets all the scores.

    Algorithm 2 for a search whose candidates are scored by a callable (the deep search's evaluator):
    ``evaluate(score, candidates)`` calls ``score(share)`` on this rank's share, which must return a
    ``(rows, len(share))`` tensor (for example losses and accuracies), and all-gathers the rows, so every
    rank ends with the same ``(rows, len(candidates))`` result and takes the same decision.
    """

    def __init__(self, process_group=None):
        if not is_initialised():
            raise InvalidOptionError("distributed=True needs an initialised torch.distributed process group; "
                                     "start the program with torchrun, or call "
                                     "greedyprune.distributed.init_process_group() first")
        self.process_group = process_group
        self.rank, self.world = dist.get_rank(process_group), dist.get_world_size(process_group)

    def evaluate(self, score, candidates: torch.Tensor, rows: int, device: torch.device) -> torch.Tensor:
        K = candidates.numel()
        lo, hi = K * self.rank // self.world, K * (self.rank + 1) // self.world
        width = -(-K // self.world)  # the largest share
        comm = device if dist.get_backend(self.process_group) != "gloo" else torch.device("cpu")
        mine = torch.full((rows, width), float("inf"), device=comm)
        if hi > lo:
            mine[:, :hi - lo] = score(candidates[lo:hi]).to(comm)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        try:
            dist.all_gather(parts, mine, group=self.process_group)
        except RuntimeError as err:
            raise DistributedSelectionError(f"rank {self.rank} of {self.world}: gathering the candidates' scores "
                                            f"failed - another rank probably died or hung: {err}") from err
        sizes = [K * (r + 1) // self.world - K * r // self.world for r in range(self.world)]
        return torch.cat([p[:, :n] for p, n in zip(parts, sizes)], dim=1).to(device)
