"""Matrix views: how each kernel of a layer acts on its inputs as a matrix product.

One-shot methods need, for every pruned kernel, the kernel as `(groups, rows, cols)`
matrices (see `tfprune.oneshot.solvers`) and the calibration inputs as the matching
`(groups, samples, cols)` columns, so that the layer's output is `x @ w[g].T`:

- `Dense`, `EinsumDense`: the input with its contracted axes flattened last.
- `Conv1D/2D/3D`: im2col patches (window positions, then input channels: the kernel's own
  axis order), one row per output position.
- `DepthwiseConv1D/2D`: the same patches, one group per input channel.
- `SeparableConv1D/2D`: the depthwise half as above, then the pointwise half on the
  depthwise output (computed with the already-pruned depthwise kernel).

The views are those of the layer that owns the kernel: the projections of a
`MultiHeadAttention` (registry path `query_dense.kernel`) or the sublayers of a registered
block are `EinsumDense` or `Dense` views on the inputs of that sublayer, which
`tfprune.oneshot` records while the model runs.

The table is keyed by exact layer class, like `tfprune.layers`; a class without an entry is
left dense by `tfprune.oneshot`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import keras
import numpy as np

from tfprune import layers as registry

__all__ = ["KernelView", "patches", "views"]


@dataclasses.dataclass(frozen=True)
class KernelView:
    """One prunable kernel of a layer as a stack of matrices.

    Args:
        path: The kernel's attribute on its layer (`"kernel"`, `"pointwise_kernel"`).
        group_axes: Kernel axes that index independent groups (depthwise input channels).
        out_axes: Kernel axes of the rows (output channels).
        in_axes: Kernel axes of the columns, in kernel order (window, then input channels).
        columns: Function from the captured batch (a list holding the NumPy array of the
            layer's input) to the `(groups, samples, cols)` columns it multiplies with the
            kernel.
    """

    path: str
    group_axes: tuple[int, ...]
    out_axes: tuple[int, ...]
    in_axes: tuple[int, ...]
    columns: Callable[[list[np.ndarray]], np.ndarray]

    @property
    def name(self) -> str:
        """The kernel's mask name inside a `Prunable`."""
        return self.path.replace(".", "_")

    def _order(self) -> list[int]:
        return [*self.group_axes, *self.out_axes, *self.in_axes]

    def to_matrix(self, kernel: np.ndarray) -> np.ndarray:
        """`kernel` as `(groups, rows, cols)`."""
        shape = kernel.shape
        sizes = [math.prod(shape[a] for a in axes) for axes in self._axis_groups()]
        return np.transpose(kernel, self._order()).reshape(sizes)

    def from_matrix(self, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Inverse of `to_matrix` for a kernel of `shape`."""
        order = self._order()
        permuted = matrix.reshape([shape[a] for a in order])
        return np.transpose(permuted, np.argsort(order))

    def _axis_groups(self) -> tuple[tuple[int, ...], ...]:
        return self.group_axes, self.out_axes, self.in_axes


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def patches(
    x: np.ndarray,
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    dilation_rate: tuple[int, ...],
    padding: str,
) -> np.ndarray:
    """im2col of a channels-last batch, as a convolution of `kernel_size` reads it.

    Args:
        x: `(batch, *spatial, channels)`.
        kernel_size: Window size per spatial axis.
        strides: Stride per spatial axis.
        dilation_rate: Dilation per spatial axis.
        padding: `"valid"`, `"same"` (TensorFlow's split: the extra pad after) or
            `"causal"` (1-D, all padding before).

    Returns:
        `(batch, *output_spatial, *kernel_size, channels)`: the window of every output
        position, in the axis order of a Keras convolution kernel.
    """
    nd = len(kernel_size)
    spatial = x.shape[1 : 1 + nd]
    if padding == "same":
        pads = [_same_pads(*a) for a in zip(spatial, kernel_size, strides, dilation_rate)]
    elif padding == "causal":
        pads = [((kernel_size[0] - 1) * dilation_rate[0], 0)]
    else:
        pads = [(0, 0)] * nd
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    spans = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation_rate)]
    view = np.lib.stride_tricks.sliding_window_view(x, spans, axis=tuple(range(1, nd + 1)))
    # view: (batch, *positions, channels, *spans); keep strided positions, dilated taps.
    index = (
        slice(None),
        *(slice(None, None, s) for s in strides),
        slice(None),
        *(slice(None, None, d) for d in dilation_rate),
    )
    view = view[index]
    return np.moveaxis(view, 1 + nd, -1)


def _conv_patches(layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    if layer.data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    return patches(x, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding)


def _conv_views(layer: keras.layers.Layer) -> tuple[KernelView, ...]:
    if layer.groups != 1:
        return ()
    nd = len(layer.kernel_size)

    def columns(xs):
        p = _conv_patches(layer, xs[0])
        return p.reshape(1, -1, math.prod(p.shape[1 + nd :]))

    return (KernelView("kernel", (), (nd + 1,), tuple(range(nd + 1)), columns),)


def _depthwise_view(layer: keras.layers.Layer, path: str) -> KernelView:
    nd = len(layer.kernel_size)

    def columns(xs):
        p = _conv_patches(layer, xs[0])  # (batch, *positions, *window, channels)
        p = p.reshape(-1, math.prod(layer.kernel_size), p.shape[-1])
        return np.transpose(p, (2, 0, 1))

    return KernelView(path, (nd,), (nd + 1,), tuple(range(nd)), columns)


def _separable_views(layer: keras.layers.Layer) -> tuple[KernelView, ...]:
    nd = len(layer.kernel_size)

    def pointwise_columns(xs):
        depthwise = keras.ops.depthwise_conv(
            xs[0],
            layer.depthwise_kernel,
            strides=layer.strides,
            padding=layer.padding,
            data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )
        y = keras.ops.convert_to_numpy(depthwise)
        if layer.data_format == "channels_first":
            y = np.moveaxis(y, 1, -1)
        return y.reshape(1, -1, y.shape[-1])

    pointwise = KernelView(
        "pointwise_kernel", (), (nd + 1,), tuple(range(nd + 1)), pointwise_columns
    )
    return (_depthwise_view(layer, "depthwise_kernel"), pointwise)


def _einsum_views(layer: keras.layers.Layer) -> tuple[KernelView, ...]:
    """The kernel of an EinsumDense; none if it shares an axis with the input and output."""
    (spec,) = registry.lookup(layer).prunable_specs(layer)
    lhs, kernel, _ = re.split(r"\s*,\s*|\s*->\s*", layer.equation.strip())
    if len(spec.in_axes) + len(spec.out_axes) != len(kernel):
        return ()  # a kernel axis shared with the input and output: not one matrix product
    letters = lhs.replace("...", "")
    contracted = [kernel[a] for a in spec.in_axes]

    def columns(xs):
        x = xs[0]
        # The named axes of the input are its last ones when the equation has an ellipsis.
        offset = x.ndim - len(letters)
        in_pos = [offset + letters.index(c) for c in contracted]
        rest = [a for a in range(x.ndim) if a not in in_pos]
        moved = np.transpose(x, rest + in_pos)
        return moved.reshape(1, -1, math.prod(x.shape[a] for a in in_pos))

    return (KernelView("kernel", (), spec.out_axes, spec.in_axes, columns),)


_L = keras.layers
_Views = Callable[[keras.layers.Layer], tuple[KernelView, ...]]
_DENSE = KernelView("kernel", (), (1,), (0,), lambda xs: xs[0].reshape(1, -1, xs[0].shape[-1]))
_VIEWS: dict[type, _Views] = {
    _L.Dense: lambda layer: (_DENSE,),
    _L.EinsumDense: _einsum_views,
    _L.Conv1D: _conv_views,
    _L.Conv2D: _conv_views,
    _L.Conv3D: _conv_views,
    _L.DepthwiseConv1D: lambda layer: (_depthwise_view(layer, "kernel"),),
    _L.DepthwiseConv2D: lambda layer: (_depthwise_view(layer, "kernel"),),
    _L.SeparableConv1D: _separable_views,
    _L.SeparableConv2D: _separable_views,
}


def views(layer: keras.layers.Layer) -> tuple[KernelView, ...]:
    """The matrix views of `layer`'s prunable kernels, in the order to prune them.

    Args:
        layer: A built Keras layer (not a wrapper): the owner of the kernels.

    Returns:
        The views; empty when one-shot pruning has no rule for the layer (its type is not
        in the table, a grouped convolution, an einsum whose kernel shares an axis with
        its input and output).
    """
    make = _VIEWS.get(type(layer))
    return () if make is None else make(layer)
