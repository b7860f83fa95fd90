"""Mini-batches for the deep search, its baselines and its fine-tuning, from any data a user has."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from ..checks import check_finite
from ..errors import InvalidOptionError, InvalidTypeError
from ..training.loop import train_step

__all__ = ["Batches", "finetune", "split_data"]

_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


class Batches:
    """Mini-batches from an ``(X, y)`` pair (seeded random batches) or any iterable of ``(x, y)`` (cycled).

    Inputs must be finite and labels integer class indices; anything else is refused with the reason.
    """

    def __init__(self, data, batch_size: int, seed: int, device: torch.device):
        self.device, self.batch_size = device, batch_size
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            X, y = data
            if not isinstance(y, torch.Tensor):
                raise InvalidTypeError(f"data=(X, y): y must be a tensor of class labels, got {type(y).__name__}")
            if X.dim() < 2 or X.shape[0] == 0:
                raise InvalidOptionError(
                    f"data=(X, y): X must be a non-empty batch of inputs (n, ...), got shape {tuple(X.shape)}")
            if y.dim() != 1 or y.shape[0] != X.shape[0]:
                raise InvalidOptionError(f"data=(X, y): y must have shape ({X.shape[0]},) (one class label per input), "
                                         f"got {tuple(y.shape)}")
            _check_batch(X, y)
            self.X, self.y, self.loader = X, y, None
            self.generator = torch.Generator().manual_seed(int(seed))
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor)):
            self.loader, self.X = data, None
            self.iterator = None
            self.pending = [self._from_loader()]
        else:
            raise InvalidTypeError(f"data must be a DataLoader (an iterable of (inputs, labels) batches) or an (X, y) "
                                   f"pair of tensors, got {type(data).__name__}")

    def _from_loader(self):
        for _ in range(2):
            if self.iterator is None:
                self.iterator = iter(self.loader)
            try:
                batch = next(self.iterator)
                break
            except StopIteration:
                self.iterator = None
        else:
            raise InvalidOptionError(
                "the data loader is empty: it yielded no batches; pass a loader over a non-empty data "
                "set (check the dataset length, batch_size and drop_last)")
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise InvalidTypeError("each batch of the data loader must be (inputs, labels), got "
                                   f"{type(batch).__name__}")
        _check_batch(batch[0], batch[1])
        return batch[0], batch[1]

    @property
    def size(self) -> int | None:
        """Number of examples of an ``(X, y)`` pair; None for a loader."""
        return None if self.X is None else int(self.X.shape[0])

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch, on the device, labels as int64."""
        if self.X is not None:
            n = self.X.shape[0]
            if self.batch_size >= n:
                idx = torch.arange(n)
            else:
                idx = torch.randperm(n, generator=self.generator)[:self.batch_size]
            x, y = self.X[idx], self.y[idx]
        else:
            x, y = self.pending.pop() if self.pending else self._from_loader()
        return x.to(self.device), y.to(self.device, torch.long)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next()

    def fixed(self, n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed set of up to n examples: ``X[offset:offset + n]``, or the first batches of a loader."""
        if self.X is not None:
            sl = slice(offset, offset + n)
            return self.X[sl].to(self.device), self.y[sl].to(self.device, torch.long)
        xs, ys, got = [], [], 0
        for batch in self.loader:
            xs.append(batch[0])
            ys.append(batch[1])
            got += batch[0].shape[0]
            if got >= offset + n:
                break
        x, y = torch.cat(xs)[offset:offset + n], torch.cat(ys)[offset:offset + n]
        _check_batch(x, y)
        return x.to(self.device), y.to(self.device, torch.long)


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidTypeError(f"inputs and labels must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if y.dtype not in _LABEL_DTYPES:
        raise InvalidTypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    check_finite("the inputs", x)
    if y.numel() and int(y.min()) < 0:
        raise InvalidOptionError(f"labels must be class indices >= 0, got {int(y.min())}")


def split_data(data, holdout: int | None, batch_size: int, seed: int, device) -> tuple[Batches, tuple | None]:
    """The search's batches and the fixed held-out subset of ``holdout`` examples (0: none; None: 512, or a
    quarter of a smaller (X, y) pair), set aside from an (X, y) pair, or a loader's first examples."""
    pair = isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
    if holdout is None:
        n = data[0].shape[0] if pair and data[0].dim() else None
        holdout = 512 if n is None else min(512, n // 4)
    if holdout and pair:
        X, y = data
        n = X.shape[0] if X.dim() else 0
        if holdout >= n:
            raise InvalidOptionError(
                f"holdout={holdout} examples is not less than the {n} examples of the data; pass a "
                f"smaller holdout (it is set aside from the search), or holdout=0 to measure the "
                f"stopping rules on the step's batch")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
        hold, rest = perm[:holdout].sort().values, perm[holdout:].sort().values
        batches = Batches((X[rest], y[rest]), batch_size, seed, device)
        return batches, (X[hold].to(device), y[hold].to(device, torch.long))
    batches = Batches(data, batch_size, seed, device)
    if not holdout:
        return batches, None
    x, y = batches.fixed(holdout)
    if x.shape[0] < holdout:
        raise InvalidOptionError(
            f"holdout={holdout} examples asked for, but the data loader holds only {x.shape[0]}; pass "
            f"a smaller holdout")
    return batches, (x, y)


def finetune(model: nn.Module, batches: Batches, steps: int, lr: float, weight_decay: float = 5e-4) -> None:
    """``steps`` SGD steps (momentum 0.9) on the next batches; the model ends in eval mode."""
    if steps <= 0:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    model.train()
    with torch.enable_grad():
        for _ in range(steps):
            x, y = batches.next()
            train_step(model, optimizer, x, y, "cross_entropy", where=" while fine-tuning between groups")
    model.eval()
