"""The uniform candidate `tfprune.fit_budget` weighs against the widths its search found.

A greedy search can end at widths worse than the plain answer "cut every layer by the same
fraction". That happens where one limit binds at every layer: on a DS-CNN whose activations
all have the same spatial size, half the arena leaves room for at most half the channels
at every depthwise layer, so no uneven allocation has more channels than the uniform one,
and the greedy order, removing channels where they save most, can overshoot in one group
and find no room to give them back. `fit_budget` therefore also finds the least-pruned
uniform model that meets the limits (the same channels `tfprune.prune_channels(model,
ratio)` keeps, the ratio on a 1/64 grid, checked on the real file) and returns the uniform
model when it dominates: at least as many channels in every group, more in one. Which of
two allocations where neither dominates is better shows only after fine-tuning (on DS-CNN
at 35 % of flash and arena the uniform model had the lower loss before fine-tuning and was
7.5 points less accurate after one epoch), so that is decided only when the caller gives a
judge, as NetAdapt judges its proposals: a short fine-tune of each candidate and a score
on held-out data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np

from tfprune.budget_search import Search
from tfprune.channel_pruning import select_channels, zero_channels
from tfprune.shrink import shrink

__all__ = ["UniformPoint", "prefer_uniform", "uniform_keeps", "uniform_point"]

_STEPS = 64  # the ratio grid


@dataclasses.dataclass(frozen=True)
class UniformPoint:
    """The least-pruned uniform model that meets the limits.

    Attributes:
        ratio: Fraction of each group's channels removed.
        keeps: Per group, which channels are kept.
        resources: What its file measured (`tfprune.budget.Resources`).
    """

    ratio: float
    keeps: list[np.ndarray]
    resources: object


def uniform_keeps(reference: list[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Per group, the channels `prune_channels(model, ratio)` keeps under L1 (layer scope).

    Args:
        reference: Per group, each channel's L1 norm in the unpruned model.
        ratio: Fraction of each group's channels removed.

    Returns:
        One boolean keep array per group.
    """
    return select_channels(reference, [None] * len(reference), "layer", ratio=ratio)


def uniform_point(
    search: Search,
    reference: list[np.ndarray],
    measure_keeps: Callable[[list[np.ndarray]], object],
    broken: Callable[[object], bool],
) -> UniformPoint | None:
    """Finds the smallest ratio on a 1/64 grid whose int8 file meets every limit.

    Starts from the smallest ratio the anchored width models say fits, then measures real
    files: 1/64 lower while the file fits, or 1/64 higher until it does.

    Args:
        search: A `Search` anchored to the unpruned model's measurement, at full widths.
        reference: Per group, each channel's L1 norm in the unpruned model.
        measure_keeps: Zeroes the model to the given keeps (restoring the others) and
            measures its file.
        broken: Whether measured resources break a limit.

    Returns:
        The `UniformPoint`, or `None` when even the thinnest uniform model breaks a limit.
    """
    widths = [
        np.array([k.sum() for k in uniform_keeps(reference, r / _STEPS)], np.int64)
        for r in range(_STEPS)
    ]
    step = next((r for r in range(_STEPS) if not search.excess(widths[r])), _STEPS - 1)
    best, rising = None, False
    while 0 <= step < _STEPS:
        keeps = uniform_keeps(reference, step / _STEPS)
        measured = measure_keeps(keeps)
        if not broken(measured):
            best = UniformPoint(step / _STEPS, keeps, measured)
            if rising:
                return best
            step -= 1
        elif best is not None:
            return best
        else:
            rising, step = True, step + 1
    return best


def apply_keeps(
    model: keras.Model, groups: list, keeps: list[np.ndarray], initial: list[np.ndarray]
) -> None:
    """Sets the model's weights before pruning and zeroes the channels not kept.

    Args:
        model: The zeroable model.
        groups: Its channel groups.
        keeps: Per group, which channels are kept.
        initial: `model.get_weights()` before pruning.
    """
    model.set_weights(initial)
    for group, keep in zip(groups, keeps):
        zero_channels(group, keep)


def prefer_uniform(
    model: keras.Model,
    groups: list,
    keeps: list[np.ndarray],
    initial: list[np.ndarray],
    reference: list[np.ndarray],
    search: Search,
    remeasure: Callable[[], object],
    broken: Callable[[object], bool],
    judge: Callable[[keras.Model], float] | None = None,
) -> UniformPoint | None:
    """The uniform point when it is better than the search's result, else `None`.

    Better: it dominates (at least as many channels in every group, and more in one), or,
    with a `judge`, neither dominates and the judge scores the uniform model higher. The
    model is left at the winner's weights (the search's result keeps any fine-tuning it
    had).

    Args:
        model: The zeroable model, now at the search's result (`keeps`).
        groups: Its channel groups.
        keeps: Per group, the channels the search kept.
        initial: The model's weights before pruning (the uniform candidates start there).
        reference: Per group, each channel's L1 norm before pruning.
        search: A `Search` anchored to the unpruned model's measurement, at full widths.
        remeasure: Converts and measures the model as it is now.
        broken: Whether measured resources break a limit.
        judge: Optional `fn(small) -> score` (higher is better), called with each
            candidate shrunk to a new model (`tfprune.shrink`), e.g. a short fine-tune and
            the accuracy on held-out data.

    Returns:
        The better `UniformPoint`, or `None` when the search's result is kept.
    """
    tuned = model.get_weights()
    score = judge(shrink(model)) if judge is not None else None

    def measure_keeps(candidate: list[np.ndarray]) -> object:
        apply_keeps(model, groups, candidate, initial)
        return remeasure()

    point = uniform_point(search, reference, measure_keeps, broken)
    found = np.array([k.sum() for k in keeps])
    if point is not None:
        widths = np.array([k.sum() for k in point.keeps])
        apply_keeps(model, groups, point.keeps, initial)
        if (widths >= found).all() and (widths > found).any():
            return point
        if score is not None and (widths < found).any() and judge(shrink(model)) > score:
            return point
    model.set_weights(tuned)
    return None
