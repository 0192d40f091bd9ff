"""`shrink`: rebuild a channel-pruned model with the pruned channels physically removed.

A channel of a group (`tfprune.graph`) is removed when every kernel slice that produces it
is exactly zero (after applying the masks of a wrapped model). The model is rebuilt with
`keras.models.clone_model`: each layer comes back from its config with smaller
`filters`/`units` (and a smaller Reshape target), and every weight is sliced along the axes
the graph records.

A removed channel may still carry a constant into its consumers in the pruned model: a
BatchNormalization beta or moving mean that was not zeroed, or an activation with
`f(0) != 0` (sigmoid, softplus). `shrink` propagates these constants through the graph
and folds them into the bias of each consumer (adding a bias where there was none). Where
the constant would not be uniform over space (a 'same'-padded convolution or ZeroPadding
sees zeros at the border, a transposed convolution overlaps), folding cannot be exact, so
those channels are kept instead: the result is always equal to the pruned model.

This module is the driver (decide which channels go, clone the model, slice its weights);
what each layer, operation and node kind does when its channels go is a table in
`tfprune.shrink_rules` (config rewrites by layer class, raw-op arguments, constants by node
kind).
"""

from __future__ import annotations

import keras
import numpy as np

from tfprune import graph as graph_lib
from tfprune import heads as heads_lib
from tfprune import hub_blocks, hub_hidden, surgery
from tfprune import layers as registry
from tfprune.graph import walk
from tfprune.graph.rules import hidden
from tfprune.sharing import clustered_layers
from tfprune.shrink_rules import channels, configs, constants, ops
from tfprune.wrapper import prunable_layers

__all__ = ["shrink"]


def _dead_channels(group: graph_lib.ChannelGroup) -> np.ndarray:
    """Channels of a group whose producing kernel slices are all exactly zero."""
    alive = np.zeros(group.channels, bool)
    seen = False
    for m in group.members:
        w = registry.resolve(m.layer, m.weight)
        if m.role != "output" or len(w.shape) < 2:
            continue
        seen = True
        nonzero = (
            np.moveaxis(keras.ops.convert_to_numpy(w) != 0, m.axis, 0)
            .reshape(w.shape[m.axis], -1)
            .any(axis=1)
        )
        sel = m.index >= 0
        np.logical_or.at(alive, m.index[sel], nonzero[sel])
    return ~alive if seen else np.zeros(group.channels, bool)


def _plan(model: keras.Model, through_norms: bool = False):
    """Graph, groups and the final plan (channels kept where folding is not exact)."""
    g = walk.analyse(model, through_norms)
    groups, group_no, local = walk.groups_of(g)
    keep = [
        ~_dead_channels(group) if group.prunable else np.ones(group.channels, bool)
        for group in groups
    ]
    n = len(g.parent)
    for _ in range(n + 1):
        keep_id = np.ones(n, bool)
        has = group_no >= 0
        keep_id[has] = [keep[gi][li] for gi, li in zip(group_no[has], local[has])]
        plan = constants.propagate(g, keep_id)
        force = plan.force_keep | _emptied(g, keep_id)
        if not force:
            return g, plan
        for i in force:
            keep[group_no[i]][local[i]] = True
    raise AssertionError("unreachable: every round keeps at least one more channel")


def _count(ids: np.ndarray, keep_id: np.ndarray) -> int:
    """How many positions of `ids` shrink keeps."""
    return int(channels.positions(ids, keep_id).size)


def _emptied(g, keep_id: np.ndarray) -> set[int]:
    """The first channel of every layer output that would lose all its channels.

    A layer needs at least one channel (a branch of a concatenation can lose all of its
    own while the group keeps others); keeping one that is zero changes nothing.
    """
    return {
        int(out[0])
        for node in g.nodes
        for out in node.outputs
        if len(out) and _count(out, keep_id) == 0
    }


def shrink(model: keras.Model, through_norms: bool = False) -> keras.Model:
    """Returns a new model with every pruned channel physically removed.

    A channel counts as pruned when all kernel slices that produce it are zero: the
    channel masks of a wrapped model (`tfprune.wrap(..., granularity="channel")` or
    `tfprune.prune_channels`) make them so, and any plain model whose filters are zero
    works too. Constants that removed channels still carried (BatchNormalization beta,
    sigmoid(0)) are folded into the consumers' biases, so the result predicts what the
    pruned model predicts (up to float rounding).

    Args:
        model: A built Sequential or functional model, wrapped or plain.
        through_norms: Also remove pruned channels that pass through LayerNormalization
            or RMSNormalization (the hidden width of a transformer, pruned with
            `tfprune.prune_channels(..., through_norms=True)`), slicing their gamma/beta.
            Not exact: the norms then compute their statistics over fewer channels, so
            the result differs from the pruned model (a `UserWarning` says so); fine-tune
            or distil it.

    Returns:
        A plain Keras model with smaller `filters`/`units` and sliced weights.

    Raises:
        TypeError: If `model` is not a Keras model or is (or contains) a subclassed model,
            or `through_norms` is not a bool.
        ValueError: If `model` is not built.

    Example:

    ```python
    pruned = tfprune.prune_channels(model, ratio=0.5)
    small = tfprune.shrink(pruned)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "tfprune.shrink expects a Sequential or functional Keras model. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if prunable_layers(model) or clustered_layers(model):
        model = surgery.strip(model)
    g, plan = _plan(model, through_norms)
    keep_id = plan.keep_id
    hidden.warn_inexact(
        "tfprune.shrink",
        [
            hidden.norm_name(layer, weight)
            for layer, weight, _, ids, _ in g.slices
            if hidden.norm_name(layer, weight) and not channels.kept(ids, keep_id).all()
        ],
    )
    by_layer: dict[int, list] = {}
    for layer, weight, axis, ids, _ in g.slices:
        by_layer.setdefault(id(layer), []).append((weight, axis, ids))
    outputs: dict[int, np.ndarray] = {}
    for node in g.nodes:  # a layer called twice (ReversibleEmbedding): its first call
        outputs.setdefault(id(node.layer), node.output)
    # Attention layers (and keras-hub blocks) with dead heads come back with fewer heads
    # (tfprune.heads), possibly as another class; their per-head variables take the kept
    # slices.
    attention = {id(layer): heads_lib.shrunk_heads(layer) for layer in registry.iter_layers(model)}
    attention = {key: value for key, value in attention.items() if value is not None}
    nodes = {id(node.layer): node for node in g.nodes}
    cloned: dict[int, object] = {}

    def clone(layer: keras.Operation) -> keras.Operation:
        node = nodes.get(id(layer))
        if not isinstance(layer, keras.layers.Layer):
            config = ops.config(node, keep_id) if node is not None else None
            new = layer if config is None else type(layer).from_config(config)
            if node is not None:
                cloned[id(new)] = node
            return new
        rule = configs.lookup(layer)
        if not getattr(layer, "weights", None) and rule is None:
            # Nothing to slice: reuse it (a Lambda cannot be rebuilt from config in safe mode).
            return layer
        config = layer.get_config()
        kept = {w: _count(ids, keep_id) for w, _, ids in by_layer.get(id(layer), [])}
        if rule is not None:
            width = _count(outputs[id(layer)], keep_id) if id(layer) in outputs else None
            resize = configs.Resize(width, node.kind if node is not None else None, kept)
            config.update(rule(layer, resize))
        if id(layer) in plan.bias_delta:
            config["use_bias"] = True
        if id(layer) in attention:
            config.update(attention[id(layer)][0])
        config.update(hub_blocks.shrunk_config(layer, kept))
        config.update(hub_hidden.shrunk_config(layer, kept))
        cls = attention[id(layer)][2] if id(layer) in attention else None
        cls = cls or hub_hidden.shrunk_class(layer, kept)
        return surgery.from_config(layer, config, cls)

    def call(op, *args, **kwargs):
        node = cloned.get(id(op))
        if node is not None:
            args = ops.arguments(node, args, keep_id)
        return op(*args, **kwargs)

    call_function = None if isinstance(model, keras.Sequential) else call
    new_model = keras.models.clone_model(
        model, clone_function=clone, call_function=call_function, recursive=True
    )
    for old, new in zip(registry.iter_layers(model), registry.iter_layers(new_model)):
        if isinstance(old, keras.Model) or not new.weights:
            continue
        slices = by_layer.get(id(old), [])
        cut = _slicer(slices, keep_id)
        # Head slices of an attention layer; hidden channels (through_norms) cut on top.
        overrides = attention[id(old)][1](new) if id(old) in attention else {}
        overrides = {
            id(var): cut(_attr_path(new, var, [w for w, _, _ in slices]), overrides[id(var)])
            for var in new.weights
            if id(var) in overrides
        }
        sliced = {w: keras.ops.convert_to_numpy(registry.resolve(old, w)) for w, _, _ in slices}
        if id(old) in plan.bias_delta:
            bias = sliced.get("bias", 0.0)
            sliced["bias"] = (bias + plan.bias_delta[id(old)]).astype(np.float32)
            if not any(w == "bias" for w, _, _ in slices):
                slices = [*slices, ("bias", 0, outputs[id(old)])]
        kept = {w: channels.kept(ids, keep_id) for w, _, ids in slices}
        sliced.update(hub_blocks.carried_bias(old, kept))
        for weight, axis, ids in slices:
            sliced[weight] = np.take(sliced[weight], channels.positions(ids, keep_id), axis=axis)
        for i, var in enumerate(new.weights):
            name = _attr_path(new, var, sliced)
            if id(var) in overrides:
                value = overrides[id(var)]
            elif name in sliced:
                value = sliced[name]
            elif name in _NAMED:
                value = keras.ops.convert_to_numpy(registry.resolve(old, name))
            else:
                value = keras.ops.convert_to_numpy(old.weights[i])
            var.assign(value.astype(var.dtype))
    return new_model


def _slicer(slices: list, keep_id: np.ndarray):
    """`cut(weight, value)`: a weight's value with the removed channels of its slices cut.

    An axis that no longer has one position per channel of its slice (the heads the
    override already removed) is left as it is.
    """

    def cut(weight: str | None, value: np.ndarray) -> np.ndarray:
        for name, axis, ids in slices:
            if name == weight and value.shape[axis] == ids.size:
                value = np.take(value, channels.positions(ids, keep_id), axis=axis)
        return value

    return cut


_NAMED = (
    "kernel",
    "bias",
    "depthwise_kernel",
    "pointwise_kernel",
    "gamma",
    "beta",
    "moving_mean",
    "moving_variance",
)


def _attr_path(layer, var, recorded) -> str | None:
    """The public attribute path of `var` on `layer` (`"kernel"`, `"moving_mean"`, ...).

    `recorded` adds the paths the graph recorded for the layer (a custom layer's rule
    may name any weight).
    """
    for name in (*recorded, *_NAMED):
        if registry.resolve(layer, name) is var:
            return name
    return None
