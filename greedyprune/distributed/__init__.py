"""Everything for distributed work in one import (``import greedyprune.distributed as gd``).

* ``parallel.py`` - process groups (gloo / NCCL, torchrun's environment, bounded timeouts), local worker
  launch (:func:`launch`), the balanced split of a range and of a step's candidates (:class:`CandidateSplit`);
* ``ddp.py`` - data-parallel training: BatchNorm over the batch of every process (:func:`cross_rank_batchnorm`),
  used by ``pretrain(distributed=True)``;
* :func:`greedy_forward_selection` - Algorithm 2, from :mod:`greedyprune.selection.sharded`.

``greedy_forward_selection`` is imported on first use: ``selection/sharded.py`` imports ``parallel.py``, which
runs this file first, so importing it here eagerly would import ``sharded`` from inside itself.
"""
from __future__ import annotations

from .parallel import (DEFAULT_TIMEOUT_S, CandidateSplit, DistributedSelectionError, WorkerError,
                       init_process_group, is_initialised, is_main, launch, rank, split_range, world_size)

__all__ = ["DEFAULT_TIMEOUT_S", "CandidateSplit", "DistributedSelectionError", "WorkerError",
           "greedy_forward_selection", "init_process_group", "is_initialised", "is_main", "launch", "rank",
           "split_range", "world_size"]


def __getattr__(name: str):
    if name == "greedy_forward_selection":
        from ..selection.sharded import greedy_forward_selection

        globals()[name] = greedy_forward_selection
        return greedy_forward_selection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
