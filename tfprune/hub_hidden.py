"""keras-hub's hidden width: the residual stream inside its transformer blocks.

A keras-hub transformer block (`tfprune.hub_blocks`) reads the residual stream on its input
and writes it back on its output (`x + attention(norm(x))`, then `+ mlp(norm(...))`).
With `through_norms=True` (`tfprune.graph.rules.hidden`) the stream's channels pass
through the block: every weight inside it that touches the hidden axis follows them (the
attention projections' input axis, the output projection's output axis and bias, the
norms' scales, the MLP's input and output axes). This table says which normalization
layers each block holds, and which config entry says its hidden width, so that
`tfprune.shrink` rebuilds the block at the new width.

A block that computes its head size as `hidden_dim // num_heads` (keras-hub's
`TransformerEncoder`/`TransformerDecoder` of BERT and GPT-2, Llama, Mistral, Qwen:
`tfprune.hub_blocks.Block.heads` is `None` for them) cannot be rebuilt with a smaller hidden
width and the same heads, so it has no entry here and its stream stays frozen.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfprune import hub_blocks
from tfprune import layers as registry

__all__ = ["STREAMS", "Stream", "norm_paths", "rebuild", "shrunk_config", "stream_biases"]


@dataclasses.dataclass(frozen=True)
class Stream:
    """The normalization layers of a keras-hub block and the config key of its width.

    Attributes:
        norms: Attribute names of the block's normalization layers on the stream (a
            missing one, such as Gemma's optional post-attention norm, is skipped).
        width_key: Config key of the hidden width, or `None` when the block reads it
            from its input shape.
    """

    norms: tuple[str, ...]
    width_key: str | None = None


STREAMS: dict[str, Stream] = {
    "GemmaDecoderBlock": Stream(
        ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"),
        width_key="hidden_dim",
    ),
}

_NORM_WEIGHTS = ("gamma", "beta", "scale")


def norm_paths(layer: keras.layers.Layer) -> list[str]:
    """Attribute paths of the per-channel weights of a block's normalization layers.

    Example: `norm_paths(gemma.get_layer("decoder_block_0"))` is
    `["pre_attention_norm.scale", "pre_ffw_norm.scale"]`.

    Args:
        layer: Any layer.

    Returns:
        `["pre_attention_norm.scale", ...]` for a block of the table (the weights it has),
        else `[]`.
    """
    stream = STREAMS.get(keras.saving.get_registered_name(type(layer)))
    if stream is None:
        return []
    paths = (f"{norm}.{weight}" for norm in stream.norms for weight in _NORM_WEIGHTS)
    return [p for p in paths if registry.resolve(layer, p) is not None]


def stream_biases(layer: keras.layers.Layer) -> np.ndarray:
    """What a block adds to every position of its stream whatever its input: its biases.

    A channel whose kernels are all zero still carries them (`tfprune.shrink` keeps it).

    Args:
        layer: A keras-hub block of `tfprune.hub_blocks.BLOCKS`.

    Returns:
        The attention output projections' and the MLP down projection's biases, summed
        (`0.0` when it has none).
    """
    block = hub_blocks.block_of(layer)
    out = block.projections[3]
    paths = [f"{name}.{out}.bias" for name, _ in hub_blocks.attention_layers(layer, block)]
    total = 0.0
    for path in (*paths, f"{block.mlp_out}.bias"):
        bias = registry.resolve(layer, path)
        if bias is not None:
            total = total + keras.ops.convert_to_numpy(bias).astype(np.float64)
    return np.asarray(total)


def shrunk_config(layer: keras.layers.Layer, kept: dict[str, int]) -> dict:
    """The config update that rebuilds a block at the hidden width `tfprune.shrink` keeps.

    Args:
        layer: Any layer.
        kept: Number of positions kept on the channel axis of each weight path the
            channel graph recorded for the layer.

    Returns:
        `{width key: new width}` for a block of the table whose config holds its width
        and whose norms the graph recorded, else `{}`.
    """
    stream = STREAMS.get(keras.saving.get_registered_name(type(layer)))
    paths = [p for p in norm_paths(layer) if p in kept]
    if stream is None or stream.width_key is None or not paths:
        return {}
    return {stream.width_key: kept[paths[0]]}


def rebuild(layer: keras.layers.Layer, config: dict) -> keras.layers.Layer | None:
    """A new layer of `layer`'s class from its config, for classes whose `from_config` fails.

    keras-hub's public `RMSNormalization` takes only `input_dim` (not even a name), but
    Keras records every constructor argument with the base config (`trainable`, `dtype`),
    so `from_config` fails. It is rebuilt as `RMSNormalization(input_dim=config["input_dim"])`
    with the layer's name (`tfprune.shrink` sets `input_dim` to the width it keeps). Its
    `.keras` file still cannot be loaded: that is keras-hub's to fix.

    Args:
        layer: Any layer.
        config: Its (possibly edited) config.

    Returns:
        The new, unbuilt layer, or `None` for a class this rule does not know.
    """
    if keras.saving.get_registered_name(type(layer)) != "keras_hub>RMSNormalization":
        return None
    new = type(layer)(input_dim=int(config["input_dim"]))
    new.name = layer.name
    return new
