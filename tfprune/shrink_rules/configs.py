"""Shrink rules of layers whose config holds a channel width, keyed by layer class.

`tfprune.shrink` rebuilds every layer that holds weights from its config
(`keras.models.clone_model`). A layer whose config says how many channels it produces
(`Dense.units`, `Conv2D.filters`, `Embedding.output_dim`, `Reshape.target_shape`, ...) has a
rule here that returns the config update for the width it keeps; its weights are then
sliced along the axes the channel graph recorded (`tfprune.graph`). A layer without a rule
keeps its config (its weights are still sliced: BatchNormalization, DepthwiseConv2D).

The table is keyed by exact class or by Keras registered name, as `tfprune.graph`'s rule
table is (`tfprune.graph.table`): a class entry wins over a name, and a name lets a rule
describe a class of a package without importing it (keras-hub's layers,
`keras.applications`' LayerScale).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

from tfprune.graph import CONVOLUTIONS, table

__all__ = ["Resize", "Rule", "attention", "lookup", "register", "reshape", "width"]

_L = keras.layers


@dataclasses.dataclass(frozen=True)
class Resize:
    """What `tfprune.shrink` keeps of one layer it rebuilds.

    Attributes:
        width: Channels its output keeps (of its first call), or `None` when the layer is
            not in the channel graph.
        kind: The kind of its call in the channel graph (`tfprune.graph.KINDS`), or `None`.
        kept: Positions kept on the channel axis of each weight path the channel graph
            recorded for the layer.
    """

    width: int | None
    kind: str | None
    kept: dict[str, int]


Rule = Callable[[keras.layers.Layer, Resize], dict]

_TABLE: dict[type | str, Rule] = {}


def register(target: type | str, rule: Rule) -> None:
    """Registers the shrink config rule of a layer class.

    Args:
        target: A `keras.layers.Layer` subclass (exactly that class), or a Keras
            registered name (`"my_package>MyLayer"`).
        rule: `rule(layer, resize) -> dict`: the config update that rebuilds `layer` at
            the widths `resize` (a `Resize`) says it keeps.

    Raises:
        TypeError: If `target` is not a class or a string, or `rule` is not callable.

    Example:

    ```python
    register(MyDense, width("units"))
    ```
    """
    table.check_entry(
        "tfprune.shrink_rules.configs.register", target, "a layer class", rule, "layer, resize"
    )
    _TABLE[target] = rule


def lookup(layer: keras.layers.Layer) -> Rule | None:
    """The config rule of a layer: by its exact class, then by registered name.

    Args:
        layer: Any layer.

    Returns:
        The registered rule, or `None` when its config holds no width.
    """
    return table.find(_TABLE, layer)


def width(key: str) -> Rule:
    """The rule of a layer whose config entry `key` is its number of output channels.

    A grouped convolution (node kind `"grouped"`: one group per channel) keeps one group
    per kept channel.

    Args:
        key: The config entry (`"units"`, `"filters"`, `"output_dim"`, ...).

    Returns:
        A rule that sets `key` (and `groups` for a grouped convolution) to the kept width.
    """

    def rule(layer: keras.layers.Layer, resize: Resize) -> dict:
        if resize.width is None:
            return {}
        update = {key: resize.width}
        if resize.kind == "grouped":
            update["groups"] = resize.width
        return update

    return rule


def reshape(layer: keras.layers.Layer, resize: Resize) -> dict:
    """`keras.layers.Reshape`: the last axis of its target is the kept width.

    Args:
        layer: The Reshape layer.
        resize: What shrink keeps of it.

    Returns:
        `{"target_shape": ...}`, or `{}` when the layer is not in the channel graph.
    """
    if resize.width is None:
        return {}
    return {"target_shape": (*list(layer.target_shape)[:-1], resize.width)}


def attention(layer: keras.layers.Layer, resize: Resize) -> dict:
    """`MultiHeadAttention` with an explicit output width (`tfprune.graph.rules.hidden`).

    Args:
        layer: The attention layer.
        resize: What shrink keeps of it.

    Returns:
        `{"output_shape": (width,)}` when its config sets `output_shape` and the graph
        recorded its output projection (`through_norms=True`), else `{}`.
    """
    recorded = any(path.startswith("attention_output/") for path in resize.kept)
    if layer.get_config().get("output_shape") is None or not recorded:
        return {}
    return {"output_shape": (resize.width,)}


register(_L.Dense, width("units"))
for _cls in (*CONVOLUTIONS, _L.SeparableConv1D, _L.SeparableConv2D):
    register(_cls, width("filters"))
register("LayerScale", width("projection_dim"))  # keras.applications' ConvNeXt
register(_L.Embedding, width("output_dim"))
register("keras_hub>RMSNormalization", width("input_dim"))  # tfprune.hub_hidden.rebuild
for _key in ("ReversibleEmbedding", "keras_hub>ReversibleEmbedding"):
    register(_key, width("output_dim"))
for _key in ("TokenAndPositionEmbedding", "keras_hub>TokenAndPositionEmbedding"):
    register(_key, width("embedding_dim"))
register(_L.Reshape, reshape)
register(_L.MultiHeadAttention, attention)
