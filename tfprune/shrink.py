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
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfprune import graph as graph_lib
from tfprune import heads as heads_lib
from tfprune import hub_blocks, hub_hidden, surgery
from tfprune import layers as registry
from tfprune.graph import walk
from tfprune.graph.rules import hidden
from tfprune.graph.rules import ops as ops_rules
from tfprune.sharing import clustered_layers
from tfprune.wrapper import prunable_layers

__all__ = ["shrink"]

_L = keras.layers

# Which config entry holds a producer's number of output channels (graph-only knowledge).
_WIDTH_KEY: dict[type | str, str] = {
    _L.Dense: "units",
    **{cls: "filters" for cls in (*graph_lib.CONVOLUTIONS, _L.SeparableConv1D, _L.SeparableConv2D)},
    "LayerScale": "projection_dim",  # keras.applications' ConvNeXt, by registered name
    _L.Embedding: "output_dim",
    "keras_hub>RMSNormalization": "input_dim",  # tfprune.hub_hidden.rebuild
    **{key: "output_dim" for key in ("ReversibleEmbedding", "keras_hub>ReversibleEmbedding")},
    **{
        key: "embedding_dim"
        for key in ("TokenAndPositionEmbedding", "keras_hub>TokenAndPositionEmbedding")
    },
}


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@dataclasses.dataclass
class _Plan:
    """What shrink does: the keep decision per channel id and the bias to fold per layer."""

    keep_id: np.ndarray
    bias_delta: dict[int, np.ndarray]
    force_keep: set[int]


def _dead_channels(group: graph_lib.ChannelGroup) -> np.ndarray:
    """Channels of a group whose producing kernel slices are all exactly zero."""
    alive = np.zeros(group.channels, bool)
    seen = False
    for m in group.members:
        w = registry.resolve(m.layer, m.weight)
        if m.role != "output" or len(w.shape) < 2:
            continue
        seen = True
        nonzero = np.moveaxis(_np(w) != 0, m.axis, 0).reshape(w.shape[m.axis], -1).any(axis=1)
        sel = m.index >= 0
        np.logical_or.at(alive, m.index[sel], nonzero[sel])
    return ~alive if seen else np.zeros(group.channels, bool)


def _activation(layer, x: np.ndarray) -> np.ndarray:
    fn = getattr(layer, "activation", None)
    if fn is None:
        return x
    x = np.asarray(x, np.float32)
    return _np(fn(keras.ops.convert_to_tensor(x))).astype(np.float64)


def _uniform_conv(layer) -> bool:
    """Whether a constant input gives a spatially uniform output (so it folds into bias)."""
    if type(layer) is _L.Dense:
        return True
    if "Transpose" in type(layer).__name__:
        return False
    size = getattr(layer, "kernel_size", (1,))
    return getattr(layer, "padding", "valid") == "valid" or all(k == 1 for k in size)


class _Constants:
    """Propagates the constants that removed channels carry, one small rule per node kind.

    `vals[id(ids)]` holds, for each channel position of a tensor, the constant a removed
    channel carries there (0 for kept channels). A rule either passes constants on, folds
    them into a consumer's bias (`plan.bias_delta`), or, where the constant would not stay
    uniform over space, marks the channel to be kept (`plan.force_keep`).
    """

    def __init__(self, keep_id: np.ndarray):
        self.plan = _Plan(keep_id, {}, set())
        self.vals: dict[int, np.ndarray] = {}

    def removed(self, ids: np.ndarray) -> np.ndarray:
        return ~_kept(ids, self.plan.keep_id)

    def val(self, ids: np.ndarray) -> np.ndarray:
        return self.vals.get(id(ids), np.zeros(ids.size))

    def set(self, ids: np.ndarray, values) -> None:
        self.vals[id(ids)] = np.where(self.removed(ids), values, 0.0)

    def keep_hot(self, ids: np.ndarray, values: np.ndarray) -> bool:
        """Keeps removed channels that carry a nonzero constant; True if there were any."""
        hot = self.removed(ids) & (values != 0)
        self.plan.force_keep.update(ids[hot].tolist())
        return bool(hot.any())

    def fold(self, layer, ids, values, kernel, in_axis) -> np.ndarray:
        """`sum_positions values[c] * kernel[..., c, o]` over removed input channels `c`."""
        hot = self.removed(ids) & (values != 0)
        if not hot.any():
            return np.zeros(0)
        if not _uniform_conv(layer):
            self.keep_hot(ids, values)
            return np.zeros(0)
        k = np.moveaxis(_np(kernel).astype(np.float64), in_axis, -2)
        k = k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)
        return np.where(hot, values, 0) @ k

    def _produce(self, node, delta: np.ndarray) -> None:
        layer = node.layer
        if delta.size:
            self.plan.bias_delta[id(layer)] = delta
        bias = _np(layer.bias).astype(np.float64) if layer.use_bias else 0.0
        self.set(node.output, _activation(layer, bias + (delta if delta.size else 0.0)))

    def source(self, node) -> None:
        layer = node.layer
        spec = next(s for s in registry.lookup(layer).weight_specs(layer) if s.in_axes)
        kernel = registry.resolve(layer, spec.path)
        ins = node.inputs[0]
        self._produce(node, self.fold(layer, ins, self.val(ins), kernel, spec.in_axes[0]))

    def separable(self, node) -> None:
        layer, ins = node.layer, node.inputs[0]
        dk = _np(layer.depthwise_kernel).astype(np.float64)
        dk = dk.reshape(-1, dk.shape[-2] * dk.shape[-1]).sum(axis=0)
        mid = np.repeat(self.val(ins), layer.depth_multiplier) * dk
        mid_ids = np.repeat(ins, layer.depth_multiplier)
        self._produce(node, self.fold(layer, mid_ids, mid, layer.pointwise_kernel, -2))

    def depthwise(self, node) -> None:
        """DepthwiseConv, and Conv with `groups == channels` (one input channel each)."""
        layer, out = node.layer, node.output
        v = np.repeat(self.val(node.inputs[0]), getattr(layer, "depth_multiplier", 1))
        if layer.padding != "valid":
            self.keep_hot(out, v)
        k = _np(layer.kernel).astype(np.float64)
        ksum = k.reshape(-1, k.shape[-2] * k.shape[-1]).sum(axis=0)
        bias = _np(layer.bias).astype(np.float64) if layer.use_bias else 0.0
        self.set(out, _activation(layer, bias + v * ksum))

    def norm(self, node) -> None:
        layer = node.layer
        mean = _np(layer.moving_mean).astype(np.float64)
        var = _np(layer.moving_variance).astype(np.float64)
        y = (self.val(node.inputs[0]) - mean) / np.sqrt(var + layer.epsilon)
        if layer.scale:
            y = y * _np(layer.gamma)
        if layer.center:
            y = y + _np(layer.beta)
        self.set(node.output, y)

    def _evaluate(self, node, merge: bool) -> None:
        args = [
            keras.ops.convert_to_tensor(self.val(i).reshape(1, -1).astype(np.float32))
            for i in node.inputs
        ]
        y = _np(node.layer(args if merge else args[0])).reshape(-1)
        self.set(node.output, y.astype(np.float64))

    def elementwise(self, node) -> None:
        self._evaluate(node, merge=False)

    def merge(self, node) -> None:
        self._evaluate(node, merge=True)

    def op(self, node) -> None:
        """A raw elementwise `keras.ops` call: run it on the constants (and its own)."""
        call = node.call

        def fill(a):
            if isinstance(a, graph_lib.Tensor):
                shape = (1,) * (len(call.shapes[a.k]) - 1) + (-1,)
                return self.val(call.ids[a.k]).reshape(shape).astype(np.float32)
            return a

        args = [fill(a) for a in call.args]
        kwargs = {k: fill(v) for k, v in call.kwargs.items()}
        y = _np(node.layer(*args, **kwargs)).astype(np.float64).reshape(-1)
        self.set(node.output, y)

    def passthrough(self, node) -> None:
        for out in node.outputs:
            self.vals[id(out)] = self.val(node.inputs[0])

    def strict(self, node) -> None:
        """Matmul, einsum, sum: removed channels must carry exactly zero into them."""
        for ids in node.inputs:
            self.keep_hot(ids, self.val(ids))

    def split(self, node) -> None:
        v = self.val(node.inputs[0])
        ends = np.cumsum([out.size for out in node.outputs])[:-1]
        for out, part in zip(node.outputs, np.split(v, ends)):
            self.vals[id(out)] = part

    def pad(self, node) -> None:
        self.keep_hot(node.inputs[0], self.val(node.inputs[0]))
        self.passthrough(node)

    def concat(self, node) -> None:
        v = [self.val(i) for i in node.inputs]
        if node.output.size == sum(x.size for x in v):  # along the channels
            self.vals[id(node.output)] = np.concatenate(v)
            return
        if any(not np.array_equal(v[0], x) for x in v[1:]):
            # Different constants side by side along space: not one constant per channel.
            for ids, x in zip(node.inputs, v):
                self.keep_hot(ids, x)
        self.vals[id(node.output)] = v[0]

    def flatten(self, node) -> None:
        """Flatten and reshape: tiled (merged) or split into heads of `d` channels."""
        ins, out = node.inputs[0], node.output
        v = self.val(ins)
        if out.size >= v.size:
            self.vals[id(out)] = np.tile(v, out.size // max(v.size, 1))
            return
        rows = v.reshape(-1, out.size)
        if (rows != rows[0]).any():  # tied channels of different heads carry different constants
            self.keep_hot(ins, v)
        self.set(out, rows[0])

    def slice(self, node) -> None:
        """`x[..., a:b]`: the constants of the range."""
        _, start, stop = _channel_range(node.call)
        self.vals[id(node.output)] = self.val(node.inputs[0])[start:stop]

    def nothing(self, node) -> None:
        """Model inputs and layers of unknown semantics: no removed channel reaches them.

        Lookups (Embedding, PositionEmbedding) too: a removed channel's column is zero.
        """

    def attention(self, node) -> None:
        """Attention: removed inputs must carry zero; a removed output carries its bias."""
        self.strict(node)
        bias = registry.resolve(node.layer, "attention_output/bias")
        self.set(node.output, 0.0 if bias is None else _np(bias).astype(np.float64))

    def hidden_norm(self, node) -> None:
        """A norm passing channels (`through_norms=True`, not exact): a removed one is beta."""
        beta = registry.resolve(node.layer, "beta")
        self.set(node.output, 0.0 if beta is None else _np(beta).astype(np.float64))

    def residual_block(self, node) -> None:
        """A keras-hub block passing the hidden width: removed channels carry zero through.

        Its norms see what a removed channel carries in, and its biases add to every
        position: channels where either is nonzero are kept.
        """
        self.strict(node)
        self.keep_hot(node.output, hub_hidden.stream_biases(node.layer))


# Node kind (from tfprune.graph) -> constant rule.
_CONSTANT_RULES = {
    "source": _Constants.source,
    "separable": _Constants.separable,
    "depthwise": _Constants.depthwise,
    "grouped": _Constants.depthwise,
    "norm": _Constants.norm,
    "elementwise": _Constants.elementwise,
    "merge": _Constants.merge,
    "spatial": _Constants.passthrough,
    "mixed": _Constants.passthrough,
    "pad": _Constants.pad,
    "concat": _Constants.concat,
    "flatten": _Constants.flatten,
    "op": _Constants.op,
    "reduce": _Constants.passthrough,
    "strict": _Constants.strict,
    "split": _Constants.split,
    "slice": _Constants.slice,
    "input": _Constants.nothing,
    "lookup": _Constants.nothing,
    "reversible": _Constants.nothing,
    "attention": _Constants.attention,
    "hidden_norm": _Constants.hidden_norm,
    "residual_block": _Constants.residual_block,
    "unknown": _Constants.nothing,
}


def _propagate(g, keep_id: np.ndarray) -> _Plan:
    """Constants carried by removed channels, folded into consumers' biases."""
    constants = _Constants(keep_id)
    for node in g.nodes:
        _CONSTANT_RULES[node.kind](constants, node)
    return constants.plan


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
        plan = _propagate(g, keep_id)
        force = plan.force_keep | _emptied(g, keep_id)
        if not force:
            return g, plan
        for i in force:
            keep[group_no[i]][local[i]] = True
    raise AssertionError("unreachable: every round keeps at least one more channel")


def _emptied(g, keep_id: np.ndarray) -> set[int]:
    """The first channel of every layer output that would lose all its channels.

    A layer needs at least one channel (a branch of a concatenation can lose all of its
    own while the group keeps others); keeping one that is zero changes nothing.
    """
    return {
        int(out[0])
        for node in g.nodes
        for out in node.outputs
        if len(out) and _positions(out, keep_id).size == 0
    }


def _positions(ids: np.ndarray, keep_id: np.ndarray) -> np.ndarray:
    return np.flatnonzero(_kept(ids, keep_id))


def _kept(ids: np.ndarray, keep_id: np.ndarray) -> np.ndarray:
    """Per position: True unless it holds a channel that shrink removes."""
    kept = np.ones(ids.size, bool)
    sel = ids >= 0
    kept[sel] = keep_id[ids[sel]]
    return kept


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
            if hidden.norm_name(layer, weight) and not _kept(ids, keep_id).all()
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
            rewrite = _OP_CONFIG.get(node.kind) if node is not None else None
            new = layer if rewrite is None else type(layer).from_config(rewrite(node, keep_id))
            if node is not None:
                cloned[id(new)] = node
            return new
        if not getattr(layer, "weights", None) and type(layer) is not _L.Reshape:
            # Nothing to slice: reuse it (a Lambda cannot be rebuilt from config in safe mode).
            return layer
        config = layer.get_config()
        key = _WIDTH_KEY.get(type(layer)) or _WIDTH_KEY.get(
            keras.saving.get_registered_name(type(layer))
        )
        if key is not None and id(layer) in outputs:
            config[key] = int(_positions(outputs[id(layer)], keep_id).size)
        if node is not None and node.kind == "grouped":
            config["groups"] = config[key]
        if id(layer) in plan.bias_delta:
            config["use_bias"] = True
        if config.get("output_shape") is not None and any(
            w.startswith("attention_output/") for w, _, _ in by_layer.get(id(layer), [])
        ):  # MultiHeadAttention with an explicit output width (tfprune.graph.rules.hidden)
            config["output_shape"] = (int(_positions(outputs[id(layer)], keep_id).size),)
        if id(layer) in attention:
            config.update(attention[id(layer)][0])
        kept = {w: int(_positions(ids, keep_id).size) for w, _, ids in by_layer.get(id(layer), [])}
        config.update(hub_blocks.shrunk_config(layer, kept))
        config.update(hub_hidden.shrunk_config(layer, kept))
        if type(layer) is _L.Reshape and id(layer) in outputs:
            target = list(layer.target_shape)
            width = int(_positions(outputs[id(layer)], keep_id).size)
            config["target_shape"] = (*target[:-1], width)
        cls = attention[id(layer)][2] if id(layer) in attention else None
        cls = cls or hub_hidden.shrunk_class(layer, kept)
        return surgery.from_config(layer, config, cls)

    def call(op, *args, **kwargs):
        node = cloned.get(id(op))
        if node is not None and node.kind == "op":
            keep = _positions(node.output, keep_id)
            args = [_slice_constant(a, node.output.size, keep) for a in args]
        if node is not None and node.kind == "slice":
            args = [args[0], _slice_key(node, keep_id), *args[2:]]
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
        sliced = {w: _np(registry.resolve(old, w)) for w, _, _ in slices}
        if id(old) in plan.bias_delta:
            bias = sliced.get("bias", 0.0)
            sliced["bias"] = (bias + plan.bias_delta[id(old)]).astype(np.float32)
            if not any(w == "bias" for w, _, _ in slices):
                slices = [*slices, ("bias", 0, outputs[id(old)])]
        kept = {w: _kept(ids, keep_id) for w, _, ids in slices}
        sliced.update(hub_blocks.carried_bias(old, kept))
        for weight, axis, ids in slices:
            sliced[weight] = np.take(sliced[weight], _positions(ids, keep_id), axis=axis)
        for i, var in enumerate(new.weights):
            name = _attr_path(new, var, sliced)
            if id(var) in overrides:
                value = overrides[id(var)]
            elif name in sliced:
                value = sliced[name]
            elif name in _NAMED:
                value = _np(registry.resolve(old, name))
            else:
                value = _np(old.weights[i])
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
                value = np.take(value, _positions(ids, keep_id), axis=axis)
        return value

    return cut


def _slice_constant(value, channels: int, keep: np.ndarray):
    """A per-channel constant argument of a raw op, cut to the kept channels."""
    if isinstance(value, keras.KerasTensor) or channels <= 1:
        return value
    shape = tuple(np.shape(value))
    if not shape or shape[-1] != channels:
        return value
    return np.take(_np(value), keep, axis=-1)


def _channel_range(call) -> tuple[int, int, int]:
    """A `GetItem` that slices the channel axis: the key item's position, start and stop."""
    key = call.args[1]
    k = ops_rules.channel_item(key, len(call.shapes[0]))
    items = list(key) if isinstance(key, (list, tuple)) else [key]
    start, stop, _ = items[k].indices(call.ids[0].size)
    return k, start, stop


def _slice_key(node, keep_id: np.ndarray):
    """The key of `x[..., a:b]` with `a`, `b` counted in the kept channels."""
    k, start, stop = _channel_range(node.call)
    kept = _kept(node.inputs[0], keep_id)
    new_start = int(kept[:start].sum())
    key = node.call.args[1]
    items = list(key) if isinstance(key, (list, tuple)) else [key]
    items[k] = slice(new_start, new_start + int(kept[start:stop].sum()))
    return tuple(items)


def _reshape_config(node, keep_id: np.ndarray) -> dict:
    """`keras.ops.reshape` whose last axis changes size: the new shape says the new size."""
    config = node.layer.get_config()
    shape = list(config["newshape"])
    shape[-1] = int(_positions(node.output, keep_id).size)
    config["newshape"] = shape
    return config


def _split_config(node, keep_id: np.ndarray) -> dict:
    """`keras.ops.split` along channels: split at the kept sizes of its outputs."""
    config = node.layer.get_config()
    sizes = [int(_positions(out, keep_id).size) for out in node.outputs]
    config["indices_or_sections"] = np.cumsum(sizes)[:-1].tolist()
    return config


# Node kind -> config rewrite of a raw `keras.ops` operation whose arguments hold widths.
_OP_CONFIG = {"flatten": _reshape_config, "split": _split_config}

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
