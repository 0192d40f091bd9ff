"""Per-layer report: parameters, nonzeros, sparsity and MACs per example."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import keras
import numpy as np

from tfprune import layers as registry
from tfprune.wrapper import Prunable

__all__ = ["LayerStats", "ModelSummary", "summary"]


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Statistics of one layer.

    Attributes:
        name: Layer name.
        type: Layer class name (`Prunable(Dense)` for a wrapped layer).
        params: Number of weights (masks and pruning state not counted).
        nonzeros: Number of weights that are not zero after masking.
        macs: Multiply-accumulates per example of the layer's first call, or `None` when
            they are unknown: a shape other than the batch axis is unknown (layers of
            subclassed models, sequence length `None`), or the layer is not in
            `tfprune.layers` and holds matrices (e.g. a keras-hub `TransformerEncoder`).
        gates: `(open, total)` learned gates (`tfprune.gates`) of a wrapped layer, or
            `None` for a layer without gates.
    """

    name: str
    type: str
    params: int
    nonzeros: int
    macs: int | None
    gates: tuple[int, int] | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of weights that are zero."""
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """A model's per-layer statistics and their totals."""

    rows: list[LayerStats]

    @property
    def params(self) -> int:
        """Total weights."""
        return sum(r.params for r in self.rows)

    @property
    def nonzeros(self) -> int:
        """Total nonzero weights."""
        return sum(r.nonzeros for r in self.rows)

    @property
    def macs(self) -> int:
        """Total MACs per example (layers with unknown MACs count as 0)."""
        return sum(r.macs or 0 for r in self.rows)

    @property
    def sparsity(self) -> float:
        """Fraction of all weights that are zero."""
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def __getitem__(self, name: str) -> LayerStats:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"No layer named {name!r} in the summary.")

    @property
    def gates(self) -> tuple[int, int] | None:
        """`(open, total)` learned gates over all layers, or `None` if there are none."""
        counts = [r.gates for r in self.rows if r.gates is not None]
        if not counts:
            return None
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def __str__(self) -> str:
        header = ("layer", "type", "params", "nonzeros", "sparsity", "MACs")
        lines = [
            (
                r.name,
                r.type,
                f"{r.params:,}",
                f"{r.nonzeros:,}",
                f"{r.sparsity:.1%}",
                "?" if r.macs is None else f"{r.macs:,}",
            )
            for r in self.rows
        ]
        lines.append(
            (
                "total",
                "",
                f"{self.params:,}",
                f"{self.nonzeros:,}",
                f"{self.sparsity:.1%}",
                f"{self.macs:,}",
            )
        )
        if self.gates is not None:
            header = (*header, "gates open")
            cells = [r.gates for r in self.rows] + [self.gates]
            lines = [
                (*line, "" if g is None else f"{g[0]:,}/{g[1]:,}") for line, g in zip(lines, cells)
            ]
        widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]

        def fmt(row):
            cells = [
                str(c).ljust(w) if i < 2 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells).rstrip()

        rule = "-" * len(fmt(header))
        return "\n".join([fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])


def _shapes(tensors) -> list[tuple]:
    return [tuple(t.shape) for t in keras.tree.flatten(tensors)]


def _known(shapes: list[tuple]) -> bool:
    """Whether every dimension but the batch axis is known."""
    return all(d is not None for shape in shapes for d in shape[1:])


def _einsum_macs(subscripts: str, shapes: list[tuple]) -> int | None:
    """Product of the sizes of all einsum letters, the batch letter (None at axis 0) excluded."""
    operands = subscripts.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int | None] = {}
    batch = set()
    for letters, shape in zip(operands, shapes):
        if "." in letters or len(letters) != len(shape):
            return None
        for axis, (letter, dim) in enumerate(zip(letters, shape)):
            if dim is None and axis == 0:
                batch.add(letter)
            elif dim is not None:
                sizes[letter] = int(dim)
    letters = set("".join(operands)) - batch
    if any(sizes.get(letter) is None for letter in letters):
        return None
    return math.prod(sizes[letter] for letter in letters)


def _op_macs(op: keras.Operation, inputs: list[tuple], output: tuple) -> int | None:
    """MACs per example of a raw `keras.ops` node: matmul and einsum count, others are 0."""
    name = type(op).__name__
    if name not in ("Matmul", "Einsum"):
        return 0
    if name == "Einsum":
        return _einsum_macs(op.subscripts, inputs)
    if not _known([*inputs, output]) or len(inputs[0]) < 2:
        return None
    return math.prod(int(d) for d in output[1:]) * int(inputs[0][-1])


def _layer_macs(layer: keras.layers.Layer, inputs: list[tuple], output: tuple) -> int | None:
    if not _known([*inputs, output]):
        return None
    if registry.lookup(layer) is None and any(len(w.shape) > 1 for w in layer.weights):
        return None  # matrix work of a layer the registry does not know
    return registry.macs(layer, inputs, output)


def _node_shapes(op: keras.Operation) -> tuple[list[tuple], tuple] | None:
    """Input shapes and the first output shape of the op's first call, or None if uncalled."""
    try:
        inputs, outputs = _shapes(op.input), _shapes(op.output)
    except (AttributeError, ValueError):
        return None
    return inputs, outputs[0] if outputs else ()


def _op_stats(op: keras.Operation) -> LayerStats:
    shapes = _node_shapes(op)
    return LayerStats(
        name=op.name,
        type=f"ops.{type(op).__name__}",
        params=0,
        nonzeros=0,
        macs=None if shapes is None else _op_macs(op, *shapes),
    )


def _layer_stats(layer: keras.layers.Layer) -> LayerStats:
    inner = layer.layer if isinstance(layer, Prunable) else layer
    weights = layer.masked_weights() if isinstance(layer, Prunable) else layer.get_weights()
    type_name = type(inner).__name__
    if isinstance(layer, Prunable):
        type_name = f"Prunable({type_name})"
    shapes = _node_shapes(layer)
    return LayerStats(
        name=layer.name,
        type=type_name,
        params=int(sum(w.size for w in weights)),
        nonzeros=int(sum(np.count_nonzero(w) for w in weights)),
        macs=None if shapes is None else _layer_macs(inner, *shapes),
        gates=layer.open_gates() if isinstance(layer, Prunable) else None,
    )


def operations(model: keras.Model) -> Iterator[keras.Operation]:
    """Layers and raw `keras.ops` nodes of a model in graph order, entering nested models."""
    seen: set[int] = set()

    def walk(m):
        ops = getattr(m, "operations", None)  # functional models: layers and raw ops
        if ops is None:
            ops = m.layers
        for op in ops:
            if id(op) in seen:
                continue
            seen.add(id(op))
            if isinstance(op, keras.Model):
                yield from walk(op)
            else:
                yield op

    return walk(model)


def summary(
    model: keras.layers.Layer, print_fn: Callable[[str], None] | None = print
) -> ModelSummary:
    """Prints and returns per-layer parameters, nonzeros, sparsity and MACs per example.

    Works on wrapped, stripped, shrunk and plain models, with any input structure (dicts,
    several inputs, `None` sequence lengths); nested models are entered. Raw `keras.ops`
    nodes of functional models get a row too (type `ops.<Name>`, no weights; `matmul` and
    `einsum` count their MACs, other ops 0). MACs count every multiply of the layer as it
    runs (zeros included), which is what a dense device kernel executes.

    Args:
        model: A built Keras model or layer.
        print_fn: Function that receives the table, or `None` to print nothing.

    Returns:
        A `ModelSummary` with one `LayerStats` per layer that has weights and per raw op.

    Raises:
        TypeError: If `model` is not a Keras layer.
        ValueError: If `model` is not built.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"tfprune.summary expects a Keras model or layer. Received: {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Call it on data or give it an Input first."
        )
    if not isinstance(model, keras.Model):
        rows = [_layer_stats(model)]
    else:
        rows = [
            _layer_stats(op) if isinstance(op, keras.layers.Layer) else _op_stats(op)
            for op in operations(model)
            if not isinstance(op, keras.layers.Layer) or op.weights
        ]
    result = ModelSummary(rows)
    if print_fn is not None:
        print_fn(str(result))
    return result
