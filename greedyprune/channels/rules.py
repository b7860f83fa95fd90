"""When a group's search stops: stopping rules as small objects.

A rule sees, after every step of a group's search, a :class:`Step` record (the distinct channels kept,
the network's loss and accuracy with the group pruned to the current selection and, when the rule asks
for them, with the group unpruned) and answers ``stop(step)``. Rules that fix channel counts up front
(a keep ratio, a multiply-add budget) compute them once in ``plan``.

To add a rule, write a class with ``name``, ``needs_unpruned`` and ``stop`` (and ``plan`` if it needs the
groups) and pass an instance as ``prune_model(..., rule=MyRule())``::

    class KeepAtLeast:
        name, needs_unpruned = "keep_at_least", False
        def __init__(self, n): self.n = n
        def plan(self, context): pass
        def stop(self, step): return step.kept >= min(self.n, step.channels)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..checks import check_number

__all__ = ["AccuracyTolerance", "FlopsTarget", "KeepCounts", "KeepRatio", "LossGap", "PlanContext", "Step",
           "StoppingRule", "rule_from_options"]


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
    """What a rule may read once before the search: the model, its groups, an example input, the graph."""

    model: object
    groups: list
    example: object
    graph: object
    extra: dict = field(default_factory=dict)


class StoppingRule(Protocol):
    name: str
    needs_unpruned: bool

    def plan(self, context: PlanContext) -> None:
        ...

    def stop(self, step: Step) -> bool:
        ...


class LossGap:
    """Stop when the pruned loss is within a relative gap of the unpruned group's loss on the same data:
    ``loss - unpruned_loss <= epsilon * |unpruned_loss|``."""

    name, needs_unpruned = "epsilon", True

    def __init__(self, epsilon: float):
        self.value = check_number("epsilon", epsilon, low=0)

    def plan(self, context: PlanContext) -> None:
        pass

    def stop(self, step: Step) -> bool:
        return step.loss - step.unpruned_loss <= self.value * abs(step.unpruned_loss)


class AccuracyTolerance:
    """Stop when top-1 accuracy is at least ``(1 - tolerance)`` x the unpruned group's (the public
    implementation's rule, with tolerance 0.02)."""

    name, needs_unpruned = "accuracy_tolerance", True

    def __init__(self, tolerance: float):
        self.value = check_number("accuracy_tolerance", tolerance, low=0, high=1, high_open=True)

    def plan(self, context: PlanContext) -> None:
        pass

    def stop(self, step: Step) -> bool:
        return step.accuracy >= (1 - self.value) * step.unpruned_accuracy


class KeepCounts:
    """Stop each named group when it keeps the given number of distinct channels."""

    name, needs_unpruned = "keep_counts", False

    def __init__(self, counts: dict[str, int]):
        self.targets = dict(counts)

    def plan(self, context: PlanContext) -> None:
        by_name = {g.name: g for g in context.groups}
        unknown = sorted(set(self.targets) - set(by_name))
        if unknown:
            raise ValueError(f"keep counts name groups the model does not have: {unknown}; its groups are "
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


class FlopsTarget(KeepCounts):
    """Keep this fraction of the dense network's multiply-adds with the same keep fraction in every group:
    the largest fraction that meets the target (see :func:`~greedyprune.channels.budget.uniform_keep_counts`)."""

    name = "flops_target"

    def __init__(self, target: float):
        if isinstance(target, (int, float)) and not isinstance(target, bool) and target >= 1:
            raise ValueError(f"flops_target must be a fraction in (0, 1) of the dense network's multiply-adds; "
                             f"got {target!r}, which is not below the dense network (1.0)")
        self.value = check_number("flops_target", target, low=0, high=1, low_open=True, high_open=True)
        super().__init__({})

    def plan(self, context: PlanContext) -> None:
        from .budget import uniform_keep_counts

        self.targets = uniform_keep_counts(context.model, context.groups, context.example, self.value,
                                           context.graph)


_KEYWORDS = {"epsilon": LossGap, "accuracy_tolerance": AccuracyTolerance, "keep_ratio": KeepRatio,
             "flops_target": FlopsTarget}


def rule_from_options(rule: StoppingRule | None = None, **options) -> StoppingRule:
    """The rule given, or the one named by a keyword shortcut (default ``accuracy_tolerance=0.02``)."""
    given = {k: v for k, v in options.items() if v is not None}
    if rule is not None:
        if given:
            raise ValueError(f"give rule= or one of {sorted(_KEYWORDS)}, not both (got rule and {sorted(given)})")
        for attr in ("name", "needs_unpruned", "stop", "plan"):
            if not hasattr(rule, attr):
                raise TypeError(f"rule must be a stopping rule with name, needs_unpruned, plan() and stop(); "
                                f"{type(rule).__name__} has no {attr!r}")
        return rule
    if len(given) > 1:
        raise ValueError(f"give one stopping rule, got {sorted(given)}; choose one of {', '.join(_KEYWORDS)}")
    if not given:
        return AccuracyTolerance(0.02)
    (key, value), = given.items()
    return _KEYWORDS[key](value)
