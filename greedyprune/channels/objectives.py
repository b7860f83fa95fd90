"""How :func:`~greedyprune.channels.search.prune_model` runs the block-reconstruction objective: which objective
``"auto"`` means, which groups the reconstruction can take (refused before any calibration work), how many
calibration examples it uses, and one group's step (:mod:`greedyprune.channels.reconstruct` does the maths)."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import InvalidOptionError
from ..result import LayerRecord
from .groups import ChannelGroup, UnsupportedLayerError
from .prefix import PrefixInputs
from .reconstruct import CAPTURE_BATCH, DenseTargets, reconstruct_group, sub_readers
from .bn import recalibrate_bn
from .rules import KeepCounts
from .sensitivity import log_probs, mean_kl

__all__ = ["CALIBRATION_MACS", "MAX_CALIBRATION", "calibration_size", "dense_targets", "prefix_inputs",
           "reconstruct_step", "reconstructable", "recalibrate_if_closer", "resolve_objective"]


def resolve_objective(objective: str, stop) -> str:
    """``"auto"``: the block-reconstruction objective when the rule fixes each group's width (it needs no
    candidate forwards), the network objective for the rules that compare network losses."""
    if objective == "auto":
        return "local" if isinstance(stop, KeepCounts) or stop.targets is not None else "network"
    if objective in ("local", "local-gfs") and not (isinstance(stop, KeepCounts) or stop.targets is not None):
        raise InvalidOptionError(
            f"objective={objective!r} needs a rule that fixes each group's width (keep_ratio, flops_target, "
            f"params_target or KeepCounts); {stop.name!r} compares network losses - use objective='network' for it")
    return objective


def reconstructable(model: nn.Module, groups: list[ChannelGroup], unsupported: str) -> list[ChannelGroup]:
    """The groups whose readers the reconstruction handles; the others refused (or left whole with a warning
    under ``unsupported="skip"``) before any calibration work."""
    good = []
    for group in groups:
        try:
            sub_readers(model, group)
        except UnsupportedLayerError as exc:
            if unsupported != "skip":
                raise
            warnings.warn(f"left whole: {exc}", stacklevel=3)
            continue
        good.append(group)
    return good


CALIBRATION_MACS = 150e9
MAX_CALIBRATION = 4096
"""The local objective's default calibration set: about this many multiply-adds for one dense pass."""


def calibration_size(asked: int | None, macs_per_example: int) -> int:
    """Examples whose statistics the local objective uses: ``asked``, or as many as one dense forward of
    about :data:`CALIBRATION_MACS` multiply-adds allows, between 32 and :data:`MAX_CALIBRATION`
    (more examples, a better refit: 0.922 -> 0.977 top-1 from 512 to 2,048 on an MNIST ResNet-20 at half its
    multiply-adds)."""
    if asked is not None:
        return asked
    return int(min(MAX_CALIBRATION, max(32, CALIBRATION_MACS // max(macs_per_example, 1))))


def dense_targets(model: nn.Module, groups: list[ChannelGroup], inputs: torch.Tensor) -> DenseTargets | None:
    names = {name for g in groups for name, _, _ in g.readers}
    try:
        return DenseTargets(model, names, inputs)
    except MemoryError as exc:
        warnings.warn(f"the dense network's reader outputs on {inputs.shape[0]} calibration examples would take "
                      f"{exc.args[0] / 2 ** 30:.1f} GiB; each group reconstructs its readers' own full-width outputs "
                      f"instead (pass a smaller calibration= to keep the dense targets)", stacklevel=3)
        return None


def reconstruct_step(search, group: ChannelGroup, stop) -> tuple[torch.Tensor, dict, dict]:
    """One group of the local objective: ``(channel counts, record, (refitted reader weights, their biases))``."""
    per_unit = group.channels // group.num_units
    target = stop.targets[group.name]
    units = max(1, min(group.num_units, -(-target // per_unit)))
    if units * per_unit != target and target < group.channels:
        warnings.warn(f"group {group.name!r}: its channels are selected in units of {per_unit} (a grouped "
                      f"convolution), so {units * per_unit} channels are kept for the {target} asked", stacklevel=3)
    counts, weights, error, ridges, biases = reconstruct_group(search.model, group, units, search.local_inputs,
                                                               search.dense, search.options.refit_ridge,
                                                               search.options.compensate, search.prefix)
    record = LayerRecord(name=group.name, units=group.channels, unit="channels", steps=units, rule=stop.name,
                         loss=error, evaluator="reconstruction", extra={"ridge": ridges})
    return counts, record, (weights, biases)


def prefix_inputs(model: nn.Module, groups: list[ChannelGroup], inputs: torch.Tensor) -> PrefixInputs | None:
    """The local objective's :class:`~greedyprune.channels.prefix.PrefixInputs` over the calibration batches of
    ``inputs``; None (plain forwards) for a network ``torch.fx`` cannot trace or whose traced readers' inputs
    differ from its own."""
    readers = {s.name for g in groups for s in sub_readers(model, g)}
    batches = [inputs[i:i + CAPTURE_BATCH] for i in range(0, inputs.shape[0], CAPTURE_BATCH)]
    try:
        return PrefixInputs(model, batches, readers)
    except Exception:  # noqa: BLE001 - any tracing failure: the plain forwards are always right
        return None


def recalibrate_if_closer(model: nn.Module, inputs: torch.Tensor, dense: torch.Tensor, batch_size: int) -> bool:
    """The local objective's ``recalibrate=None``: re-estimate the batch-norm statistics on ``inputs`` and keep
    them only if the network's outputs on ``inputs`` then lie closer (mean KL) to the dense network's
    (``dense``: its log-probabilities there); else restore the dense statistics. Returns whether kept.

    The reconstruction keeps the dense statistics right while it is accurate; when a tight budget leaves
    large errors, re-estimated statistics can do better (EfficientNet-Lite0 at 50% of its multiply-adds
    without the refit's variance compensation: top-1 agreement 0.06 with the dense statistics, 0.24
    re-estimated). With it (``compensate="mean-var"``) the dense statistics win at 50% and 70% there."""
    was = model.training
    model.eval()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    before = mean_kl(dense, log_probs(model, inputs))
    recalibrate_bn(model, inputs, batch_size)
    after = mean_kl(dense, log_probs(model, inputs))
    if after < before:
        model.train(was)
        return True
    model.load_state_dict(stats, strict=False)
    model.train(was)
    return False
