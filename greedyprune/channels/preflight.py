"""Before the search: does removing each group's channels compute what masking them does?

The search scores masked networks; the network returned is the one with the channels removed. They are the
same function when every layer between the group's writers and readers acts on each channel alone. Some
layers do not - a LayerNorm over the channels, a channel shuffle that Torch-Pruning's index mapping does
not follow, a layer whose parameters Torch-Pruning cuts along the wrong dimension - and for those the two
differ. :func:`preflight` prunes a copy of the model group by group with random counts and compares the
pruned copy with the masked one on a few inputs, so such a group is refused (or left whole) before any
search time is spent, with the difference it found.
"""
from __future__ import annotations

import copy
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidOptionError
from .bn import exact_math
from .groups import ChannelGroup, UnsupportedLayerError, execution_order, find_groups, refresh_group
from .masks import apply_masks, fold_and_remove, group_scales

__all__ = ["check_model_accepts", "check_train_mode", "preflight"]


def _random_counts(channels: int, generator: torch.Generator) -> torch.Tensor:
    counts = torch.randint(0, 3, (channels,), generator=generator)
    counts[int(torch.randint(channels, (1,), generator=generator))] += 1  # at least one channel kept
    return counts


def preflight(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor, skip, extra_skip,
              unsupported: str = "error", tolerance: float = 1e-4) -> list[ChannelGroup]:
    """The groups whose pruned form equals their masked form on a copy of ``model``.

    A group that differs raises :class:`UnsupportedLayerError` (``unsupported="error"``) or is dropped with
    a warning (``"skip"``). ``model`` itself is not changed. Computed in full float32 (no TF32).
    """
    with exact_math():
        return _preflight(model, groups, example, skip, extra_skip, unsupported, tolerance)


def _preflight(model, groups, example, skip, extra_skip, unsupported, tolerance) -> list[ChannelGroup]:
    probe = copy.deepcopy(model).eval()
    x = example.repeat(4, *([1] * (example.dim() - 1))) + 0.1 * torch.randn(
        (4,) + tuple(example.shape[1:]), generator=torch.Generator().manual_seed(0)).to(example)
    DG, copies = find_groups(probe, example, skip, extra_skip=extra_skip, unsupported="skip")
    by_name = {g.name: g for g in copies}
    generator = torch.Generator().manual_seed(0)
    good = []
    removed = None  # the last group whose channels were removed from the probe
    for group in groups:
        twin = by_name.get(group.name)
        if twin is None:
            good.append(group)
            continue
        twin = refresh_group(DG, probe, twin)
        counts = twin.channel_counts(_random_counts(twin.num_units, generator))
        stage = "masked"
        try:
            with torch.no_grad(), apply_masks(probe, {twin: group_scales(counts).to(x.device)}):
                masked = probe(x)
            stage = "removed"
            fold_and_remove(DG, probe, twin, counts)
            with torch.no_grad():
                pruned = probe(x)
        except (RuntimeError, ValueError, IndexError) as exc:  # the network broken by this or the last removal
            culprit = group if stage == "removed" or removed is None else removed
            message = _fails_after_removal(probe, x, culprit, exc)
            if unsupported == "error":
                raise UnsupportedLayerError(message) from exc
            warnings.warn(message, stacklevel=3)
            return _preflight(model, [g for g in groups if g.name != culprit.name], example, skip, extra_skip,
                              unsupported, tolerance)
        removed = group
        scale = float(masked.abs().max()) + 1e-6
        diff = float((pruned - masked).abs().max()) if pruned.shape == masked.shape else float("inf")
        if diff <= tolerance * max(scale, 1.0):
            good.append(group)
            continue
        message = (f"group {group.name!r} (channels written by {', '.join(group.writers)}): removing its channels "
                   f"does not compute what masking them does (max difference {diff:.3g} on random inputs), so the "
                   f"search would score a network other than the one returned. A layer between its writers and "
                   f"readers mixes channels or is cut wrongly by Torch-Pruning (channel shuffle, a norm over the "
                   f"channels, a custom layer). Leave it whole with skip=[...] naming its writers, or pass "
                   f"unsupported='skip' to leave every such group whole")
        if unsupported == "error":
            raise UnsupportedLayerError(message)
        warnings.warn(message, stacklevel=3)
    return good


def _fails_after_removal(probe: nn.Module, x: torch.Tensor, group: ChannelGroup, exc: BaseException) -> str:
    """The message for a network that no longer runs once ``group``'s channels are removed: which layer fails
    and where (the line of the model's code that raised), and the ``skip=`` that leaves the group whole."""
    names = {m: n for n, m in probe.named_modules()}
    running: list[nn.Module] = []
    failed: list[str] = []

    def enter(module, args):
        running.append(module)

    def leave(module, args, output):
        running.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in probe.modules()]
    hooks += [m.register_forward_hook(leave) for m in probe.modules()]
    try:
        with torch.no_grad():
            probe(x)
    except Exception:  # noqa: BLE001 - the same failure, now with the module that was running
        failed = [names.get(m, type(m).__name__) or type(probe).__name__ for m in running[-2:]]
    finally:
        for h in hooks:
            h.remove()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "site-packages" not in f.filename
              and "/greedyprune/" not in f.filename.replace("\\", "/")]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
    layer = f" in {' > '.join(repr(n) for n in failed)}" if failed else ""
    writers = ", ".join(repr(w) for w in group.writers)
    return (f"group {group.name!r} (channels written by {', '.join(group.writers)}): once its channels are removed the "
            f"network no longer runs: {type(exc).__name__}{layer}{where}: {str(exc).splitlines()[0]}. A layer that "
            f"reads these channels hard-codes their number (a reshape or view with a fixed size, such as "
            f"x.reshape(B, 8, -1)). Leave the group whole with skip=[{writers}] (or extra_skip=[...]), or pass "
            f"unsupported='skip' to leave every such group whole")


def check_model_accepts(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The model runs on the data's inputs and returns class logits that fit the labels (clear errors otherwise)."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except Exception as exc:  # noqa: BLE001
        raise InvalidOptionError(f"the model does not accept the data's inputs of shape {tuple(x.shape[1:])} "
                                 f"({type(exc).__name__}: {exc}); pass inputs shaped as the model expects, e.g. images "
                                 f"(n, C, H, W) rather than flattened vectors") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InvalidOptionError(f"the model must return class logits of shape (batch, classes), got "
                                 f"{getattr(out, 'shape', type(out).__name__)}")
    if int(y.max()) >= out.shape[1] or int(y.min()) < 0:
        raise InvalidOptionError(f"labels must be in [0, {out.shape[1]}) for a model with {out.shape[1]} outputs; "
                                 f"got labels in [{int(y.min())}, {int(y.max())}]")


def check_train_mode(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse a model that runs layers in training it does not run in evaluation (auxiliary heads): the
    groups are traced in eval mode, so those layers would be left inconsistent and the pruned model would
    fail in train mode."""
    from .bn import batch_statistics

    evaluated = execution_order(model, x)
    flags = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        with batch_statistics(model):
            trained = execution_order(model, x)
    finally:
        for m, flag in flags:
            m.training = flag
    names = {m: n for n, m in model.named_modules()}
    extra = [names.get(m, type(m).__name__) for m in trained if m not in evaluated
             and next(m.parameters(recurse=False), None) is not None]
    if extra:
        raise UnsupportedLayerError(
            f"layers {extra[:5]} run in training but not in evaluation (auxiliary heads?): the channel groups are "
            f"found in eval mode, so these layers would not be pruned with the channels they read and the pruned "
            f"model would fail in train mode. Remove them before pruning (e.g. model.aux_logits = False and "
            f"model.AuxLogits = None), or make them run in eval mode too")
