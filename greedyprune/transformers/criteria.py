"""What to keep in one block, by each method, from the statistics of the block's output projection.

A *block* is an output projection ``y = W x + b`` (W: d x D) whose D input channels form N units of
``group`` channels each: the FFN's output projection (units = intermediate neurons, group 1) or the
attention's output projection (units = heads, group = head size). Unit i's contribution to the block
output at token t is ``P_i(t) = W[:, ch(i)] x_ch(i)(t)``, and the dense output is ``y = sum_i P_i + b``.

GFS (the local objective of "Greedy Optimization Provably Wins the Lottery", Algorithm 1 with
replacement): ``phi_i = N * P_i`` over all calibration tokens, target ``y - b``; the engine minimises the
squared error of ``(1/k) sum_{S} phi_i`` from the N x N Gram matrix

    <phi_i, phi_j> = N^2 sum_{c in ch(i), c' in ch(j)} (X'X)[c, c'] (W'W)[c, c'],   <phi_i, y> = N sum_j G_ij,

which for an FFN neuron is ``N^2 (a_i . a_j)(w2_i . w2_j)``. The (N x tokens x d) tensor is never formed.
A unit chosen ``count_i`` times in k steps keeps its channels with weight ``N * count_i / k``.

Two more greedy forward selections on the same block objective, for the block's own parameterisation:

* ``gfs-sum``: the standard (sum) parameterisation. Kept units keep their weights, the bias takes the
  removed units' mean contribution, and each step adds (without replacement) the unit that most lowers
  ``||sum_S (P_i - mean P_i) - (y - mean y)||^2``, from the centred unit Gram: O(N) per step.
* ``gfs-ls``: forward selection with least-squares weights (orthogonal matching pursuit on the block's
  inputs): each step adds the unit whose channels most lower the error of the best least-squares fit of
  y on the chosen channels, from the centred input Gram (a rank-``group`` update per step, never a
  refit from scratch). It picks the units for ``refit="lstsq"``; without a refit it keeps the chosen
  units' own weights and, like ``gfs-sum``, compensates the bias.

Baselines (one score per unit, the top ``n_keep`` kept, ties to the lower index):

* ``magnitude``: ``sum_c ||W_in[c, :]|| ||W[:, c]||`` (for an FFN neuron ``||w1_i|| ||w2_i||``; for a head,
  its value-projection rows against its output-projection columns);
* ``wanda`` (Wanda-sp, An et al. 2024): ``sum_c rms_t(x_c) * mean_j |W[j, c]|``;
* ``flap`` (An et al. 2024, fluctuation metric WIFV): ``var_t(x_c) * ||W[:, c]||^2``, summed over a unit's
  channels after squaring for heads as FLAP does, with bias compensation: the removed channels' mean
  contribution ``W[:, removed] mean(x_removed)`` is added to b;
* ``random``: a uniform draw of ``n_keep`` units (seeded).

``refit="lstsq"`` re-solves the kept columns of W and the bias by ridge regression on the calibration
tokens, towards the kept units' pretrained columns (see :func:`refit_lstsq`).

Each method is a :class:`Criterion` subclass registered by name with :func:`register_criterion` (``taylor``,
for decoders, too); every use of a method's name goes through the registry (:func:`get_criterion`). To add one,
subclass :class:`Criterion` (or :class:`ScoreCriterion` for a one-score baseline) and decorate it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..checks import check_choice
from ..errors import InvalidOptionError, InvalidTypeError
from ..selection.block import ReaderProblem, ridge_refit_with_bias, select_units
from ..selection.engine import MAX_STEPS, greedy_forward_selection
from ..selection.result import SelectionResult
from .stats import InputStats
from .taylor import taylor_scores

__all__ = ["BIAS_COMPENSATED", "CRITERIA", "GREEDY", "METHODS", "NEEDS_FULL_STATS", "Criterion", "Plan",
           "ScoreCriterion", "channels_of", "criterion_names", "get_criterion", "gfs_select", "keep_count",
           "ls_select", "plan_block", "plan_from_keep", "reconstruction_error", "refit_lstsq", "register_criterion",
           "sum_select", "unit_gram", "unit_scores"]

def keep_count(fraction: float, n: int) -> int:
    """Units kept for a keep fraction: ``round(fraction * n)`` (halves up), at least 1."""
    return max(1, min(n, int(fraction * n + 0.5)))


def _channel_products(weight: torch.Tensor, stats: InputStats, group: int, centred: bool = False) -> torch.Tensor:
    """``G[i, j] = sum over the channel blocks of (X'X) * (W'W)`` = ``sum_t <P_i(t), P_j(t)>`` (N, N);
    ``centred``: of the contributions minus their means over the tokens (the covariance for X'X)."""
    w = weight.to(torch.float64)
    per_channel = (stats.covariance if centred else stats.gram) * (w.T @ w)
    n = per_channel.shape[0] // group
    return per_channel.reshape(n, group, n, group).sum(dim=(1, 3))


def unit_gram(weight: torch.Tensor, stats: InputStats, group: int = 1) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The Gram form of the block's local objective: ``(gram, cross, target_norm)`` for the engine.

    Args:
        weight: the output projection W (d, D).
        stats: its input statistics with the full Gram.
        group: channels per unit (D = N * group).

    Returns:
        ``gram[i, j] = <phi_i, phi_j>``, ``cross[i] = <phi_i, y>`` and ``||y||^2`` with ``phi_i = N P_i`` and
        ``y = sum_i P_i`` over all calibration tokens (float64).
    """
    g = _channel_products(weight, stats, group)
    n = g.shape[0]
    return (n * n) * g, n * g.sum(dim=1), float(g.sum())


def gfs_select(gram: torch.Tensor, cross: torch.Tensor, target_norm: float, tokens: int, n_keep: int, *,
               replacement: bool = True, max_steps: int | None = None) -> SelectionResult:
    """Algorithm 1 run until ``n_keep`` distinct units are chosen.

    With replacement, the number of steps this takes is not known in advance: the engine's loop stops after
    the step that chose the ``n_keep``-th distinct unit (``distinct=``; the first T steps of a longer run are
    exactly a T-step run). ``max_steps`` (default ``50 * N``) bounds the steps; if the selection keeps
    re-choosing the units it has before reaching ``n_keep``, the result holds fewer (and a warning says so).

    Returns:
        The (cut) :class:`SelectionResult`: its ``counts`` weight the kept units.
    """
    n = gram.shape[0]
    if not replacement:
        return greedy_forward_selection(None, None, n_keep, replacement=False, gram=gram, cross=cross,
                                        target_norm=target_norm, examples=tokens)
    limit = min(MAX_STEPS, 50 * n if max_steps is None else max_steps)
    res = greedy_forward_selection(None, None, limit, replacement=True, gram=gram, cross=cross,
                                   target_norm=target_norm, examples=tokens, distinct=n_keep)
    distinct = int((res.counts > 0).sum())
    if distinct < n_keep:
        import warnings

        warnings.warn(f"greedy selection chose {distinct} distinct units of {n} in {res.k} steps, fewer than the "
                      f"{n_keep} asked for (max_steps={limit}); keeping {distinct}", stacklevel=3)
    return _cut(res, res.k, n_keep)


def _cut(res: SelectionResult, steps: int, n_keep: int) -> SelectionResult:
    indices = res.indices[:steps].clone()
    counts = torch.bincount(indices, minlength=res.num_neurons)
    return SelectionResult(indices=indices, counts=counts, losses=res.losses[:steps].clone(), output=None,
                           loss=res.loss, replacement=res.replacement, target_distinct=n_keep, steps_run=res.k)


def sum_select(weight: torch.Tensor, stats: InputStats, group: int, n_keep: int) -> torch.Tensor:
    """``gfs-sum``: greedy forward selection of ``n_keep`` units for the sum ``sum_S P_i`` (see the module
    docstring), from the centred unit Gram. Returns the chosen units in the order chosen."""
    g = _channel_products(weight, stats, group, centred=True)
    cross = g.sum(dim=1)  # <P_j - mean, y - mean y>
    diag = torch.diagonal(g)
    current = torch.zeros_like(cross)  # <P_j, sum of the chosen>
    free = torch.ones(g.shape[0], dtype=torch.bool)
    order = []
    for _ in range(n_keep):
        # ||s + P_j - y||^2 - ||s - y||^2 = ||P_j||^2 + 2 <P_j, s> - 2 <P_j, y>
        delta = torch.where(free, diag + 2.0 * (current - cross), torch.inf)
        j = int(torch.argmin(delta))
        order.append(j)
        free[j] = False
        current += g[:, j]
    return torch.tensor(order, dtype=torch.long)


def ls_select(weight: torch.Tensor, stats: InputStats, group: int, n_keep: int) -> torch.Tensor:
    """``gfs-ls``: forward selection of ``n_keep`` units with least-squares weights (see the module docstring),
    by the shared block-reconstruction engine (:func:`greedyprune.selection.block.select_units`) on the
    centred input Gram, with the dense block's output ``W x`` as the target. Returns the chosen units in the
    order chosen."""
    w = weight.to(torch.float64)
    cov = stats.covariance
    n = cov.shape[0] // group
    problem = ReaderProblem(gram=cov, cross=cov @ w.T, target_sq=torch.einsum("dc,ce,de->d", w, cov, w),
                            unit_columns=torch.arange(n * group).reshape(n, group),
                            fixed=torch.empty(0, dtype=torch.long), tokens=stats.tokens)
    return select_units([problem], n_keep).order


@dataclass
class Plan:
    """What a method keeps in one block: unit indices, a weight per unit (0 for removed) applied to its
    channels of W, a change to the bias, and the selection's counts (GFS) ."""

    keep: torch.Tensor  # (n_keep,) ascending unit indices
    scale: torch.Tensor  # (N,) float64
    bias_delta: torch.Tensor | None  # (d,) float64 or None
    counts: torch.Tensor | None
    selection: SelectionResult | None


def _kept_plan(weight: torch.Tensor, stats: InputStats | None, group: int, keep: torch.Tensor,
               compensate: bool) -> Plan:
    n = weight.shape[1] // group
    keep = keep.sort().values
    scale = torch.zeros(n, dtype=torch.float64)
    scale[keep] = 1.0
    bias_delta = None
    if compensate:
        removed = (scale == 0).repeat_interleave(group)
        bias_delta = weight.to(torch.float64)[:, removed] @ stats.mean[removed]
    return Plan(keep=keep, scale=scale, bias_delta=bias_delta, counts=None, selection=None)


class Criterion:
    """How one block's units are chosen: subclass it, set the class attributes, implement :meth:`rank` (or,
    for a criterion that weights the units it keeps, :meth:`plan`) and register it with
    :func:`register_criterion`; ``prune_transformer(method=NAME)`` and ``--method NAME`` then accept it.

    A method receives the block's output projection ``weight`` (d, D), its input statistics ``stats``
    (:class:`~greedyprune.transformers.stats.InputStats`; None unless :attr:`needs_stats`, with the full Gram
    only if :attr:`needs_full_stats`, or always both when the refit runs), ``group`` channels per unit,
    ``weight_in`` (the rows that feed each input channel), the seeded ``generator`` and, for a criterion with
    :meth:`model_scores`, this block's ``scores``.
    """

    name: ClassVar[str] = ""
    """``method=`` / ``--method`` name."""
    summary: ClassVar[str] = ""
    """A few words on what it does (messages name it)."""
    greedy: ClassVar[bool] = False
    """A greedy forward selection (else a one-score baseline)."""
    needs_full_stats: ClassVar[bool] = False
    """Reads the whole Gram of the inputs (else their diagonal and means are enough)."""
    needs_stats: ClassVar[bool] = False
    """Reads the input statistics at all (the full Gram only with :attr:`needs_full_stats`)."""
    bias_compensated: ClassVar[bool] = False
    """Keeps the kept units' own weights and moves the removed units' mean contribution into the bias."""
    ranked: ClassVar[bool] = True
    """:meth:`rank` orders all units, so a quota per key/value group can be kept (False: only :meth:`plan`)."""
    encoders: ClassVar[bool] = True
    """Applies to encoders too (False: decoders only, e.g. it needs a language-model loss)."""
    control: ClassVar[bool] = False
    """A control (the random draw): listed after the criteria in comparisons."""

    def rank(self, weight: torch.Tensor, stats: InputStats | None, group: int, count: int, *,
             weight_in: torch.Tensor | None = None, generator: torch.Generator | None = None,
             scores: torch.Tensor | None = None) -> torch.Tensor:
        """The first ``count`` units in the order this criterion keeps them (a LongTensor)."""
        raise NotImplementedError(f"criterion {self.name!r} does not rank units")

    def plan(self, weight: torch.Tensor, stats: InputStats | None, group: int, n_keep: int, *,
             weight_in: torch.Tensor | None = None, generator: torch.Generator | None = None,
             replacement: bool = True, max_steps: int | None = None, scores: torch.Tensor | None = None) -> Plan:
        """What to keep in the block: by default the first ``n_keep`` units of :meth:`rank`, with their own
        weights (:meth:`keep_plan`)."""
        keep = self.rank(weight, stats, group, n_keep, weight_in=weight_in, generator=generator, scores=scores)
        return self.keep_plan(weight, stats, group, keep)

    def keep_plan(self, weight: torch.Tensor, stats: InputStats | None, group: int, keep: torch.Tensor) -> Plan:
        """Keep the units ``keep`` with their own weights (scale 1); a :attr:`bias_compensated` criterion's bias
        takes the removed channels' mean contribution ``W[:, removed] mean(x)``."""
        return _kept_plan(weight, stats, group, keep, self.bias_compensated)

    def model_scores(self, model, base, batches: list[dict]) -> list[dict] | None:
        """Scores computed once on the whole dense decoder before any layer is pruned, per layer
        ``{"mlp": (N,), "query": (H,), "kv": (KV,)}``, handed to :meth:`rank` as each block's ``scores``;
        None (the default): each block is scored from its own statistics."""
        return None


class ScoreCriterion(Criterion):
    """A one-score baseline: :meth:`score` gives each unit a score, the highest are kept (ties to the lower
    index); ``scores`` handed to :meth:`rank` replace it."""

    def score(self, weight: torch.Tensor, stats: InputStats | None, group: int,
              weight_in: torch.Tensor | None = None) -> torch.Tensor:
        """One score per unit (higher is kept first)."""
        raise NotImplementedError

    def rank(self, weight, stats, group, count, *, weight_in=None, generator=None, scores=None):
        s = scores if scores is not None else self.score(weight, stats, group, weight_in)
        return torch.sort(-s, stable=True).indices[:count]


CRITERIA: dict[str, Criterion] = {}
"""The registered criteria by name, in registration order (:func:`register_criterion`)."""


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: register a :class:`Criterion` subclass under its ``name`` (an instance of it is kept in
    :data:`CRITERIA`). Refuses a name already taken."""
    if not (isinstance(cls, type) and issubclass(cls, Criterion)):
        raise InvalidTypeError(f"register_criterion takes a Criterion subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name:
        raise InvalidOptionError(f"criterion class {cls.__name__} needs a name (a non-empty str)")
    if name in CRITERIA:
        raise InvalidOptionError(f"criterion {name!r} is already registered ({type(CRITERIA[name]).__name__}); "
                                 f"choose another name")
    CRITERIA[name] = cls()
    return cls


def criterion_names(*, decoder: bool = False) -> tuple[str, ...]:
    """The registered criteria's names, in registration order: those for encoders, or (``decoder``) all."""
    return tuple(name for name, c in CRITERIA.items() if decoder or c.encoders)


def get_criterion(name: str, *, decoder: bool = False) -> Criterion:
    """The criterion registered as ``name``; an :class:`~greedyprune.errors.InvalidOptionError` naming the
    choices (for an encoder, or with ``decoder``) if there is none."""
    return CRITERIA[check_choice("method", name, criterion_names(decoder=decoder))]


@register_criterion
class GFS(Criterion):
    """``gfs``: Algorithm 1 with replacement on the block's local objective (see the module docstring)."""

    name, summary = "gfs", "Algorithm 1, count-weighted with replacement"
    greedy = needs_full_stats = needs_stats = True
    ranked = False

    def plan(self, weight, stats, group, n_keep, *, weight_in=None, generator=None, replacement=True,
             max_steps=None, scores=None):
        n = weight.shape[1] // group
        gram, cross, target_norm = unit_gram(weight, stats, group)
        # the selection is invariant to a common positive scale; a decoder's massive activations (and the N^2
        # of phi = N P) can push the Gram past what the engine accepts, so it is brought to order 1
        unit = float(torch.diagonal(gram).max().clamp_min(1e-300))
        gram, cross, target_norm = gram / unit, cross / unit, target_norm / unit
        sel = gfs_select(gram, cross, target_norm, stats.tokens, n_keep, replacement=replacement, max_steps=max_steps)
        sel.losses.mul_(unit)  # back in the block's own units
        scale = n * sel.counts.to(torch.float64) / sel.k
        return Plan(keep=sel.selected, scale=scale, bias_delta=None, counts=sel.counts, selection=sel)


@register_criterion
class GFSSum(Criterion):
    """``gfs-sum``: :func:`sum_select`, bias compensated."""

    name, summary = "gfs-sum", "greedy forward selection of the sum of the kept units' contributions"
    greedy = needs_full_stats = needs_stats = bias_compensated = True

    def rank(self, weight, stats, group, count, *, weight_in=None, generator=None, scores=None):
        return sum_select(weight, stats, group, count)


@register_criterion
class GFSLeastSquares(Criterion):
    """``gfs-ls``: :func:`ls_select`, bias compensated (without the refit)."""

    name, summary = "gfs-ls", "forward selection with least-squares weights"
    greedy = needs_full_stats = needs_stats = bias_compensated = True

    def rank(self, weight, stats, group, count, *, weight_in=None, generator=None, scores=None):
        return ls_select(weight, stats, group, count)


@register_criterion
class Magnitude(ScoreCriterion):
    """``magnitude``: ``sum_c ||W_in[c, :]|| ||W[:, c]||``."""

    name, summary = "magnitude", "weight magnitude"

    def score(self, weight, stats, group, weight_in=None):
        w = weight.to(torch.float64)
        per_channel = weight_in.to(torch.float64).norm(dim=1) * w.norm(dim=0)
        return per_channel.reshape(w.shape[1] // group, group).sum(dim=1)


@register_criterion
class Wanda(ScoreCriterion):
    """``wanda`` (Wanda-sp): ``sum_c rms_t(x_c) * mean_j |W[j, c]|``."""

    name, summary = "wanda", "Wanda-sp"
    needs_stats = True

    def score(self, weight, stats, group, weight_in=None):
        w = weight.to(torch.float64)
        per_channel = (stats.sq / stats.tokens).sqrt() * w.abs().mean(dim=0)
        return per_channel.reshape(w.shape[1] // group, group).sum(dim=1)


@register_criterion
class Flap(ScoreCriterion):
    """``flap``: FLAP's fluctuation metric ``var_t(x_c) * ||W[:, c]||^2``, bias compensated."""

    name, summary = "flap", "FLAP's fluctuation metric"
    needs_stats = bias_compensated = True

    def score(self, weight, stats, group, weight_in=None):
        w = weight.to(torch.float64)
        per_channel = stats.variance * (w * w).sum(dim=0)
        if group > 1:
            per_channel = per_channel ** 2  # FLAP squares the head metric before summing a head's channels
        return per_channel.reshape(w.shape[1] // group, group).sum(dim=1)


@register_criterion
class Random(Criterion):
    """``random``: a uniform draw of the units (seeded by the generator)."""

    name, summary = "random", "a uniform random draw"
    control = True

    def rank(self, weight, stats, group, count, *, weight_in=None, generator=None, scores=None):
        return torch.randperm(weight.shape[1] // group, generator=generator)[:count]


@register_criterion
class Taylor(ScoreCriterion):
    """``taylor`` (decoders): LLM-Pruner's first-order group importance (:mod:`~greedyprune.transformers.taylor`),
    from the language-model loss's gradients on the whole dense model."""

    name, summary = "taylor", "LLM-Pruner's first-order importance"
    encoders = False

    def score(self, weight, stats, group, weight_in=None):
        raise InvalidOptionError("'taylor' scores come from the whole model's gradients (model_scores), not from "
                                 "one block's statistics")

    def model_scores(self, model, base, batches):
        return taylor_scores(model, base, batches)


METHODS = criterion_names()
"""The built-in encoder criteria's names (the live list, with any registered since: :func:`criterion_names`)."""

GREEDY = tuple(name for name in METHODS if CRITERIA[name].greedy)
"""The built-in greedy forward selections (the others are one-score baselines)."""

NEEDS_FULL_STATS = {name: CRITERIA[name].needs_full_stats for name in METHODS}
"""Whether a built-in method reads the whole Gram of the inputs (else its diagonal and the means are enough)."""

BIAS_COMPENSATED = tuple(name for name in METHODS if CRITERIA[name].bias_compensated)
"""Built-in methods that keep the kept units' weights and move the removed units' mean contribution into the bias."""


def unit_scores(method: str, weight: torch.Tensor, stats: InputStats | None, group: int,
                weight_in: torch.Tensor | None = None) -> torch.Tensor:
    """One score per unit for a one-score baseline (higher is kept first): :meth:`ScoreCriterion.score` of the
    criterion registered as ``method``."""
    criterion = CRITERIA.get(method)
    if not isinstance(criterion, ScoreCriterion):
        raise InvalidOptionError(f"no score for method {method!r}")
    return criterion.score(weight, stats, group, weight_in)


def plan_block(method: str, weight: torch.Tensor, stats: InputStats | None, group: int, n_keep: int, *,
               weight_in: torch.Tensor | None = None, generator: torch.Generator | None = None,
               replacement: bool = True, max_steps: int | None = None) -> Plan:
    """Choose the units of one block by the criterion registered as ``method`` (:meth:`Criterion.plan`)."""
    return get_criterion(method, decoder=True).plan(weight, stats, group, n_keep, weight_in=weight_in,
                                                    generator=generator, replacement=replacement, max_steps=max_steps)


def plan_from_keep(method: str, weight: torch.Tensor, stats: InputStats | None, group: int,
                   keep: torch.Tensor) -> Plan:
    """The plan of a method that keeps the units ``keep`` with their own weights (scale 1): for a bias-compensated
    method, the bias takes the removed channels' mean contribution ``W[:, removed] mean(x)``."""
    return get_criterion(method, decoder=True).keep_plan(weight, stats, group, keep)


def channels_of(units: torch.Tensor, group: int) -> torch.Tensor:
    """The channel indices of the given units, ascending with them."""
    return (units.reshape(-1, 1) * group + torch.arange(group).reshape(1, -1)).reshape(-1)


def refit_lstsq(weight: torch.Tensor, bias: torch.Tensor, stats: InputStats, channels: torch.Tensor,
                ridge: float, start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-solve the kept columns of W and the bias by ridge regression on the calibration tokens.

    Solves ``min ||X_K V' + 1 c' - (X W' + 1 b')||^2 + lam ||V - V0||^2`` over V (d x |K|) and c: the
    target is the dense block's output on the same inputs, the prior ``V0 = start`` defaults to the
    kept units' own (pretrained) columns ``W[:, K]``, and the bias is not penalised. This is
    :func:`~greedyprune.selection.block.ridge_refit_with_bias` on the raw token sums (``stats.gram``,
    ``stats.total``, T = ``stats.tokens``), the channel refits' convention: eliminating the free bias centres
    the tokens, so with K the kept *channels* (a head's ``head_dim`` channels each)

        lam = ridge * mean(diag Cov_KK) * |K| / T  =  ridge * |K| * (mean over K of the per-token variance),

    with ``Cov = sum_t (x_t - mean)(x_t - mean)'``. Relative to the data term (which grows with T) the penalty
    weighs more when there are few calibration tokens per kept channel and fades as T grows; with ``T < |K|``
    the problem is underdetermined and only the penalty keeps it well-posed. ``ridge = 0`` is plain least
    squares (minimum-norm where singular), ``ridge -> inf`` returns the prior with the best bias for it. The
    normal equations are solved in float64 by Cholesky.

    Returns:
        ``(V, c)``: the new kept columns (d, |K|) and bias (d,), float64.
    """
    return ridge_refit_with_bias(stats.gram, stats.total, stats.tokens, weight, bias, channels, ridge, start)


def reconstruction_error(weight: torch.Tensor, stats: InputStats, new_weight: torch.Tensor,
                         bias_delta: torch.Tensor | None) -> float:
    """``||y_pruned - y_dense||^2 / ||y_dense - b||^2`` over the calibration tokens, from the statistics.

    ``new_weight`` is the pruned block's W at full width (zeros in removed channels); ``bias_delta`` the
    change to its bias. Needs the full Gram.
    """
    w = weight.to(torch.float64)
    delta = new_weight.to(torch.float64) - w
    err = float(((delta @ stats.gram) * delta).sum())
    if bias_delta is not None:
        db = bias_delta.to(torch.float64)
        err += 2.0 * float(db @ (delta @ stats.total)) + stats.tokens * float(db @ db)
    ref = float(((w @ stats.gram) * w).sum())
    return err / ref if ref > 0 else float("nan")
