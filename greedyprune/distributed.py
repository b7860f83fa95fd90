"""Everything for distributed greedy selection in one import (``import greedyprune.distributed as gd``).

Process groups and local workers come from :mod:`greedyprune.parallel`; the selection itself
(Algorithm 2) from :mod:`greedyprune.selection.sharded`.
"""
from .parallel import (DEFAULT_TIMEOUT_S, DistributedSelectionError, WorkerError, init_process_group, is_main,
                       launch, rank, split_range, world_size)
from .selection.sharded import greedy_forward_selection

__all__ = ["DEFAULT_TIMEOUT_S", "DistributedSelectionError", "WorkerError", "greedy_forward_selection",
           "init_process_group", "is_main", "launch", "rank", "split_range", "world_size"]
