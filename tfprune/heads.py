"""Attention-head pruning: score whole heads, zero the least important, shrink `num_heads`.

A head of `keras.layers.MultiHeadAttention` (and of its subclasses, e.g. keras-hub's
`CachedMultiHeadAttention`) owns a slice of the query, key and value projections (their
kernels' head axis and their biases) and the matching rows of the output projection. In
`keras.layers.GroupQueryAttention` (Gemma, Llama, Qwen style), `num_key_value_heads` groups
each serve `num_query_heads / num_key_value_heads` query heads: a query head owns its query
(and gate) slice and its output rows, a key/value group owns its key and value slices.

`prune_heads` zeroes dropped heads in a copy of the model; the copy predicts exactly what
the shrunk model predicts, since a head whose value projection (or output rows) is zero
adds nothing to the output. `tfprune.shrink` then rebuilds each attention layer with fewer
heads. Grouped-query layers stay consistent: either every group loses the same number of
query heads (`unit="head"`) or whole groups go with all their query heads
(`unit="group"`), never a mix.

Attention layers inside keras-hub transformer blocks (`tfprune.hub_blocks`) are found and
pruned too, with their head counts read from the block's config; they are named
`"<block>/<attention>"`. `shrink` rebuilds a block whose config holds its head size
(Gemma's and Mistral's `head_dim`) with fewer heads; keras-hub's `TransformerEncoder` and
`TransformerDecoder` (BERT, GPT-2) and Qwen's block, which derive it from
`hidden_dim // num_heads`, come back as their `tfprune.hub_sized` subclasses, which take it
in their config. A `TransformerDecoder` with cross attention (an encoder-decoder model) has
one head count for its self and cross attention: `prune_heads` removes the same number of
heads from both, each its own least important ones, and `shrink` keeps as many heads in
both as the layer with more live heads needs (padding the other with dead heads, which add
nothing), so the result is exact. Llama's block cannot serialize its config in keras-hub
0.32, so tfprune cannot read or rebuild a Llama model at all (a `TypeError` names the
layer).

```python
pruned = tfprune.prune_heads(model, ratio=0.5, criterion="activation", data=[x[:256]])
small = tfprune.shrink(pruned)          # num_heads halved in every attention layer
```

Criteria: `tfprune.head_criteria` (weight norms, Taylor, activations on calibration data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import keras
import numpy as np

from tfprune import head_criteria as criteria
from tfprune import hub_blocks, surgery
from tfprune import layers as registry
from tfprune.channel_pruning import check_ratio, select_channels
from tfprune.head_criteria import CRITERIA, variable_key
from tfprune.wrapper import prunable_layers

__all__ = [
    "AttentionHeads",
    "attention_heads",
    "head_scores",
    "prune_heads",
    "shrunk_heads",
    "variable_key",
    "zero_heads",
]

UNITS = ("head", "group")

# Attention classes -> (config key of query heads, config key of key/value heads or None).
_KINDS: dict[type, tuple[str, str | None]] = {
    keras.layers.MultiHeadAttention: ("num_heads", None),
    keras.layers.GroupQueryAttention: ("num_query_heads", "num_key_value_heads"),
}
# The same, by Keras registered name, for attention layers of packages tfprune does not import.
_NAMED_KINDS: dict[str, tuple[str, str | None]] = {
    "CachedGemmaAttention": ("num_query_heads", "num_key_value_heads"),
}
# Attention layers (by registered name) whose query/key/value kernels put the head axis
# first, `(heads, input, head size)`, instead of `(input..., heads, head size)`.
_HEADS_FIRST = ("CachedGemmaAttention",)
# Sub-layer (projection) name -> which heads its head axis counts: query or key/value.
_PROJECTIONS = {"query": "q", "gate": "q", "key": "kv", "value": "kv", "attention_output": "o"}


def _kind(layer) -> tuple[str, str | None] | None:
    for cls in type(layer).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    return _NAMED_KINDS.get(keras.saving.get_registered_name(type(layer)))


@dataclasses.dataclass
class AttentionHeads:
    """The heads of one attention layer and the weight slices each owns.

    Attributes:
        layer: The attention layer.
        query_heads: Number of query heads.
        kv_heads: Number of key/value heads (groups); equals `query_heads` for
            `MultiHeadAttention`.
        slices: `(variable, head axis, "q" | "kv" | "o")` for every per-head weight: query,
            gate, key and value kernels and biases, and the output kernel (`"o"`).
        name: The layer's name, or `"<block>/<attention>"` for the attention layer of a
            keras-hub block.
        output_layer: The output projection of an attention layer inside a keras-hub
            block (its input, the heads' context, gives `"activation"` scores), else
            `None`.
        block: The keras-hub block the attention layer is inside, else `None`.
    """

    layer: keras.layers.Layer
    query_heads: int
    kv_heads: int
    slices: list[tuple[keras.Variable, int, str]]
    name: str = ""
    output_layer: keras.layers.Layer | None = None
    block: keras.layers.Layer | None = None

    @property
    def ratio(self) -> int:
        """Query heads per key/value group."""
        return self.query_heads // self.kv_heads

    def group_of(self) -> np.ndarray:
        """The key/value group of each query head (heads `g*r .. g*r+r-1` share group g)."""
        return np.arange(self.query_heads) // self.ratio

    def head_axis_values(self, var_kind: str, keep_q: np.ndarray) -> np.ndarray:
        """Keep decisions along a weight's head axis from the query heads kept."""
        if var_kind == "kv":
            return np.array([keep_q[self.group_of() == g].any() for g in range(self.kv_heads)])
        return keep_q

    def dead_heads(self) -> np.ndarray:
        """Query heads that add nothing: their output rows, or their group's values, are 0."""
        out_zero = np.ones(self.query_heads, bool)
        value_zero = np.ones(self.kv_heads, bool)
        for var, axis, var_kind in self.slices:
            name = _projection(var)
            w = np.moveaxis(keras.ops.convert_to_numpy(var) != 0, axis, 0)
            nonzero = w.reshape(w.shape[0], -1).any(axis=1)
            if var_kind == "o":
                out_zero &= ~nonzero
            elif name == "value":
                value_zero &= ~nonzero
        return out_zero | value_zero[self.group_of()]


def _projection(var) -> str:
    return var.path.split("/")[-2]


def _heads_of(
    layer, name: str | None = None, counts: tuple[int, int] | None = None
) -> AttentionHeads:
    """The heads of an attention layer; `counts` (query, key/value heads) if given."""
    heads_first = keras.saving.get_registered_name(type(layer)) in _HEADS_FIRST
    if counts is None:
        # The counts are public attributes named as the config keys (Gemma's attention
        # has no config of its own).
        q_key, kv_key = _kind(layer)
        counts = int(getattr(layer, q_key)), int(getattr(layer, kv_key or q_key))
    slices = []
    for var in layer.weights:
        var_kind = _PROJECTIONS.get(_projection(var))
        if var_kind is None:
            continue
        weight = var.path.split("/")[-1]
        if var_kind == "o":
            if weight == "kernel":
                slices.append((var, 0, "o"))
            continue
        # Kernels are (input..., heads, head_dim), biases (heads, head_dim).
        axis = 0 if heads_first or weight != "kernel" else len(var.shape) - 2
        slices.append((var, axis, var_kind))
    return AttentionHeads(layer, *counts, slices, name or layer.name)


def _block_counts(layer, block: hub_blocks.Block) -> tuple[int, int]:
    """Query and key/value heads of a keras-hub block, from its config."""
    config = surgery.layer_config(layer)
    q_key, kv_key = block.heads
    return int(config[q_key]), int(config[kv_key or q_key])


def attention_heads(model: keras.Model) -> list[AttentionHeads]:
    """The attention layers of a model whose heads tfprune can remove, in model order.

    Args:
        model: A Keras model (nested models are entered).

    Returns:
        One `AttentionHeads` per built `MultiHeadAttention` / `GroupQueryAttention`
        (subclasses included), Gemma attention, and attention layer inside a keras-hub
        transformer block.
    """
    out = []
    for layer in registry.iter_layers(model):
        if not layer.built:
            continue
        if _kind(layer) is not None:
            out.append(_heads_of(layer))
        block = hub_blocks.block_of(layer)
        for _, sub in hub_blocks.attention_layers(layer, block) if block else ():
            if sub.built:
                heads = _heads_of(sub, f"{layer.name}/{sub.name}", _block_counts(layer, block))
                heads.output_layer = getattr(sub, block.projections[-1])
                heads.block = layer
                out.append(heads)
    return out


def head_scores(
    model: keras.Model,
    criterion: str = "l2",
    data: Iterable | None = None,
    loss=None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Importance of every query head of every attention layer.

    Criteria (Michel et al. 2019; Voita et al. 2019; Muralidharan et al. 2024, Minitron):
    `"l1"` / `"l2"` of the head's weights, `"taylor"` (first order, `sum_batches (sum w *
    dL/dw)^2` over the head's weights), `"activation"` (mean L2 norm of the head's
    contribution `context_h @ W_o[h]` to the layer output over calibration batches and
    positions; inside a keras-hub block the context is recorded at the output
    projection's input while the model runs), `"random"`. See `tfprune.head_criteria`.

    Args:
        model: A built Keras model (functional for `"activation"`).
        criterion: One of `"l1"`, `"l2"`, `"taylor"`, `"activation"`, `"random"`.
        data: Batches for `"taylor"` (`(x, y)` pairs) and `"activation"` (`x` or `(x, y)`).
        loss: Loss for `"taylor"` (default: the compiled loss).
        seed: Seed for `"random"`.

    Returns:
        `{layer name: scores}` (`"<block>/<attention>"` inside a keras-hub block), one
        score per query head (higher is more important).

    Raises:
        ValueError: For an unknown criterion, or missing `data` for a data criterion.
    """
    if criterion not in CRITERIA:
        raise ValueError(
            f"Expected `criterion` to be one of {CRITERIA}. Received: criterion={criterion!r}"
        )
    if criterion in ("taylor", "activation") and data is None:
        raise ValueError(
            f"Criterion {criterion!r} needs `data` (batches of calibration inputs). "
            "Received: data=None"
        )
    return criteria.scores(model, attention_heads(model), criterion, data, loss, seed)


# --- selection and zeroing --------------------------------------------------------------


def _units(heads: AttentionHeads, scores: np.ndarray, unit: str) -> np.ndarray:
    """Scores of the units that are kept or dropped together.

    `unit="group"`: one unit per key/value group (the sum of its query heads).
    `unit="head"`: one unit per query-head rank within a group: unit k stands for the k-th
    least important query head of every group (its score is their sum), so dropping `m`
    units drops the `m` least important query heads of each group. Without grouping
    (one query head per group, as in `MultiHeadAttention`) both are one unit per head.
    """
    by_group = scores.reshape(heads.kv_heads, heads.ratio)
    if unit == "group" or heads.ratio == 1:
        return by_group.sum(axis=1)
    return np.sort(by_group, axis=1).sum(axis=0)


def _keep_query_heads(
    heads: AttentionHeads, scores: np.ndarray, unit: str, keep_units: np.ndarray
) -> np.ndarray:
    if unit == "group" or heads.ratio == 1:
        return np.repeat(keep_units, heads.ratio)
    drop = int((~keep_units).sum())
    keep = np.ones((heads.kv_heads, heads.ratio), bool)
    order = np.argsort(scores.reshape(heads.kv_heads, heads.ratio), axis=1, kind="stable")
    np.put_along_axis(keep, order[:, :drop], False, axis=1)
    return keep.reshape(-1)


def zero_heads(heads: AttentionHeads, keep_q: np.ndarray) -> None:
    """Zeroes the dropped query heads (and groups left without a query head) of a layer.

    Args:
        heads: The layer's heads (`attention_heads`).
        keep_q: Boolean array, one entry per query head.
    """
    for var, axis, var_kind in heads.slices:
        keep = heads.head_axis_values(var_kind, keep_q)
        value = keras.ops.convert_to_numpy(var).copy()
        index = [slice(None)] * value.ndim
        index[axis] = np.flatnonzero(~keep)
        value[tuple(index)] = 0
        var.assign(value)


def prune_heads(
    model: keras.Model,
    ratio: float = 0.5,
    criterion: str = "l2",
    scope: str = "layer",
    data: Iterable | None = None,
    unit: str = "head",
    min_heads: int = 1,
    ignore: Iterable[str] | Callable | None = None,
    loss=None,
    seed: int = 0,
) -> keras.Model:
    """Removes the least important attention heads of a model in one shot (zeroed copy).

    Every `MultiHeadAttention` / `GroupQueryAttention` layer's heads are scored by
    `criterion`; the dropped heads are zeroed in the returned copy (query, key, value and
    gate slices and the output rows), which predicts what `tfprune.shrink(copy)` predicts.

    The self and cross attention of a keras-hub `TransformerDecoder` share one head count,
    so they lose the same number of heads, each its own least important ones: the count
    is chosen as for one layer whose k-th head scores the sum of the two layers' k-th
    lowest scores.

    Args:
        model: A built Keras model (wrapped models are stripped first).
        ratio: Fraction of units to remove, in [0, 1): per layer under `"layer"` scope, of
            all units under `"global"` scope (scores are divided by each layer's mean).
        criterion: `"l1"`, `"l2"`, `"taylor"`, `"activation"` or `"random"`.
        scope: `"layer"` or `"global"`.
        data: Calibration batches for `"taylor"` (`(x, y)`) and `"activation"`.
        unit: For grouped-query attention, `"head"` (each key/value group loses the same
            number of query heads) or `"group"` (whole key/value groups with their query
            heads). Both are the same for `MultiHeadAttention`.
        min_heads: Fewest units (heads, or groups under `unit="group"`) a layer keeps.
        ignore: Names of attention layers to leave whole, or a predicate on the layer.
            The self and cross attention of a keras-hub decoder share one head count:
            ignoring either leaves both whole.
        loss: Loss for `"taylor"` (default: the compiled loss).
        seed: Seed for `"random"`.

    Returns:
        A new model with the pruned heads zeroed.

    Raises:
        ValueError: For a ratio outside [0, 1), an unknown scope, unit or criterion, a
            `min_heads` below 1, a name in `ignore` that is not an attention layer, or a
            model without attention layers.
        TypeError: If `model` is not a Keras model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "tfprune.prune_heads expects a Keras model. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    check_ratio("ratio", ratio)
    if unit not in UNITS:
        raise ValueError(f"Expected `unit` to be one of {UNITS}. Received: unit={unit!r}")
    if not isinstance(min_heads, int) or min_heads < 1:
        raise ValueError(
            f"Expected `min_heads` to be a positive integer. Received: min_heads={min_heads!r}"
        )
    if prunable_layers(model):
        model = surgery.strip(model)
    copy = surgery.copy_model(model)
    all_heads = attention_heads(copy)
    if not all_heads:
        raise ValueError(
            f"Model '{model.name}' has no MultiHeadAttention or GroupQueryAttention layer, so "
            "there are no heads to prune. Use tfprune.prune_channels for other layers."
        )
    names = {h.name for h in all_heads}
    if ignore is not None and not callable(ignore):
        missing = sorted(set(ignore) - names)
        if missing:
            raise ValueError(
                f"`ignore` names layers that are not attention layers of the model: {missing}. "
                f"Attention layers: {sorted(names)}."
            )

    def skipped(heads: AttentionHeads) -> bool:
        return ignore(heads.layer) if callable(ignore) else heads.name in set(ignore or ())

    scores = head_scores(copy, criterion, data, loss, seed)
    tied = _tied(all_heads)
    chosen = [t for t in tied if not any(skipped(h) for h in t)]
    own = [[_units(h, scores[h.name], unit) for h in t] for t in chosen]
    # Tied layers: unit k scores the sum of their k-th least important units, and
    # dropping m units drops the m least important of each layer (by its own scores).
    units = [u[0] if len(u) == 1 else sum(np.sort(x) for x in u) for u in own]
    keeps = select_channels(units, [None] * len(units), scope, None, min_heads, ratio=ratio)
    for layers, layer_units, keep_units in zip(chosen, own, keeps):
        for heads, u in zip(layers, layer_units):
            keep = keep_units
            if len(layers) > 1:
                keep = np.ones(u.size, bool)
                keep[np.argsort(u, kind="stable")[: int((~keep_units).sum())]] = False
            zero_heads(heads, _keep_query_heads(heads, scores[heads.name], unit, keep))
    return copy


def _tied(all_heads: list[AttentionHeads]) -> list[list[AttentionHeads]]:
    """The attention layers grouped by the head count they share, in model order.

    The self and cross attention of a keras-hub decoder block share one; every other
    attention layer has its own.
    """
    tied: dict[int, list[AttentionHeads]] = {}
    for heads in all_heads:
        key = id(heads.block) if heads.block is not None else id(heads)
        tied.setdefault(key, []).append(heads)
    return list(tied.values())


# --- shrink ----------------------------------------------------------------------------


def shrunk_heads(layer) -> tuple[dict, Callable, type] | None:
    """How `tfprune.shrink` rebuilds an attention layer without its dead heads.

    Dead query heads (`AttentionHeads.dead_heads`) are removed; groups of grouped-query
    attention keep the same number of query heads each (the largest number alive in any
    kept group, padded with dead heads, which add nothing), so the result is exact.

    A keras-hub block (`tfprune.hub_blocks`) is rebuilt the same way, with the head counts
    and the head size in its config; one that derives its head size from
    `hidden_dim // num_heads` comes back as its `tfprune.hub_sized` subclass. A decoder's
    self and cross attention keep the same number of heads: as many as the one with more
    live heads has, each keeping its own live heads, padded with dead ones.

    Args:
        layer: Any layer.

    Returns:
        `None` for a layer that is not an attention layer or such a block (or has no dead
        head, or is a block `hub_blocks.fixed_heads` names), else `(config updates,
        values, class)` where `values(new_layer)` returns the kept slices for the rebuilt
        layer's per-head variables, `{id(variable): array}`, and `class` rebuilds it.
    """
    block = hub_blocks.block_of(layer)
    cls = type(layer)
    if block is not None and layer.built and hub_blocks.fixed_heads(layer, block) is None:
        counts = _block_counts(layer, block)
        subs = [sub for _, sub in hub_blocks.attention_layers(layer, block)]
        all_heads = [_heads_of(sub, counts=counts) for sub in subs]
        keys = block.heads
        query = next(v for v, _, kind in all_heads[0].slices if kind == "q")
        size = {block.head_size or "head_dim": int(query.shape[-1])}
        if block.head_size is None:
            cls = hub_blocks.sized_class(block)
    elif _kind(layer) is not None and layer.built:
        all_heads, keys, size = [_heads_of(layer)], _kind(layer), {}
    else:
        return None
    # The layers of one block (self and cross attention) keep the same counts.
    alive = [(~h.dead_heads()).reshape(h.kv_heads, h.ratio) for h in all_heads]
    n_groups = max(max(int(a.any(axis=1).sum()) for a in alive), 1)
    per_group = max(max(int(a.sum(axis=1).max()) for a in alive), 1)
    keeps = [_kept_heads(a, n_groups, per_group) for a in alive]
    if all(keep.all() for keep in keeps):
        return None
    q_key, kv_key = keys
    config = {q_key: n_groups * per_group}
    if kv_key:
        config[kv_key] = n_groups
    config.update(size)

    def values(new_layer) -> dict[int, np.ndarray]:
        new_subs = [new_layer]
        if block is not None:
            new_subs = [sub for _, sub in hub_blocks.attention_layers(new_layer, block)]
        out = {}
        for heads, keep_q, new_sub in zip(all_heads, keeps, new_subs):
            kept = {}
            for var, axis, var_kind in heads.slices:
                keep = heads.head_axis_values(var_kind, keep_q)
                kept[variable_key(var)] = np.take(
                    keras.ops.convert_to_numpy(var), np.flatnonzero(keep), axis=axis
                )
            out.update(
                {
                    id(new): kept[variable_key(old)]
                    for old, new in zip(heads.layer.weights, new_sub.weights)
                    if variable_key(old) in kept
                }
            )
        return out

    return config, values, cls


def _kept_heads(alive: np.ndarray, n_groups: int, per_group: int) -> np.ndarray:
    """The query heads kept: `per_group` in each of `n_groups` groups, alive ones first.

    Args:
        alive: `(groups, query heads per group)` booleans, whether each head is alive.
        n_groups: Groups to keep (alive ones first, then dead ones, in order).
        per_group: Query heads to keep in each kept group (alive ones first, padded with
            dead heads, which add nothing).

    Returns:
        One boolean per query head.
    """
    keep = np.zeros(alive.shape, bool)
    for g in np.argsort(~alive.any(axis=1), kind="stable")[:n_groups]:
        keep[g, np.argsort(~alive[g], kind="stable")[:per_group]] = True
    return keep.reshape(-1)
