"""keras-hub's hidden width: the residual stream inside its transformer blocks.

A keras-hub transformer block (`tfprune.hub_blocks`) reads the residual stream on its input
and writes it back on its output (`x + attention(norm(x))`, then `+ mlp(norm(...))`).
With `through_norms=True` (`tfprune.graph.rules.hidden`) the stream's channels pass
through the block: every weight inside it that touches the hidden axis follows them (the
attention projections' input axis, the output projection's output axis and bias, the
norms' scales, the MLP's input and output axes). This table says which normalization
layers each block holds, and which config entry says its hidden width, so that
`tfprune.shrink` rebuilds the block at the new width.

A block that computes its head size as `hidden_dim // num_heads` comes back with it in
its config: Mistral's `head_dim` is set, keras-hub's `TransformerEncoder`/`TransformerDecoder`
(BERT, DistilBERT, RoBERTa, GPT-2) and Qwen's block are rebuilt as their
`tfprune.hub_sized` subclasses (`shrunk_class`), so a narrower stream keeps the same heads.
Llama has neither (and keras-hub 0.32 cannot read its config), so its stream stays frozen.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfprune import hub_blocks
from tfprune import layers as registry

__all__ = [
    "STREAMS",
    "Stream",
    "norm_paths",
    "rebuild",
    "shrunk_class",
    "shrunk_config",
    "stream_biases",
]


@dataclasses.dataclass(frozen=True)
class Stream:
    """The normalization layers of a keras-hub block and the config key of its width.

    Attributes:
        norms: Attribute names of the block's normalization layers on the stream (a
            missing one, such as Gemma's optional post-attention norm, is skipped).
        width_key: Config key of the hidden width, or `None` when the block reads it
            from its input shape.
        shape_key: Config key of the input shape the block records to build itself from
            its config (keras-hub's `TransformerDecoder`), or `None`.
    """

    norms: tuple[str, ...]
    width_key: str | None = None
    shape_key: str | None = None


_KERAS_HUB = Stream(("_self_attention_layer_norm", "_feedforward_layer_norm"))

STREAMS: dict[str, Stream] = {
    "GemmaDecoderBlock": Stream(
        ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"),
        width_key="hidden_dim",
    ),
    # keras-hub's own blocks and Mistral's read their hidden width from their input.
    **{
        name: _KERAS_HUB
        for name in (
            "keras_hub>TransformerEncoder",
            "tfprune>HeadSizedTransformerEncoder",
        )
    },
    **{
        name: dataclasses.replace(_KERAS_HUB, shape_key="decoder_sequence_shape")
        for name in ("keras_hub>TransformerDecoder", "tfprune>HeadSizedTransformerDecoder")
    },
    **{
        name: Stream(("_self_attention_layernorm", "_feedforward_layernorm"))
        for name in (
            "MistralTransformerDecoder",
            "QwenTransformerDecoder",
            "tfprune>HeadSizedQwenTransformerDecoder",
        )
    },
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
        For a block of the table whose hidden width changes: its head size under the
        block's head-size key (`head_dim`: it no longer follows from the new width), and
        `{width key: new width}` when its config holds its width (or the input shape
        it builds from); else `{}`.
    """
    stream = STREAMS.get(keras.saving.get_registered_name(type(layer)))
    paths = [p for p in norm_paths(layer) if p in kept]
    if not paths or kept[paths[0]] == registry.resolve(layer, paths[0]).shape[0]:
        return {}
    block = hub_blocks.block_of(layer)
    _, attention = hub_blocks.attention_layers(layer, block)[0]
    query = registry.resolve(attention, f"{block.projections[0]}.kernel")
    config = {block.head_size or "head_dim": int(query.shape[-1])}
    if stream.width_key is not None:
        config[stream.width_key] = kept[paths[0]]
    shape = layer.get_config().get(stream.shape_key) if stream.shape_key else None
    if shape is not None:
        config[stream.shape_key] = (*shape[:-1], kept[paths[0]])
    return config


def shrunk_class(layer: keras.layers.Layer, kept: dict[str, int]) -> type | None:
    """The class that rebuilds a block at the hidden width `tfprune.shrink` keeps.

    Args:
        layer: Any layer.
        kept: As for `shrunk_config`.

    Returns:
        The `tfprune.hub_sized` subclass of a block that derives its head size from
        `hidden_dim // num_heads` (keras-hub's `TransformerEncoder`/`TransformerDecoder`)
        when its hidden width changes, else `None` (its own class).
    """
    block = hub_blocks.block_of(layer)
    if block is None or block.sized is None or not shrunk_config(layer, kept):
        return None
    return hub_blocks.sized_class(block)


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
