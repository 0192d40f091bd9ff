"""Importance criteria for weight-level and channel-level pruning.

A criterion is a function from a weight array (numpy) to an array of importance scores of
the same shape; the lowest scores are pruned first. Built-in: `"magnitude"` (|w|, Han et al.
2015). A user function works too; register it with
`keras.saving.register_keras_serializable` so a model that uses it saves and loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = [
    "ChannelContext",
    "bn_scale",
    "fpgm",
    "get",
    "get_channel",
    "l1",
    "l2",
    "magnitude",
    "random",
    "serialize",
    "taylor",
]


def magnitude(weights: np.ndarray) -> np.ndarray:
    """Absolute value of each weight.

    Args:
        weights: A weight array.

    Returns:
        `|weights|`, the same shape.
    """
    return np.abs(weights)


_BUILTIN: dict[str, Callable[[np.ndarray], np.ndarray]] = {"magnitude": magnitude}


def _lookup(criterion: Any, table: dict, what: str, signature: str) -> Callable:
    """A built-in criterion by name from `table`, or `criterion` itself when callable.

    Raises:
        ValueError: For a name not in `table` (the message lists the choices).
        TypeError: For a value that is neither a string nor callable.
    """
    if isinstance(criterion, str):
        if criterion not in table:
            raise ValueError(
                f"Unknown {what}. Expected one of {sorted(table)} or a callable {signature}. "
                f"Received: criterion={criterion!r}"
            )
        return table[criterion]
    if callable(criterion):
        return criterion
    raise TypeError(
        f"Expected {what} to be a string or a callable {signature}. "
        f"Received: criterion={criterion!r}"
    )


def get(criterion: str | Callable | dict) -> Callable[[np.ndarray], np.ndarray]:
    """Returns the criterion function for a name, a callable or a serialized function.

    Args:
        criterion: `"magnitude"`, a function `weights -> scores`, or its serialized form.

    Returns:
        The function.

    Raises:
        ValueError: For an unknown name.
        TypeError: For a value that is neither a string nor callable.
    """
    if isinstance(criterion, dict):
        return keras.saving.deserialize_keras_object(criterion)
    return _lookup(criterion, _BUILTIN, "`criterion`", "`weights -> scores`")


def serialize(criterion: Callable) -> str | dict:
    """Config value of a criterion: its name when built in, else Keras serialization."""
    for name, fn in _BUILTIN.items():
        if fn is criterion:
            return name
    return keras.saving.serialize_keras_object(criterion)


# --- channel criteria -----------------------------------------------------------------
# A channel criterion scores whole channel groups (`tfprune.graph.ChannelGroup`): it is a
# function `(group, context) -> scores` returning one score per channel of the group; the
# lowest-scored channels are removed first. They live beside the weight-level criteria
# because they are the same concept at another granularity.


@dataclasses.dataclass
class ChannelContext:
    """What a channel criterion may use besides the group's weights.

    Attributes:
        gradients: Accumulated first-order Taylor terms, keyed by weight variable `path`:
            for each weight, the sum over batches of `(w * dL/dw)`, one array per batch
            (only filled for `"taylor"`).
        seed: Seed for `"random"`.
        scales: Learned channel scales (`tfprune.gates.Scale`) of the model's wrapped
            layers before they were folded, keyed by layer name, one value per output
            channel (for `"bn_scale"`).
    """

    gradients: dict[str, list[np.ndarray]] | None = None
    seed: int = 0
    scales: dict[str, np.ndarray] | None = None


def _per_channel(group, roles: tuple[str, ...], fn, min_ndim: int = 2, weights=None) -> np.ndarray:
    """Sums `fn(rows)` (one value per row of a slice seen as positions x rest) per channel."""
    out = np.zeros(group.channels, np.float64)
    for m in group.members:
        if m.role not in roles:
            continue
        var = _resolve(m.layer, m.weight)
        w = keras.ops.convert_to_numpy(var) if weights is None else weights(var)
        if w is None or w.ndim < min_ndim:
            continue
        rows = np.moveaxis(np.asarray(w, np.float64), m.axis, 0).reshape(w.shape[m.axis], -1)
        values = fn(rows)
        sel = m.index >= 0
        np.add.at(out, m.index[sel], values[sel])
    return out


def _resolve(layer, path):
    from tfprune.layers import resolve

    return resolve(layer, path)


def l1(group, context: ChannelContext | None = None) -> np.ndarray:
    """L1 norm of every kernel slice of each channel, summed over the group (Li et al. 2017).

    Args:
        group: A `tfprune.graph.ChannelGroup`.
        context: Unused.

    Returns:
        One score per channel.
    """
    return _per_channel(group, ("output", "input"), lambda r: np.abs(r).sum(axis=1))


def l2(group, context: ChannelContext | None = None) -> np.ndarray:
    """L2 norm of every kernel slice of each channel, summed over the group.

    Args:
        group: A `tfprune.graph.ChannelGroup`.
        context: Unused.

    Returns:
        One score per channel.
    """
    return _per_channel(group, ("output", "input"), lambda r: np.sqrt((r * r).sum(axis=1)))


def fpgm(group, context: ChannelContext | None = None) -> np.ndarray:
    """Filter pruning via geometric median (He et al. 2019): sum of distances to the others.

    For each producing kernel of the group, a filter's score is `sum_j ||F_i - F_j||_2`
    over the other filters; filters close to the geometric median are redundant and go
    first. Scores are summed over the group's producing kernels.

    Args:
        group: A `tfprune.graph.ChannelGroup`.
        context: Unused.

    Returns:
        One score per channel.
    """

    def distances(rows):
        sq = (rows * rows).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * rows @ rows.T, 0)
        return np.sqrt(d2).sum(axis=1)

    return _per_channel(group, ("output",), distances)


def taylor(group, context: ChannelContext | None = None) -> np.ndarray:
    """First-order Taylor importance (Molchanov et al. 2019): `sum_batches (sum w*g)^2`.

    For each batch, the terms `w * dL/dw` of the group's producing weights and
    BatchNormalization vectors are summed per channel and squared; the squares are summed
    over batches.

    Args:
        group: A `tfprune.graph.ChannelGroup`.
        context: Must hold `gradients` (`tfprune.prune_channels(..., data=...)` fills it).

    Returns:
        One score per channel.

    Raises:
        ValueError: If `context` has no gradients.
    """
    if context is None or not context.gradients:
        raise ValueError(
            "Criterion 'taylor' needs gradients. Pass batches of data: "
            "tfprune.prune_channels(model, criterion='taylor', data=[(x, y), ...])."
        )
    batches = len(next(iter(context.gradients.values())))
    total = np.zeros(group.channels)
    for b in range(batches):

        def term(var, b=b):
            terms = context.gradients.get(var.path)
            return None if terms is None else terms[b]

        total += _per_channel(group, ("output", "norm"), lambda r: r.sum(axis=1), 1, term) ** 2
    return total


def bn_scale(group, context: ChannelContext | None = None) -> np.ndarray:
    """Slimming factors: |gamma| of the group's BatchNormalization layers (Liu et al. 2017).

    Producers that learned a `tfprune.gates.Scale` (the slimming factor of channels
    without BatchNormalization) add their |scale|.

    Args:
        group: A `tfprune.graph.ChannelGroup`.
        context: Supplies `scales`, the learned channel scales of wrapped layers.

    Returns:
        One score per channel.

    Raises:
        ValueError: If neither a BatchNormalization with a scale nor a `Scale` gate holds
            the group's channels.
    """
    scales = (context.scales if context is not None else None) or {}
    scores = np.zeros(group.channels)
    found, seen = False, set()
    for m in group.members:
        if m.role == "norm" and m.weight == "gamma":
            factors = keras.ops.convert_to_numpy(_resolve(m.layer, "gamma"))
        elif m.role == "output" and m.layer.name in scales and m.layer.name not in seen:
            seen.add(m.layer.name)
            factors = scales[m.layer.name]
        else:
            continue
        found = True
        sel = m.index >= 0
        np.add.at(scores, m.index[sel], np.abs(factors)[sel])
    if not found:
        raise ValueError(
            f"Criterion 'bn_scale' needs a BatchNormalization (with scale=True) or a "
            f"tfprune.gates.Scale gate on the channels of {group.producers}. Use "
            "criterion='l1' for groups without one, or pass `ignore=[...]` to leave these "
            "layers alone."
        )
    return scores


def random(group, context: ChannelContext | None = None) -> np.ndarray:
    """Uniform random scores, reproducible from `context.seed` and the group's producers.

    Args:
        group: A `tfprune.graph.ChannelGroup`.
        context: Supplies the seed (default 0).

    Returns:
        One score per channel.
    """
    seed = 0 if context is None else context.seed
    key = sum(ord(c) for c in "/".join(group.producers))
    return np.random.default_rng([seed, key]).random(group.channels)


_CHANNEL: dict[str, Callable] = {
    "l1": l1,
    "l2": l2,
    "fpgm": fpgm,
    "taylor": taylor,
    "bn_scale": bn_scale,
    "random": random,
}


def get_channel(criterion: str | Callable) -> Callable:
    """Returns the channel criterion for a name or a callable `(group, context) -> scores`.

    Args:
        criterion: `"l1"`, `"l2"`, `"fpgm"`, `"taylor"`, `"bn_scale"`, `"random"`, or a
            callable.

    Returns:
        The function.

    Raises:
        ValueError: For an unknown name.
        TypeError: For a value that is neither a string nor callable.
    """
    return _lookup(criterion, _CHANNEL, "channel `criterion`", "`(group, context) -> scores`")
