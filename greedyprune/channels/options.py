""":class:`PruneOptions`: every tuning option of :func:`~greedyprune.channels.prune_model`, declared once.

A frozen, keyword-only dataclass; each field holds its default and its help (``field.metadata["help"]``),
which ``help(PruneOptions)`` lists and ``greedyprune prune`` turns into its flags. ``prune_model(model, data,
options=PruneOptions(...), **overrides)`` takes one, with keyword overrides; :meth:`PruneOptions.validate`
returns a checked copy and :meth:`PruneOptions.resolved` one with the ``"auto"`` / None choices the search
settles made concrete (both new instances: an options object is never changed).

``evaluator`` was called ``method`` up to 0.2.0: the word *method* means what selects the units everywhere
(``prune_transformer(method=...)``, ``PruneResult.method``), so the option that picks how the network objective
scores candidates has its own name. ``PruneOptions(method=...)``, ``prune_model(method=...)`` and reading
``options.method`` still work for one release, with a ``DeprecationWarning``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidTypeError
from ..checks import check_choice, check_int, check_number
from ..options import document_fields, option, renamed_fields

__all__ = ["BN_MODES", "BUDGET_CURVES", "EVALUATORS", "MEMORY_FORMATS", "OBJECTIVES", "UNSUPPORTED", "COMPENSATE",
           "PruneOptions"]

EVALUATORS = ("auto", "fast", "reference")
"""The values of :attr:`PruneOptions.evaluator`."""


def __getattr__(name: str):
    """``METHODS``, the former name of :data:`EVALUATORS`, for one release, with a ``DeprecationWarning``."""
    if name == "METHODS":
        import warnings

        warnings.warn("greedyprune.channels METHODS is deprecated: the evaluator option's values are EVALUATORS "
                      "('method' means what selects the units); METHODS will be removed in a future release",
                      DeprecationWarning, stacklevel=2)
        return EVALUATORS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

OBJECTIVES = ("auto", "network", "local", "local-gfs")
BN_MODES = ("auto", "batch", "running")
BUDGET_CURVES = ("local", "network", "sensitivity")
UNSUPPORTED = ("error", "skip")
COMPENSATE = ("mean-var", "mean", "none")
MEMORY_FORMATS = ("auto", "channels_last", "keep")


@renamed_fields("'method' means what selects the units", method="evaluator")
@document_fields
@dataclass(frozen=True, kw_only=True)
class PruneOptions:
    """How :func:`~greedyprune.channels.prune_model` prunes: the stopping rule's keyword shortcut (at most one
    of ``epsilon``, ``accuracy_tolerance``, ``keep_ratio``, ``flops_target``, ``params_target``; or a rule
    object passed as ``rule=``) and how each group is searched. ``PruneOptions(keep_ratio=0.5, seed=1)``;
    ``dataclasses.replace(options, seed=2)`` for a variant."""

    epsilon: float | None = option(None, """stop a group when its held-out loss is within this relative gap of
        the loss with the group unpruned: ``(loss_S - loss_full) <= epsilon * loss_full``.""")
    accuracy_tolerance: float | None = option(None, """stop when held-out top-1 accuracy is at least
        ``(1 - tolerance)`` x the unpruned accuracy (the public implementation uses 0.02). The default rule
        (0.02) when none is given.""")
    keep_ratio: float | None = option(None, "keep this fraction of each group's channels (at least one).")
    flops_target: float | None = option(None, """keep this fraction (0, 1) of the dense network's multiply-adds.
        By default each group's width follows its own loss curve (see :class:`~greedyprune.channels.rules.Budget`);
        ``uniform=True`` keeps the same fraction in every group instead.""")
    params_target: float | None = option(None, """keep this fraction (0, 1) of the dense network's parameters
        (widths as for ``flops_target``).""")
    uniform: bool = option(False, """with ``flops_target`` / ``params_target``: keep the same fraction in every
        group instead of widths from each group's loss curve.""")
    candidates: int | None = option(50, "channels evaluated per step (a seeded random subset), or None for all.")
    replacement: bool = option(False, "allow a channel to be chosen more than once (its scale grows).")
    batch_size: int | None = option(None, """examples each greedy step of the network objective scores its
        candidates on. None (default): up to 128, fewer (not under 16) when the search's estimated multiply-adds
        would pass a budget (:mod:`~greedyprune.channels.cost`; ``report["step_batch"]`` says which).""")
    max_steps: int | None = option(None, "cap on steps per group (default: D without replacement, 2 D with).")
    seed: int = option(0, "seeds the candidate subsets, the batches and the held-out / calibration subsets.")
    bn: str = option("auto", """"batch" (candidates scored with batch-statistics batch norms), "running" (with
        the stored statistics), or "auto" (batch when the model has batch norms).""")
    recalibrate: int | None = option(None, """examples of the calibration subset the batch-norm statistics are
        re-estimated on after every group and at the end (the local objective: at the end only); 0 = never.
        None (default): 512 with the network objectives; with the local objective the dense statistics are kept
        (each reader reproduces its dense outputs, so they stay right), unless statistics re-estimated on the
        calibration examples bring the outputs there closer to the dense network's
        (:func:`~greedyprune.channels.objectives.recalibrate_if_closer`: a tight budget's large errors).""")
    holdout: int | None = option(None, """examples of the fixed held-out subset on which the rules that compare
        with the unpruned group and the loss curves of adaptive budgets are measured; 0 = the step's batch; None
        (default) = 512, or a quarter of a smaller data set. From an (X, y) pair they are set aside (not used for
        the search); from a loader they are its first examples. Unused by the other rules.""")
    finetune_steps: int = option(0, """SGD steps (momentum 0.9) after each group; 0 = none. The public
        implementation uses about 0.1 epoch.""")
    finetune_lr: float = option(0.01, """learning rate of the fine-tuning steps (the public implementation:
        2.5e-3).""")
    finetune_weight_decay: float = option(5e-4, """weight decay of the fine-tuning steps (the public
        implementation: 4e-5).""")
    evaluator: str = option("auto", """how the network objective scores a step's candidates: "fast" (stacked
        downstream-only evaluation), "reference" (a full masked forward per candidate), or "auto" (fast, falling
        back to reference with a warning). Formerly ``method`` (deprecated).""")
    eval_examples: int = option(1024, "size of the fixed set the report's before/after loss and accuracy use.")
    stack_elements: int | None = option(None, """memory cap of the stacked forward: elements of its largest
        activation (None: a default for the device).""")
    check: bool = option(True, """before the search, prune a copy group by group with random counts and compare
        it with the masked copy (:func:`~greedyprune.channels.preflight.preflight`); after each group, compare
        the physically pruned network with the masked one. A difference raises
        :class:`~greedyprune.channels.UnsupportedLayerError`.""")
    unsupported: str = option("error", """"error" (default) refuses a model with a group that cannot be masked
        and removed exactly; "skip" leaves such groups whole, with a warning naming each and why.""")
    step: int | str = option("auto", """channels (units) added per greedy step of the network objective: the
        best ``step`` candidates of the step's scoring (1 = the paper's one at a time; larger is faster and less
        exact). "auto" (default): about 16 steps to a group's fixed width (one at a time for groups keeping up to
        16 units, and for the rules that compare losses).""")
    curve_points: int = option(32, """points of each group's loss curve for adaptive budgets (the curve is
        measured with ``ceil(D / curve_points)`` channels added per step).""")
    refit: str | None = option(None, """for the network objective: None (fold the scales ``D * count / |S|``
        into the readers, the paper's way) or "lstsq": re-solve the readers' weights on the kept channels by
        ridge regression on the calibration subset (:mod:`greedyprune.channels.refit`). The local objective
        always refits.""")
    refit_ridge: float | None = option(None, """the refit's ridge, ``lam = refit_ridge * mean(diag P_K P_K') *
        |K| / T`` over a reader's kept columns K and its T calibration positions, from the raw patch sums
        (:func:`greedyprune.selection.block.ridge_lambda`, the formula transformers use too, on centred sums there
        since they re-solve the bias). None (default): with the local objective, chosen per reader by two-fold
        cross-validation over the two halves of the calibration set from ``RIDGE_GRID`` (so few calibration
        images are not overfitted; 0.5 when there is one batch only); 0.5 for the network objective's
        ``refit="lstsq"`` - the transformers' default (``selection.block.DEFAULT_RIDGE``).""")
    compensate: str = option("mean-var", """what the local objective's refit gives back of each reader's dense
        outputs besides the least-squares fit (:func:`~greedyprune.channels.reconstruct.refit_kept`): "mean-var"
        (default) re-solves the bias (the mean the removed channels carried) and scales each output up to its
        dense variance on the calibration examples (a least-squares fit is shrunk towards zero, and the batch norm
        after it divides by the dense spread: signals would fade layer by layer); "mean" the bias only; "none"
        neither (the weights alone, the bias kept). The selection fits the same model: about the means unless
        "none".""")
    objective: str = option("auto", """"auto" (default): "local" when the rule fixes each group's width
        (keep_ratio, flops_target, params_target, KeepCounts), else "network". "local" (block reconstruction,
        :mod:`greedyprune.channels.reconstruct`): each group's readers reproduce their dense-network outputs
        from the kept channels, on inputs from the network as already pruned, by greedy forward selection with
        least-squares weights and a ridge refit (``refit_ridge``); no candidate forwards, one calibration
        forward per group; adaptive budgets allocate widths by each group's reconstruction-error curve.
        "network": each candidate scored by the whole network's loss (the paper's way; slower: a stacked
        forward per step). "local-gfs": the paper's Algorithm 1 with replacement on the readers'
        reconstruction, scales ``D * count / |S|`` folded, no refit.""")
    calibration: int | None = option(None, """examples whose statistics the local objective uses (default: as
        many as one dense forward of about 150 G multiply-adds allows, between 32 and 4,096).""")
    budget_curves: str = option("sensitivity", """what adaptive budgets (flops_target, params_target) allocate
        widths by: "sensitivity" (default: each group alone cut to six widths by the block reconstruction on the
        dense network, refitted on the first half of the calibration examples, the curve the mean KL divergence
        of the network's outputs on examples of the second half, :mod:`greedyprune.channels.sensitivity`; a
        probe forward per group and width), "local" (each group's reconstruction-error curve, one calibration
        pass for all groups: cheaper, but blind to how much a layer's error matters downstream) or, with the
        network objective, "network" (each group grown on the dense network with the held-out loss measured
        about ``curve_points`` times: a network search per group, slow on a CPU).""")

    memory_format: str = option("auto", """the layout of the convolutions' weights while pruning
        (:mod:`greedyprune.channels.layout`): "auto" (default) channels-last on a CPU, where its convolutions run
        faster (EfficientNet-Lite0 on 2 CPU cores: 150 s instead of 191 s at 70% of its multiply-adds, the same KL
        to 6 digits; 155 s instead of 178 s at 50%, where rounding turned a choice: KL 1.02 instead of 0.98),
        unless the model has no 2-d convolution, already holds
        channels-last weights or does not compute the same in that layout; "channels_last" (an error if the model
        does not compute the same); "keep" (the model's own). A model converted for the run comes back with its 4-d
        weights and buffers in the default layout, as it came; one that came channels-last stays so. Tensors of
        other ranks (a Conv3d's) are never touched. The fine-tune between groups (``finetune_steps``) always runs
        in the default layout (torch 2.13's CPU backward of a channels-last 1x1 stride-2 conv corrupts
        memory).""")

    def validate(self) -> PruneOptions:
        """A checked copy: integers as Python ints, numbers as floats; ``TypeError`` for a wrong type,
        :class:`~greedyprune.errors.InvalidOptionError` for a value out of range or not among the choices.
        (The rule shortcuts are checked where the rule is built.)"""
        return replace(  # checked in this order (keyword arguments are evaluated left to right)
            self,
            candidates=check_int("candidates", self.candidates, 1, allow_none=True),
            replacement=_flag("replacement", self.replacement),
            batch_size=check_int("batch_size", self.batch_size, 1, allow_none=True),
            max_steps=check_int("max_steps", self.max_steps, 1, allow_none=True),
            seed=check_int("seed", self.seed, 0),
            finetune_steps=check_int("finetune_steps", self.finetune_steps, 0),
            finetune_lr=check_number("finetune_lr", self.finetune_lr, low=0, low_open=True),
            finetune_weight_decay=check_number("finetune_weight_decay", self.finetune_weight_decay, low=0),
            evaluator=check_choice("evaluator", self.evaluator, EVALUATORS),
            bn=check_choice("bn", self.bn, BN_MODES),
            eval_examples=check_int("eval_examples", self.eval_examples, 1),
            stack_elements=check_int("stack_elements", self.stack_elements, 1, allow_none=True),
            recalibrate=check_int("recalibrate", self.recalibrate, 0, allow_none=True),
            holdout=check_int("holdout", self.holdout, 0, allow_none=True),
            step=self.step if self.step == "auto" else check_int("step", self.step, 1),
            budget_curves=check_choice("budget_curves", self.budget_curves, BUDGET_CURVES),
            curve_points=check_int("curve_points", self.curve_points, 2),
            refit=None if self.refit is None else check_choice("refit", self.refit, ("lstsq",)),
            refit_ridge=None if self.refit_ridge is None else check_number("refit_ridge", self.refit_ridge, low=0),
            objective=check_choice("objective", self.objective, OBJECTIVES),
            compensate=check_choice("compensate", self.compensate, COMPENSATE),
            calibration=check_int("calibration", self.calibration, 1, allow_none=True),
            check=_flag("check", self.check),
            unsupported=check_choice("unsupported", self.unsupported, UNSUPPORTED),
            memory_format=check_choice("memory_format", self.memory_format, MEMORY_FORMATS),
        )

    def resolved(self, *, objective: str, bn: str, recalibrate: int, stack_elements: int) -> PruneOptions:
        """A copy with the choices the search settles (``objective``, ``bn``, ``recalibrate`` and
        ``stack_elements`` where they were "auto" / None) made concrete; ``prune_model`` passes them."""
        return replace(self, objective=objective, bn=bn, recalibrate=recalibrate, stack_elements=stack_elements)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be True or False, got {value!r}")
    return value
