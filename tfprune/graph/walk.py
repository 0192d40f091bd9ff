"""Walking a model's graph: every layer and operation call runs its rule, then groups form.

The node structure of a functional model comes from `keras.Model.get_config()` (each
operation's `inbound_nodes`, whose arguments name the producing operation, node and tensor
and carry the tensor's shape, and hold the call's constants); a model that subclasses the
functional API (keras-hub backbones) is read through a plain functional view of the same
tensors, `keras.Model(model.input, model.output)`. A Sequential model is a chain of
`model.layers`. Operation objects are found by name in `model.operations`. No private
attribute is read.
"""

from __future__ import annotations

import keras
import numpy as np

from tfprune import surgery
from tfprune.graph._state import Call, ChannelGroup, Graph, Node, Slice, Tensor, width
from tfprune.graph.table import lookup

# Kinds whose layers may be called several times (no weights, channels pass through; or
# a ReversibleEmbedding, whose rule ties the channels of its calls).
_REPEATABLE = (
    "elementwise",
    "spatial",
    "op",
    "reduce",
    "flatten",
    "concat",
    "mixed",
    "reversible",
)


def _inner(layer):
    """The layer a `Prunable` wraps, or the layer itself."""
    from tfprune.wrapper import Prunable

    return layer.layer if isinstance(layer, Prunable) else layer


def _apply(g: Graph, call: Call) -> list[np.ndarray]:
    """Runs the rule of one call; returns the channel ids of its outputs."""
    layer = call.layer
    g.calls[id(layer)] = g.calls.get(id(layer), 0) + 1
    entry = lookup(layer)
    kind = entry.kind if entry is not None else "unknown"
    if entry is not None and g.calls[id(layer)] > 1 and kind not in _REPEATABLE:
        result = "it is called more than once (a shared layer)"
        for owner, _, _, slice_ids, _ in g.slices:
            if owner is layer:
                g.freeze(slice_ids, f"layer '{layer.name}' is called more than once")
    elif entry is not None:
        result = entry.fn(g, call)
        kind = call.kind or kind
    else:
        result = (
            f"tfprune.graph has no channel rule for its type {type(layer).__name__}; "
            "channels that reach it are kept"
        )
    if isinstance(result, str):
        what = "layer" if isinstance(layer, keras.layers.Layer) else "op"
        for i in call.ids:
            g.freeze(i, f"{what} '{layer.name}' ({type(layer).__name__}): {result}")
        kind = "unknown"
        origin = f"the output of {call.name}, which has no channel mapping"
        result = [g.fixed(width(s), origin) for s in call.out_shapes] or [g.fixed(1, origin)]
    for moved in call.moved:
        if moved is not None:  # channels on a non-last axis that the rule does not follow
            reason = f"{call.name} receives them on axis {moved[0]}, where it does not follow them"
            g.freeze(moved[1], reason)
    outputs = list(result) if isinstance(result, (list, tuple)) else [result]
    # An output that is an input's own array gets a copy, so that data attached to it
    # (shrink's constants, moved channels) stays per tensor.
    outputs = [o.copy() if any(o is i for i in call.ids) else o for o in outputs]
    for k, moved in call.out_moved.items():
        g.placed[id(outputs[k])] = moved
    g.nodes.append(Node(layer, kind, call.ids, outputs, call.shapes, call))
    return outputs


def _arguments(obj, refs: list):
    """A node's serialized `args`/`kwargs` with tensors as `Tensor(k)` markers.

    `refs` collects the serialized tensors (`keras_history` and `shape`) in order.
    """
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            refs.append(obj["config"])
            return Tensor(len(refs) - 1)
        if "class_name" in obj:
            return keras.saving.deserialize_keras_object(obj)
        return {k: _arguments(v, refs) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_arguments(v, refs) for v in obj]
    return obj


def _history_refs(obj) -> list[tuple]:
    """`[name, node, tensor]` triples of a config's `input_layers`/`output_layers`."""
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _history_refs(v)]
    if (
        isinstance(obj, (list, tuple))
        and len(obj) == 3
        and isinstance(obj[0], str)
        and isinstance(obj[1], int)
    ):
        return [tuple(obj)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _history_refs(v)]
    return []


def _enter(g: Graph, model: keras.Model, ids: list, shapes: list) -> list:
    """Walks a nested model; the channels entering it are frozen (its inputs keep shape)."""
    for i in ids:
        for channels in g.channels(i):
            reason = f"they enter the nested model '{model.name}', whose inputs keep their shape"
            g.freeze(channels, reason)
    return _walk(g, model, ids, shapes)


def functional_view(model: keras.Model) -> keras.Model:
    """A plain functional model over the same graph (the model itself when it is one).

    Raises:
        TypeError: If `model` is a subclassed model (no visible graph).
    """
    if type(model).__name__ == "Functional":
        return model
    try:
        view = keras.Model(model.input, model.output, name=model.name)
    except (AttributeError, ValueError, TypeError):
        view = None
    if view is None or any(op is model for op in view.operations):
        raise TypeError(
            f"tfprune.graph analyses Sequential and functional models, but '{model.name}' is "
            f"a subclassed model ({type(model).__name__}) whose layer graph Keras cannot see. "
            "Build it with the functional API to prune its channels."
        )
    return view


def _walk(g: Graph, model: keras.Model, in_ids: list | None, in_shapes: list | None):
    """Channel ids of a model's outputs given its inputs' ids (None: the model's inputs)."""
    if isinstance(model, keras.Sequential):
        return _walk_sequential(g, model, in_ids, in_shapes)
    config = surgery.model_config(functional_view(model))
    tensors: dict[tuple, np.ndarray] = {}
    if in_ids is not None:
        for k, ref in enumerate(_history_refs(config["input_layers"])):
            tensors[ref] = in_ids[k]
    # `model.operations` also holds raw `keras.ops` calls, which `get_layer` does not know.
    operations = {op.name: op for op in model.operations}
    calls = []  # (layer name, node index, number of nodes, args, kwargs, refs) of each call
    for layer_config in config["layers"]:
        name = layer_config["name"]
        layer = operations[name]
        if layer_config["class_name"] == "InputLayer":
            if (name, 0, 0) not in tensors:
                shape = tuple(layer.output.shape)
                call = Call(layer, [], [], [shape], [], {})
                tensors[(name, 0, 0)] = _apply(g, call)[0]
            continue
        nodes = layer_config["inbound_nodes"]
        for node_index, node in enumerate(nodes):
            refs: list[dict] = []
            args = _arguments(node.get("args", []), refs)
            kwargs = _arguments(node.get("kwargs", {}), refs)
            calls.append((name, node_index, len(nodes), args, kwargs, refs))
    while calls:
        # The config lists a shared layer's calls together, at its first call; a later
        # call (a ReversibleEmbedding's reverse call) waits until its inputs are known.
        k = next((k for k, c in enumerate(calls) if _ready(c[-1], tensors)), 0)
        name, node_index, n_nodes, args, kwargs, refs = calls.pop(k)
        layer = operations[name]
        ids, shapes, moved = [], [], []
        for ref in refs:
            shape = tuple(ref["shape"])
            known = tensors.get(tuple(ref["keras_history"]))
            if known is None or known.size != width(shape):
                known = g.fixed(width(shape), f"the input of '{name}'")
            ids.append(known)
            shapes.append(shape)
            moved.append(g.moved(known))
        inner = _inner(layer)
        if isinstance(inner, keras.Model):
            outs = _enter(g, inner, ids, shapes)
        else:
            out_shapes = _output_shapes(layer, args, kwargs, shapes, n_nodes)
            call = Call(inner, ids, shapes, out_shapes, args, kwargs, moved=moved)
            outs = _apply(g, call)
        for t, out in enumerate(outs):
            tensors[(name, node_index, t)] = out
    return [
        tensors.get(ref, g.fixed(1, "an output")) for ref in _history_refs(config["output_layers"])
    ]


def _ready(refs: list[dict], tensors: dict) -> bool:
    """Whether every input tensor of a call is known."""
    return all(tuple(ref["keras_history"]) in tensors for ref in refs)


def _walk_sequential(g: Graph, model: keras.Sequential, in_ids, in_shapes) -> list:
    shape = tuple(model.inputs[0].shape) if in_shapes is None else tuple(in_shapes[0])
    if in_ids is None:
        ids = g.fixed(width(shape), f"the input of the model '{model.name}'")
    else:
        ids = in_ids[0]
    for layer in model.layers:
        out_shape = tuple(layer.output.shape)
        inner = _inner(layer)
        if isinstance(inner, keras.Model):
            ids = _enter(g, inner, [ids], [shape])[0]
        else:
            call = Call(inner, [ids], [shape], [out_shape], [Tensor(0)], {})
            ids = _apply(g, call)[0]
        shape = out_shape
    return [ids]


def _output_shapes(layer, args, kwargs, shapes: list, calls: int) -> list[tuple]:
    """Output shapes of a call (from the layer's own `output` when it is called once)."""
    out = None
    if calls == 1:
        try:
            out = layer.output
        except (AttributeError, ValueError):
            out = None
    if out is None:
        try:
            out = layer.compute_output_shape(shapes[0] if len(shapes) == 1 else shapes)
            out = keras.KerasTensor(out) if isinstance(out, tuple) else out
        except Exception:  # a layer that cannot say: its channels are kept (unknown rule)
            return []
    flat = out if isinstance(out, (list, tuple)) else [out]
    return [tuple(t.shape) for t in flat if hasattr(t, "shape")]


def analyse(model: keras.Model, through_norms: bool = False) -> Graph:
    """Builds the graph of `model`, freezing the channels of its outputs.

    `through_norms=True` lets LayerNormalization / RMSNormalization pass channels through
    (not exact: `tfprune.graph.rules.hidden`).

    Raises:
        TypeError: If `model` is not a Keras model, or is (or contains) a subclassed model,
            or `through_norms` is not a bool.
        ValueError: If `model` is not built.
    """
    if not isinstance(through_norms, bool):
        raise TypeError(
            "Expected `through_norms` to be True or False. "
            f"Received: through_norms={through_norms!r}"
        )
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
    g = Graph(through_norms)
    for out in _walk(g, model, None, None):
        for channels in g.channels(out):
            g.freeze(channels, "its channels are a model output")
    return g


def groups_of(g: Graph) -> tuple[list[ChannelGroup], np.ndarray, np.ndarray]:
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


def channel_groups(model: keras.Model, through_norms: bool = False) -> list[ChannelGroup]:
    """Groups of channels of a model that must be removed together.

    Args:
        model: A built Sequential or functional model (nested models, `Prunable`
            wrappers and subclasses of the functional API such as keras-hub backbones
            allowed; inputs and outputs of any structure).
        through_norms: Let LayerNormalization and RMSNormalization pass channels through
            instead of freezing them, so the residual stream of a transformer (its hidden
            width) forms one prunable group. Not exact: removing channels changes the
            statistics these layers compute, so fine-tune or distil the pruned model.

    Returns:
        The groups, in the order of their first producer. Groups whose channels reach a
        layer or operation of unknown channel semantics or a model output have
        `prunable=False` and a `reason`.

    Raises:
        TypeError: If `model` is not a Keras model, or is (or contains) a subclassed model,
            or `through_norms` is not a bool.
        ValueError: If `model` is not built.
    """
    return groups_of(analyse(model, through_norms))[0]
