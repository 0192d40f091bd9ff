"""Granularities: which weights are pruned together.

A granularity turns per-weight importance scores into scores of *units* (single weights,
blocks, channels), and a keep/prune decision per unit back into a mask. Four are built in:

- `"weight"`: every weight is a unit (unstructured sparsity).
- `"m:n"`, e.g. `"2:4"`: in every group of `n` consecutive weights along the input-channel
  axis, exactly `m` are zero (the 2:4 layout of NVIDIA sparse tensor cores).
- `(r, c)`: blocks of `r` x `c` in the weight seen as a 2-D matrix (all input axes x all
  output axes, as a convolution runs as a matrix product).
- `"channel"`: output channels; the mask has one entry per channel and also covers the bias.
"""

from __future__ import annotations

import abc
import math
import re

import numpy as np

from tfprune.allocation import count, select_keep
from tfprune.layers import WeightSpec

__all__ = ["Block", "Channel", "Granularity", "NofM", "Weight", "get"]


def _axes(spec_axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(a % ndim for a in spec_axes)


class Granularity(abc.ABC):
    """Base class: maps weight scores to unit scores and unit decisions to masks."""

    #: Whether units of different tensors may be ranked against each other.
    supports_global = True

    def mask_shape(self, shape: tuple[int, ...], spec: WeightSpec) -> tuple[int, ...]:
        """Shape of the mask variable for a weight of `shape`."""
        del spec
        return tuple(shape)

    def check(self, shape: tuple[int, ...], spec: WeightSpec, where: str) -> None:  # noqa: B027
        """Raises `ValueError` if this granularity cannot apply to the weight."""

    @abc.abstractmethod
    def to_units(self, values: np.ndarray, spec: WeightSpec) -> np.ndarray:
        """Sums per-weight `values` into a 1-D array with one entry per unit."""

    @abc.abstractmethod
    def from_units(self, keep: np.ndarray, shape: tuple[int, ...], spec: WeightSpec) -> np.ndarray:
        """Turns a 1-D keep decision per unit into a boolean mask of `mask_shape`."""

    def num_units(self, shape: tuple[int, ...], spec: WeightSpec) -> int:
        """Number of units of a weight of `shape`."""
        return self.to_units(np.zeros(shape, np.float32), spec).size

    def keep_mask(
        self, scores: np.ndarray, prev: np.ndarray, sparsity: float, spec: WeightSpec
    ) -> np.ndarray:
        """Mask that prunes the lowest-scored `round(sparsity * units)` units.

        Args:
            scores: Per-weight importance, the weight's shape.
            prev: The current boolean mask (`mask_shape`); ties are broken in favour of
                pruning units that are already pruned, then by position.
            sparsity: Target fraction of pruned units.
            spec: The weight's registry spec.

        Returns:
            Boolean mask, `True` where weights are kept.
        """
        units = self.to_units(scores, spec)
        prev_units = self.to_units(self.expand(prev, scores.shape, spec), spec) > 0
        keep = select_keep(units, prev_units, units.size - count(sparsity, units.size))
        return self.from_units(keep, scores.shape, spec)

    def expand(self, mask: np.ndarray, shape: tuple[int, ...], spec: WeightSpec) -> np.ndarray:
        """Broadcasts a mask of `mask_shape` to the weight's full shape."""
        del spec
        return np.broadcast_to(mask, shape)

    @abc.abstractmethod
    def get_config(self) -> str | list[int]:
        """The value to pass back to `get` (what `wrap(granularity=...)` received)."""


class Weight(Granularity):
    """Unstructured: every weight is its own unit."""

    def to_units(self, values, spec):
        return np.asarray(values, np.float64).reshape(-1)

    def from_units(self, keep, shape, spec):
        return keep.reshape(shape)

    def get_config(self):
        return "weight"


class NofM(Granularity):
    """`m` zeros in every group of `n` consecutive weights along the input-channel axis.

    The target sparsity of a schedule only decides *when* the pattern is applied (any
    target above 0); the fraction pruned is always `m / n`.
    """

    supports_global = False

    def __init__(self, m: int, n: int):
        self.m, self.n = m, n

    def _axis(self, spec: WeightSpec, ndim: int) -> int:
        return _axes(spec.in_axes, ndim)[-1]

    def check(self, shape, spec, where):
        if not spec.in_axes:
            raise ValueError(
                f"Granularity '{self.m}:{self.n}' needs an input-channel axis, but {where} "
                "has none (a depthwise kernel). Exclude that layer with "
                "`exclude=[...]` or use granularity='weight'."
            )
        size = shape[self._axis(spec, len(shape))]
        if size % self.n:
            raise ValueError(
                f"Granularity '{self.m}:{self.n}' needs n={self.n} to divide the "
                f"input-channel axis of {where}, which has size {size}. Exclude that layer "
                "with `exclude=[...]` or choose an n that divides it."
            )

    def _grouped(self, values: np.ndarray, spec: WeightSpec) -> np.ndarray:
        moved = np.moveaxis(values, self._axis(spec, values.ndim), -1)
        return moved.reshape(-1, self.n)

    def to_units(self, values, spec):
        return np.asarray(values, np.float64).reshape(-1)

    def from_units(self, keep, shape, spec):
        return keep.reshape(shape)

    def keep_mask(self, scores, prev, sparsity, spec):
        if sparsity <= 0:
            return np.ones(scores.shape, bool)
        groups = self._grouped(np.asarray(scores, np.float64), spec)
        prev_groups = self._grouped(np.asarray(prev, bool), spec)
        # Lowest m scores of each group; ties prune already-pruned weights first, then the
        # earlier position (lexsort sorts by the last key first).
        position = np.broadcast_to(np.arange(self.n), groups.shape)
        order = np.lexsort((position, prev_groups, groups), axis=-1)
        keep = np.ones(groups.shape, bool)
        np.put_along_axis(keep, order[:, : self.m], False, axis=-1)
        axis = self._axis(spec, scores.ndim)
        moved_shape = np.moveaxis(np.empty(scores.shape, np.int8), axis, -1).shape
        return np.moveaxis(keep.reshape(moved_shape), -1, axis)

    def get_config(self):
        return f"{self.m}:{self.n}"


class Block(Granularity):
    """Blocks of `rows` x `cols` in the weight's 2-D matrix view (inputs x outputs)."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols

    def _matrix_shape(self, shape: tuple[int, ...], spec: WeightSpec) -> tuple[int, int]:
        out = _axes(spec.out_axes, len(shape))
        cols = math.prod(shape[a] for a in out)
        return math.prod(shape) // cols, cols

    def _to_matrix(self, values: np.ndarray, spec: WeightSpec) -> np.ndarray:
        out = _axes(spec.out_axes, values.ndim)
        rest = [a for a in range(values.ndim) if a not in out]
        return np.transpose(values, rest + list(out)).reshape(
            self._matrix_shape(values.shape, spec)
        )

    def check(self, shape, spec, where):
        rows, cols = self._matrix_shape(shape, spec)
        if not spec.out_axes or rows % self.rows or cols % self.cols:
            raise ValueError(
                f"Block granularity ({self.rows}, {self.cols}) must divide the "
                f"{rows}x{cols} matrix of {where}. Exclude that layer with `exclude=[...]` "
                "or choose a block shape that divides it."
            )

    def to_units(self, values, spec):
        m = self._to_matrix(np.asarray(values, np.float64), spec)
        r, c = m.shape
        blocks = m.reshape(r // self.rows, self.rows, c // self.cols, self.cols)
        return blocks.sum(axis=(1, 3)).reshape(-1)

    def from_units(self, keep, shape, spec):
        r, c = self._matrix_shape(shape, spec)
        grid = keep.reshape(r // self.rows, c // self.cols)
        m = np.repeat(np.repeat(grid, self.rows, axis=0), self.cols, axis=1)
        out = _axes(spec.out_axes, len(shape))
        rest = [a for a in range(len(shape)) if a not in out]
        permuted = [shape[a] for a in rest + list(out)]
        return np.transpose(m.reshape(permuted), np.argsort(rest + list(out)))

    def get_config(self):
        return [self.rows, self.cols]


class Channel(Granularity):
    """Output channels: one mask entry per channel, applied to the kernel and the bias."""

    def mask_shape(self, shape, spec):
        return tuple(shape[a] for a in _axes(spec.out_axes, len(shape)))

    def check(self, shape, spec, where):
        if not spec.out_axes:
            raise ValueError(
                f"Granularity 'channel' needs an output-channel axis, but {where} has none. "
                "Exclude that layer with `exclude=[...]`."
            )

    def to_units(self, values, spec):
        values = np.asarray(values, np.float64)
        out = _axes(spec.out_axes, values.ndim)
        rest = tuple(a for a in range(values.ndim) if a not in out)
        return values.sum(axis=rest).reshape(-1) if rest else values.reshape(-1)

    def from_units(self, keep, shape, spec):
        return keep.reshape(self.mask_shape(shape, spec))

    def expand(self, mask, shape, spec):
        out = _axes(spec.out_axes, len(shape))
        view = [shape[a] if a in out else 1 for a in range(len(shape))]
        return np.broadcast_to(np.reshape(mask, view), shape)

    def get_config(self):
        return "channel"


def get(granularity: str | tuple[int, int] | list[int] | Granularity) -> Granularity:
    """Returns the `Granularity` for a user-facing value.

    Args:
        granularity: `"weight"`, `"channel"`, an `"m:n"` string such as `"2:4"`, a
            `(rows, cols)` block shape, or a `Granularity` instance.

    Returns:
        The granularity object.

    Raises:
        ValueError: For an unknown string, `m >= n`, or a non-positive block shape.
        TypeError: For a value of another type.
    """
    if isinstance(granularity, Granularity):
        return granularity
    if isinstance(granularity, str):
        if granularity == "weight":
            return Weight()
        if granularity == "channel":
            return Channel()
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", granularity)
        if match:
            m, n = int(match.group(1)), int(match.group(2))
            if not 0 < m < n:
                raise ValueError(
                    "Expected `granularity` 'm:n' with 0 < m < n (m zeros in every n "
                    f"weights). Received: granularity={granularity!r}"
                )
            return NofM(m, n)
        raise ValueError(
            "Unknown `granularity`. Expected 'weight', 'channel', an 'm:n' string such as "
            f"'2:4', or a (rows, cols) block shape. Received: granularity={granularity!r}"
        )
    if (
        isinstance(granularity, (tuple, list))
        and len(granularity) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in granularity)
    ):
        rows, cols = granularity
        if rows < 1 or cols < 1:
            raise ValueError(
                "Expected a block `granularity` (rows, cols) of positive integers. "
                f"Received: granularity={granularity!r}"
            )
        return Block(rows, cols)
    raise TypeError(
        "Expected `granularity` to be a string ('weight', 'channel', 'm:n') or a "
        f"(rows, cols) tuple of integers. Received: granularity={granularity!r}"
    )
