"""Allocation: turn one sparsity target into exact keep decisions per tensor.

Three scopes are built in:

- layer scope: every tensor prunes `round(s * n)` of its own units, but never all `n`;
- global scope: one ranking over the units of all tensors prunes `round(s * N)` in total,
  where each tensor may be capped at a ceiling (`max_layer_sparsity`) so no layer collapses;
- LAMP scope: the global ranking of `lamp` scores instead of the raw scores.

A tensor always keeps at least one unit: a target so close to 1 that rounding would prune
every unit (`sparsity=0.999999` of 100 weights) prunes all but one and warns, because a
layer with no weights left outputs only its bias, which is never what was meant.

Ties are broken deterministically: an already-pruned unit is pruned before a kept one of
equal score, then the earlier unit (lower tensor index, then lower position) first. So the
same weights always give the same masks, and masks only grow while scores tie at zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = [
    "GLOBAL_SCOPES",
    "ceiling_count",
    "count",
    "lamp",
    "rounded",
    "select_global",
    "select_keep",
]

#: Scopes whose units are ranked across tensors: `"global"` (raw scores), `"lamp"`.
GLOBAL_SCOPES = ("global", "lamp")


def _prune_order(scores: np.ndarray, prev_keep: np.ndarray) -> np.ndarray:
    """Indices in pruning order: lowest score, then already pruned, then position."""
    return np.lexsort((np.arange(scores.size), prev_keep, scores))


def select_keep(scores: np.ndarray, prev_keep: np.ndarray, n_keep: int) -> np.ndarray:
    """Keeps the `n_keep` highest-scored units and prunes the rest.

    Args:
        scores: 1-D importance scores.
        prev_keep: 1-D booleans, the current keep decisions (used for tie-breaking).
        n_keep: How many units to keep.

    Returns:
        1-D boolean array with exactly `n_keep` `True` entries.
    """
    keep = np.ones(scores.size, bool)
    keep[_prune_order(scores, prev_keep)[: scores.size - n_keep]] = False
    return keep


def select_global(
    scores: Sequence[np.ndarray],
    prev_keep: Sequence[np.ndarray],
    n_prune: int,
    max_prune: Sequence[int],
) -> list[np.ndarray]:
    """Prunes the `n_prune` lowest-scored units across several tensors.

    Args:
        scores: One 1-D score array per tensor.
        prev_keep: The current keep decisions, one 1-D boolean array per tensor.
        n_prune: Total number of units to prune.
        max_prune: For each tensor, the most units it may lose (its ceiling).

    Returns:
        One 1-D boolean keep array per tensor; exactly `n_prune` entries are `False` in all.

    Raises:
        ValueError: If the ceilings allow fewer than `n_prune` pruned units.
    """
    if sum(max_prune) < n_prune:
        raise ValueError(
            f"Cannot prune {n_prune} units globally: the per-layer ceilings "
            f"(`max_layer_sparsity`) allow at most {sum(max_prune)}. Raise "
            "`max_layer_sparsity` or lower the target sparsity."
        )
    # Only the lowest `max_prune[i]` units of tensor i are eligible; rank those globally.
    eligible_scores, eligible_prev, owner, local = [], [], [], []
    for i, (s, p, cap) in enumerate(zip(scores, prev_keep, max_prune)):
        idx = _prune_order(s, p)[:cap]
        eligible_scores.append(s[idx])
        eligible_prev.append(p[idx])
        owner.append(np.full(idx.size, i))
        local.append(idx)
    cat_scores = np.concatenate(eligible_scores) if eligible_scores else np.zeros(0)
    cat_prev = np.concatenate(eligible_prev) if eligible_prev else np.zeros(0, bool)
    cat_owner = np.concatenate(owner) if owner else np.zeros(0, int)
    cat_local = np.concatenate(local) if local else np.zeros(0, int)
    order = np.lexsort((cat_local, cat_owner, cat_prev, cat_scores))[:n_prune]
    keeps = [np.ones(s.size, bool) for s in scores]
    chosen_owner, chosen_local = cat_owner[order], cat_local[order]
    for i, keep in enumerate(keeps):
        keep[chosen_local[chosen_owner == i]] = False
    return keeps


def rounded(sparsity: float, n: int) -> int:
    """`round(sparsity * n)` with halves rounded up, in [0, n]."""
    return min(n, max(math.floor(sparsity * n + 0.5 + 1e-9), 0))


def count(sparsity: float, n: int) -> int:
    """Number of pruned units of one tensor for a target: `rounded(sparsity, n)`.

    At most `n - 1`: when rounding would prune all `n` units, one is kept and a warning
    says so (see the module docstring).
    """
    pruned = rounded(sparsity, n)
    if n > 0 and pruned >= n:
        warnings.warn(
            f"sparsity={sparsity!r} of {n} units rounds to pruning all of them; keeping 1 "
            "(tfprune never empties a layer). Use a lower target, e.g. sparsity="
            f"{math.floor(1000 * (n - 1) / n) / 1000}, or exclude the layer with `exclude=`.",
            RuntimeWarning,
            stacklevel=2,
        )
        return n - 1
    return pruned


def ceiling_count(max_sparsity: float | None, n: int) -> int:
    """Most units of `n` a tensor may lose under a ceiling (`None`: all of them)."""
    return n if max_sparsity is None else math.floor(max_sparsity * n + 1e-9)


def lamp(scores: np.ndarray) -> np.ndarray:
    """Layer-adaptive magnitude (LAMP) scores of one tensor (Lee et al. 2021).

    With the tensor's units sorted by ascending score `w` (ties by position), unit `u`
    scores `w_u^2 / sum_{v >= u} w_v^2`: its squared score over the squared scores of the
    units not below it. The largest unit of every tensor scores 1, so a global ranking of
    LAMP scores never empties a layer, and it keeps more of small layers than a ranking of
    raw magnitudes does.

    Args:
        scores: 1-D non-negative scores (magnitudes) of one tensor's units.

    Returns:
        1-D LAMP scores, same order; 0 where the unit and all units above it are 0.
    """
    sq = np.square(np.asarray(scores, np.float64))
    order = np.argsort(sq, kind="stable")
    tail = np.cumsum(sq[order][::-1])[::-1]  # sum over the unit and all units above it
    out = np.zeros(sq.size)
    out[order] = np.divide(sq[order], tail, out=np.zeros(sq.size), where=tail > 0)
    return out
