"""Per-layer report: parameters, nonzeros, sparsity and MACs per example."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
        macs: Multiply-accumulates per example, or `None` when the layer's input shape is
            unknown (layers of subclassed models).
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
    if not isinstance(tensors, (list, tuple)):
        tensors = [tensors]
    return [tuple(t.shape) for t in tensors]


def _layer_stats(layer: keras.layers.Layer) -> LayerStats:
    inner = layer.layer if isinstance(layer, Prunable) else layer
    weights = layer.masked_weights() if isinstance(layer, Prunable) else layer.get_weights()
    type_name = type(inner).__name__
    if isinstance(layer, Prunable):
        type_name = f"Prunable({type_name})"
    try:
        macs = registry.macs(inner, _shapes(layer.input), _shapes(layer.output)[0])
    except (AttributeError, ValueError):
        macs = None
    return LayerStats(
        name=layer.name,
        type=type_name,
        params=int(sum(w.size for w in weights)),
        nonzeros=int(sum(np.count_nonzero(w) for w in weights)),
        macs=macs,
        gates=layer.open_gates() if isinstance(layer, Prunable) else None,
    )


def summary(
    model: keras.layers.Layer, print_fn: Callable[[str], None] | None = print
) -> ModelSummary:
    """Prints and returns per-layer parameters, nonzeros, sparsity and MACs per example.

    Works on wrapped, stripped, shrunk and plain models; nested models are entered.
    MACs count every multiply of the layer as it runs (zeros included), which is what a
    dense device kernel executes.

    Args:
        model: A built Keras model or layer.
        print_fn: Function that receives the table, or `None` to print nothing.

    Returns:
        A `ModelSummary` with one `LayerStats` per layer that has weights.

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
    layers = [model] if not isinstance(model, keras.Model) else registry.iter_layers(model)
    rows = [
        _layer_stats(layer)
        for layer in layers
        if not isinstance(layer, keras.Model) and layer.weights
    ]
    result = ModelSummary(rows)
    if print_fn is not None:
        print_fn(str(result))
    return result
