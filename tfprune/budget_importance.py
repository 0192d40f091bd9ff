"""Channel importance for `tfprune.fit_budget`, recomputed at every step of the search.

Two kinds of score reach the search (`tfprune.budget_search.Search`), which divides a
channel's score by what removing it saves:

- A channel criterion (`"l1"`, `"taylor"`, ... or a callable; `tfprune.criteria`), each
  channel scored on its own.
- `"loss"`: measured, as NetAdapt (Yang et al., 2018) measures its proposals on held-out
  data. For every group, the next few channels it would give up (its lowest L1 among those
  kept, `chunk` of them) are zeroed together, the loss on labelled examples is measured and
  the weights put back. The loss increase per channel of that chunk is the group's price;
  within a group, channels are ordered by L1 (a dropped channel by the L1 it had before it
  was zeroed), the price rising from 1x for the weakest channel to 2x for the strongest, so
  that a group gives up, and gets back, its channels in L1 order. Unlike L1 magnitudes,
  which differ between layers for reasons unrelated to accuracy (a BatchNormalization after
  the layer rescales them), the price says in one unit which group's channels the model can
  spare.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np

from tfprune import criteria as criteria_lib
from tfprune.channel_pruning import taylor_terms, zero_channels, zeroed_slices

__all__ = ["COMPARABLE", "importance", "loss_prices"]

# Criteria whose scores are in one unit across groups (a loss change): the search divides
# them by their mean over all groups, not per group.
COMPARABLE = ("taylor", "loss")
_EXAMPLES = 512  # labelled examples used by "taylor" and "loss"
_BATCH = 128


def _labelled(data) -> tuple[np.ndarray, np.ndarray]:
    """The first 512 examples of `data=(x, y)` as arrays.

    Args:
        data: `(x, y)`.

    Returns:
        `(x, y)`.
    """
    x, y = (np.asarray(a)[:_EXAMPLES] for a in data)
    return x, y


def _mean_loss(model: keras.Model, loss_fn, x: np.ndarray, y: np.ndarray) -> float:
    """`loss_fn(y, model(x))` averaged over the examples (inference mode, batches of 128).

    Args:
        model: The model.
        loss_fn: A Keras loss function or `keras.losses.Loss`.
        x: Inputs.
        y: Targets.

    Returns:
        The mean loss.
    """
    total = 0.0
    for i in range(0, len(x), _BATCH):
        out = model(x[i : i + _BATCH], training=False)
        value = keras.ops.convert_to_numpy(keras.ops.mean(loss_fn(y[i : i + _BATCH], out)))
        total += float(value) * len(x[i : i + _BATCH])
    return total / len(x)


def _saved(group) -> list[tuple[keras.Variable, np.ndarray]]:
    """The weights `zero_channels` may change in `group`, with their values now."""
    return [(var, keras.ops.convert_to_numpy(var).copy()) for _, var in zeroed_slices(group)]


def loss_prices(
    groups: list,
    keeps: list[np.ndarray],
    model: keras.Model,
    data,
    loss,
    chunk: float,
    reference: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per group, each channel's measured loss price (see the module docstring).

    Args:
        groups: The model's prunable channel groups.
        keeps: Per group, which channels are kept now (dropped ones are zero in `model`).
        model: The zeroable model; its weights are the same after the call.
        data: `(x, y)`; the first 512 examples are used.
        loss: A Keras loss (name, function or `keras.losses.Loss`).
        chunk: Fraction of a group's kept channels zeroed together (at least one).
        reference: Per group, each channel's L1 before pruning, which orders the dropped
            channels (default: the L1 now, for a model with nothing dropped yet).

    Returns:
        Per group, one score per channel, dropped ones included. A group with one channel
        left cannot be cut; its price is the highest measured.
    """
    x, y = _labelled(data)
    loss_fn = keras.losses.get(loss)
    base = _mean_loss(model, loss_fn, x, y)
    l1 = criteria_lib.get_channel("l1")
    context = criteria_lib.ChannelContext(seed=0)
    prices, orders = [], []
    for j, (group, keep) in enumerate(zip(groups, keeps)):
        norms = np.asarray(l1(group, context), np.float64)
        if reference is not None:
            norms[~keep] = reference[j][~keep]
        order = np.argsort(norms, kind="stable")  # every channel, weakest first
        orders.append(order)
        kept = order[keep[order]]
        if kept.size <= 1:
            prices.append(None)
            continue
        k = min(kept.size - 1, max(1, math.ceil(chunk * kept.size)))
        fewer = keep.copy()
        fewer[kept[:k]] = False
        saved = _saved(group)
        zero_channels(group, fewer)
        prices.append((_mean_loss(model, loss_fn, x, y) - base) / k)
        for var, value in saved:
            var.assign(value)
    measured = [p for p in prices if p is not None]
    # A chunk whose removal lowers the loss is free; a floor keeps the L1 order among them.
    floor = max(1e-9, 1e-6 * max((abs(p) for p in measured), default=0.0))
    top = max(measured, default=floor)
    out = []
    for group, order, price in zip(groups, orders, prices):
        scores = np.zeros(group.channels, np.float64)
        ramp = 1.0 + np.arange(order.size) / order.size
        scores[order] = max(top if price is None else price, floor) * ramp
        out.append(scores)
    return out


def importance(
    criterion: str | Callable,
    groups: list,
    keeps: list[np.ndarray],
    model: keras.Model,
    data,
    loss,
    chunk: float,
    reference: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per group, each channel's importance in `model` now.

    `"taylor"` takes fresh gradients of `loss` on the first 512 examples of `data` (which
    must then be `(x, y)`), in batches of 64; `"loss"` measures `loss_prices`.

    Args:
        criterion: `"loss"`, or a channel criterion for `tfprune.criteria.get_channel`.
        groups: The model's prunable channel groups.
        keeps: Per group, which channels are kept now.
        model: The zeroable model.
        data: Calibration examples, `(x, y)` for `"taylor"` and `"loss"`.
        loss: The loss for `"taylor"` and `"loss"`.
        chunk: For `"loss"`: fraction of a group's kept channels zeroed together.
        reference: For `"loss"`: per group, each channel's L1 before pruning.

    Returns:
        Per group, one score per channel (for `"loss"`, dropped channels included: the
        score each would have if brought back).
    """
    if criterion == "loss":
        return loss_prices(groups, keeps, model, data, loss, chunk, reference)
    fn = criteria_lib.get_channel(criterion)
    context = criteria_lib.ChannelContext(seed=0)
    if criterion == "taylor":
        x, y = _labelled(data)
        batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
        context.gradients = taylor_terms(model, batches, loss)
    return [np.asarray(fn(g, context), np.float64) for g in groups]
