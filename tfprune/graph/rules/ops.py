"""Channel rules of raw `keras.ops` operations in functional models.

A functional model records every `keras.ops` call between layers as an operation
(`x + 3.0` is an `Add`, `x[:, 0]` a `GetItem`, `keras.ops.mean(x, axis=1)` a `Mean`). These
rules follow the channel (last) axis through them: elementwise arithmetic and activations
keep it (a per-channel constant is sliced by `tfprune.shrink`), reductions, slicing,
reshapes, transposes and `expand_dims`/`squeeze` keep it when they leave the last axis in
place; a step-1 slice of the channel axis keeps a range of it; a reshape splits it into
heads or merges them back (`tfprune.graph.rules.layers.reshape`); transposes
(`moveaxis`, `swapaxes`) move it to another axis and back, and `matmul` contracts a moved
one as `q @ transpose(k)` does; `concatenate`/`split`/`stack` offset or share it, and
`matmul`/`einsum` pass on the channels of the operand whose last axis is the output's last
axis. Everything else returns a reason, so the channels that reach it are frozen.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from tfprune.graph._state import Call, Graph, Tensor, width
from tfprune.graph.rules.layers import across_channels, concatenate, reshape
from tfprune.graph.table import register


def _constants(call: Call) -> list:
    """Constant (non-tensor) positional arguments of a call."""
    return [a for a in call.args if not isinstance(a, Tensor) and a is not None]


def elementwise_op(g: Graph, call: Call):
    """Arithmetic, comparisons and activations: output channel `c` reads input channel `c`.

    Tensors of the output's width are tied together; a constant must be a scalar or vary
    along the channel axis only (then shrink slices it). A width-1 tensor broadcast over
    the channels is allowed in a product (its zero channels stay zero) and frozen; in a sum
    it would add data to removed channels, so their channels are frozen.
    """
    out = width(call.out_shape)
    for c in _constants(call):
        shape = tuple(np.shape(c))
        if any(d != 1 for d in shape[:-1]) or (shape and shape[-1] not in (1, out)):
            return f"its constant of shape {shape} varies over non-channel axes"
    wide = [i for i in call.ids if i.size == out]
    narrow = [i for i in call.ids if i.size != out]
    if not wide:
        return f"its inputs have {[i.size for i in call.ids]} channels, not the output's {out}"
    for other in wide[1:]:
        g.union(wide[0], other, call.name)
    if narrow:
        if type(call.layer).__name__ != "Multiply" or any(i.size != 1 for i in narrow):
            return f"it broadcasts {narrow[0].size} channel(s) over {out}"
        for i in narrow:
            g.freeze(i, f"{call.name} broadcasts it over {out} channels")
    return wide[0]


def _axes(axis, rank: int) -> list[int] | None:
    if axis is None:
        return None
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return [int(a) % rank for a in axes]


def reduction(g: Graph, call: Call):
    """`mean`/`sum`/`max`/`min`/`prod` over non-channel axes: channels pass through."""
    rank = len(call.shapes[0])
    axes = _axes(call.config().get("axis"), rank)
    if axes is None or rank - 1 in axes:
        return "it reduces over the channel (last) axis"
    return call.ids[0]


def _key_items(key) -> list:
    return list(key) if isinstance(key, (list, tuple)) else [key]


def channel_item(key, rank: int) -> int | str | None:
    """Position in a `GetItem` key of the item that indexes the channel (last) axis.

    Returns None when the key leaves the last axis alone, a reason string when it adds an
    axis after it or indexes with a tensor.
    """
    items = _key_items(key)
    if any(isinstance(i, (Tensor, np.ndarray, keras.KerasTensor)) for i in items):
        return "it indexes with a tensor"
    if Ellipsis in items:
        start = items.index(Ellipsis) + 1
    elif sum(i is not None for i in items) < rank:
        return None
    else:
        start = 0
    after = items[start:]
    if after and after[-1] is None:
        return "it adds an axis after the channel axis"
    consuming = [start + k for k, i in enumerate(after) if i is not None]
    if not consuming or items[consuming[-1]] == slice(None):
        return None
    return consuming[-1]


def get_item(g: Graph, call: Call):
    """`x[...]`: channels pass through an untouched last axis; `x[..., a:b]` keeps a range.

    A step-1 slice of the channel axis passes on the channels of its range (shrink
    recomputes the bounds from the kept channels); any other index of it is frozen.
    """
    k = channel_item(call.args[1], len(call.shapes[0]))
    if k is None:
        return call.ids[0]
    if isinstance(k, str):
        return k
    item = _key_items(call.args[1])[k]
    if not isinstance(item, slice) or item.step not in (None, 1):
        return f"it indexes the channel (last) axis with {item!r}"
    call.kind = "slice"
    return call.ids[0][item]


def _permute(g: Graph, call: Call, perm: list[int]):
    """Transposes with `perm`: channels stay last, move to another axis, or come back.

    Channels moved to a non-last axis travel as `call.out_moved` (only transposes and
    `matmul` follow them; any other call freezes them). The call is `"strict"` when it
    moves them: a removed channel must carry exactly zero through it.
    """
    rank = len(perm)
    moved = call.moved[0] if call.moved else None
    axis, channels = (rank - 1, call.ids[0]) if moved is None else (moved[0] % rank, moved[1])
    if call.moved:
        call.moved[0] = None
    to = perm.index(axis)
    if moved is None and to == rank - 1:
        return call.ids[0]
    call.kind = "strict"
    if to == rank - 1:
        return channels
    call.out_moved[0] = (to - rank, channels)
    origin = f"axis {perm[-1]} of the input of {call.name}, which is not a channel axis"
    return g.fixed(width(call.out_shape), origin)


def transpose(g: Graph, call: Call):
    """`keras.ops.transpose`: channels stay last, move to another axis, or come back."""
    rank = len(call.shapes[0])
    axes = call.config().get("axes")
    perm = list(range(rank))[::-1] if axes is None else [int(a) % rank for a in axes]
    return _permute(g, call, perm)


def moveaxis(g: Graph, call: Call):
    """`keras.ops.moveaxis`: a transpose."""
    config, rank = call.config(), len(call.shapes[0])
    source = [int(a) % rank for a in np.atleast_1d(config["source"])]
    destination = [int(a) % rank for a in np.atleast_1d(config["destination"])]
    perm = [a for a in range(rank) if a not in source]
    for to, axis in sorted(zip(destination, source)):
        perm.insert(to, axis)
    return _permute(g, call, perm)


def swapaxes(g: Graph, call: Call):
    """`keras.ops.swapaxes`: a transpose."""
    config, rank = call.config(), len(call.shapes[0])
    perm = list(range(rank))
    a, b = int(config["axis1"]) % rank, int(config["axis2"]) % rank
    perm[a], perm[b] = perm[b], perm[a]
    return _permute(g, call, perm)


def split(g: Graph, call: Call):
    """`keras.ops.split`: along channels, each output holds its slice of the ids."""
    config = call.config()
    rank = len(call.shapes[0])
    n_out = len(call.out_shapes)
    if int(config.get("axis", 0)) % rank != rank - 1:
        return [call.ids[0]] * n_out
    sections = config["indices_or_sections"]
    if isinstance(sections, int) and call.ids[0].size % sections:
        return f"it splits {call.ids[0].size} channels into {sections} unequal sections"
    call.kind = "split"
    return np.split(call.ids[0], sections)


def stack(g: Graph, call: Call):
    """`keras.ops.stack` on a new axis before the channels: the inputs share channels."""
    rank = len(call.out_shape)
    if int(call.config().get("axis", 0)) % rank == rank - 1:
        return "it stacks along a new last axis, so the channels are no longer last"
    for other in call.ids[1:]:
        g.union(call.ids[0], other, call.name)
    return call.ids[0]


def expand_dims(g: Graph, call: Call):
    """`keras.ops.expand_dims` before the last axis: channels pass through."""
    rank = len(call.out_shape)
    axes = _axes(call.config().get("axis"), rank)
    if rank - 1 in axes:
        return "it adds an axis after the channel axis"
    return call.ids[0]


def squeeze(g: Graph, call: Call):
    """`keras.ops.squeeze` of axes other than the last: channels pass through."""
    rank = len(call.shapes[0])
    axes = _axes(call.config().get("axis"), rank)
    if (axes is None and call.shapes[0][-1] == 1) or (axes and rank - 1 in axes):
        return "it removes the channel (last) axis"
    return call.ids[0]


def matmul(g: Graph, call: Call):
    """`a @ b`: the output's last axis is `b`'s last axis; `a`'s last axis is contracted.

    `a`'s channels are tied to `b`'s when a transpose moved `b`'s channels to axis -2 (the
    contracted axis, as in `q @ transpose(k)`); otherwise they are frozen.
    """
    if len(call.ids) != 2 or len(call.shapes[1]) < 2:
        return "its second operand is not a tensor of rank 2 or more"
    a, b = call.ids
    moved = call.moved[1] if len(call.moved) == 2 else None
    if moved is not None and moved[0] % len(call.shapes[1]) == len(call.shapes[1]) - 2:
        g.union(a, moved[1], call.name)
        call.moved[1] = None
    else:
        g.freeze(a, f"{call.name} contracts it (the channel axis of its first operand)")
    return b


_LETTERS = re.compile(r"[a-zA-Z]")


def einsum(g: Graph, call: Call):
    """`einsum`: operands whose last subscript is the output's last pass their channels on.

    Einsum is linear in each operand, so an output channel computed from a removed (zero)
    channel of any operand is zero. Operands whose last subscript is contracted or moved
    are frozen.
    """
    spec = call.config().get("subscripts", "").replace(" ", "")
    if "->" not in spec:
        return f"its subscripts {spec!r} have no explicit output"
    ins, out = spec.split("->")
    operands = ins.split(",")
    if out.endswith(".") or not out or any(o.endswith(".") for o in operands):
        return f"its subscripts {spec!r} leave the last axis to an ellipsis"
    tensors = [k for k, a in enumerate(call.args) if isinstance(a, Tensor)]
    if len(tensors) != len(operands):
        return "it has constant operands"
    passing = []
    for k, sub in enumerate(operands):
        ids = call.ids[k]
        if sub[-1] == out[-1]:
            passing.append(ids)
        else:
            g.freeze(ids, f"{call.name} contracts or moves its channel axis ({spec})")
    if not passing:
        return g.fixed(width(call.out_shape), f"the output of {call.name}")
    for other in passing[1:]:
        g.union(passing[0], other, call.name)
    return passing[0]


def _only_ops(fn):
    """A rule for raw operations, refusing a layer class that happens to share the name."""

    def rule(g: Graph, call: Call):
        if isinstance(call.layer, keras.layers.Layer):
            return f"no channel rule for the layer type {type(call.layer).__name__}"
        return fn(g, call)

    rule.__doc__ = fn.__doc__
    return rule


def _register(kind: str, fn, *names: str) -> None:
    for name in names:
        register(name, _only_ops(fn), kind)


_register(
    "op",
    elementwise_op,
    *("Add", "Subtract", "Multiply", "TrueDivide", "Divide", "Maximum", "Minimum", "Power"),
    *("Negative", "Absolute", "Square", "Sqrt", "Exp", "Log", "Erf", "Cast", "Clip", "Where"),
    *("Greater", "GreaterEqual", "Less", "LessEqual", "Equal", "NotEqual"),
    *("Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Gelu", "Tanh", "Elu"),
    *("Selu", "Softplus", "Softsign", "LeakyRelu"),
)
_register("reduce", reduction, "Mean", "Max", "Min")
_register("strict", reduction, "Sum", "Prod")
_register("spatial", get_item, "GetItem")
_register("spatial", transpose, "Transpose")
_register("spatial", moveaxis, "Moveaxis")
_register("spatial", swapaxes, "Swapaxes")
_register("spatial", expand_dims, "ExpandDims")
_register("spatial", squeeze, "Squeeze")
_register("flatten", reshape, "Reshape")
_register("concat", concatenate, "Concatenate")
_register("concat", stack, "Stack")
_register("spatial", split, "Split")
_register("strict", matmul, "Matmul")
_register("strict", einsum, "Einsum")
_register("mixed", across_channels, "Softmax", "LogSoftmax", "Normalize")
