"""What a greedy selection returns: :class:`SelectionResult`."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

__all__ = ["SelectionResult"]


@dataclass
class SelectionResult:
    """What :func:`greedy_forward_selection` returns.

    Attributes:
        indices: (k,) int64 - the neuron chosen at each step, in order; repeats allowed.
        counts: (N,) int64 - how many times each neuron was chosen (sums to k).
        losses: (k,) float64 - the loss of the averaged output after each step, ``l(u_1) .. l(u_k)``.
        output: the final averaged output ``u_k``, shape (m,) or (m, C), on the outputs' device; ``None`` for
            a selection made from a Gram matrix (``gram=``), which never forms the outputs.
        loss: the loss name used.
        replacement: whether a neuron could be chosen more than once.
        candidates, seed: the candidate subsets' size (None: all) and their seed.
        reached: with a distinct-count stop (``prune_two_layer(prune_to="distinct")``, the transformer
            criteria), whether that many distinct neurons were chosen; None otherwise.
        dense_loss: ``prune_two_layer``: the dense network's loss on the data; None otherwise.
        target_distinct, steps_run: the transformer criteria: the distinct units asked for, and the steps the
            run took before the result was cut to them; None otherwise.
        world_size: Algorithm 2 (:mod:`greedyprune.selection.sharded`): the number of ranks; None otherwise.
    """

    indices: torch.Tensor
    counts: torch.Tensor
    losses: torch.Tensor
    output: torch.Tensor | None
    loss: str
    replacement: bool
    candidates: int | None = None
    seed: int = 0
    reached: bool | None = None
    dense_loss: float | None = None
    target_distinct: int | None = None
    steps_run: int | None = None
    world_size: int | None = None

    @property
    def extra(self) -> dict:
        """Deprecated: the named fields above that are set, as a dict (read the fields instead)."""
        warnings.warn("SelectionResult.extra is deprecated: read its named fields (reached, dense_loss, "
                      "target_distinct, steps_run, world_size)", DeprecationWarning, stacklevel=2)
        names = ("reached", "dense_loss", "target_distinct", "steps_run", "world_size")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def k(self) -> int:
        """Number of selection steps (the size of the multiset S_k)."""
        return int(self.indices.numel())

    @property
    def num_neurons(self) -> int:
        """N, the number of candidate neurons."""
        return int(self.counts.numel())

    @property
    def selected(self) -> torch.Tensor:
        """The distinct chosen neurons, ascending."""
        return torch.nonzero(self.counts, as_tuple=False).flatten()

    @property
    def weights(self) -> torch.Tensor:
        """(N,) float64 - each neuron's weight in the average, ``count_i / k``."""
        return self.counts.to(torch.float64) / max(self.k, 1)

    def gap(self, reference_loss: float) -> torch.Tensor:
        """Per-step gap ``l(u_j) - reference_loss`` (e.g. the dense network's loss; Lemma 1)."""
        return self.losses - float(reference_loss)

    def gap_rate(self, reference_loss: float, k_min: int = 1) -> dict:
        """Lemma 1 in practice: fit ``gap(K) ~ C * K^rate`` over the steps K >= k_min with a positive gap.

        Lemma 1 bounds the gap to the dense network's loss by O(1/K) (rate -1 or faster). A gap can turn
        negative - greedy selection with replacement can beat the dense net - and such steps are left out
        of the fit. Returns ``{"rate", "stderr", "prefactor", "steps_used"}`` (NaN rate if fewer than 3).
        """
        from ..fitting import fit_power_law

        gaps = self.gap(reference_loss).numpy()
        ks = torch.arange(1, self.k + 1).numpy()
        keep = (ks >= k_min) & (gaps > 0)
        if keep.sum() < 3:
            return {"rate": math.nan, "stderr": math.nan, "prefactor": math.nan, "steps_used": int(keep.sum())}
        rate, stderr, prefactor = fit_power_law(ks[keep], gaps[keep])
        return {"rate": rate, "stderr": stderr, "prefactor": prefactor, "steps_used": int(keep.sum())}

    def __repr__(self) -> str:
        return (
            f"SelectionResult(k={self.k}, distinct={int(self.selected.numel())}/{self.num_neurons}, "
            f"loss={self.loss!r}, final_loss={float(self.losses[-1]):.6g})"
        )
