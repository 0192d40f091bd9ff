"""The give-back and swap phases of `tfprune.fit_budget`, once every limit is met.

Removal can overshoot (the arena limit may be met only when the last op over it shrinks,
after other groups gave up more than the other limits needed). `give_back` adds dropped
channels back while the anchored width models say every limit holds
(`tfprune.budget_search.Search.give_back`), gives them the weights they had before they
were zeroed, measures the file and undoes the last additions while a limit is broken.
`swap` then moves channels from the groups where they matter least to those where a dropped
channel matters most while the models say every limit holds (`Search.swap`), checked on the
file the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np

from tfprune.budget_search import Search
from tfprune.channel_pruning import zero_channels, zeroed_slices

__all__ = ["Refinement", "give_back", "restore_channels", "snapshot_weights", "swap"]


def snapshot_weights(groups: list) -> dict[str, np.ndarray]:
    """The values of every weight `zero_channels` zeroes, by variable path.

    Args:
        groups: Channel groups (`tfprune.graph.ChannelGroup`) of one model.

    Returns:
        `{variable path: copy of its value}`.
    """
    out = {}
    for group in groups:
        for _, var in zeroed_slices(group):
            out.setdefault(var.path, keras.ops.convert_to_numpy(var).copy())
    return out


def restore_channels(
    groups: list, added: list[tuple[int, int]], snapshot: dict[str, np.ndarray]
) -> None:
    """Gives channels back the weights they had before they were zeroed.

    Args:
        groups: Channel groups of the model.
        added: `(group number, channel)` pairs.
        snapshot: `snapshot_weights(groups)`.
    """
    for j in {j for j, _ in added}:
        channels = [c for g, c in added if g == j]
        for m, var in zeroed_slices(groups[j]):
            value = keras.ops.convert_to_numpy(var).copy()
            index = [slice(None)] * value.ndim
            index[m.axis] = np.flatnonzero(np.isin(m.index, channels))
            value[tuple(index)] = snapshot[var.path][tuple(index)]
            var.assign(value)


@dataclasses.dataclass(frozen=True)
class Refinement:
    """What `give_back` and `swap` share: the search, the channels and the file checks.

    Attributes:
        search: The `Search` whose widths are the model's now (every limit met).
        scores: Per group, each channel's importance (dropped channels: their last score).
        keeps: Per group, which channels are kept (modified in place).
        groups: The model's channel groups, in the search's order.
        snapshot: `snapshot_weights(groups)` taken before any channel was zeroed.
        remeasure: Converts and measures the model as it is now.
        broken: Whether measured resources break a limit.
    """

    search: Search
    scores: list[np.ndarray]
    keeps: list[np.ndarray]
    groups: list
    snapshot: dict[str, np.ndarray]
    remeasure: Callable[[], object]
    broken: Callable[[object], bool]


def give_back(state: Refinement, current, rounds: int = 3) -> tuple[object, int]:
    """Adds channels back while every limit holds, measured on the file.

    Each round re-anchors the models to the last measurement (`search.anchor`), adds
    channels (`search.give_back`), restores their weights and measures the file; while a
    limit is broken, the later half of the round's additions is dropped again and the file
    re-measured. Rounds stop when the models add nothing or every addition of a round was
    undone (the model is then the one measured before it).

    Args:
        state: The search, channels and file checks (`Refinement`).
        current: The `tfprune.budget.Resources` measured for the model now.
        rounds: Most rounds.

    Returns:
        `(resources of the model returned, channels given back)`.
    """
    search, keeps, groups = state.search, state.keeps, state.groups
    total = 0
    for _ in range(rounds):
        search.anchor(dataclasses.asdict(current))
        added = search.give_back(state.scores, keeps)
        restore_channels(groups, added, state.snapshot)
        while added:
            trial = state.remeasure()
            if not state.broken(trial):
                current, total = trial, total + len(added)
                break
            back, added = added[len(added) // 2 :], added[: len(added) // 2]
            search.undo(back, keeps)
            for j in {j for j, _ in back}:
                zero_channels(groups[j], keeps[j])
        else:
            break
    return current, total


def swap(state: Refinement, current) -> tuple[object, int]:
    """Moves channels between groups while every limit holds, measured on the file.

    Re-anchors the models to `current`, makes the moves `search.swap` finds, gives the
    channels brought back their weights and zeroes those dropped, and measures the file;
    while a limit is broken, the later half of the moves is undone and the file
    re-measured.

    Args:
        state: The search, channels and file checks (`Refinement`).
        current: The `tfprune.budget.Resources` measured for the model now.

    Returns:
        `(resources of the model returned, moves kept)`.
    """
    search, keeps, groups = state.search, state.keeps, state.groups
    search.anchor(dataclasses.asdict(current))
    moves = search.swap(state.scores, keeps)
    _apply(groups, keeps, moves, state.snapshot)
    while moves:
        trial = state.remeasure()
        if not state.broken(trial):
            return trial, len(moves)
        back, moves = moves[len(moves) // 2 :], moves[: len(moves) // 2]
        for (i, out), (j, added) in back:
            keeps[i][out], keeps[j][added] = True, False
            search.widths[i] += 1
            search.widths[j] -= 1
        _apply(groups, keeps, [((j, a), (i, o)) for (i, o), (j, a) in back], state.snapshot)
    return current, 0


def _apply(groups: list, keeps: list[np.ndarray], moves: list[tuple], snapshot) -> None:
    """Restores the channels `moves` bring back (if still kept) and zeroes those dropped."""
    back = [(j, c) for _, (j, c) in moves if keeps[j][c]]
    restore_channels(groups, back, snapshot)
    for i in {i for (i, _), _ in moves}:
        zero_channels(groups[i], keeps[i])
