"""The block-reconstruction objective for channel groups (``prune_model(objective="local")``).

Each group is pruned so that the layers reading it (its *readers*: plain, grouped and depthwise-fed
convolutions, linear layers, channels-last linear layers included) reproduce, from the kept channels, what
they output in the *dense* network - taking their inputs from the network as already pruned below them, so
that each group also corrects the error the earlier groups left. The engine is the one transformers use
(:mod:`greedyprune.selection.block`): greedy forward selection with least-squares weights over every reader
at once, then a ridge refit of each reader's kept columns. No candidate network is ever evaluated: a group
costs one calibration forward, cut at its last reader.

* A reader's columns are its input channels times its kernel positions (``unfold`` patches); a grouped
  convolution is one sub-reader per conv group (its outputs read only that group's inputs); inputs from
  other channel groups (a concatenation) are *fixed* columns, kept and refitted with the chosen ones.
* A depthwise convolution passes each kept channel through: its group's readers are the next layers that
  mix channels, which is where Torch-Pruning's dependency graph puts them.
* The statistics are sums over the calibration positions (each batch's products and sums in float32,
  their running sums in float64); a reader
  with far more positions than its columns need (an early, high-resolution layer) uses a seeded subset of
  at most ``max(64 * columns, 8192)`` of them.
* Each output of a reader is weighted by the inverse of its variance on the calibration set (the batch norm
  that usually follows divides by its standard deviation), so every output counts alike.
* The refit re-solves each reader's bias with its weights (the mean the removed channels carried goes back
  into the outputs) and scales each output's fit up to the variance of its target on the calibration set
  (``compensate="mean-var"``, the default; a reader without a bias gets one). A least-squares fit is
  shrunk towards zero, and the batch norm after it divides by the dense spread, so without the rescale the
  signals fade block by block: on EfficientNet-Lite0 at half its multiply-adds, with the dense statistics
  kept, the mean alone left KL(dense || pruned) at 5.6 on held-out images, mean and variance 1.7 (README).
  The selection fits the same model (about the means).
* Adaptive budgets read each group's relative reconstruction error against its width, measured on the dense
  network by the same selection run to full width (:func:`reconstruction_curves`).
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..selection.block import DEFAULT_RIDGE, ReaderProblem, cross_validated_ridge, ridge_refit, select_units
from .groups import ChannelGroup, UnsupportedLayerError

__all__ = ["CAPTURE_BATCH", "DenseTargets", "SubReader", "accumulate", "reader_problem", "reconstruct_group",
           "reconstruction_curves", "refit_kept", "sub_readers"]

CAPTURE_BATCH = 16
"""Calibration examples per forward; the refit's cross-validation folds are halves of these batches."""
POSITIONS_PER_COLUMN = 64
MIN_POSITIONS = 8192
MAX_RESCALE = 4.0
"""The most ``compensate="mean-var"`` scales a reader's output up by (its fit explaining a sixteenth of the
target's variance or less)."""
CURVE_POINTS = 64
"""Points of each group's reconstruction-error curve for adaptive budgets (units added per step: U / 64)."""
_MAX_TARGET_BYTES = 6 * 2 ** 30
MAX_GRAM_BYTES = 6 * 2 ** 30
"""The most memory a reader's float64 statistics (its Gram and those of the two cross-validation halves) may
take: a reader with more columns (VGG-16's 25,088-input classifier: 15 GiB) is refused before any work."""


class _Captured(Exception):
    """Raised from a hook to end a forward once every input it was run for is captured."""


@dataclass
class SubReader:
    """One reader (or one conv group of a grouped reader) of a channel group.

    ``rows``/``channels``: its output rows and input channels in the module's weight; ``unit_columns``
    (U, g) and ``fixed`` index the columns of its 2-d weight ``weight[rows].reshape(len(rows), -1)``."""

    name: str
    module: nn.Module
    rows: slice
    channels: slice
    unit_columns: torch.Tensor
    fixed: torch.Tensor

    def weight2d(self) -> torch.Tensor:
        w = self.module.weight[self.rows]
        return w.reshape(w.shape[0], -1)


def _padding_child(module: nn.Module):
    """A padding module a convolution applies to its input before convolving (``Conv2dStaticSamePadding``)."""
    pad = getattr(module, "static_padding", None)
    return pad if isinstance(pad, nn.Module) else None


def _conv_input(module: nn.Module, x: torch.Tensor, channels: slice) -> tuple[torch.Tensor, tuple[int, int]]:
    """A conv reader's input as its kernel reads it and the zero padding still to apply: a padding child
    (``Conv2dStaticSamePadding``) applied, then string padding ("same", "valid") or a ``padding_mode`` other
    than zeros applied the way ``nn.Conv2d`` applies it, then the channels sliced."""
    pad = _padding_child(module)
    if pad is not None:
        x = pad(x)
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = (0, 0)
    return x[:, channels], tuple(padding)


def positions(module: nn.Module, x: torch.Tensor) -> int:
    """How many positions (rows of the statistics) a reader's input ``x`` gives: batch x output positions."""
    if isinstance(module, nn.Linear):
        return x.numel() // x.shape[-1]
    size, (ph, pw) = _conv_input(module, x[:1, :1], slice(None))
    out_h, out_w = _output_size(module, size.shape[-2] + 2 * ph, size.shape[-1] + 2 * pw)
    return x.shape[0] * out_h * out_w


def _output_size(module: nn.Module, height: int, width: int) -> tuple[int, int]:
    """A conv's output height and width on an input of ``height x width`` (its padding already applied)."""
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    return (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1


def patches(module: nn.Module, x: torch.Tensor, channels: slice = slice(None),
            keep: torch.Tensor | None = None) -> torch.Tensor:
    """(columns, positions): a reader's input as the columns its 2-d weight multiplies; ``keep``: only those
    positions (indices into ``batch x output positions``, gathered without unfolding the rest)."""
    if isinstance(module, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        return (rows if keep is None else rows[keep]).T
    x, padding = _conv_input(module, x, channels)
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    if keep is None and kh * kw == 1:  # a 1x1 kernel: unfold is a strided view's copy
        cols = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)  # (B, C, L)
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    height, width = x.shape[-2:]
    out_h, out_w = _output_size(module, height, width)
    out_hw = out_h * out_w
    if keep is None:  # every position, gathered: about twice as fast as unfold's (B, C*k*k, L) and its transpose
        keep = torch.arange(x.shape[0] * out_hw)
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, B*H*W): one gather of whole columns below
    b, at = keep // out_hw, keep % out_hw
    corner = b * (height * width) + (at // out_w * sh) * width + at % out_w * sw  # (n,) top-left of each patch
    offsets = ((torch.arange(kh) * dh * width).reshape(-1, 1) + torch.arange(kw) * dw).reshape(-1, 1)  # (kh*kw, 1)
    picked = flat.index_select(1, (offsets + corner).reshape(-1))  # (C, kh*kw*n)
    return picked.reshape(-1, keep.numel())  # (C*kh*kw, n), unfold's column order


def outputs2d(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """(outputs, positions) of a reader's output, bias removed, in the column order of :func:`patches`."""
    if module.bias is not None:
        shape = (1,) * (y.dim() - 1) + (-1,) if isinstance(module, nn.Linear) else (1, -1) + (1,) * (y.dim() - 2)
        y = y - module.bias.reshape(shape)
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1]).T
    return y.transpose(0, 1).reshape(y.shape[1], -1)


def sub_readers(model: nn.Module, group: ChannelGroup) -> list[SubReader]:
    """The group's readers as sub-readers with each unit's columns; refuses, before any computation, a
    reader the reconstruction cannot handle (naming it and the way out)."""
    named = dict(model.named_modules())
    unit_of_channel = torch.arange(group.channels) if group.units is None else group.units
    U = group.num_units
    out = []
    for name, idx, root in group.readers:
        module = named[name]
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise UnsupportedLayerError(
                f"objective='local' reconstructs Conv2d and Linear readers; group {group.name!r} is read by "
                f"{name!r} ({type(module).__name__}). Use objective='network', or leave the group whole with "
                f"skip=[{group.writers[0]!r}]")
        groups = getattr(module, "groups", 1)
        in_width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        kernel = module.weight[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
        unit = torch.full((in_width,), -1, dtype=torch.long)
        unit[idx] = unit_of_channel[root]
        per_in, per_out = in_width // groups, module.weight.shape[0] // groups
        gram_bytes = 3 * 8 * (per_in * kernel) ** 2  # float64 sums and their two cross-validation halves
        if gram_bytes > MAX_GRAM_BYTES:
            raise UnsupportedLayerError(
                f"objective='local': reader {name!r} of group {group.name!r} reads {per_in * kernel:,} columns "
                f"({per_in} channels x {kernel} positions); its statistics would take {gram_bytes / 2 ** 30:.1f} GiB "
                f"(the limit is {MAX_GRAM_BYTES / 2 ** 30:.0f} GiB). Leave the group whole with "
                f"skip=[{group.writers[0]!r}] (or unsupported='skip'), or use objective='network'")
        for g in range(groups):
            local = unit[g * per_in:(g + 1) * per_in].repeat_interleave(kernel)  # unit of each column, -1 fixed
            cols = [torch.nonzero(local == u).flatten() for u in range(U)]
            sizes = {c.numel() for c in cols}
            if len(sizes) != 1 or 0 in sizes:
                raise UnsupportedLayerError(
                    f"objective='local': reader {name!r} of group {group.name!r} reads the group's units unevenly "
                    f"(columns per unit {sorted(sizes)[:4]}{' in conv group ' + str(g) if groups > 1 else ''}); "
                    f"use objective='network', or leave the group whole with skip=[{group.writers[0]!r}]")
            out.append(SubReader(name, module, slice(g * per_out, (g + 1) * per_out),
                                 slice(g * per_in, (g + 1) * per_in), torch.stack(cols),
                                 torch.nonzero(local < 0).flatten()))
    return out


class DenseTargets:
    """The dense network's outputs of every reader on the calibration inputs (bias removed), kept in memory
    once, and which of the dense output rows each layer still has as groups are removed."""

    def __init__(self, model: nn.Module, names: set[str], inputs: torch.Tensor):
        named = dict(model.named_modules())
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.rows: dict[str, torch.Tensor] = {}
        # a copy: a later node may change the output in place (an in-place ReLU after a linear layer)
        hooks = [named[n].register_forward_hook(
            lambda m, a, y, n=n: self.outputs[n].append(outputs2d(m, y).to(torch.float32, copy=True))) for n in names]
        try:
            with torch.no_grad():
                for start in range(0, inputs.shape[0], CAPTURE_BATCH):
                    model(inputs[start:start + CAPTURE_BATCH])
                    if start == 0:
                        size = sum(t[0].numel() * 4 for t in self.outputs.values()) * -(-inputs.shape[0] //
                                                                                     CAPTURE_BATCH)
                        if size > _MAX_TARGET_BYTES:
                            raise MemoryError(size)
        finally:
            for h in hooks:
                h.remove()
        self.biases: dict[str, torch.Tensor | None] = {}
        for n in names:
            self.rows[n] = torch.arange(named[n].weight.shape[0])
            self.biases[n] = _bias_rows(named[n], slice(None))

    def target(self, name: str, batch: int, rows: slice) -> torch.Tensor | None:
        """The dense output rows of reader ``name`` that its current ``rows`` hold, on calibration batch
        ``batch``; None when the reader's rows no longer line up with the dense ones."""
        dense_rows = self.rows.get(name)
        if dense_rows is None:
            return None
        return self.outputs[name][batch][dense_rows[rows]]

    def bias(self, name: str, rows: slice) -> torch.Tensor | None:
        """The dense bias of reader ``name`` on the rows :meth:`target` gives (None: it had none)."""
        bias = self.biases.get(name)
        return None if bias is None else bias[self.rows[name][rows]]

    def removed(self, group: ChannelGroup, kept: list[int], model: nn.Module) -> None:
        """Record that ``group``'s writers keep only the channels ``kept`` (their output rows)."""
        named = dict(model.named_modules())
        keep = torch.as_tensor(kept, dtype=torch.long)
        for name in group.writers:
            if name in self.rows:
                rows = self.rows[name]
                self.rows[name] = rows[keep] if rows.numel() == group.channels else None
                if self.rows[name] is not None and self.rows[name].numel() != named[name].weight.shape[0]:
                    self.rows[name] = None
                if self.rows[name] is None:
                    del self.rows[name]


def accumulate(model: nn.Module, subs: list[SubReader], inputs: torch.Tensor,
               dense: DenseTargets | None, folds: bool = False, feed=None) -> list[dict]:
    """Per sub-reader sums over the calibration positions: gram, cross (with the dense target when known,
    else the reader's own full-width output), the target's square sums and sums, and the positions.
    ``feed``: a :class:`~greedyprune.channels.prefix.PrefixInputs` already begun for these readers, which gives
    their inputs per batch (else a forward per batch, stopped once every reader's input is in hand)."""
    named = dict(model.named_modules())
    names = {s.name for s in subs}
    captured: dict[str, torch.Tensor] = {}

    def capture(name, x):
        captured[name] = x
        if names <= set(captured):
            raise _Captured

    # a copy: a later node may change the value in place (x.add_(...), an in-place ReLU) before it is read
    hooks = [] if feed is not None else [
        named[n].register_forward_pre_hook(lambda m, a, n=n: capture(n, a[0].clone())) for n in names]
    sums = [dict(gram=0.0, cross=0.0, sq=0.0, total=0.0, ptotal=0.0, tokens=0, base=None) for _ in subs]
    batches = -(-inputs.shape[0] // CAPTURE_BATCH)
    if folds:  # the same sums over the first and the second half of the calibration batches
        for acc in sums:
            acc["folds"] = [dict(gram=0.0, cross=0.0, sq=0.0, total=0.0, ptotal=0.0, tokens=0) for _ in range(2)]
    try:
        with torch.no_grad():
            for batch, start in enumerate(range(0, inputs.shape[0], CAPTURE_BATCH)):
                captured.clear()
                if feed is not None:
                    captured.update(feed.inputs(batch))
                else:
                    try:
                        model(inputs[start:start + CAPTURE_BATCH])
                    except _Captured:
                        pass
                for sub, acc in zip(subs, sums):
                    x = captured[sub.name]
                    columns = sub.unit_columns.numel() + sub.fixed.numel()
                    keep = _positions((columns, positions(sub.module, x)), batches, batch)
                    p = patches(sub.module, x, sub.channels, keep).float()
                    y = dense.target(sub.name, batch, sub.rows) if dense is not None else None
                    if batch == 0:  # the bias the target was taken without: the dense one, else the current one
                        acc["base"] = (dense.bias(sub.name, sub.rows) if y is not None
                                       else _bias_rows(sub.module, sub.rows))
                    if y is None:
                        y = sub.weight2d().float() @ p
                    else:
                        y = y.float() if keep is None else y[:, keep].float()
                    # products and per-batch sums in float32 (as fast as a float32 Gram is accurate), the
                    # running sums in float64; computed once: the folds share them
                    gram, cross = (p @ p.T).double(), (p @ y.T).double()
                    sq, total, ptotal = (y * y).sum(dim=1).double(), y.sum(dim=1).double(), p.sum(dim=1).double()
                    parts = [acc] + ([acc["folds"][0 if 2 * batch < batches else 1]] if folds else [])
                    for part in parts:
                        part["gram"] = part["gram"] + gram
                        part["cross"] = part["cross"] + cross
                        part["sq"] = part["sq"] + sq
                        part["total"] = part["total"] + total
                        part["ptotal"] = part["ptotal"] + ptotal
                        part["tokens"] += p.shape[1]
    finally:
        for h in hooks:
            h.remove()
    return sums


def _bias_rows(module: nn.Module, rows: slice) -> torch.Tensor | None:
    return None if module.bias is None else module.bias.detach()[rows].double().clone()


def centred(stats: dict) -> dict:
    """``stats`` (sums over ``tokens`` positions: gram, cross, sq, total = sum y, ptotal = sum p) about their
    means: what a refit with a free bias solves (eliminating the bias centres the rows)."""
    T = max(stats["tokens"], 1)
    pt, yt = stats["ptotal"], stats["total"]
    out = dict(stats)
    out["gram"] = stats["gram"] - torch.outer(pt, pt) / T
    out["cross"] = stats["cross"] - torch.outer(pt, yt) / T
    out["sq"] = stats["sq"] - yt * yt / T
    return out


def _positions(shape: tuple, batches: int, batch: int) -> torch.Tensor | None:
    """A seeded subset of a batch's positions when the reader has many more than its statistics need: at
    most ``max(POSITIONS_PER_COLUMN * columns, MIN_POSITIONS)`` over the whole calibration set."""
    columns, n = shape
    per_batch = -(-max(POSITIONS_PER_COLUMN * columns, MIN_POSITIONS) // batches)
    if n <= per_batch:
        return None
    generator = torch.Generator().manual_seed(batch)
    return torch.randperm(n, generator=generator)[:per_batch].sort().values


def reader_problem(sub: SubReader, acc: dict, intercept: bool = True) -> ReaderProblem:
    """The selection problem of one sub-reader from its :func:`accumulate` sums, each output weighted by
    the inverse of its variance; ``intercept``: about the means (the refit re-solves the bias)."""
    T = max(acc["tokens"], 1)
    variance = (acc["sq"] / T - (acc["total"] / T) ** 2).clamp_min(0.0)
    floor = 1e-3 * float(variance.mean()) + 1e-30
    weight = 1.0 / (T * variance.clamp_min(floor))  # every output's target energy about 1
    stats = centred(acc) if intercept else acc
    return ReaderProblem(gram=stats["gram"], cross=stats["cross"], target_sq=stats["sq"],
                         unit_columns=sub.unit_columns, fixed=sub.fixed, tokens=acc["tokens"], out_weight=weight)


def reconstruct_group(model: nn.Module, group: ChannelGroup, n_keep: int, inputs: torch.Tensor,
                      dense: DenseTargets | None, ridge: float | None,
                      compensate: str = "mean-var", feed=None) -> tuple[torch.Tensor, dict, float, dict, dict]:
    """Choose ``n_keep`` units of ``group`` and refit its readers.

    ``ridge=None`` picks each reader's ridge by two-fold cross-validation over the halves of the calibration
    set (:func:`~greedyprune.selection.block.cross_validated_ridge`; the halves are its first and second
    batches of 16: keep examples that share a source image together in the order you pass them).

    Returns ``(per-channel counts (1 kept, 0 removed), {reader name: new weight in its full layout},
    relative reconstruction error after the refit's selection, {reader: ridge used}, {reader: new bias})``.
    ``feed``: the run's :class:`~greedyprune.channels.prefix.PrefixInputs` over ``inputs`` (the readers' inputs
    without re-running the network's unchanged prefix; None: plain forwards)."""
    subs = sub_readers(model, group)
    cv = ridge is None and inputs.shape[0] > CAPTURE_BATCH
    if feed is not None and not feed.begin(sorted({s.name for s in subs}), list(group.writers)):
        feed = None
    try:
        sums = accumulate(model, subs, inputs, dense, folds=cv, feed=feed)
    except Exception as exc:  # noqa: BLE001 - the cache is a shortcut: the plain forwards are always right
        if feed is None:
            raise
        feed.broken = True
        warnings.warn(f"the calibration prefix cache failed at group {group.name!r} ({type(exc).__name__}: {exc}); "
                      f"plain forwards for the rest of the run", stacklevel=2)
        sums = accumulate(model, subs, inputs, dense, folds=cv)
    problems = [reader_problem(s, acc, compensate != "none") for s, acc in zip(subs, sums)]
    chosen = select_units(problems, n_keep)
    kept_units = torch.zeros(group.num_units, dtype=torch.bool)
    kept_units[chosen.order] = True
    weights, ridges, biases = refit_kept(model, subs, sums, problems, kept_units, ridge, cv, compensate=compensate)
    counts = group.channel_counts(kept_units.long())
    return counts, weights, float(chosen.errors[-1]), ridges, biases


def refit_kept(model: nn.Module, subs: list[SubReader], sums: list[dict], problems: list[ReaderProblem],
               kept_units: torch.Tensor, ridge: float | None, cv: bool,
               fold: int | None = None, compensate: str = "mean-var") -> tuple[dict, dict, dict]:
    """Each reader's kept columns re-solved by the ridge refit (``ridge``, or cross-validated when ``cv``):
    ``({reader: new weight in its full layout, removed columns zero}, {reader: ridge used}, {reader: new
    bias})``. ``fold``: solve on that half of the calibration set only (the ridge still chosen by
    cross-validation over both). ``compensate`` (:class:`~greedyprune.channels.options.PruneOptions`): "mean"
    re-solves the bias too, unpenalised (the mean the removed channels carried is given back to the outputs);
    "mean-var" also scales each output's fit up to the target's variance on the same examples (never down, at
    most :data:`MAX_RESCALE` times), the bias then re-solved for the scaled fit; "none": no bias is returned."""
    intercept = compensate != "none"
    weights: dict[str, torch.Tensor] = {}
    biases: dict[str, torch.Tensor] = {}
    ridges: dict[str, float] = {}
    for sub, acc, problem in zip(subs, sums, problems):
        w2d = sub.weight2d()
        keep = torch.cat([sub.fixed, sub.unit_columns[kept_units].reshape(-1)]).sort().values
        prior = w2d.detach().double()[:, keep]
        value = ridge if ridge is not None else DEFAULT_RIDGE
        stats = centred if intercept else (lambda d: d)
        if cv:
            folds = [stats(f) for f in acc["folds"]]
            value = cross_validated_ridge([(f["gram"], f["cross"], f["sq"], f["tokens"]) for f in folds], keep,
                                          prior, problem.out_weight)
        ridges[sub.name] = value
        solve = stats(acc if fold is None else acc["folds"][fold])
        solved = ridge_refit(solve["gram"], solve["cross"], keep, prior, solve["tokens"], value).to(torch.float64)
        if compensate == "mean-var":  # each output's fit scaled up to its target's variance (solve: centred)
            fit_var = ((solved @ solve["gram"][keep][:, keep]) * solved).sum(1)
            ratio = (solve["sq"].clamp_min(0) / fit_var.clamp_min(1e-300)).sqrt()
            ratio = torch.where(fit_var > 0, ratio.clamp(1.0, MAX_RESCALE), torch.ones_like(ratio))
            solved = solved * ratio.unsqueeze(1)
        full = weights.setdefault(sub.name, torch.zeros_like(sub.module.weight, dtype=torch.float64))
        block = torch.zeros(w2d.shape, dtype=torch.float64)
        block[:, keep] = solved
        full[sub.rows] = block.reshape(full[sub.rows].shape)
        if intercept:
            raw = acc if fold is None else acc["folds"][fold]
            T = max(raw["tokens"], 1)
            shift = (raw["total"] - solved @ raw["ptotal"][keep]) / T
            base = acc.get("base")
            bias = biases.setdefault(sub.name, torch.zeros(sub.module.weight.shape[0], dtype=torch.float64))
            bias[sub.rows] = shift + (0.0 if base is None else base)
    named = dict(model.named_modules())
    return ({n: w.to(named[n].weight) for n, w in weights.items()}, ridges,
            {n: b.to(named[n].weight) for n, b in biases.items()})


def reconstruction_curves(model: nn.Module, groups: list[ChannelGroup], inputs: torch.Tensor,
                          compensate: str = "mean-var") -> dict:
    """``{group: (relative reconstruction error with k = 1..U units kept, 0.0)}`` on the dense network: the
    selection of :func:`reconstruct_group` run to each group's full width, each reader reproducing its own
    dense output, about :data:`CURVE_POINTS` units at a time. One calibration pass for all groups."""
    per_group = {g.name: sub_readers(model, g) for g in groups}
    subs = [s for group_subs in per_group.values() for s in group_subs]
    # one pass: the Gram of each distinct (reader, conv group) input, shared by the groups that read it
    keys = {(s.name, s.channels.start, s.rows.start): s for s in subs}
    sums = dict(zip(keys, accumulate(model, list(keys.values()), inputs, None)))
    curves = {}
    for group in groups:
        subs = per_group[group.name]
        problems = [reader_problem(s, sums[(s.name, s.channels.start, s.rows.start)], compensate != "none")
                    for s in subs]
        step = max(1, -(-group.num_units // CURVE_POINTS))
        chosen = select_units(problems, group.num_units, step=step)
        curves[group.name] = (_honest_curve(subs, problems, chosen, step), 0.0)
    return curves


def _honest_curve(subs: list[SubReader], problems: list[ReaderProblem], chosen, step: int) -> list[float]:
    """Each width's relative error, without the optimism of an in-sample fit.

    The selection's residual is in-sample: with few calibration positions per column (a classifier reading
    1,280 features of 80 images) a least-squares fit on k columns explains anything once k nears the
    positions, and a budget would cut such a group to nothing. Per reader, the error with k units is taken
    as the smaller of (a) the in-sample residual inflated by generalised cross-validation,
    ``/ (1 - p / T)^2`` with p the columns kept and T the positions (unusable from p = 0.9 T on), and (b) the error of keeping the kept
    columns' own (dense) weights, which fits nothing; summed over the readers, relative to their energy."""
    steps = chosen.errors.numel()
    total = torch.zeros(steps, dtype=torch.float64)
    energy = 0.0
    for r, (sub, problem) in enumerate(zip(subs, problems)):
        w = problem.out_weight
        weight = sub.weight2d().detach().double()
        sq = problem.target_sq.double()
        energy_r = float((sq * w).sum())
        energy += energy_r
        quad = (weight.T @ (weight * w.unsqueeze(1))) * problem.gram  # (C, C): sum_o w_o W_oi W_oj A_ij
        lin = ((weight.T * w) * problem.cross).sum(dim=1)  # (C,): sum_o w_o W_oi c_io
        kept = torch.zeros(problem.gram.shape[0], dtype=torch.bool)
        kept[problem.fixed] = True
        g = problem.unit_columns.shape[1]
        for start in range(0, steps, step):
            end = min(start + step, steps)
            kept[problem.unit_columns[chosen.order[start:end]].reshape(-1)] = True
            p = problem.fixed.numel() + end * g
            ratio = p / max(problem.tokens, 1)
            fitted = float(chosen.residuals[end - 1, r]) / (1.0 - ratio) ** 2 if ratio < 0.9 else float("inf")
            prior = float(quad[kept][:, kept].sum() - 2.0 * lin[kept].sum()) + energy_r
            total[start:end] += min(fitted, max(prior, 0.0))
    return (total / max(energy, 1e-300)).tolist()
