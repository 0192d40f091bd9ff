"""Channel rules of the hidden (embedding) width of transformers: norms, attention, embeddings.

The hidden width is the channel axis of a transformer's residual stream: the embeddings
produce it, every block's attention and MLP read it (the query/key/value projections' and
the MLP up projection's input axis) and write it back (the attention output projection's
and the MLP down projection's output axis, joined by the residual `Add`), and the
normalization layers in between compute statistics over it.

- `keras.layers.LayerNormalization`, `keras.layers.RMSNormalization` and keras-hub's
  `RMSNormalization` compute statistics over the channels, so removing a channel changes
  every other channel's output: they freeze the channels that reach them, with a reason
  that names the opt-in, unless the graph is built with `through_norms=True`
  (`tfprune.prune_channels`, `tfprune.shrink`, `tfprune.graph.channel_groups`). Then they
  pass the channels through and their gamma/beta (or scale) follow them, and the rules
  below map the rest of the stream, so the residual stream of a transformer becomes one
  prunable group. The result is NOT exact (the norms' statistics are computed over fewer
  channels): it is meant for models that are fine-tuned or distilled afterwards
  (Muralidharan et al. 2024, Minitron).
- `keras.layers.Embedding` and keras-hub's `PositionEmbedding` produce hidden channels
  (`embeddings[:, c]`, `position_embeddings[:, c]`).
- `keras.layers.MultiHeadAttention` and `keras.layers.GroupQueryAttention` consume them on
  the input axis of the query, key, value (and gate) kernels and produce them on the output
  axis of the output projection. Without an explicit `output_shape`, the output width is
  the query's, so the output channels are the query's channels.

- keras-hub's `ReversibleEmbedding` (an `Embedding` whose transpose, or untied
  `reverse_embeddings`, projects back to the vocabulary) and `TokenAndPositionEmbedding`
  (a token and a position table, `embedding_dim` wide) produce hidden channels too.
- keras-hub's transformer blocks (`tfprune.hub_blocks`, `tfprune.hub_hidden`) pass the
  stream: `block_stream` records every weight inside them on the hidden axis.

Without `through_norms=True`, `Embedding`s and attention layers keep their channels as
before (their outputs belong to no group, their inputs are frozen), with reasons that name
the opt-in; `PositionEmbedding`, which only follows its input's channels, always does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import keras

from tfprune import hub_blocks, hub_hidden
from tfprune import layers as registry
from tfprune.graph._state import Call, Graph, Tensor, width
from tfprune.graph.table import lookup, register

__all__ = [
    "attention",
    "block_stream",
    "embedding",
    "is_norm",
    "norm_name",
    "normalization",
    "position_embedding",
    "reversible_embedding",
    "token_and_position_embedding",
    "warn_inexact",
]

_L = keras.layers

# Sub-layer names of the attention projections that read the query / key / value.
_READS = (("query", "query"), ("gate", "query"), ("key", "key"), ("value", "value"))


def _record(g: Graph, layer, weight: str, axis: int, ids, role: str) -> None:
    """`g.record`, for weights that hold at least one channel of a group."""
    if (ids >= 0).any():
        g.record(layer, weight, axis, ids, role)


def normalization(g: Graph, call: Call):
    """LayerNormalization / RMSNormalization over the last axis.

    Frozen (with a reason naming the opt-in), or, with `through_norms=True`, a pass-through
    whose per-channel vectors (`gamma`, `beta`, `scale`) follow the channels.
    """
    layer, ids = call.layer, call.ids[0]
    axis = getattr(layer, "axis", -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    rank = max(len(call.shapes[0]), 1)
    name = f"{type(layer).__name__} '{layer.name}'"
    if [a % rank for a in axes] != [rank - 1]:
        g.freeze(ids, f"{name} normalizes over axes {axes}, so removing channels would change it")
        return ids
    if not g.through_norms:
        g.freeze(
            ids,
            f"{name} computes statistics across channels, so removing channels would change "
            "its output; pass `through_norms=True` to prune the hidden width through it "
            "anyway (not exact: fine-tune or distil afterwards)",
        )
        return ids
    for weight in ("gamma", "beta", "scale"):
        _record(g, layer, weight, 0, ids, "norm")
    return ids


def _kept(g: Graph, call: Call, what: str) -> list:
    """Without the opt-in: the inputs are frozen and the outputs belong to no group."""
    reason = (
        f"{call.name} {what} the hidden width of a transformer, which is pruned only with "
        "`through_norms=True` (not exact: fine-tune or distil afterwards)"
    )
    for ids in call.ids:
        g.freeze(ids, reason)
    origin = f"the output of {call.name} (hidden width, pruned only with `through_norms=True`)"
    return [g.fixed(width(s), origin) for s in call.out_shapes] or [g.fixed(1, origin)]


def _attention_inputs(call: Call) -> tuple:
    """Channel ids of the query, key and value tensors of an attention call."""
    names = ("query", "value", "key")
    found = {}
    for position, arg in enumerate(call.args[:3]):
        if isinstance(arg, Tensor):
            found[names[position]] = call.ids[arg.k]
    for key in names:
        if isinstance(call.kwargs.get(key), Tensor):
            found[key] = call.ids[call.kwargs[key].k]
    query = found.get("query")
    value = found.get("value", query)
    return query, found.get("key", value), value


def attention(g: Graph, call: Call):
    """MultiHeadAttention / GroupQueryAttention: reads and writes hidden channels."""
    layer = call.layer
    if not g.through_norms:
        return _kept(g, call, "reads and writes")
    query, key, value = _attention_inputs(call)
    if query is None:
        return "its query is not a tensor input of the call"
    inputs = {"query": query, "key": key, "value": value}
    shape = layer.get_config().get("output_shape")
    shape = (shape,) if isinstance(shape, int) else shape
    if shape is None:
        out = query
    elif len(shape) == 1:
        out = g.new(width(call.out_shape))
    else:
        return f"its output_shape={tuple(shape)} has more than one axis"
    for projection, reads in _READS:
        _record(g, layer, f"{projection}/kernel", 0, inputs[reads], "input")
    _record(g, layer, "attention_output/kernel", -1, out, "output")
    _record(g, layer, "attention_output/bias", 0, out, "output")
    return out


def embedding(g: Graph, call: Call):
    """Embedding: a lookup that produces `output_dim` new channels (`embeddings[:, c]`)."""
    if not g.through_norms:
        return _kept(g, call, "produces")
    out = g.new(call.layer.output_dim)
    g.record(call.layer, "embeddings", 1, out, "output")
    return out


def reversible_embedding(g: Graph, call: Call):
    """keras-hub ReversibleEmbedding: a lookup, and (`reverse=True`) the projection back.

    Both calls use the same hidden axis: `embeddings[:, c]` (and, untied,
    `reverse_embeddings[c, :]`), so the channels of every call of the layer are tied
    (Gemma's and GPT-2's language-model head is the token embedding, called in reverse
    on the final stream). A reverse call reads the stream and produces the vocabulary.
    """
    layer = call.layer
    reverse = bool(call.kwargs.get("reverse", call.args[1] if len(call.args) > 1 else False))
    if not g.through_norms:
        return _kept(g, call, "reads" if reverse else "produces")
    ids = call.ids[0] if reverse else g.new(layer.output_dim)
    earlier = next((s[3] for s in g.slices if s[0] is layer and s[1] == "embeddings"), None)
    if earlier is None:
        g.record(layer, "embeddings", 1, ids, "output")
        _record(g, layer, "reverse_embeddings", 0, ids, "input")
    else:
        g.union(earlier, ids, call.name)
    if reverse:
        call.kind = "strict"  # removed channels must carry exactly zero into the logits
        return g.fixed(width(call.out_shape), f"the vocabulary logits of {call.name}")
    return ids


def token_and_position_embedding(g: Graph, call: Call):
    """keras-hub TokenAndPositionEmbedding: the sum of two tables, `embedding_dim` wide."""
    if not g.through_norms:
        return _kept(g, call, "produces")
    out = g.new(call.layer.embedding_dim)
    for weight in ("token_embedding.embeddings", "position_embedding.position_embeddings"):
        g.record(call.layer, weight, 1, out, "output")
    _record(g, call.layer, "token_embedding.reverse_embeddings", 0, out, "input")
    return out


def block_stream(g: Graph, call: Call, block: hub_blocks.Block) -> str | None:
    """Records a keras-hub block's weights on the hidden axis of its stream (`through_norms`).

    The stream is the block's first input and its output (residual): the norms' vectors
    follow it, the attention projections and the MLP's first kernels read it on their input
    axis, the attention output projection and the MLP's last kernel write it on their
    output axis (with their biases). Other inputs (the padding mask) are frozen. A block
    whose head size follows from its width passes only if `tfprune.shrink` can write it into
    its config (`Block.head_size`, or a `tfprune.hub_sized` class); one with cross attention
    (a second sequence of its own width) does not.

    Returns:
        `None` when the stream passes, else why the block keeps its hidden width (its
        inputs are then frozen with that reason by the caller).
    """
    layer = call.layer
    if block.head_size is None and block.sized is None:
        return (
            f"{call.name} computes its head size as hidden_dim // num_heads, so it cannot be "
            "rebuilt with a smaller hidden width and the same heads"
        )
    if len(hub_blocks.attention_layers(layer, block)) > 1:
        return (
            f"{call.name} has cross attention, whose key and value read another sequence "
            "(the encoder's) of its own width"
        )
    if keras.saving.get_registered_name(type(layer)) not in hub_hidden.STREAMS:
        return (
            f"{call.name} has no entry in tfprune.hub_hidden.STREAMS (its norms and the "
            "config key of its width)"
        )
    stream = call.ids[0]
    for ids in call.ids[1:]:
        g.freeze(ids, f"{call.name} reads it as a mask, not as hidden channels")
    for path in hub_hidden.norm_paths(layer):
        g.record(layer, path, 0, stream, "norm")
    *reads, out = block.projections
    for attr, _ in hub_blocks.attention_layers(layer, block):
        for name in reads:
            _record_axis(g, layer, f"{attr}.{name}", stream, "input")
        _record_axis(g, layer, f"{attr}.{out}", stream, "output")
    for name in block.mlp_in:
        _record_axis(g, layer, name, stream, "input")
    _record_axis(g, layer, block.mlp_out, stream, "output")
    return None


def _record_axis(g: Graph, block, sublayer: str, ids, role: str) -> None:
    """Records the hidden axis of a block's Dense/EinsumDense (its input or output axis)."""
    dense = block
    for part in sublayer.split("."):
        dense = getattr(dense, part)
    kernel = next(s for s in registry.lookup(dense).weight_specs(dense) if s.path == "kernel")
    axis = kernel.in_axes[0] if role == "input" else kernel.out_axes[-1]
    g.record(block, f"{sublayer}.kernel", axis, ids, role)
    if role == "output":
        g.record(block, f"{sublayer}.bias", 0, ids, role)


def position_embedding(g: Graph, call: Call):
    """keras-hub PositionEmbedding: one learned vector per position, as wide as its input.

    Its channels are its input's (it creates no group), so it follows them with or
    without the opt-in.
    """
    ids = call.ids[0]
    _record(g, call.layer, "position_embeddings", 1, ids, "output")
    return ids


def is_norm(layer) -> bool:
    """Whether a layer is a normalization that `through_norms=True` prunes through."""
    entry = lookup(layer)
    return entry is not None and entry.fn is normalization


def norm_name(layer, weight: str) -> str | None:
    """The normalization layer a recorded weight belongs to, for `warn_inexact`.

    Args:
        layer: The layer of a slice of a channel group.
        weight: The slice's weight path.

    Returns:
        The layer's name for a normalization layer, `"block/norm"` for a norm inside a
        keras-hub block (`tfprune.hub_hidden`), else `None`.
    """
    if is_norm(layer):
        return layer.name
    if weight in hub_hidden.norm_paths(layer):
        return f"{layer.name}/{weight.rpartition('.')[0]}"
    return None


def warn_inexact(caller: str, norms: Iterable[str]) -> None:
    """Warns that channels were removed through normalization layers (not exact).

    Args:
        caller: The tfprune function, for the message.
        norms: Names of the normalization layers whose channels were removed.
    """
    names = list(dict.fromkeys(norms))
    if not names:
        return
    shown = ", ".join(f"'{n}'" for n in names[:3]) + (", ..." if len(names) > 3 else "")
    warnings.warn(
        f"{caller}(through_norms=True) removed hidden channels that pass through "
        f"{len(names)} normalization layer(s) ({shown}). These compute statistics across "
        "channels, so the result is not exact: fine-tune or distil it (tfprune.distill) "
        "afterwards.",
        UserWarning,
        stacklevel=3,
    )


for _norm in (
    _L.LayerNormalization,
    _L.RMSNormalization,
    "keras_hub>RMSNormalization",
    "RMSNormalization",  # the bare name of the RMSNormalization inside keras-hub's models
    "MistralLayerNormalization",  # an RMSNorm (`scale`) of keras-hub's Mistral
    "QwenLayerNorm",  # an RMSNorm (`scale`) of keras-hub's Qwen
):
    register(_norm, normalization, "hidden_norm")
register(_L.MultiHeadAttention, attention, "attention")
register(_L.GroupQueryAttention, attention, "attention")
register(_L.Embedding, embedding, "lookup")
register("keras_hub>PositionEmbedding", position_embedding, "lookup")
for _key in ("keras_hub>ReversibleEmbedding", "ReversibleEmbedding"):
    register(_key, reversible_embedding, "reversible")
for _key in ("keras_hub>TokenAndPositionEmbedding", "TokenAndPositionEmbedding"):
    register(_key, token_and_position_embedding, "lookup")
