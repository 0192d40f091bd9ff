"""keras-hub transformer blocks: where their inner weights are and how they rebuild smaller.

keras-hub's text backbones (BERT, DistilBERT, RoBERTa, GPT-2, Gemma, Mistral, Qwen, Llama)
keep every Dense of a transformer layer inside one block layer (`TransformerEncoder`,
`TransformerDecoder`, `GemmaDecoderBlock`, ...): its attention projections and its MLP.
This table says, for each block, which attributes hold them, so that

- `tfprune.layers` lists the block's kernels as nested weights of one prunable layer
  (as for `keras.layers.MultiHeadAttention`), for `wrap`, `strip` and one-shot pruning;
- `tfprune.graph` exposes the MLP width and the attention heads as channel groups of the
  block;
- `tfprune.heads` finds the attention layer inside the block;
- `tfprune.shrink` rebuilds the block from its config with a smaller `intermediate_dim`
  and fewer heads. A block whose config holds its head size (`head_size`) keeps it there;
  keras-hub's `TransformerEncoder`, `TransformerDecoder` and Qwen's block derive it
  from `hidden_dim // num_heads`, so they come back as the subclasses of
  `tfprune.hub_sized` (`sized`), which take it in their config.

Blocks are keyed by Keras registered name, so keras-hub is never imported. keras-hub
names the sublayers of these blocks with a leading underscore (`_feedforward_output_dense`);
those attribute paths are the only handle on them, and the weight paths use them as they
are, so that `tfprune.layers.resolve(block, path)` finds the variable.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import keras
import numpy as np

from tfprune import layers as registry

__all__ = [
    "BLOCKS",
    "Block",
    "attention_layers",
    "block_of",
    "carried_bias",
    "fixed_heads",
    "maps_zero_to_zero",
    "shrunk_config",
    "sized_class",
]


@dataclasses.dataclass(frozen=True)
class Block:
    """Where a keras-hub block keeps its attention and MLP, and what its config means.

    Attributes:
        attention: Attribute names of its attention layers (a missing one, such as the
            cross attention of a decoder-only `TransformerDecoder`, is skipped).
        projections: Attribute names of the query, key, value and output projections
            inside each attention layer.
        mlp_in: Attribute names of the layers that produce the MLP's intermediate units
            (the up projection, and the gate projection of a gated MLP).
        mlp_out: Attribute name of the MLP's down projection.
        width_scale: `intermediate_dim` divided by the number of intermediate units (2 for
            Gemma, whose gate and up projections each have `intermediate_dim // 2` units).
        heads: Config keys of the query heads and the key/value heads (`None` when they
            are the same).
        head_size: Config key of the head size, or `None` when the block derives it
            from `hidden_dim // num_query_heads`.
        sized: Name of the `tfprune.hub_sized` subclass that takes the head size in its
            config, for a block that derives it (`None`: there is none, so the block
            cannot be rebuilt with fewer heads of the same size).
        activation: Config key of the MLP's activation, or `None` when it is fixed and
            maps 0 to 0 (GELU, SiLU).
    """

    attention: tuple[str, ...]
    projections: tuple[str, str, str, str]
    mlp_in: tuple[str, ...]
    mlp_out: str
    width_scale: int = 1
    heads: tuple[str, str | None] = ("num_query_heads", "num_key_value_heads")
    head_size: str | None = None
    sized: str | None = None
    activation: str | None = None


_MHA = ("query_dense", "key_dense", "value_dense", "output_dense")
_PRIVATE = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
_UP = "_feedforward_intermediate_dense"
_DOWN = "_feedforward_output_dense"
_GATED = (_UP, "_feedforward_gate_dense")

_ENCODER = Block(
    ("_self_attention_layer",),
    _MHA,
    (_UP,),
    _DOWN,
    heads=("num_heads", None),
    activation="activation",
)
_DECODER = dataclasses.replace(
    _ENCODER, attention=("_self_attention_layer", "_cross_attention_layer")
)
_GQA = Block(("_self_attention_layer",), _PRIVATE, _GATED, _DOWN, activation="activation")

BLOCKS: dict[str, Block] = {
    "keras_hub>TransformerEncoder": dataclasses.replace(
        _ENCODER, sized="HeadSizedTransformerEncoder"
    ),
    "keras_hub>TransformerDecoder": dataclasses.replace(
        _DECODER, sized="HeadSizedTransformerDecoder"
    ),
    "tfprune>HeadSizedTransformerEncoder": dataclasses.replace(_ENCODER, head_size="head_dim"),
    "tfprune>HeadSizedTransformerDecoder": dataclasses.replace(_DECODER, head_size="head_dim"),
    "GemmaDecoderBlock": Block(
        ("attention",),
        _MHA,
        ("gating_ffw", "gating_ffw_2"),
        "ffw_linear",
        width_scale=2,
        head_size="head_dim",
    ),
    "MistralTransformerDecoder": dataclasses.replace(_GQA, head_size="head_dim"),
    "QwenTransformerDecoder": dataclasses.replace(_GQA, sized="HeadSizedQwenTransformerDecoder"),
    "tfprune>HeadSizedQwenTransformerDecoder": dataclasses.replace(_GQA, head_size="head_dim"),
    "LlamaTransformerDecoder": _GQA,
}


def block_of(layer: keras.layers.Layer) -> Block | None:
    """The table entry of a keras-hub block, by its registered name, or `None`."""
    return BLOCKS.get(keras.saving.get_registered_name(type(layer)))


def fixed_heads(layer: keras.layers.Layer, block: Block) -> str | None:
    """Why `tfprune.shrink` cannot rebuild the block with fewer heads, or `None` if it can.

    It can when the head size is in the block's config or a `tfprune.hub_sized` subclass
    takes it. (A decoder's self and cross attention share one head count: they are
    rebuilt with the same number of heads.)
    """
    if block.head_size is None and block.sized is None:
        return (
            "computes its head size as hidden_dim // num_query_heads, so it cannot be "
            "rebuilt with fewer heads of the same size"
        )
    return None


def sized_class(block: Block) -> type:
    """The `tfprune.hub_sized` subclass of a block that derives its head size.

    Imports `tfprune.hub_sized`, hence keras-hub (already imported when such a block
    exists).
    """
    return getattr(importlib.import_module("tfprune.hub_sized"), block.sized)


def attention_layers(layer: keras.layers.Layer, block: Block) -> list[tuple[str, object]]:
    """`(attribute, attention layer)` of each attention layer the block has."""
    found = ((name, getattr(layer, name, None)) for name in block.attention)
    return [(name, sub) for name, sub in found if sub is not None]


def _sub_specs(sub: keras.layers.Layer, prefix: str) -> list[registry.WeightSpec]:
    """A registered sublayer's weight specs with the path prefix, MACs counted by the block."""
    return [
        dataclasses.replace(s, path=prefix + s.path, positions="none", output=False)
        for s in registry.lookup(sub).weight_specs(sub)
    ]


def _weight_specs(block: Block, layer: keras.layers.Layer) -> tuple[registry.WeightSpec, ...]:
    specs: list[registry.WeightSpec] = []
    for name, sub in attention_layers(layer, block):
        for proj in block.projections:
            specs += _sub_specs(getattr(sub, proj), f"{name}.{proj}.")
    for name in (*block.mlp_in, block.mlp_out):
        specs += _sub_specs(getattr(layer, name), f"{name}.")
    return tuple(specs)


def _macs(block: Block, layer, input_shapes: list, output_shape: tuple) -> int:
    """Every kernel once per token, plus the attention scores and context products."""
    hidden = input_shapes[0]
    tokens = math.prod(int(d) for d in hidden[1:-1])
    total = sum(
        math.prod(registry.resolve(layer, s.path).shape) * tokens
        for s in _weight_specs(block, layer)
        if s.prunable
    )
    for _, sub in attention_layers(layer, block):
        query = registry.resolve(sub, f"{block.projections[0]}.kernel")
        inner = math.prod(query.shape) // int(hidden[-1])  # heads x head size
        total += 2 * tokens * tokens * inner
    return total


def shrunk_config(layer: keras.layers.Layer, kept: dict[str, int]) -> dict:
    """The config update that rebuilds a block with the MLP units `tfprune.shrink` keeps.

    Args:
        layer: Any layer.
        kept: Number of positions kept on the channel axis of each weight path the
            channel graph recorded for the layer.

    Returns:
        `{"intermediate_dim": ...}` (scaled as the block's config expects) for a block of
        the table whose MLP kernel was recorded, else `{}`.
    """
    block = block_of(layer)
    path = f"{block.mlp_in[0]}.kernel" if block is not None else None
    if path not in kept:
        return {}
    return {"intermediate_dim": kept[path] * block.width_scale}


def carried_bias(layer: keras.layers.Layer, kept: dict[str, np.ndarray]) -> dict:
    """The down projection's bias with what removed MLP units still carried folded in.

    A unit whose kernel column is zero still outputs `activation(bias)`; removing it drops
    `activation(bias) * row` of the down projection, which this adds to its bias.

    Args:
        layer: Any layer.
        kept: Keep decisions along the channel axis of each weight path the channel graph
            recorded for the layer.

    Returns:
        `{down projection bias path: new bias}` for a block of the table with a biased
        MLP that loses units carrying a nonzero value, else `{}`.
    """
    block = block_of(layer)
    path = f"{block.mlp_in[0]}.kernel" if block is not None else None
    if path not in kept or len(block.mlp_in) != 1:
        return {}
    up, down = getattr(layer, block.mlp_in[0]), getattr(layer, block.mlp_out)
    removed = ~kept[path]
    if up.bias is None or down.bias is None or not removed.any():
        return {}
    carried = keras.ops.convert_to_numpy(up.activation(up.bias))[removed].astype(np.float64)
    rows = keras.ops.convert_to_numpy(down.kernel)[removed].astype(np.float64)
    bias = keras.ops.convert_to_numpy(down.bias) + carried @ rows
    return {f"{block.mlp_out}.bias": bias.astype(np.float32)}


def maps_zero_to_zero(layer: keras.layers.Layer, block: Block) -> bool:
    """Whether the block's MLP activation maps 0 to 0 (a zeroed unit then adds nothing)."""
    if block.activation is None:
        return True
    fn = keras.activations.get(layer.get_config()[block.activation])
    return float(keras.ops.convert_to_numpy(fn(keras.ops.zeros((1,))))[0]) == 0.0


class _SizedLoader:
    """Stands in for a `tfprune.hub_sized` class until Keras deserializes one.

    Registered under the class's name when tfprune is imported, so that a saved model
    holding one loads without importing keras-hub at `import tfprune`; the first load
    imports `tfprune.hub_sized`, whose classes then replace their stand-ins.
    """

    def __init__(self, block: Block):
        self.block = block

    def from_config(self, config: dict) -> keras.layers.Layer:
        return sized_class(self.block).from_config(config)


def _register() -> None:
    custom = keras.saving.get_custom_objects()
    for block in BLOCKS.values():
        if block.sized is not None:
            custom.setdefault(f"tfprune>{block.sized}", _SizedLoader(block))
    for name, block in BLOCKS.items():
        registry.register(
            name,
            registry.LayerSpec(
                lambda layer, block=block: _weight_specs(block, layer),
                extra_macs=lambda layer, ins, out, block=block: _macs(block, layer, ins, out),
            ),
        )


_register()
