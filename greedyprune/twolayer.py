"""Two-layer networks and their pruning with greedy forward selection.

A standard ``Linear(d, N) -> activation -> Linear(N, C)`` network with hidden weights ``w_i``, biases
``beta_i``, output weights ``V`` and output bias ``c`` is the paper's mean-field network
``f(x) = (1/N) sum_i sigma(x; theta_i)`` with one "neuron output" per hidden unit::

    sigma(x; theta_i) = N * V[:, i] * act(w_i . x + beta_i) + c

The paper's own parameterisation (Section 1; ``TwoLayerNet(parameterization="mean-field")``) divides the
output layer by N instead, ``f(x) = (1/N) sum_i b_i act(a_i . x + beta_i) + c`` with O(1) output weights
``b_i``, so that ``sigma(x; theta_i) = b_i act(a_i . x + beta_i) + c``; its output layer is a
:class:`ScaledLinear` with ``scale = 1/N``. In general ``sigma_i = N * s * V[:, i] * act(...) + c`` for an
output layer that multiplies its weights by ``s`` (1 for ``nn.Linear``).

Greedy forward selection picks a multiset S of k of these; the pruned network is their average,
which physically keeps the distinct neurons of S (output weights ``N * s * V[:, i] * count_i / (k * s')``
for the new layer's scale ``s'``) and the same output bias.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidOptionError, InvalidTypeError
from .metrics import measure_model
from .result import LayerRecord, PruneReport, PruneResult
from .selection import get_loss, greedy_forward_selection, loss_value

__all__ = ["ACTIVATIONS", "PARAMETERIZATIONS", "PRUNE_TO", "ScaledLinear", "output_scale", "check_two_layer_size",
           "TwoLayerNet", "is_two_layer", "hidden_features", "neuron_outputs", "build_pruned", "prune_two_layer",
           "DISTINCT_STEP_FACTOR", "TWO_LAYER_FORMAT", "save_two_layer", "load_two_layer"]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    # smooth activations for the theory's setting (bounded derivatives): softplus and GELU
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}


PARAMETERIZATIONS = ("standard", "mean-field")
PRUNE_TO = ("steps", "distinct")


class ScaledLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed ``scale`` in the forward pass:
    ``y = scale * (x @ W.T) + b``. The mean-field output layer is ``ScaledLinear(N, C, scale=1/N)``.

    ``scale`` is a constant of the module (not a parameter, not in the state dict), so the gradient of
    ``W`` is ``scale`` times that of a plain Linear; removing inputs keeps it (the function of the kept
    inputs is unchanged).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scale: float = 1.0,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise InvalidOptionError(f"scale must be a positive finite number, got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:g}"


def output_scale(layer: nn.Linear) -> float:
    """The factor an output layer multiplies its weights by (``ScaledLinear.scale``; 1 for ``nn.Linear``)."""
    return float(getattr(layer, "scale", 1.0))


def check_two_layer_size(in_features: int, hidden: int, out_features: int = 1, examples: int = 0) -> None:
    """ValueError if a two-layer net of this size - its weights, gradients and momentum, and, to prune it on
    ``examples`` examples, its neurons' outputs twice - would not fit in this machine's memory."""
    from .checks import check_fits_in_memory

    nbytes = 4 * hidden * (3 * (in_features + out_features + 1) + 2 * examples * out_features)
    check_fits_in_memory(nbytes, f"a two-layer net of width {hidden:,} on {in_features:,} inputs"
                         + (f", pruned on {examples:,} examples," if examples else ""),
                         "use a smaller width (--widths / --width)")


class TwoLayerNet(nn.Sequential):
    """``Linear(in_features, hidden) -> activation -> Linear(hidden, out_features)``.

    It is an ``nn.Sequential`` (``net[0]``, ``net[1]``, ``net[2]``), so anything that works on such a
    sequential works on it. ``out_features=1`` gives a single logit / regression output of shape (batch,).

    Args:
        in_features: input dimension d.
        hidden: number of hidden neurons N.
        activation: one of "relu", "tanh", "sigmoid", "softplus", "gelu" (tanh and sigmoid are bounded
            with bounded derivatives, as the paper's Assumption 1 asks).
        out_features: number of outputs (1 for binary / regression).
        init: "default" (PyTorch's Linear init) or "gaussian" - the theory's initialisation: hidden
            weights ~ N(0, 1) (so ``w . x ~ N(0, 1)`` for unit-norm inputs), zero biases, and output
            weights ``v_i ~ N(0, 1) / N``, so that each neuron's ``N v_i`` is O(1) as in the mean-field form.
            With ``parameterization="mean-field"`` the output weights are ``b_i ~ N(0, 1)`` (the same
            function at initialisation; the output layer divides by N). Default: "default" for the
            standard parameterisation, "gaussian" for the mean-field one.
        seed: if given, the initialisation is drawn from this seed (independent of the global RNG).
        parameterization: "standard" (``Linear(N, C)``, the default) or "mean-field" - the paper's
            ``f(x) = (1/N) sum_i b_i act(a_i . x)``: the output layer is ``ScaledLinear(N, C, scale=1/N)``.
            Trained by :func:`greedyprune.training.loop.pretrain`, a mean-field net takes steps of ``lr * N``
            on its neurons' parameters (:meth:`greedyprune_lr_scales`), the mean-field gradient flow in
            which every neuron moves O(1) per step whatever N is; the output bias takes ``lr``.
    """

    def __init__(self, in_features: int, hidden: int, activation: str = "relu", out_features: int = 1,
                 init: str | None = None, seed: int | None = None, parameterization: str = "standard"):
        for name, value in (("in_features", in_features), ("hidden", hidden), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{name} must be a positive int, got {value!r}")
        if activation not in ACTIVATIONS:
            raise InvalidOptionError(f"unknown activation {activation!r}; expected one of {tuple(ACTIVATIONS)}")
        if parameterization not in PARAMETERIZATIONS:
            raise InvalidOptionError(
                f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}")
        mean_field = parameterization == "mean-field"
        check_two_layer_size(in_features, hidden, out_features)  # before anything is allocated
        if init is None:
            init = "gaussian" if mean_field else "default"
        if init not in ("default", "gaussian"):
            raise InvalidOptionError(f"unknown init {init!r}; expected 'default' or 'gaussian'")

        def output_layer():
            return ScaledLinear(hidden, out_features, scale=1.0 / hidden) if mean_field else nn.Linear(hidden,
                                                                                                        out_features)
        if seed is None:
            super().__init__(nn.Linear(in_features, hidden), ACTIVATIONS[activation](), output_layer())
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                super().__init__(nn.Linear(in_features, hidden), ACTIVATIONS[activation](), output_layer())
        self.activation_name = activation
        self.parameterization = parameterization
        if init == "gaussian":
            gen = None if seed is None else torch.Generator().manual_seed(seed)  # None: the global RNG
            with torch.no_grad():
                self[0].weight.copy_(torch.randn(self[0].weight.shape, generator=gen))
                self[0].bias.zero_()
                out = torch.randn(self[2].weight.shape, generator=gen)
                self[2].weight.copy_(out if mean_field else out / hidden)
                self[2].bias.zero_()

    @property
    def in_features(self) -> int:
        return self[0].in_features

    @property
    def hidden(self) -> int:
        return self[0].out_features

    @property
    def out_features(self) -> int:
        return self[2].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out.squeeze(-1) if self.out_features == 1 else out

    def greedyprune_lr_scales(self) -> list[tuple[list[nn.Parameter], float]]:
        """Learning-rate multipliers per parameter group, read by :func:`greedyprune.training.loop.pretrain`:
        ``[(params, 1.0)]`` for the standard parameterisation; for the mean-field one the neurons'
        parameters (``a_i``, ``beta_i``, ``b_i``) take ``N`` times the learning rate and the output bias 1."""
        if self.parameterization != "mean-field":
            return [(list(self.parameters()), 1.0)]
        neurons = [self[0].weight, self[0].bias, self[2].weight]
        rest = [p for p in self.parameters() if all(p is not q for q in neurons)]
        return [(neurons, float(self.hidden)), (rest, 1.0)]

    def extra_repr(self) -> str:
        extra = ", parameterization=mean-field" if self.parameterization == "mean-field" else ""
        return f"in_features={self.in_features}, hidden={self.hidden}, out_features={self.out_features}{extra}"


def _layers(model: nn.Module) -> tuple[nn.Linear, nn.Module, nn.Linear]:
    """The (Linear, activation, Linear) of a TwoLayerNet or a 3-module nn.Sequential, validated."""
    if not isinstance(model, nn.Sequential) or len(model) != 3:
        raise InvalidTypeError(
            "prune_two_layer needs a greedyprune.TwoLayerNet or an nn.Sequential(nn.Linear, activation, nn.Linear); "
            f"got {type(model).__name__}" + (f" with {len(model)} modules" if isinstance(model, nn.Sequential) else "")
        )
    first, act, second = model[0], model[1], model[2]
    if not isinstance(first, nn.Linear) or not isinstance(second, nn.Linear):
        raise InvalidTypeError(f"modules 0 and 2 must be nn.Linear, got {type(first).__name__} and "
                               f"{type(second).__name__}")
    if first.out_features != second.in_features:
        raise InvalidOptionError(f"hidden sizes do not match: Linear 0 has {first.out_features} outputs, "
                                 f"Linear 2 has {second.in_features} inputs")
    if list(act.parameters()) or list(act.buffers()):
        raise InvalidTypeError(f"the activation {type(act).__name__} has parameters or buffers (per-neuron state); "
                               "only parameter-free activations can be pruned neuron by neuron")
    _check_elementwise(act, first.out_features, first.weight.dtype)
    return first, act, second


def is_two_layer(model: nn.Module) -> bool:
    """Whether ``model`` is a network :func:`prune_two_layer` prunes (a TwoLayerNet or Sequential(Linear,
    element-wise activation, Linear))."""
    try:
        _layers(model)
    except (TypeError, ValueError):
        return False
    return True


def _check_elementwise(act: nn.Module, width: int, dtype: torch.dtype = torch.float64) -> None:
    """Refuse an activation that mixes units or examples (softmax, normalisation): a neuron's output must
    depend on its own pre-activation alone, or removing other neurons would change it. Probed in ``dtype``,
    the dtype the network computes in."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, max(width, 2), generator=g, dtype=torch.float64).to(dtype)
    moved = x.clone()
    moved[0, 0] += 1.5
    try:
        with torch.no_grad():
            y, y_moved = act(x), act(moved)
    except Exception as exc:  # noqa: BLE001 - reported as the activation's problem
        raise InvalidTypeError(f"the activation {type(act).__name__} cannot be applied to a (batch, {width}) tensor "
                               f"({type(exc).__name__}: {exc})") from exc
    same = torch.ones_like(y, dtype=torch.bool)
    same[0, 0] = False
    if y.shape != x.shape or not torch.equal(y[same], y_moved[same]):
        raise InvalidTypeError(f"the activation {type(act).__name__} is not element-wise (changing one neuron's input "
                               f"changed other outputs, as softmax or normalisation do), so neurons cannot be pruned "
                               f"one by one; use an element-wise activation such as ReLU, tanh or GELU")


@torch.no_grad()
def hidden_features(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The hidden activations ``act(W x + beta)``, shape (m, N)."""
    first, act, _ = _layers(model)
    return act(first(X))


@torch.no_grad()
def neuron_outputs(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Each hidden neuron's output vector over the data: ``N * s * V[:, i] * act(w_i . x + beta_i) + c``
    (``s`` the output layer's scale: 1, or 1/N for the mean-field form, where this is ``b_i act(...) + c``).

    Returns (N, m) when the network has one output, else (N, m, C). The mean over the N rows is the
    network's output on X.
    """
    _, _, second = _layers(model)
    h = hidden_features(model, X)  # (m, N)
    n = h.shape[1]
    v = second.weight * (n * output_scale(second))  # (C, N)
    c = second.bias if second.bias is not None else torch.zeros(second.out_features, device=h.device, dtype=h.dtype)
    ht = h.t().contiguous()  # (N, m); a contiguous result is what the selection engine reads fastest
    if second.out_features == 1:
        return ht * v[0].unsqueeze(1) + c[0]
    return ht.unsqueeze(2) * v.t().unsqueeze(1) + c.view(1, 1, -1)


def build_pruned(model: nn.Module, counts: torch.Tensor) -> nn.Module:
    """The physically smaller network that is the average of the multiset given by ``counts`` (N,).

    A mean-field :class:`TwoLayerNet` stays mean-field: its pruned net of n' neurons divides by n'."""
    first, act, second = _layers(model)
    counts = counts.to(first.weight.device)
    n = first.out_features
    if counts.shape != (n,):
        raise InvalidOptionError(f"counts must have shape ({n},), got {tuple(counts.shape)}")
    keep = torch.nonzero(counts, as_tuple=False).flatten()
    if keep.numel() == 0:
        raise InvalidOptionError("counts selects no neuron")
    k = int(counts.sum())
    mean_field = getattr(model, "parameterization", "standard") == "mean-field"
    new_scale = 1.0 / keep.numel() if mean_field else output_scale(second)
    scale = counts[keep].to(second.weight.dtype) * (n * output_scale(second) / (k * new_scale))
    new_first = nn.Linear(first.in_features, keep.numel(), bias=first.bias is not None,
                          device=first.weight.device, dtype=first.weight.dtype)
    layer = dict(bias=second.bias is not None, device=second.weight.device, dtype=second.weight.dtype)
    new_second = (ScaledLinear(keep.numel(), second.out_features, scale=new_scale, **layer)
                  if isinstance(second, ScaledLinear) or mean_field else nn.Linear(keep.numel(), second.out_features,
                                                                                     **layer))
    with torch.no_grad():
        new_first.weight.copy_(first.weight[keep])
        if first.bias is not None:
            new_first.bias.copy_(first.bias[keep])
        new_second.weight.copy_(second.weight[:, keep] * scale)
        if second.bias is not None:
            new_second.bias.copy_(second.bias)
    if isinstance(model, TwoLayerNet):
        pruned = copy.deepcopy(model)
        pruned[0], pruned[2] = new_first, new_second
    else:
        pruned = nn.Sequential(new_first, copy.deepcopy(act), new_second)
    pruned.train(model.training)
    return pruned


def prune_two_layer(model: nn.Module, X: torch.Tensor, y: torch.Tensor, k: int, loss: str = "logistic",
                    prune_to: str = "steps", max_steps: int | None = None, **selection_options) -> PruneResult:
    """Prune the hidden layer of a two-layer network to at most k neurons with greedy forward selection.

    Args:
        model: a :class:`TwoLayerNet` or any ``nn.Sequential(nn.Linear, activation, nn.Linear)``.
        X: (m, d) inputs the selection is fitted on.
        y: targets as :func:`greedy_forward_selection` expects for ``loss`` ((m,) {0,1} labels for
            "logistic", (m,) floats or (m, C) for "squared", (m,) class indices for "cross_entropy").
        k: with ``prune_to="steps"``, selection steps (the pruned net has ``len(result.selected) <= k``
            hidden neurons); with ``prune_to="distinct"``, distinct neurons kept.
        loss: "logistic" (default; single-logit nets), "squared" or "cross_entropy" (C-output nets).
        prune_to: what k counts. "steps" (default): k steps of Algorithm 1; with replacement a neuron can
            be chosen again, so the net keeps at most k neurons (few, early in training). "distinct": run
            the selection until k distinct neurons are chosen ("pruned to k hidden nodes"), or until
            ``max_steps`` steps, whichever comes first; ``result.k`` is the steps taken. Needs k <= width.
        max_steps: cap on the steps of ``prune_to="distinct"`` (default ``DISTINCT_STEP_FACTOR * k``);
            ``result.selection.reached`` says whether k distinct neurons were reached.
        **selection_options: ``replacement``, ``candidates``, ``seed``, ``progress``, ... passed on.

    Returns:
        A :class:`~greedyprune.result.PruneResult`: ``.model`` is a new model of the same kind with only
        the distinct selected neurons, whose output on X equals ``.selection.output`` up to float
        rounding (the input model is left unchanged); ``.kept["hidden"]`` the kept neurons;
        ``.selection.dense_loss`` the dense network's loss on (X, y). It unpacks as
        ``pruned_model, selection = prune_two_layer(...)``.
    """
    first, _, second = _layers(model)
    if prune_to not in PRUNE_TO:
        raise InvalidOptionError(
            f"unknown prune_to {prune_to!r}; expected 'steps' (k selection steps) or 'distinct' (k "
            f"distinct neurons)")
    if prune_to == "distinct" and isinstance(k, int) and not isinstance(k, bool) and k > first.out_features:
        raise InvalidOptionError(
            f"prune_to='distinct' with k={k}: the net has only {first.out_features} hidden neurons, so "
            f"it cannot keep {k} distinct ones; lower k to at most {first.out_features} or use "
            f"prune_to='steps'")
    if not isinstance(X, torch.Tensor) or X.dim() != 2 or X.shape[1] != first.in_features:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise InvalidOptionError(f"X must be a tensor of shape (m, {first.in_features}), got {shape}")
    y = get_loss(loss).network_target(y, second.out_features)  # refuses a width the loss cannot read
    X = X.to(device=first.weight.device, dtype=first.weight.dtype)
    y = y.to(first.weight.device)
    phi = neuron_outputs(model, X)
    start = time.perf_counter()
    result = _select(phi, y, k, loss, prune_to, max_steps, selection_options)
    dense_loss = loss_value(phi.mean(dim=0), y, loss)
    result.dense_loss = dense_loss
    pruned = build_pruned(model, result.counts)
    distinct = result.selected.tolist()
    seconds = time.perf_counter() - start
    # the loss is the selection's (the averaged outputs' loss on X), not a second evaluation of the networks
    report = PruneReport.from_measures(measure_model(model, X[:1]), measure_model(pruned, X[:1]),
                                       loss_before=dense_loss, loss_after=float(result.losses[-1]),
                                       eval_examples=int(X.shape[0]), input_shape=list(X.shape[1:]), seconds=seconds)
    layer = LayerRecord(name="hidden", units=first.out_features, kept=len(distinct), steps=result.k,
                        rule=f"k={k} {prune_to}", loss=float(result.losses[-1]), seconds=seconds)
    return PruneResult(model=pruned, kept={"hidden": distinct}, counts={"hidden": result.counts.tolist()},
                       report=report, selection=result, layers=[layer], method="gfs")


DISTINCT_STEP_FACTOR = 10
"""Default cap of ``prune_to="distinct"``: at most this many times k selection steps."""


def _select(phi, y, k, loss, prune_to, max_steps, options):
    """Algorithm 1 for k steps, or (``prune_to="distinct"``) for the fewest steps that choose k distinct
    neurons: one run that stops after the step that chose the k-th distinct neuron, or at the cap - the first
    T steps of a longer run are exactly a T-step run."""
    from .checks import check_int
    from .selection import SelectionResult

    if prune_to == "steps" or not options.get("replacement", True):
        result = greedy_forward_selection(phi, y, k, loss=loss, **options)
        result.reached = prune_to == "steps" or int(result.selected.numel()) >= k
        return result
    k = check_int("k", k, 1)
    cap = check_int("max_steps", DISTINCT_STEP_FACTOR * k if max_steps is None else max_steps, k)
    result = greedy_forward_selection(phi, y, cap, loss=loss, distinct=k, **options)
    cut = result.k
    reached = int(result.selected.numel()) >= k
    weights = result.counts.to(device=phi.device, dtype=torch.float64) / cut
    output = torch.tensordot(weights, phi.to(torch.float64), dims=1).to(result.output.dtype)
    out = SelectionResult(indices=result.indices, counts=result.counts, losses=result.losses, output=output,
                          loss=loss, replacement=True, candidates=result.candidates, seed=result.seed)
    out.reached = reached
    return out


TWO_LAYER_FORMAT = "greedyprune-twolayer-v1"


def save_two_layer(path, model: nn.Module) -> None:
    """Save a two-layer net as its sizes, activation and weights (atomic, checksummed, no pickle)."""
    from .fileio import save_torch

    first, act, second = _layers(model)
    name = next((k for k, cls in ACTIVATIONS.items() if type(act) is cls), None)
    if name is None:
        raise InvalidOptionError(
            f"cannot save a two-layer net with activation {type(act).__name__}; known: {tuple(ACTIVATIONS)}")
    save_torch(path, {"format": TWO_LAYER_FORMAT, "in_features": first.in_features, "hidden": first.out_features,
                      "out_features": second.out_features, "activation": name,
                      "squeeze": isinstance(model, TwoLayerNet),
                      "parameterization": getattr(model, "parameterization", "standard"),
                      "output_scale": output_scale(second),
                      "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}})


def load_two_layer(path) -> nn.Module:
    """Load a net written by :func:`save_two_layer` (weights-only read, checksum verified)."""
    from .fileio import load_torch

    payload = load_torch(path, what="two-layer network", require_checksum=True, offer_trust=False)
    if not isinstance(payload, dict) or payload.get("format") != TWO_LAYER_FORMAT:
        raise InvalidOptionError(
            f"{path} is not a two-layer network saved by greedyprune ({TWO_LAYER_FORMAT!r} expected)")
    if payload["squeeze"]:
        model = TwoLayerNet(payload["in_features"], payload["hidden"], payload["activation"], payload["out_features"],
                            parameterization=payload.get("parameterization", "standard"))
    else:
        scale = float(payload.get("output_scale", 1.0))
        out = (ScaledLinear(payload["hidden"], payload["out_features"], scale=scale) if scale != 1.0
               else nn.Linear(payload["hidden"], payload["out_features"]))
        model = nn.Sequential(nn.Linear(payload["in_features"], payload["hidden"]),
                              ACTIVATIONS[payload["activation"]](), out)
    model.load_state_dict(payload["state_dict"])
    return model
