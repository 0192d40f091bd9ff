"""Channel dependency graph: which channels of which weights must be removed together.

`channel_groups(model)` walks a Sequential or functional model (nested models included) and
returns `ChannelGroup`s. A group is the output channels of one or more producers (layers
whose registry entry has output channels: Dense, Conv1D/2D/3D, transposed convolutions,
SeparableConv) that are tied to each other by the layers between them, plus every weight
slice that consumes or mirrors those channels: the producers' kernels and biases, the
depthwise kernels they pass through, the four BatchNormalization vectors, and the input
slices of the consumers (with Concatenate offsets and Flatten/Reshape -> Dense position
maps).

How the graph is read (public Keras APIs only): the node structure of a functional model
comes from `keras.Model.get_config()` (each layer's `inbound_nodes`, whose arguments name
the producing layer, node and tensor and carry the tensor's shape); a Sequential model is a
chain of `model.layers` whose shapes come from `layer.input.shape` / `layer.output.shape`.
Layer objects (and raw `keras.ops` operations, which have no rule) are found by name in
`model.operations`. No private attribute is read.

Each layer type has one small rule, found in a table keyed by class (`_RULES`): it maps the
channel ids of the layer's input tensors to those of its output and records the weight
slices it owns. Weight axes come from the registry (`tfprune.layers`). Every channel is an
integer id; merges (Add, Multiply, ...) unite ids with a union-find. A layer without a rule
(a Lambda, a custom layer) freezes the channels that reach it: the groups they belong to
are marked unprunable with the reason. The model's output channels are frozen too.

Examples:
    >>> import keras, tfprune
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    >>> x = keras.layers.BatchNormalization(name="bn")(x)
    >>> outputs = keras.layers.Conv2D(2, 1, name="c2")(x)
    >>> groups = tfprune.graph.channel_groups(keras.Model(inputs, outputs))
    >>> [(g.channels, g.prunable) for g in groups]
    [(4, True), (2, False)]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import keras
import numpy as np

from tfprune import layers as registry

__all__ = ["ChannelGroup", "Slice", "channel_groups"]

_L = keras.layers


@dataclasses.dataclass
class Slice:
    """One axis of one weight whose positions belong to channels.

    Attributes:
        layer: The layer that owns the weight (the inner layer of a `Prunable`).
        weight: Public attribute path of the weight (`"kernel"`, `"gamma"`, ...).
        axis: The axis of the weight that holds the channels (non-negative).
        index: For each position along `axis`, the channel of the group it belongs to, or
            -1 when it belongs to another group or to no prunable channel.
        role: `"output"` (the weight produces the channels: kernels, depthwise kernels,
            biases), `"norm"` (BatchNormalization vectors) or `"input"` (a consumer's input
            slice).
    """

    layer: keras.layers.Layer
    weight: str
    axis: int
    index: np.ndarray
    role: str

    def __repr__(self) -> str:
        n = int(np.count_nonzero(self.index >= 0))
        return f"Slice({self.layer.name}.{self.weight}, axis={self.axis}, {self.role}, {n})"


@dataclasses.dataclass
class ChannelGroup:
    """Channels that are removed together, and every weight slice that holds them.

    Attributes:
        channels: Number of channels of the group.
        members: The weight slices (`Slice`) of the group.
        prunable: Whether the group's channels may be removed.
        reason: Why not, when `prunable` is False (human-readable).
    """

    channels: int
    members: list[Slice]
    prunable: bool = True
    reason: str | None = None

    @property
    def layers(self) -> list[str]:
        """Names of the layers with a weight in the group, in model order, each once."""
        return list(dict.fromkeys(m.layer.name for m in self.members))

    @property
    def producers(self) -> list[str]:
        """Names of the layers whose output channels are the group's channels."""
        return list(dict.fromkeys(m.layer.name for m in self.members if m.role == "output"))

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"unprunable: {self.reason}"
        return f"ChannelGroup({self.channels} channels of {self.producers}, {state})"


# --- graph state ---------------------------------------------------------------------


@dataclasses.dataclass
class _Node:
    """One call of one layer: its rule kind, input tensor ids and output ids."""

    layer: keras.layers.Layer
    kind: str
    inputs: list[np.ndarray]
    output: np.ndarray
    shapes: list[tuple]


class _Graph:
    """Channel ids, their union-find, weight slices and frozen channels of one model."""

    def __init__(self):
        self.parent: list[int] = []
        self.slices: list[tuple[keras.layers.Layer, str, int, np.ndarray, str]] = []
        self.frozen: dict[int, str] = {}
        self.nodes: list[_Node] = []
        self.calls: dict[int, int] = {}

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x < 0 or y < 0:
                if x >= 0:
                    self.freeze(np.array([x]), "it is merged with a channel of the model input")
                if y >= 0:
                    self.freeze(np.array([y]), "it is merged with a channel of the model input")
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        for i in ids.tolist():
            if i >= 0:
                self.frozen.setdefault(i, reason)

    def record(self, layer, weight: str, axis: int, ids: np.ndarray, role: str) -> None:
        w = registry.resolve(layer, weight)
        if w is None:
            return
        axis = axis % len(w.shape)
        if w.shape[axis] != ids.size:
            raise ValueError(
                f"tfprune.graph: weight '{weight}' of layer '{layer.name}' has "
                f"{w.shape[axis]} positions on axis {axis} but {ids.size} channels reach it."
            )
        self.slices.append((layer, weight, axis, ids, role))


def _fixed(n: int) -> np.ndarray:
    return np.full(n, -1, np.int64)


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


# --- rules: one per layer kind ------------------------------------------------------
# A rule takes (graph, layer, input ids, input shapes, output shape) and returns the
# output ids. `None` from a rule means "unknown": the caller freezes the inputs.

_Rule = Callable[[_Graph, keras.layers.Layer, list, list, tuple], "np.ndarray | str"]


def _out_channels(layer) -> int:
    spec = registry.lookup(layer)
    main = next(s for s in spec.weight_specs(layer) if s.output)
    w = registry.resolve(layer, main.path)
    return math.prod(w.shape[a] for a in main.out_axes)


def _source(g: _Graph, layer, ids, shapes, out_shape):
    """Dense / Conv / ConvTranspose: new output channels; kernels consume the input."""
    if not _channels_last(layer):
        return "it uses data_format='channels_first'"
    if getattr(layer, "groups", 1) != 1:
        return f"it is a grouped convolution (groups={layer.groups})"
    out = g.new(_out_channels(layer))
    for spec in registry.lookup(layer).weight_specs(layer):
        if spec.in_axes:
            g.record(layer, spec.path, spec.in_axes[0], ids[0], "input")
        if spec.out_axes:
            g.record(layer, spec.path, spec.out_axes[0], out, "output")
    return out


def _depthwise(g: _Graph, layer, ids, shapes, out_shape):
    """DepthwiseConv: output channel `c * mult + m` is input channel `c`."""
    if not _channels_last(layer):
        return "it uses data_format='channels_first'"
    out = np.repeat(ids[0], layer.depth_multiplier)
    for spec in registry.lookup(layer).weight_specs(layer):
        # The kernel's output axes are (in, mult): its first one holds the input channels.
        per_input = len(spec.out_axes) == 2
        g.record(layer, spec.path, spec.out_axes[0], ids[0] if per_input else out, "output")
    return out


def _separable(g: _Graph, layer, ids, shapes, out_shape):
    """SeparableConv: a depthwise half on the input channels, then a pointwise producer."""
    if not _channels_last(layer):
        return "it uses data_format='channels_first'"
    mid = np.repeat(ids[0], layer.depth_multiplier)
    out = g.new(layer.filters)
    for spec in registry.lookup(layer).weight_specs(layer):
        if not spec.output:  # the depthwise half: (in, mult) output axes, no input axis
            g.record(layer, spec.path, spec.out_axes[0], ids[0], "input")
            continue
        if spec.in_axes:
            g.record(layer, spec.path, spec.in_axes[0], mid, "input")
        g.record(layer, spec.path, spec.out_axes[0], out, "output")
    return out


def _batch_norm(g: _Graph, layer, ids, shapes, out_shape):
    """BatchNormalization over the channel axis: four vectors mirror the channels."""
    if layer.axis not in (-1, len(shapes[0]) - 1):
        return f"it normalizes over axis {layer.axis}, not the channel axis"
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        g.record(layer, name, 0, ids[0], "norm")
    return ids[0]


def _across_channels(g: _Graph, layer, ids, shapes, out_shape):
    """Layers that mix the channel axis (LayerNormalization, Softmax): shrinking changes them."""
    g.freeze(
        ids[0],
        f"{type(layer).__name__} '{layer.name}' computes statistics across channels, so "
        "removing channels would change its output",
    )
    return ids[0]


def _elementwise(g: _Graph, layer, ids, shapes, out_shape):
    """Activations, Dropout, pooling, padding, cropping, upsampling: channels pass through."""
    if not _channels_last(layer):
        return "it uses data_format='channels_first'"
    return ids[0]


def _merge(g: _Graph, layer, ids, shapes, out_shape):
    """Add/Subtract/Multiply/Average/Maximum/Minimum: every input shares one channel set."""
    width = max(i.size for i in ids)
    wide = [i for i in ids if i.size == width]
    for other in wide[1:]:
        g.union(wide[0], other)
    narrow = [i for i in ids if i.size != width]
    if narrow:
        # A broadcast input adds data to every channel, so none of them can be removed.
        return f"it broadcasts {narrow[0].size} channel(s) over {width}"
    return wide[0]


def _concatenate(g: _Graph, layer, ids, shapes, out_shape):
    """Concatenate: along channels, each input's channels keep their ids at an offset."""
    rank = len(shapes[0])
    if layer.axis in (-1, rank - 1):
        return np.concatenate(ids)
    for other in ids[1:]:
        g.union(ids[0], other)
    return ids[0]


def _flatten(g: _Graph, layer, ids, shapes, out_shape):
    """Flatten (channels last): feature `s * C + c` is channel `c` at spatial position `s`."""
    if not _channels_last(layer):
        return "it uses data_format='channels_first'"
    spatial = math.prod(int(d) for d in shapes[0][1:-1])
    return np.tile(ids[0], spatial)


def _reshape(g: _Graph, layer, ids, shapes, out_shape):
    """Reshape: keeps the channel axis (SE blocks) or flattens everything (like Flatten)."""
    target = tuple(layer.target_shape)
    in_shape = tuple(shapes[0][1:])
    if target and in_shape and target[-1] == in_shape[-1]:
        return ids[0]
    if len(target) == 1:
        return _flatten(g, layer, ids, shapes, out_shape)
    return f"it reshapes {in_shape} to {target}, which moves the channel axis"


def _input(g: _Graph, layer, ids, shapes, out_shape):
    return _fixed(int(out_shape[-1]))


_RULES: dict[type, tuple[str, _Rule]] = {}


def _rule(kind: str, fn: _Rule, *classes: type) -> None:
    for cls in classes:
        _RULES[cls] = (kind, fn)


# Convolutions whose output channels are their `filters` (the separable ones have a rule of
# their own); shrink reads the same tuple.
CONVOLUTIONS = (
    _L.Conv1D,
    _L.Conv2D,
    _L.Conv3D,
    _L.Conv1DTranspose,
    _L.Conv2DTranspose,
    _L.Conv3DTranspose,
)
_rule("input", _input, _L.InputLayer)
_rule("source", _source, _L.Dense, *CONVOLUTIONS)
_rule("depthwise", _depthwise, _L.DepthwiseConv1D, _L.DepthwiseConv2D)
_rule("separable", _separable, _L.SeparableConv1D, _L.SeparableConv2D)
_rule("norm", _batch_norm, _L.BatchNormalization)
_rule(
    "mixed",
    _across_channels,
    _L.LayerNormalization,
    _L.GroupNormalization,
    _L.Softmax,
    _L.UnitNormalization,
)
_rule(
    "elementwise",
    _elementwise,
    _L.Activation,
    _L.ReLU,
    _L.LeakyReLU,
    _L.ELU,
    _L.Dropout,
    _L.GaussianNoise,
    _L.GaussianDropout,
    _L.AlphaDropout,
    _L.ActivityRegularization,
    _L.Identity,
)
_rule(
    "spatial",
    _elementwise,
    _L.SpatialDropout1D,
    _L.SpatialDropout2D,
    _L.SpatialDropout3D,
    _L.MaxPooling1D,
    _L.MaxPooling2D,
    _L.MaxPooling3D,
    _L.AveragePooling1D,
    _L.AveragePooling2D,
    _L.AveragePooling3D,
    _L.GlobalMaxPooling1D,
    _L.GlobalMaxPooling2D,
    _L.GlobalMaxPooling3D,
    _L.GlobalAveragePooling1D,
    _L.GlobalAveragePooling2D,
    _L.GlobalAveragePooling3D,
    _L.Cropping1D,
    _L.Cropping2D,
    _L.Cropping3D,
    _L.UpSampling1D,
    _L.UpSampling2D,
    _L.UpSampling3D,
)
_rule("pad", _elementwise, _L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D)
_rule("merge", _merge, _L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
_rule("concat", _concatenate, _L.Concatenate)
_rule("flatten", _flatten, _L.Flatten)
_rule("flatten", _reshape, _L.Reshape)


# --- walking the model ----------------------------------------------------------------


def _inner(layer):
    """The layer a `Prunable` wraps, or the layer itself."""
    from tfprune.wrapper import Prunable

    return layer.layer if isinstance(layer, Prunable) else layer


def _apply(g: _Graph, layer, ids: list, shapes: list, out_shape: tuple) -> np.ndarray:
    """Runs the rule of one layer call (recursing into nested models)."""
    layer = _inner(layer)
    if isinstance(layer, keras.Model):
        return _enter(g, layer, ids, shapes)[0]
    g.calls[id(layer)] = g.calls.get(id(layer), 0) + 1
    kind, rule = _RULES.get(type(layer), ("unknown", None))
    result = None
    if rule is not None and g.calls[id(layer)] > 1 and kind not in ("elementwise", "spatial"):
        result = "it is called more than once (a shared layer)"
        for owner, _, _, slice_ids, _ in g.slices:
            if owner is layer:
                g.freeze(slice_ids, f"layer '{layer.name}' is called more than once")
    elif rule is not None:
        result = rule(g, layer, ids, shapes, out_shape)
    else:
        result = (
            f"tfprune.graph has no channel rule for its type {type(layer).__name__}; "
            "channels that reach it are kept"
        )
    if isinstance(result, str):
        for i in ids:
            g.freeze(i, f"layer '{layer.name}' ({type(layer).__name__}): {result}")
        kind, result = "unknown", _fixed(int(out_shape[-1]) if out_shape else 1)
    g.nodes.append(_Node(layer, kind, ids, result, shapes))
    return result


def _tensor_refs(obj) -> list[dict]:
    """Serialized KerasTensors in a node's `args`/`kwargs`, in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [obj["config"]]
        return [t for v in obj.values() for t in _tensor_refs(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensor_refs(v)]
    return []


def _history_refs(obj) -> list[tuple]:
    """`[name, node, tensor]` triples of a config's `input_layers`/`output_layers`."""
    if isinstance(obj, (list, tuple)) and len(obj) == 3 and isinstance(obj[0], str):
        return [tuple(obj)]
    return [t for v in obj for t in _history_refs(v)]


def _enter(g: _Graph, model: keras.Model, ids: list, shapes: list) -> list:
    """Walks a nested model; the channels entering it are frozen (its inputs keep shape)."""
    for i in ids:
        g.freeze(i, f"they enter the nested model '{model.name}', whose inputs keep their shape")
    return _walk(g, model, ids, shapes)


def _walk(g: _Graph, model: keras.Model, in_ids: list | None, in_shapes: list | None):
    """Channel ids of a model's outputs given its inputs' ids (None: the model's inputs)."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        shape = tuple(model.inputs[0].shape) if in_shapes is None else tuple(in_shapes[0])
        ids = _fixed(int(shape[-1])) if in_ids is None else in_ids[0]
        for layer in layers:
            out_shape = tuple(layer.output.shape)
            ids = _apply(g, layer, [ids], [shape], out_shape)
            shape = out_shape
        return [ids]
    if type(model).__name__ != "Functional":
        raise TypeError(
            f"tfprune.graph analyses Sequential and functional models, but '{model.name}' is "
            f"a subclassed model ({type(model).__name__}) whose layer graph Keras cannot see. "
            "Build it with the functional API to prune its channels."
        )
    config = model.get_config()
    tensors: dict[tuple, np.ndarray] = {}
    inputs = _history_refs(config["input_layers"])
    for k, ref in enumerate(inputs):
        if in_ids is not None:
            tensors[ref] = in_ids[k]
    # `model.operations` also holds raw `keras.ops` calls, which `get_layer` does not know.
    operations = {op.name: op for op in model.operations}
    for layer_config in config["layers"]:
        name = layer_config["name"]
        layer = operations[name]
        if layer_config["class_name"] == "InputLayer":
            ref = (name, 0, 0)
            if ref not in tensors:
                tensors[ref] = _fixed(int(layer.output.shape[-1]))
            continue
        for node_index, node in enumerate(layer_config["inbound_nodes"]):
            refs = _tensor_refs([node.get("args", []), node.get("kwargs", {})])
            ids, shapes = [], []
            for ref in refs:
                key = tuple(ref["keras_history"])
                shape = tuple(ref["shape"])
                width = int(shape[-1]) if shape and shape[-1] is not None else 1
                known = tensors.get(key)
                if known is None or known.size != width:
                    known = _fixed(width)
                ids.append(known)
                shapes.append(shape)
            inner = _inner(layer)
            if isinstance(inner, keras.Model):
                outs = _enter(g, inner, ids, shapes)
                for t, out in enumerate(outs):
                    tensors[(name, node_index, t)] = out
                continue
            out_shape = _output_shape(layer, shapes, len(layer_config["inbound_nodes"]))
            tensors[(name, node_index, 0)] = _apply(g, layer, ids, shapes, out_shape)
    return [tensors.get(ref, _fixed(1)) for ref in _history_refs(config["output_layers"])]


def _output_shape(layer, shapes: list, calls: int) -> tuple:
    """Output shape of a layer call (the layer's own `output` when it is called once)."""
    out = layer.output if calls == 1 else None
    if out is None:
        try:
            out = keras.KerasTensor(
                layer.compute_output_shape(shapes[0] if len(shapes) == 1 else shapes)
            )
        except Exception:  # a layer that cannot say: its channels are kept (unknown rule)
            return ()
    return tuple(out.shape) if hasattr(out, "shape") else ()


def _analyse(model: keras.Model) -> _Graph:
    """Builds the graph of `model`, freezing the channels of its outputs."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            "tfprune.graph.channel_groups expects a Sequential or functional Keras model. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so its layer graph is unknown. Build it "
            "first, e.g. by calling it on a batch or passing `keras.Input` to Sequential."
        )
    g = _Graph()
    for out in _walk(g, model, None, None):
        g.freeze(out, "its channels are a model output")
    return g


def _groups(g: _Graph) -> tuple[list[ChannelGroup], np.ndarray, np.ndarray]:
    """Groups of a graph, plus, per channel id, its group number and channel in the group."""
    n = len(g.parent)
    roots = np.array([g.find(i) for i in range(n)], np.int64)
    # Channels form one group when some weight slice holds channels of both (an "output"
    # slice ties the channels of one producer call together).
    group_of_root = {}
    parent: dict[int, int] = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for _, _, _, ids, role in g.slices:
        if role != "output":
            continue
        r = sorted({int(roots[i]) for i in ids.tolist() if i >= 0})
        for other in r[1:]:
            a, b = find(r[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    used = sorted(
        {
            int(roots[i])
            for _, _, _, ids, role in g.slices
            if role == "output"
            for i in ids.tolist()
            if i >= 0
        }
    )
    group_no = np.full(n, -1, np.int64)
    local = np.full(n, -1, np.int64)
    counts: list[int] = []
    for r in used:
        top = find(r)
        if top not in group_of_root:
            group_of_root[top] = len(counts)
            counts.append(0)
        gi = group_of_root[top]
        group_no[r] = gi
        local[r] = counts[gi]
        counts[gi] += 1
    group_no = np.where(roots >= 0, group_no[roots], -1)
    local = np.where(roots >= 0, local[roots], -1)
    groups = [ChannelGroup(c, []) for c in counts]
    for i, reason in g.frozen.items():
        gi = group_no[i]
        if gi >= 0 and groups[gi].prunable:
            groups[gi].prunable, groups[gi].reason = False, reason
    for layer, weight, axis, ids, role in g.slices:
        safe = np.where(ids >= 0, ids, 0)
        gid = np.where(ids >= 0, group_no[safe], -1)
        loc = np.where(ids >= 0, local[safe], -1)
        for gi in np.unique(gid[gid >= 0]).tolist():
            index = np.where(gid == gi, loc, -1)
            groups[gi].members.append(Slice(layer, weight, axis, index, role))
    return groups, group_no, local


def channel_groups(model: keras.Model) -> list[ChannelGroup]:
    """Groups of channels of a model that must be removed together.

    Args:
        model: A built Sequential or functional model (nested models and `Prunable`
            wrappers allowed).

    Returns:
        The groups, in the order of their first producer. Groups whose channels reach a
        layer of unknown channel semantics or a model output have `prunable=False` and a
        `reason`.

    Raises:
        TypeError: If `model` is not a Keras model, or is (or contains) a subclassed model.
        ValueError: If `model` is not built.
    """
    return _groups(_analyse(model))[0]
