"""Channel rules of keras-hub layers, keyed by registered name (keras-hub is not imported).

RMSNormalization, PositionEmbedding, ReversibleEmbedding and TokenAndPositionEmbedding have
rules in `hidden.py` (the hidden width of a transformer). The transformer blocks of
keras-hub's text backbones (`tfprune.hub_blocks`) expose their MLP width as a group of their
own: the up (and gate) projections' output units with the down projection's input rows, and
their attention heads. Their hidden width is the residual stream, which passes through the
block's norms and attention: it stays frozen, with a reason, unless the graph is built with
`through_norms=True` and the block can be rebuilt at a smaller width
(`hidden.block_stream`). Other blocks and attention layers hold several weights whose
channels are tied in ways the graph does not see from outside (heads, residual streams,
rotary tables), so their rules freeze the channels that reach them with a reason that says
so; a model that prunes inside them registers a rule of its own with
`tfprune.graph.register`.
"""

from __future__ import annotations

import numpy as np

from tfprune import hub_blocks
from tfprune import layers as registry
from tfprune.graph._state import Call, Graph, width
from tfprune.graph.rules import hidden
from tfprune.graph.table import register

_BLOCKS = (
    "ViTEncoder",
    "ViTPatchingAndEmbedding",
    "CachedMultiHeadAttention",
    "RotaryEmbedding",
    "FNetEncoder",
)


def opaque_block(g: Graph, call: Call) -> str:
    """A keras-hub block: its inner weights tie channels the graph cannot see."""
    return (
        "it is a keras-hub block whose inner weights (attention heads, residual stream, "
        "embeddings) tie its channels in ways tfprune.graph does not model; register a rule "
        "with tfprune.graph.register to prune through it"
    )


def _attention_heads(g: Graph, call: Call, block: hub_blocks.Block) -> None:
    """One group of a block's attention heads: its key/value heads, each a channel.

    A channel is a key/value head with the query heads it serves (grouped-query attention
    loses whole groups, never a mix); it holds the query, key and value projections' head
    slices and the output projection's rows of its query heads. The self and cross
    attention of a decoder share one head count, so head `k` of both is one channel:
    they lose the same heads.
    """
    q, k, v, o = block.projections
    heads = None
    for attr, sub in hub_blocks.attention_layers(call.layer, block):
        axes = {}
        for name in block.projections:
            dense = getattr(sub, name)
            kernel, *_ = registry.lookup(dense).weight_specs(dense)
            axes[name] = kernel.in_axes[0] if name == o else kernel.out_axes[0]
        n_q = registry.resolve(sub, f"{q}.kernel").shape[axes[q]]
        if heads is None:
            heads = g.new(registry.resolve(sub, f"{k}.kernel").shape[axes[k]])
        per_query = heads[np.arange(n_q) * heads.size // n_q]
        for name, ids in ((q, per_query), (k, heads), (v, heads)):
            g.record(call.layer, f"{attr}.{name}.kernel", axes[name], ids, "output")
            g.record(call.layer, f"{attr}.{name}.bias", 0, ids, "output")
        g.record(call.layer, f"{attr}.{o}.kernel", axes[o], per_query, "input")
    reason = hub_blocks.fixed_heads(call.layer, block)
    if reason is not None:
        g.freeze(heads, f"{call.name} {reason}")


def transformer_block(g: Graph, call: Call) -> np.ndarray:
    """A keras-hub transformer block: MLP width and heads are groups, hidden width is kept.

    With `through_norms=True` the hidden width passes through the blocks that can be
    rebuilt at a smaller width (`hidden.block_stream`); its slices are recorded first, so
    that a kernel's MLP or head slice, recorded after, is the one `tfprune.shrink` reads
    for the block's config.
    """
    layer = call.layer
    block = hub_blocks.block_of(layer)
    reason = (
        f"{call.name} adds them to its residual stream (the hidden width of a keras-hub "
        "block is kept; its MLP units and attention heads are pruned)"
    )
    if g.through_norms:
        reason = hidden.block_stream(g, call, block)
    for ids in call.ids if reason is not None else ():
        g.freeze(ids, reason)
    _attention_heads(g, call, block)
    units = registry.resolve(layer, f"{block.mlp_in[0]}.kernel").shape[-1]
    mlp = g.new(units)
    for name in block.mlp_in:
        g.record(layer, f"{name}.kernel", -1, mlp, "output")
        g.record(layer, f"{name}.bias", 0, mlp, "output")
    g.record(layer, f"{block.mlp_out}.kernel", 0, mlp, "input")
    biased = [n for n in block.mlp_in if registry.resolve(layer, f"{n}.bias") is not None]
    down_bias = registry.resolve(layer, f"{block.mlp_out}.bias")
    if biased and (len(block.mlp_in) > 1 or down_bias is None):
        g.freeze(
            mlp,
            f"the MLP of {call.name} has biases whose value a removed unit would still "
            "carry, and tfprune.shrink can fold it only into the bias of a plain MLP's "
            "down projection",
        )
    if not hub_blocks.maps_zero_to_zero(layer, block):
        g.freeze(
            mlp,
            f"the MLP activation of {call.name} does not map 0 to 0, so a removed unit "
            "would still add a constant",
        )
    if reason is None:  # the stream passes (through_norms=True)
        call.kind = "residual_block"
        return call.ids[0]
    return g.fixed(width(call.out_shape), f"the residual stream of {call.name}")


# keras-hub registers its public layers as "keras_hub>Name"; the layers inside its models
# (GemmaDecoderBlock) carry their bare class name.
for _name in hub_blocks.BLOCKS:
    register(_name, transformer_block, "unknown")
for _name in _BLOCKS:
    for _key in (f"keras_hub>{_name}", _name):
        register(_key, opaque_block, "unknown")
