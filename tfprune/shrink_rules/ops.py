"""Shrink rules of raw `keras.ops` operations whose arguments hold channel widths.

In a functional model a raw operation (`keras.ops.reshape`, `keras.ops.split`,
`x[..., a:b]`, `x * constant`) is rebuilt from its config or called again with its own
arguments, so widths and per-channel constants among them must follow the kept channels.
Keyed by the graph's node kind (`tfprune.graph.KINDS`), which the graph's op rules set:

- `"flatten"` (`keras.ops.reshape` whose last axis changes size): the new shape says the
  new width.
- `"split"` (`keras.ops.split` along the channels): split at the kept sizes.
- `"slice"` (`x[..., a:b]` on the channel axis): `a` and `b` counted in kept channels.
- `"op"` (an elementwise operation): per-channel constant arguments are cut to the kept
  channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np

from tfprune.graph._state import Call, Node
from tfprune.graph.rules import ops as ops_rules
from tfprune.shrink_rules.channels import kept, positions

__all__ = ["arguments", "channel_range", "config"]


def config(node: Node, keep_id: np.ndarray) -> dict | None:
    """The config that rebuilds a raw operation at its kept widths.

    Args:
        node: The operation's `tfprune.graph` node.
        keep_id: Per channel id, whether shrink keeps it.

    Returns:
        The new config, or `None` when the operation is reused as it is.
    """
    rewrite = _CONFIG.get(node.kind)
    return None if rewrite is None else rewrite(node, keep_id)


def arguments(node: Node, args: Sequence, keep_id: np.ndarray) -> Sequence:
    """The positional arguments of a raw operation call, with widths in kept channels.

    Args:
        node: The operation's `tfprune.graph` node.
        args: The positional arguments of the call in the model being cloned.
        keep_id: Per channel id, whether shrink keeps it.

    Returns:
        `args` with per-channel constants cut (`"op"`) or the channel slice re-counted
        (`"slice"`); `args` itself for any other kind.
    """
    if node.kind == "op":
        keep = positions(node.output, keep_id)
        return [_slice_constant(a, node.output.size, keep) for a in args]
    if node.kind == "slice":
        return [args[0], _slice_key(node, keep_id), *args[2:]]
    return args


def channel_range(call: Call) -> tuple[int, int, int]:
    """A `GetItem` that slices the channel axis: the key item's position, start and stop.

    Args:
        call: The `tfprune.graph.Call` of `x[key]`.

    Returns:
        `(position of the channel item in the key, start, stop)`.
    """
    key = call.args[1]
    k = ops_rules.channel_item(key, len(call.shapes[0]))
    items = list(key) if isinstance(key, (list, tuple)) else [key]
    start, stop, _ = items[k].indices(call.ids[0].size)
    return k, start, stop


def _slice_constant(value: object, channels: int, keep: np.ndarray) -> object:
    """A per-channel constant argument of a raw op, cut to the kept channels."""
    if isinstance(value, keras.KerasTensor) or channels <= 1:
        return value
    shape = tuple(np.shape(value))
    if not shape or shape[-1] != channels:
        return value
    return np.take(keras.ops.convert_to_numpy(value), keep, axis=-1)


def _slice_key(node: Node, keep_id: np.ndarray) -> tuple:
    """The key of `x[..., a:b]` with `a`, `b` counted in the kept channels."""
    k, start, stop = channel_range(node.call)
    keep = kept(node.inputs[0], keep_id)
    new_start = int(keep[:start].sum())
    key = node.call.args[1]
    items = list(key) if isinstance(key, (list, tuple)) else [key]
    items[k] = slice(new_start, new_start + int(keep[start:stop].sum()))
    return tuple(items)


def _reshape_config(node: Node, keep_id: np.ndarray) -> dict:
    """`keras.ops.reshape` whose last axis changes size: the new shape says the new size."""
    config = node.layer.get_config()
    shape = list(config["newshape"])
    shape[-1] = int(positions(node.output, keep_id).size)
    config["newshape"] = shape
    return config


def _split_config(node: Node, keep_id: np.ndarray) -> dict:
    """`keras.ops.split` along channels: split at the kept sizes of its outputs."""
    config = node.layer.get_config()
    sizes = [int(positions(out, keep_id).size) for out in node.outputs]
    config["indices_or_sections"] = np.cumsum(sizes)[:-1].tolist()
    return config


# Node kind -> config rewrite of a raw `keras.ops` operation whose arguments hold widths.
_CONFIG: dict[str, Callable[..., dict]] = {"flatten": _reshape_config, "split": _split_config}
