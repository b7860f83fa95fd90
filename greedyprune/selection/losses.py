"""The losses greedy selection minimises: a registry of :class:`Loss` classes, and the checks of the inputs.

Each loss is a :class:`Loss` subclass registered by name with :func:`register_loss`; every use of a loss's name
goes through the registry (:func:`get_loss`), and :data:`LOSSES` lists the registered names. A loss owns

* its value ``value(u, target)`` of one averaged output ``u`` (what ``SelectionResult.losses`` report);
* the checks of its target against the outputs (``check_target``), and the form the scorers read it in
  (``prepare_target``);
* its scorer (``make_scorer``): the default, :class:`~greedyprune.selection.scorers.BruteForceScorer`,
  evaluates ``value`` for every candidate at every step - exact but slow -; the built-in losses have fast
  scorers (``scorers.py``);
* whether it has a Gram form (``gram``, ``make_gram_scorer``): the squared loss from inner products only.

To add a loss, subclass :class:`Loss`, set ``name``, implement ``value`` (and ``check_target`` where the
target is not floats shaped like one output) and decorate it with :func:`register_loss`;
``greedy_forward_selection(..., loss=NAME)`` then accepts it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..checks import check_choice, check_int
from ..errors import InvalidOptionError, InvalidTypeError
from .scorers import (CPU_CHUNK_ELEMENTS, GPU_CHUNK_ELEMENTS, BruteForceScorer, CrossEntropyScorer, GramScorer,
                      LogisticScorer, Placement, SquaredScorer, SubsetSquaredScorer)

__all__ = ["LOSSES", "MAX_MAGNITUDE", "CrossEntropyLoss", "LogisticLoss", "Loss", "SquaredLoss",
           "default_chunk_elements", "get_loss", "loss_value", "register_loss", "unregister_loss",
           "validate_gram", "validate_inputs"]

MAX_MAGNITUDE = 1e15
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class Loss:
    """A loss ``l(u)`` of the averaged output ``u`` that greedy selection minimises: subclass it, set
    :attr:`name`, implement :meth:`value` (and :meth:`check_target` unless the target is floats shaped like one
    output) and register it with :func:`register_loss`.

    The other methods have working defaults: :meth:`make_scorer` returns a
    :class:`~greedyprune.selection.scorers.BruteForceScorer` (one :meth:`value` per candidate per step, exact
    and slow; override it with a scorer of the :class:`~greedyprune.selection.scorers.Scorer` protocol for
    speed), :meth:`prepare_target` casts the target to the outputs' dtype, there is no Gram form
    (:attr:`gram` False) and :meth:`network_target` accepts a network of any output width.
    """

    name: str = ""
    """The name ``greedy_forward_selection(loss=...)`` takes."""
    gram: bool = False
    """Whether :meth:`make_gram_scorer` computes the loss from inner products only (the Gram form)."""
    cpu_chunk_factor: int = 1
    """On CPU a scorer's row chunks hold ``cpu_chunk_factor * CPU_CHUNK_ELEMENTS`` elements."""

    def value(self, u: torch.Tensor, target: torch.Tensor) -> float:
        """The loss of one output ``u`` ((m,) or (m, C)) against ``target``, as a Python float (float64)."""
        raise NotImplementedError(f"loss {self.name!r} ({type(self).__name__}) does not implement value(u, target)")

    def check_target(self, outputs: torch.Tensor, target: torch.Tensor) -> None:
        """Raise :class:`~greedyprune.errors.InvalidOptionError` / ``InvalidTypeError`` unless ``target`` suits
        ``outputs`` (N, m[, C]). The default: finite floats shaped like ``outputs[0]``."""
        expected = tuple(outputs.shape[1:])
        if tuple(target.shape) != expected:
            raise InvalidOptionError(
                f"target must have shape {expected} (the outputs' shape without N), got {tuple(target.shape)}")
        if not target.is_floating_point():
            raise InvalidTypeError(
                f"loss={self.name!r} needs a floating-point target, got dtype {target.dtype}; use target.float()")
        if not bool(torch.isfinite(target).all()):
            raise InvalidOptionError("target contains NaN or inf")

    def prepare_target(self, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The (checked, detached) target in the form the scorer reads: by default in the outputs' ``dtype``."""
        return target.to(dtype)

    def make_scorer(self, phi: torch.Tensor, target: torch.Tensor, chunk_elements: int, *,
                    candidates: int | None = None, total: int | None = None, placement: Placement | None = None):
        """The scorer of this loss over the prepared outputs ``phi`` (N, m[, C]) and target. ``total`` is the
        number of candidates in the whole problem (``phi`` may be one process's slice of it, whose rows sit
        where ``placement`` says); ``candidates`` is the size of a step's random subset (None: all)."""
        return BruteForceScorer(phi, target, chunk_elements, placement, objective=self)

    def make_gram_scorer(self, gram: torch.Tensor, cross: torch.Tensor, target_norm: float, examples: int):
        """The scorer of the Gram form (``gram`` (N, N) float64, ``cross`` (N,)), for a loss with :attr:`gram`."""
        raise InvalidOptionError(f"loss {self.name!r} has no Gram form")

    def chunk_elements(self, device: torch.device) -> int:
        """Elements per row chunk of the scorer's passes on ``device``."""
        if device.type == "cuda":
            return GPU_CHUNK_ELEMENTS
        return CPU_CHUNK_ELEMENTS * self.cpu_chunk_factor

    def network_target(self, target: torch.Tensor, width: int) -> torch.Tensor:
        """The target for a network with ``width`` outputs (``prune_two_layer``): raises if this loss cannot
        read that many outputs, else returns the target as the selection takes it. Default: unchanged."""
        return target


_REGISTRY: dict[str, Loss] = {}


class _LossNames(Sequence):
    """The registered losses' names, in registration order: a live, read-only tuple-like view."""

    def __getitem__(self, index):
        return tuple(_REGISTRY)[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in _REGISTRY

    def __eq__(self, other) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, _LossNames) else other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


LOSSES = _LossNames()
"""The names of the registered losses (``("squared", "logistic", "cross_entropy")`` and any added with
:func:`register_loss`); prints and compares as a tuple."""


def register_loss(cls: type[Loss]) -> type[Loss]:
    """Class decorator: register a :class:`Loss` subclass under its ``name`` (an instance of it is kept).
    Refuses a name already taken."""
    if not (isinstance(cls, type) and issubclass(cls, Loss)):
        raise InvalidTypeError(f"register_loss takes a Loss subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"loss class {cls.__name__} needs a name (a non-empty str)")
    if name in _REGISTRY:
        raise InvalidOptionError(f"loss {name!r} is already registered ({type(_REGISTRY[name]).__name__}); "
                                 f"choose another name")
    _REGISTRY[name] = cls()
    return cls


def unregister_loss(name: str) -> None:
    """Remove the loss registered as ``name`` (a loss registered for a while, e.g. by a test)."""
    del _REGISTRY[check_choice("loss", name, LOSSES)]


def get_loss(name: str) -> Loss:
    """The loss registered as ``name``; an :class:`~greedyprune.errors.InvalidOptionError` naming the choices if
    there is none."""
    return _REGISTRY[check_choice("loss", name, LOSSES)]


def loss_value(u: torch.Tensor, target: torch.Tensor, loss: str) -> float:
    """The loss ``l(u)`` of one output (m,) or (m, C) against the target, in float64: ``get_loss(loss).value``.

    squared: ``||u - y||^2 / m`` (summed over outputs when C > 1); logistic: mean binary
    cross-entropy with ``u`` as logits; cross_entropy: mean softmax cross-entropy with ``u`` as logits. Both
    are computed in log space, so they stay exact for saturated logits (a per-example loss of ``exp(-100)``).
    """
    return get_loss(loss).value(u, target)


def default_chunk_elements(loss: str, device: torch.device) -> int:
    """Elements per row chunk of ``loss``'s scorer passes on ``device``: ``get_loss(loss).chunk_elements``."""
    return get_loss(loss).chunk_elements(device)


@register_loss
class SquaredLoss(Loss):
    """``squared``: ``||u - y||^2 / m`` (summed over the outputs when C > 1) - the theory's loss. Targets are
    finite floats shaped like one output; it has a Gram form."""

    name = "squared"
    gram = True

    def value(self, u, target):
        u = u.double()
        return float(((u - target.double()) ** 2).sum() / u.shape[0])

    def make_scorer(self, phi, target, chunk_elements, *, candidates=None, total=None, placement=None):
        # with a small candidate subset per step, never update all N inner products
        total = phi.shape[0] if total is None else total
        subset = candidates is not None and candidates < total // 2
        return (SubsetSquaredScorer if subset else SquaredScorer)(phi, target, chunk_elements, placement,
                                                                  objective=self)

    def make_gram_scorer(self, gram, cross, target_norm, examples):
        return GramScorer(gram, cross, target_norm, examples)

    def network_target(self, target, width):
        # one output: a (m, 1) target is read as (m,)
        return target.squeeze(1) if width == 1 and target.dim() == 2 and target.shape[1] == 1 else target


@register_loss
class LogisticLoss(Loss):
    """``logistic``: mean binary cross-entropy with ``u`` as logits (N, m); labels in {0, 1}."""

    name = "logistic"

    def value(self, u, target):
        # softplus((1 - 2y) u) as max(t, 0) + log1p(exp(-|t|)): exact for saturated logits, where
        # binary_cross_entropy_with_logits rounds log(1 + exp(-100)) to 0
        t = (1.0 - 2.0 * target.double()) * u.double()
        return float((t.clamp_min(0) + torch.log1p(torch.exp(-t.abs()))).mean())

    def check_target(self, outputs, target):
        m = outputs.shape[1]
        if outputs.dim() != 2:
            raise InvalidOptionError(
                f"loss='logistic' needs outputs of shape (N, m) holding logits, got shape {tuple(outputs.shape)}")
        if target.shape != (m,):
            raise InvalidOptionError(f"target must have shape (m,) = ({m},), got {tuple(target.shape)}")
        if target.is_complex():
            raise InvalidTypeError(f"target must be real, got dtype {target.dtype}")
        bad = (target != 0) & (target != 1)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0])
            raise InvalidOptionError(f"loss='logistic' needs labels in {{0, 1}}; target[{j}] = {target[j].item()!r}")

    def make_scorer(self, phi, target, chunk_elements, *, candidates=None, total=None, placement=None):
        return LogisticScorer(phi, target, chunk_elements, placement, objective=self)

    def network_target(self, target, width):
        if width != 1:
            raise InvalidOptionError(f"loss='logistic' needs a network with one output, this one has {width}; "
                                     "use loss='cross_entropy'")
        return target


@register_loss
class CrossEntropyLoss(Loss):
    """``cross_entropy``: mean softmax cross-entropy with ``u`` as logits (N, m, C); targets are (m,) class
    indices."""

    name = "cross_entropy"
    cpu_chunk_factor = 4  # its passes are several short ops per chunk: bigger chunks amortise their overhead

    def value(self, u, target):
        # log(sum_c exp(u_c - u_y)) = softplus(logsumexp_{c != y}(u_c - u_y)): exact when the right class wins by
        # a wide margin (the textbook logsumexp(u) - u_y cancels to 0 there while the loss is ~exp(-margin))
        u = u.double()
        labels = target.long().view(-1, 1)
        others = (u - u.gather(1, labels)).scatter(1, labels, -math.inf)
        rest = torch.logsumexp(others, dim=1)
        return float((rest.clamp_min(0) + torch.log1p(torch.exp(-rest.abs()))).mean())

    def check_target(self, outputs, target):
        m = outputs.shape[1]
        if outputs.dim() != 3:
            raise InvalidOptionError(
                f"loss='cross_entropy' needs outputs of shape (N, m, C) holding logits, "
                f"got shape {tuple(outputs.shape)}"
            )
        if target.shape != (m,):
            raise InvalidOptionError(
                f"target must have shape (m,) = ({m},) of class indices, got {tuple(target.shape)}")
        if target.dtype not in _INT_DTYPES:
            raise InvalidTypeError(f"cross_entropy target must hold integer class indices, got dtype {target.dtype}")
        c = outputs.shape[2]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
            raise InvalidOptionError(f"cross_entropy target must lie in [0, {c - 1}] (C={c} classes), got values in "
                                     f"[{int(target.min())}, {int(target.max())}]")

    def prepare_target(self, target, dtype):
        return target.long()

    def make_scorer(self, phi, target, chunk_elements, *, candidates=None, total=None, placement=None):
        return CrossEntropyScorer(phi, target, chunk_elements, placement, objective=self)

    def network_target(self, target, width):
        if width < 2:
            raise InvalidOptionError(
                "loss='cross_entropy' needs a network with C >= 2 outputs; use loss='logistic' for one logit")
        return target


def _check_options(k, loss, replacement, candidates, seed, n: int | None) -> int:
    get_loss(loss)
    k = check_int("k", k, 1)
    if not isinstance(replacement, bool):
        raise InvalidTypeError(f"replacement must be True or False, got {replacement!r}")
    if n is not None and not replacement and k > n:
        raise InvalidOptionError(f"k={k} exceeds the number of neurons N={n}; without replacement k must be <= N")
    check_int("candidates", candidates, 1, allow_none=True)
    check_int("seed", seed, 0)
    return k


def _check_magnitude(outputs: torch.Tensor, what: str) -> None:
    low, high = torch.aminmax(outputs.detach())  # one pass; NaN propagates, inf shows as +-inf
    low, high = float(low), float(high)
    finite = math.isfinite(low) and math.isfinite(high)
    if finite and max(-low, high) > MAX_MAGNITUDE:
        raise InvalidOptionError(f"{what} reach magnitude {max(-low, high):.3g}; values beyond "
                                 f"{MAX_MAGNITUDE:.0e} are not supported - rescale them")
    if not finite:
        n = outputs.shape[0]
        bad_rows = torch.nonzero(~torch.isfinite(outputs.reshape(n, -1)).all(dim=1)).flatten()
        raise InvalidOptionError(
            f"{what} contain NaN or inf (in {bad_rows.numel()} of {n} rows, first: row {int(bad_rows[0])}); "
            f"check the network's weights and inputs"
        )


def validate_inputs(outputs, target, k, loss, replacement, candidates, seed, *, check_rows: bool = True) -> int:
    """Check the explicit form's inputs; returns k as an int. Raises TypeError / ValueError naming the problem
    (the checks every loss shares here, the target's in ``get_loss(loss).check_target``).

    ``check_rows=False`` skips ``k <= N`` (for a rank that holds only a slice of the rows).
    """
    if not isinstance(outputs, torch.Tensor):
        raise InvalidTypeError(f"outputs must be a torch.Tensor of shape (N, m) or (N, m, C), "
                               f"got {type(outputs).__name__}")
    if not isinstance(target, torch.Tensor):
        raise InvalidTypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if not outputs.is_floating_point():
        raise InvalidTypeError(
            f"outputs must be a floating-point tensor, got dtype {outputs.dtype}; convert with outputs.float()")
    if outputs.dim() not in (2, 3):
        raise InvalidOptionError(
            f"outputs must have shape (N, m) or (N, m, C) - row i is neuron i's output over the m examples - "
            f"got shape {tuple(outputs.shape)}"
        )
    n, m = outputs.shape[0], outputs.shape[1]
    if n == 0 or m == 0 or (outputs.dim() == 3 and outputs.shape[2] == 0):
        raise InvalidOptionError(f"outputs must be non-empty, got shape {tuple(outputs.shape)}")
    if target.device != outputs.device:
        raise InvalidOptionError(
            f"target is on {target.device} but outputs are on {outputs.device}; move it with target.to(outputs.device)"
        )
    k = _check_options(k, loss, replacement, candidates, seed, n if check_rows else None)
    get_loss(loss).check_target(outputs, target)
    _check_magnitude(outputs, "outputs")
    return k


def validate_gram(gram, cross, k, replacement, candidates, seed, target_norm, examples) -> int:
    """Check the Gram form's inputs (squared loss); returns k as an int. Raises TypeError / ValueError naming the
    problem."""
    for name, value in (("gram", gram), ("cross", cross)):
        if not isinstance(value, torch.Tensor):
            raise InvalidTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise InvalidTypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise InvalidOptionError(
            f"gram must be a non-empty square (N, N) matrix of inner products <phi_i, phi_j>, got shape "
            f"{tuple(gram.shape)}")
    n = gram.shape[0]
    if cross.shape != (n,):
        raise InvalidOptionError(f"cross must have shape (N,) = ({n},) holding <phi_i, y>, got {tuple(cross.shape)}")
    if cross.device != gram.device:
        raise InvalidOptionError(f"cross is on {cross.device} but gram is on {gram.device}; put them on one device")
    k = _check_options(k, "squared", replacement, candidates, seed, n)
    _check_magnitude(gram, "gram")
    _check_magnitude(cross.reshape(n, 1), "cross")
    if not torch.equal(gram, gram.T):
        asym = float((gram - gram.T).abs().max())
        scale = float(gram.abs().max()) or 1.0
        if asym > 1e-6 * scale:
            raise InvalidOptionError(f"gram must be symmetric (<phi_i, phi_j> = <phi_j, phi_i>); it differs from its "
                                     f"transpose by up to {asym:.3g}")
    if target_norm is not None:
        from ..checks import check_number

        check_number("target_norm", target_norm, low=0)
    check_int("examples", examples, 1)
    return k
