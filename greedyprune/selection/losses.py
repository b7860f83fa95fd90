"""The losses greedy selection minimises, and the checks of its inputs."""
from __future__ import annotations

import math

import torch

from ..checks import check_int
from ..errors import InvalidOptionError, InvalidTypeError

__all__ = ["LOSSES", "MAX_MAGNITUDE", "loss_value", "validate_inputs", "validate_gram"]

LOSSES = ("squared", "logistic", "cross_entropy")
MAX_MAGNITUDE = 1e15
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def loss_value(u: torch.Tensor, target: torch.Tensor, loss: str) -> float:
    """The loss ``l(u)`` of one output (m,) or (m, C) against the target, in float64.

    squared: ``||u - y||^2 / m`` (summed over outputs when C > 1); logistic: mean binary
    cross-entropy with ``u`` as logits; cross_entropy: mean softmax cross-entropy with ``u`` as logits. Both
    are computed in log space, so they stay exact for saturated logits (a per-example loss of ``exp(-100)``).
    """
    u = u.double()
    if loss == "squared":
        return float(((u - target.double()) ** 2).sum() / u.shape[0])
    if loss == "logistic":
        # softplus((1 - 2y) u) as max(t, 0) + log1p(exp(-|t|)): exact for saturated logits, where
        # binary_cross_entropy_with_logits rounds log(1 + exp(-100)) to 0
        t = (1.0 - 2.0 * target.double()) * u
        return float((t.clamp_min(0) + torch.log1p(torch.exp(-t.abs()))).mean())
    if loss == "cross_entropy":
        # log(sum_c exp(u_c - u_y)) = softplus(logsumexp_{c != y}(u_c - u_y)): exact when the right class wins by
        # a wide margin (the textbook logsumexp(u) - u_y cancels to 0 there while the loss is ~exp(-margin))
        labels = target.long().view(-1, 1)
        others = (u - u.gather(1, labels)).scatter(1, labels, -math.inf)
        rest = torch.logsumexp(others, dim=1)
        return float((rest.clamp_min(0) + torch.log1p(torch.exp(-rest.abs()))).mean())
    raise InvalidOptionError(f"unknown loss {loss!r}; expected one of {LOSSES}")


def _check_options(k, loss, replacement, candidates, seed, n: int | None) -> int:
    if loss not in LOSSES:
        raise InvalidOptionError(f"unknown loss {loss!r}; expected one of {LOSSES}")
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
    """Check the explicit form's inputs; returns k as an int. Raises TypeError / ValueError naming the problem.

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

    if loss == "cross_entropy":
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
    elif loss == "logistic":
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
    else:  # squared
        expected = tuple(outputs.shape[1:])
        if tuple(target.shape) != expected:
            raise InvalidOptionError(
                f"target must have shape {expected} (the outputs' shape without N), got {tuple(target.shape)}")
        if not target.is_floating_point():
            raise InvalidTypeError(
                f"loss='squared' needs a floating-point target, got dtype {target.dtype}; use target.float()")
        if not bool(torch.isfinite(target).all()):
            raise InvalidOptionError("target contains NaN or inf")
    _check_magnitude(outputs, "outputs")
    return k


def validate_gram(gram, cross, k, replacement, candidates, seed, target_norm, examples) -> int:
    """Check the Gram form's inputs (squared loss); returns k as an int."""
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
