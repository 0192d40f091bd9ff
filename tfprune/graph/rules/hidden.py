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

Without `through_norms=True`, `Embedding` and attention layers keep their channels as
before (their outputs belong to no group, their inputs are frozen), with reasons that name
the opt-in; `PositionEmbedding`, which only follows its input's channels, always does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import keras

from tfprune.graph._state import Call, Graph, Tensor, width
from tfprune.graph.table import lookup, register

__all__ = [
    "attention",
    "embedding",
    "is_norm",
    "normalization",
    "position_embedding",
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
):
    register(_norm, normalization, "hidden_norm")
register(_L.MultiHeadAttention, attention, "attention")
register(_L.GroupQueryAttention, attention, "attention")
register(_L.Embedding, embedding, "lookup")
register("keras_hub>PositionEmbedding", position_embedding, "lookup")
