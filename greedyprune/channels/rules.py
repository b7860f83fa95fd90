"""When a group's search stops: stopping rules as small objects.

A rule sees, after every step of a group's search, a :class:`Step` record (the distinct channels kept,
the network's loss and accuracy with the group pruned to the current selection and, when the rule asks
for them, with the group unpruned) and answers ``stop(step)``. Rules that fix channel counts up front
(a keep ratio, a multiply-add budget) compute them once in ``plan``.

To add a rule, subclass :class:`StoppingRule` (its members and their defaults say what the search reads),
override ``stop`` (and ``plan`` if it needs the groups) and pass an instance as
``prune_model(..., rule=MyRule())``::

    class KeepAtLeast(StoppingRule):
        name = "keep_at_least"
        def __init__(self, n): self.n = n
        def stop(self, step): return step.kept >= min(self.n, step.channels)

A rule that fixes every group's width in ``plan`` (sets ``targets``) can run with the block-reconstruction
objective and take part in budgets; one that compares losses runs with the network objective.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..checks import check_number
from ..errors import InvalidOptionError, InvalidTypeError

__all__ = ["AccuracyTolerance", "Budget", "FlopsTarget", "KeepCounts", "KeepRatio", "LossGap", "ParamsTarget",
           "PlanContext", "Step", "StoppingRule", "rule_from_options"]


@dataclass
class Step:
    """What a rule sees after a step of a group's search."""

    group: str
    channels: int
    step: int
    kept: int
    loss: float
    accuracy: float
    unpruned_loss: float | None = None
    unpruned_accuracy: float | None = None


@dataclass
class PlanContext:
    """What a rule may read once before the search: the model, its groups, an example input, the graph,
    and ``curves()``: every group's held-out loss after each greedy step on the dense network, grown to
    its full width, with the unpruned loss (``{group: (losses, unpruned_loss)}``; computed on first call)."""

    model: object
    groups: list
    example: object
    graph: object
    curves: object = None
    extra: dict = field(default_factory=dict)


class StoppingRule:
    """The base of every stopping rule: what the search reads from one, with its defaults.

    * ``name``: how the rule appears in reports.
    * ``needs_unpruned``: the search also measures each step's network with the group unpruned (``Step``'s
      ``unpruned_*`` fields).
    * ``needs_curves``: ``plan`` reads ``context.curves()`` (each group's loss curve on the dense network).
    * ``targets``: ``{group: channels}`` once planned, for a rule that fixes each group's width (then the
      block-reconstruction objective can run it); None for a rule that compares losses.
    * ``value``: the rule's number (epsilon, a keep ratio, a budget) for the report, or None.

    Subclass it and override ``stop`` (and ``plan``); an object that only has ``name``, ``needs_unpruned``,
    ``plan`` and ``stop`` is accepted too (:func:`rule_from_options` gives it these defaults)."""

    name: str = "rule"
    needs_unpruned: bool = False
    needs_curves: bool = False
    targets: dict | None = None
    value: float | None = None

    def plan(self, context: PlanContext) -> None:
        """Called once before the search, with the model and its groups."""

    def stop(self, step: Step) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must define stop(step)")


class _Declared(StoppingRule):
    """A user's duck-typed rule seen through :class:`StoppingRule`: its own attributes where it has them,
    the defaults where it does not."""

    def __init__(self, rule):
        self.rule = rule

    def __getattribute__(self, attr):
        if attr in ("name", "needs_unpruned", "needs_curves", "targets", "value"):
            rule = object.__getattribute__(self, "rule")
            return getattr(rule, attr, getattr(StoppingRule, attr))
        return object.__getattribute__(self, attr)

    def plan(self, context: PlanContext) -> None:
        self.rule.plan(context)

    def stop(self, step: Step) -> bool:
        return self.rule.stop(step)


class LossGap(StoppingRule):
    """Stop when the pruned loss is within a relative gap of the unpruned group's loss on the same data:
    ``loss - unpruned_loss <= epsilon * |unpruned_loss|``."""

    name, needs_unpruned = "epsilon", True

    def __init__(self, epsilon: float):
        self.value = check_number("epsilon", epsilon, low=0)

    def plan(self, context: PlanContext) -> None:
        pass

    def stop(self, step: Step) -> bool:
        return step.loss - step.unpruned_loss <= self.value * abs(step.unpruned_loss)


class AccuracyTolerance(StoppingRule):
    """Stop when top-1 accuracy is at least ``(1 - tolerance)`` x the unpruned group's (the public
    implementation's rule, with tolerance 0.02)."""

    name, needs_unpruned = "accuracy_tolerance", True

    def __init__(self, tolerance: float):
        self.value = check_number("accuracy_tolerance", tolerance, low=0, high=1, high_open=True)

    def plan(self, context: PlanContext) -> None:
        pass

    def stop(self, step: Step) -> bool:
        return step.accuracy >= (1 - self.value) * step.unpruned_accuracy


class KeepCounts(StoppingRule):
    """Stop each named group when it keeps the given number of distinct channels."""

    name, needs_unpruned = "keep_counts", False

    def __init__(self, counts: dict[str, int]):
        self.targets = dict(counts)

    def plan(self, context: PlanContext) -> None:
        by_name = {g.name: g for g in context.groups}
        unknown = sorted(set(self.targets) - set(by_name))
        if unknown:
            raise InvalidOptionError(f"keep counts name groups the model does not have: {unknown}; its groups are "
                                     f"{sorted(by_name)}")
        for name, g in by_name.items():
            self.targets.setdefault(name, g.channels)

    def stop(self, step: Step) -> bool:
        return step.kept >= self.targets[step.group]


class KeepRatio(KeepCounts):
    """Keep this fraction of each group's channels (at least one)."""

    name = "keep_ratio"

    def __init__(self, ratio: float):
        self.value = check_number("keep_ratio", ratio, low=0, high=1, low_open=True)
        super().__init__({})

    def plan(self, context: PlanContext) -> None:
        self.targets = {g.name: max(1, min(g.channels, round(self.value * g.channels))) for g in context.groups}


class Budget(KeepCounts):
    """Keep ``target`` (a fraction in (0, 1)) of the dense network's multiply-adds (``kind="macs"``) or
    parameters (``kind="params"``).

    Adaptive (the default): every group's width follows its own loss curve. Before the search, each group
    is grown by greedy selection on the dense network to its full width, recording the held-out loss
    after every step; the widths are then allocated by marginal loss per unit of cost saved
    (:func:`~greedyprune.channels.budget.allocate`), and the sequential search keeps that many channels
    per group. ``uniform=True`` keeps the same fraction in every group instead, the largest that fits.
    """

    needs_curves = True

    def __init__(self, target: float, kind: str = "macs", uniform: bool = False, curves: dict | None = None):
        keyword = "flops_target" if kind == "macs" else "params_target"
        if isinstance(target, (int, float)) and not isinstance(target, bool) and target >= 1:
            raise InvalidOptionError(
                f"{keyword} must be a fraction in (0, 1) of the dense network's "
                f"{'multiply-adds' if kind == 'macs' else 'parameters'}; got {target!r}, which is not "
                f"below the dense network (1.0)")
        self.value = check_number(keyword, target, low=0, high=1, low_open=True, high_open=True)
        if not isinstance(uniform, bool):
            raise InvalidTypeError(f"uniform must be True or False, got {uniform!r}")
        self.name, self.kind, self.uniform = keyword, kind, uniform
        self.needs_curves = not uniform
        self.allocated_cost: float | None = None
        self.curves = curves
        super().__init__({})

    def plan(self, context: PlanContext) -> None:
        from .budget import CostModel, allocate, monotone_gaps, uniform_keep_counts

        if self.uniform:
            self.targets = uniform_keep_counts(context.model, context.groups, context.example, self.value,
                                               context.graph, self.kind)
            return
        cost = CostModel(context.model, context.groups, context.example, context.graph, self.kind)
        if self.curves is None:
            self.curves = context.curves()
        curves = self.curves
        unknown = sorted(set(curves) ^ {g.name for g in context.groups})
        if unknown:
            raise InvalidOptionError(
                f"the loss curves given do not match the model's groups ({unknown[:5]}); pass curves "
                f"measured on this model with the same skip")
        gaps = {name: monotone_gaps(losses, unpruned) for name, (losses, unpruned) in curves.items()}
        self.targets = allocate(cost, gaps, self.value)
        self.allocated_cost = cost.cost(self.targets) / cost.total


def FlopsTarget(target: float, uniform: bool = False, curves: dict | None = None) -> Budget:
    """A multiply-add budget (see :class:`Budget`). ``curves`` reuses the loss curves another run measured
    (``rule.curves`` after that run): they do not depend on the budget."""
    return Budget(target, "macs", uniform, curves)


def ParamsTarget(target: float, uniform: bool = False, curves: dict | None = None) -> Budget:
    """A parameter budget (see :class:`Budget`)."""
    return Budget(target, "params", uniform, curves)


_KEYWORDS = {"epsilon": LossGap, "accuracy_tolerance": AccuracyTolerance, "keep_ratio": KeepRatio,
             "flops_target": FlopsTarget, "params_target": ParamsTarget}


def rule_from_options(rule: StoppingRule | None = None, *, uniform: bool = False, **options) -> StoppingRule:
    """The rule given, or the one named by a keyword shortcut (default ``accuracy_tolerance=0.02``).
    ``uniform`` applies to the budget shortcuts (``flops_target``, ``params_target``)."""
    given = {k: v for k, v in options.items() if v is not None}
    if rule is not None:
        if given:
            raise InvalidOptionError(
                f"give rule= or one of {sorted(_KEYWORDS)}, not both (got rule and {sorted(given)})")
        for attr in ("name", "needs_unpruned", "stop", "plan"):
            if not hasattr(rule, attr):
                raise InvalidTypeError(f"rule must be a stopping rule with name, needs_unpruned, plan() and stop(); "
                                       f"{type(rule).__name__} has no {attr!r}")
        return rule if isinstance(rule, StoppingRule) else _Declared(rule)
    if len(given) > 1:
        raise InvalidOptionError(f"give one stopping rule, got {sorted(given)}; choose one of {', '.join(_KEYWORDS)}")
    if not given:
        return AccuracyTolerance(0.02)
    (key, value), = given.items()
    if key in ("flops_target", "params_target"):
        return _KEYWORDS[key](value, uniform=uniform)
    if uniform:
        raise InvalidOptionError(f"uniform=True applies to flops_target / params_target, not to {key}")
    return _KEYWORDS[key](value)
