"""The local (reconstruction) objective for a channel group, from "Greedy Optimization Provably Wins the
Lottery: Logarithmic Number of Winning Tickets is Enough": select the group's channels so that the
layers reading them reproduce their own outputs, instead of scoring a whole-network forward per candidate.

For a reader with 2-d weight ``W`` (outputs x input columns; a convolution's columns are its input
channels times its kernel positions) and input patches ``P`` (columns x positions, from ``unfold``), the
group's part of its output is ``W_g P_g``. Unit u's contribution is ``phi_u = U * W_u P_u`` (U units; the
average over a multiset S is then exactly the masked output with scales ``U * count_u / |S|``), the
target is ``W_g P_g``, and everything the squared loss needs is::

    E = (W_g^T W_g) * (P_g P_g^T)            (elementwise; columns x columns, summed over readers)
    <phi_u, phi_v> = U^2 (S E S^T)_uv,   <phi_u, target> = U (S E 1)_u,   ||target||^2 = 1^T E 1

with S the units' membership of the columns. The (units x positions x outputs) tensor is never formed;
greedy selection (Algorithm 1, with replacement) runs on the Gram matrix (``gram=`` of the engine).
Every reader's input is taken from the network with the group whole: for a residual stream, whose later
readers see what earlier ones computed, each reader reconstructs its own output from unmasked inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidOptionError
from ..result import LayerRecord
from ..selection import greedy_forward_selection
from .budget import per_channel
from .groups import ChannelGroup, UnsupportedLayerError, refresh_group

__all__ = ["local_curves", "local_group", "local_problem", "local_selection"]


class _Captured(Exception):
    """Raised from a forward hook to stop a forward once the inputs it was run for are captured."""


def _columns(module: nn.Module) -> int:
    kernel = 1 if isinstance(module, nn.Linear) else module.weight[0, 0].numel()
    return kernel


@torch.no_grad()
def local_problem(model: nn.Module, group: ChannelGroup, inputs: torch.Tensor,
                  batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """``(gram (U, U), cross (U,), ||target||^2, positions)`` of the group's local objective on ``inputs``."""
    named = dict(model.named_modules())
    U, units = group.num_units, group.units
    readers = []
    for name, idx, root in group.readers:
        module = named[name]
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or getattr(module, "groups", 1) != 1:
            raise UnsupportedLayerError(f"objective='local' reconstructs plain convolutions and linear layers; group "
                                        f"{group.name!r} is read by {name!r} ({type(module).__name__}); use "
                                        f"objective='network'")
        kernel = _columns(module)
        unit_of = root if units is None else units[root]
        cols = (idx.unsqueeze(1) * kernel + torch.arange(kernel)).reshape(-1)  # the group's weight columns
        member = unit_of.repeat_interleave(kernel)  # the unit of each of those columns
        readers.append((name, module, cols.to(module.weight.device), member))
    captured: dict[str, torch.Tensor] = {}
    wanted = {name for name, _, _, _ in readers}

    def capture(module, args, name):
        captured[name] = args[0]
        if wanted <= set(captured):
            raise _Captured  # every reader's input is in hand: the rest of the forward is not needed

    hooks = [named[name].register_forward_pre_hook(lambda m, a, name=name: capture(m, a, name))
             for name, _, _, _ in readers]
    was_training = model.training
    model.eval()
    sums = {name: 0.0 for name, _, _, _ in readers}
    positions = 0
    try:
        for start in range(0, inputs.shape[0], batch_size):
            captured.clear()
            try:
                model(inputs[start:start + batch_size])
            except _Captured:
                pass
            for name, module, cols, _ in readers:
                x = captured[name]
                if isinstance(module, nn.Linear):
                    p = x.reshape(-1, x.shape[-1]).T
                else:
                    p = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
                    p = p.transpose(0, 1).reshape(p.shape[1], -1)
                pg = p[cols].double()
                sums[name] = sums[name] + pg @ pg.T
                positions += pg.shape[1] if name == readers[0][0] else 0
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    gram = torch.zeros(U, U, dtype=torch.float64)
    cross = torch.zeros(U, dtype=torch.float64)
    norm = 0.0
    for name, module, cols, member in readers:
        w = module.weight.reshape(module.weight.shape[0], -1)[:, cols].double()
        energy = (w.T @ w) * sums[name]
        membership = F.one_hot(member.to(energy.device), U).to(energy.dtype)  # (columns, U)
        gram += (U * U * (membership.T @ energy @ membership)).cpu()
        cross += (U * (membership.T @ energy.sum(1))).cpu()
        norm += float(energy.sum())
    return gram, cross, norm, positions


def local_selection(gram: torch.Tensor, cross: torch.Tensor, norm: float, positions: int, distinct: int,
                    seed: int = 0) -> torch.Tensor:
    """Unit counts of Algorithm 1 (with replacement) run on the Gram form until ``distinct`` units are chosen:
    the steps before the one that would choose a (``distinct`` + 1)-th unit, or, where the selection keeps
    re-weighting the units it has, the first ``2 distinct x 2^j`` steps that hold ``distinct`` of them (at
    most the first such count past ``64 U``). One engine run with a stop condition (the first steps of a
    longer run are exactly a shorter run)."""
    U = gram.shape[0]
    distinct = max(1, min(distinct, U))
    checkpoints = [2 * distinct]
    while checkpoints[-1] < 64 * U:
        checkpoints.append(2 * checkpoints[-1])
    marks = set(checkpoints)

    def stop(steps: int, chosen: int, loss: float) -> bool:
        return chosen > distinct or (chosen == distinct and steps in marks)

    result = greedy_forward_selection(None, None, checkpoints[-1], replacement=True, gram=gram, cross=cross,
                                      target_norm=norm, examples=max(positions, 1), seed=seed, stop=stop)
    seen, counts = set(), torch.zeros(U, dtype=torch.long)
    for i in result.indices.tolist():
        if i not in seen and len(seen) == distinct:
            break  # the step that chose one unit too many
        seen.add(i)
        counts[i] += 1
    return counts


def local_group(search, group: ChannelGroup, stop) -> tuple[torch.Tensor, dict]:
    """One group of ``prune_model(objective="local")``: Algorithm 1 on its readers' reconstruction."""
    targets = stop.targets
    if targets is None:
        raise InvalidOptionError(
            f"objective='local' needs a rule that fixes each group's width (keep_ratio, flops_target, "
            f"params_target or KeepCounts); {stop.name!r} compares network losses - use "
            f"objective='network' for it")
    inputs = search.calibration if search.calibration is not None else search.batches.fixed(256)[0]
    gram, cross, norm, positions = local_problem(search.model, group, inputs)
    per_unit = group.channels // group.num_units
    counts = local_selection(gram, cross, norm, positions, -(-targets[group.name] // per_unit), search.options.seed)
    return group.channel_counts(counts), LayerRecord(name=group.name, units=group.channels, unit="channels",
                                                     steps=int(counts.sum()), rule=stop.name, evaluator="local")


def local_curves(search, groups: list[ChannelGroup]) -> dict[str, tuple[list[float], float]]:
    """Each group's relative reconstruction error with k = 1..D channels (greedy selection on the Gram
    form, without replacement, on the dense network), for adaptive budgets with ``objective="local"``."""
    inputs = search.calibration if search.calibration is not None else search.batches.fixed(256)[0]
    curves = {}
    for group in groups:
        group = refresh_group(search.DG, search.model, group)
        gram, cross, norm, positions = local_problem(search.model, group, inputs)
        U, per_unit = group.num_units, group.channels // group.num_units
        result = greedy_forward_selection(None, None, U, replacement=False, gram=gram, cross=cross, target_norm=norm,
                                          examples=max(positions, 1))
        scale = norm / max(positions, 1) or 1.0  # relative error: the loss of keeping nothing is 1
        curve = [((k + 1) * per_unit, float(loss) / scale, 0.0) for k, loss in enumerate(result.losses)]
        curves[group.name] = (per_channel(group, curve), 0.0)
    return curves
