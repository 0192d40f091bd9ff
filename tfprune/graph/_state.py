"""The data of a channel graph: channel ids, weight slices, frozen channels, node calls."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from tfprune import layers as registry


@dataclasses.dataclass
class Slice:
    """One axis of one weight whose positions belong to channels.

    Attributes:
        layer: The layer that owns the weight (the inner layer of a `Prunable`).
        weight: Public attribute path of the weight (`"kernel"`, `"gamma"`, ...), or the
            end of its variable path (`"query/kernel"`) for a sub-layer that is not a
            public attribute (`tfprune.layers.resolve`).
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


@dataclasses.dataclass
class Tensor:
    """Marks where the k-th input tensor of a call sits among its `args`/`kwargs`."""

    k: int


@dataclasses.dataclass
class Call:
    """One call of one layer or raw `keras.ops` operation, as a rule sees it.

    Attributes:
        layer: The layer (the inner layer of a `Prunable`) or the `keras.Operation`.
        ids: Channel ids of each input tensor's last axis, in call order.
        shapes: Shapes of the input tensors (`None` for unknown dimensions).
        out_shapes: Shapes of the call's output tensors.
        args: Positional arguments, input tensors replaced by `Tensor(k)` markers and
            constants (numbers, arrays, slices) as they were passed.
        kwargs: Keyword arguments, the same way.
        kind: Set by a rule to override its table kind for this call (e.g. a grouped
            convolution that is a depthwise one); `None` keeps the table's.
        moved: Per input tensor, `(axis, ids)` when its channels sit on a non-last axis
            (after a transpose moved them there), else `None`. A rule that follows them
            sets the entry to `None`; the channels of entries left are frozen.
        out_moved: Set by a rule: output index -> `(axis, ids)` for an output whose
            channels it moves to a non-last axis (negative `axis`).
    """

    layer: keras.Operation
    ids: list[np.ndarray]
    shapes: list[tuple]
    out_shapes: list[tuple]
    args: list
    kwargs: dict
    kind: str | None = None
    moved: list = dataclasses.field(default_factory=list)
    out_moved: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """`Type 'name'`, for reasons."""
        return f"{type(self.layer).__name__} '{self.layer.name}'"

    @property
    def out_shape(self) -> tuple:
        """Shape of the first output (`()` when unknown)."""
        return self.out_shapes[0] if self.out_shapes else ()

    def config(self) -> dict:
        """The operation's config (`get_config()`), `{}` if it has none."""
        try:
            return self.layer.get_config()
        except NotImplementedError:
            return {}


@dataclasses.dataclass
class Node:
    """One call of one layer after its rule ran: its kind, input and output channel ids."""

    layer: keras.Operation
    kind: str
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    shapes: list[tuple]
    call: Call

    @property
    def output(self) -> np.ndarray:
        """Channel ids of the first output."""
        return self.outputs[0]


def width(shape: tuple) -> int:
    """Size of the channel (last) axis of a shape; 1 when unknown (`None`) or scalar."""
    if not shape or shape[-1] is None:
        return 1
    return int(shape[-1])


def static_size(dims) -> int | None:
    """Product of dimensions, or None when one of them is unknown."""
    dims = list(dims)
    if any(d is None for d in dims):
        return None
    return math.prod(int(d) for d in dims)


class Graph:
    """Channel ids, their union-find, weight slices and frozen channels of one model.

    Rules use `new` (fresh channels of a producer), `union` (channels that must be removed
    together), `freeze` (channels that must stay, with the reason) and `record` (a weight
    axis that holds channels). `through_norms` says whether normalization layers pass the
    hidden width through (not exact; see `tfprune.graph.rules.hidden`).
    """

    def __init__(self, through_norms: bool = False):
        self.through_norms = through_norms
        self.parent: list[int] = []
        self.slices: list[tuple[keras.layers.Layer, str, int, np.ndarray, str]] = []
        self.frozen: dict[int, str] = {}
        self.nodes: list[Node] = []
        self.calls: dict[int, int] = {}
        self.origins: list[str] = []
        # id(last-axis ids of a tensor) -> (axis, ids) of channels moved to a non-last axis.
        self.placed: dict[int, tuple[int, np.ndarray]] = {}

    def fixed(self, n: int, origin: str) -> np.ndarray:
        """Ids of `n` channels that belong to no group, remembering where they come from.

        Args:
            n: Number of channels.
            origin: What they are (`"the model input 'img'"`), for the reasons of the
                groups merged with them.
        """
        self.origins.append(origin)
        return np.full(n, -1 - len(self.origins), np.int64)

    def origin(self, i: int) -> str:
        """What the fixed channel id `i` (negative) is."""
        k = -i - 2
        return self.origins[k] if 0 <= k < len(self.origins) else "no group"

    def moved(self, ids: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Where a transpose moved the channels of the tensor with last-axis ids `ids`.

        Returns `(axis, channel ids)`, or None when its channels are on its last axis.
        """
        return self.placed.get(id(ids))

    def channels(self, ids: np.ndarray) -> list[np.ndarray]:
        """Every channel id array a tensor carries: its last axis and a moved channel axis."""
        moved = self.moved(ids)
        return [ids] if moved is None else [ids, moved[1]]

    def new(self, n: int) -> np.ndarray:
        """Ids of `n` new channels."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        """Root of channel `i` in the union-find."""
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: np.ndarray, b: np.ndarray, where: str = "") -> None:
        """Ties channel `a[k]` to `b[k]`; a channel tied to a fixed one (-1) is frozen.

        Args:
            a: Channel ids.
            b: Channel ids of the same length.
            where: The node that merges them (`"Add 'add_3'"`), for the frozen reason.
        """
        for x, y in zip(a.tolist(), b.tolist()):
            if x < 0 or y < 0:
                by = f"{where} merges it" if where else "it is merged"
                reason = f"{by} with a channel of {self.origin(min(x, y))}"
                self.freeze(np.array([max(x, y)]), reason)
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        """Marks channels as unprunable (the first reason given is kept)."""
        for i in np.asarray(ids).tolist():
            if i >= 0:
                self.frozen.setdefault(i, reason)

    def record(self, layer, weight: str, axis: int, ids: np.ndarray, role: str) -> None:
        """Records that axis `axis` of `layer`'s weight `weight` holds channels `ids`.

        Raises:
            ValueError: If the weight's axis does not have one position per channel.
        """
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
