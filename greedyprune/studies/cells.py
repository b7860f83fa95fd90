"""A study's independent cells computed on one torch thread each, in this process or in forked workers.

Every cell is computed with ``torch.set_num_threads(1)``, so its numbers do not depend on how many threads
the machine would give torch (multi-threaded reductions add in another order); the cores are used by
running cells side by side in ``workers`` processes forked from this one (they share the loaded data set).

Only this process writes results: a worker sends each row here and waits until it is stored before it goes
on (its next checkpoint may assume the row is on disk), so a run killed at any moment loses nothing that a
rerun does not recompute. A worker dies with the process that started it (``PR_SET_PDEATHSIG`` on Linux), so
a killed study leaves no process behind that would hold its directory's lock.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import traceback
from multiprocessing import connection
from typing import Callable, Iterable, Iterator

import torch

from ..checks import check_int
from ..errors import GreedyPruneError

__all__ = ["available_cpus", "default_workers", "one_thread", "run_cells"]


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(cells: int, device: str = "cpu") -> int:
    """One worker per CPU, at most one per cell; 1 on a GPU (a forked process cannot use CUDA)."""
    return 1 if str(device) != "cpu" else max(1, min(available_cpus(), cells))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block, the thread count it had restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cells(task: Callable, cells: Iterable, workers: int = 1, on_row: Callable | None = None,
              on_done: Callable | None = None) -> None:
    """``task(cell, emit)`` for every cell, each on one torch thread.

    ``task`` calls ``emit(row)`` for each result; ``on_row(row)`` stores it in this process before ``emit``
    returns. ``on_done(cell, value)`` gets what ``task`` returned, in this process, as each cell finishes (in
    order with one worker, in order of completion with more).

    Raises:
        The first exception a cell raised: as itself when it is one of the package's messages (a ValueError
        the package raised, an OSError, a FloatingPointError), else a RuntimeError holding the worker's
        traceback; also when a worker dies. The other workers are stopped.
    """
    cells = list(cells)
    check_int("workers", workers, 1)
    emit = on_row if on_row is not None else (lambda row: None)
    if workers == 1 or len(cells) <= 1:
        for cell in cells:
            with one_thread():
                value = task(cell, emit)
            if on_done is not None:
                on_done(cell, value)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs, pipes, busy = [], [], {}
    todo = list(enumerate(cells))
    try:
        for _ in range(min(workers, len(cells))):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(task, theirs, os.getpid()), daemon=True)
            proc.start()
            theirs.close()
            procs.append(proc)
            pipes.append(mine)
        for w in range(len(procs)):
            _next(pipes[w], w, todo, busy)
        while busy:
            ready = connection.wait([pipes[w] for w in busy] + [procs[w].sentinel for w in busy])
            for w in list(busy):
                if pipes[w] not in ready and procs[w].sentinel not in ready:
                    continue
                try:
                    kind, value = pipes[w].recv()
                except (EOFError, OSError):
                    code = procs[w].exitcode
                    raise RuntimeError(f"a worker died while computing cell {cells[busy[w]]} (exit code {code}); "
                                       f"run the same command again to resume") from None
                if kind == "row":
                    emit(value)
                    pipes[w].send(("stored", None))
                elif kind == "done":
                    if on_done is not None:
                        on_done(cells[busy[w]], value)
                    del busy[w]
                    _next(pipes[w], w, todo, busy)
                else:
                    exc, text, passes = value
                    if passes:
                        raise exc
                    raise RuntimeError(f"a worker failed on cell {cells[busy[w]]}:\n{text}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for pipe in pipes:
            pipe.close()


def _next(pipe, w: int, todo: list, busy: dict) -> None:
    if todo:
        index, cell = todo.pop(0)
        busy[w] = index
        pipe.send(("cell", cell))
    else:
        pipe.send(("stop", None))


def _worker(task: Callable, pipe, parent: int) -> None:
    with contextlib.suppress(Exception):  # Linux: die with the parent, even when it is killed
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the line above took effect
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers
    torch.set_num_threads(1)

    def emit(row) -> None:
        pipe.send(("row", row))
        pipe.recv()  # stored: only now may the cell go on (and checkpoint past this row)

    while True:
        kind, cell = pipe.recv()
        if kind == "stop":
            return
        try:
            pipe.send(("done", task(cell, emit)))
        except Exception as exc:  # noqa: BLE001 - sent back whole, to be raised in the parent
            text = traceback.format_exc()
            passes = isinstance(exc, (GreedyPruneError, OSError, FloatingPointError))
            try:
                pickle.loads(pickle.dumps(exc))
            except Exception:  # noqa: BLE001 - an exception that does not travel: its text does
                exc, passes = RuntimeError(str(exc)), False
            pipe.send(("error", (exc, text, passes)))
            return
