"""Rewrites before conversion: layers that LiteRT runs slowly become equal layers it runs fast.

`tfprune.export.tflite` calls `rewrite` on the model it converts. Each entry of `REWRITES`
is a pattern (a predicate on a layer) and a replacement (a function that builds the new
layer from the old one, weights included); the replacement computes the same outputs.

- A depthwise convolution (`DepthwiseConv2D`, or `Conv2D` with `groups == input
  channels`) whose kernel is larger than 5 on a side, stride 1 -> a sum of depthwise
  convolutions with kernels of at most 5x5 over shifted windows of the padded input
  (`SplitDepthwise`). LiteRT's int8 and float depthwise kernels are fast up to 5x5 and
  hundreds of times slower beyond (ConvNeXt's 7x7; `benchmarks/RESULTS.md`, "Export
  rewrites").
- `LayerNormalization` over the last axis -> the same formula written as
  `(x - mean) * rsqrt(var + eps) * gamma + beta` (`CenteredLayerNormalization`). Keras
  computes `x * inv + (beta - mean * inv)`, whose `NEG` op has no int8 kernel in the
  converter, so every LayerNormalization left a float `NEG` in an int8 file (ConvNeXt).
- `Conv2D` with `groups == input channels` (filters a multiple of it) -> `DepthwiseConv2D`
  with `depth_multiplier = filters / groups`. LiteRT has no fast kernel for a grouped
  `CONV_2D`, and Keras's ConvNeXt writes its depthwise convolutions this way
  (`docs/guides/real-models.md` has the latency before and after).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import keras
import numpy as np

__all__ = ["REWRITES", "CenteredLayerNormalization", "Rewrite", "SplitDepthwise", "rewrite"]


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """One rewrite: the layers it applies to and how to build their replacement.

    Attributes:
        name: Short description, e.g. `"grouped Conv2D -> DepthwiseConv2D"`.
        matches: Predicate `layer -> bool`.
        replace: Function `layer -> new built layer with the same name and outputs`.
    """

    name: str
    matches: Callable[[keras.layers.Layer], bool]
    replace: Callable[[keras.layers.Layer], keras.layers.Layer]


def _is_depthwise_conv2d(layer: keras.layers.Layer) -> bool:
    if type(layer) is not keras.layers.Conv2D or layer.groups == 1 or not layer.built:
        return False
    in_channels = layer.kernel.shape[-2] * layer.groups
    return layer.groups == in_channels and layer.filters % in_channels == 0


def _to_depthwise(layer: keras.layers.Conv2D) -> keras.layers.DepthwiseConv2D:
    channels = layer.groups
    new = keras.layers.DepthwiseConv2D(
        kernel_size=layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        depth_multiplier=layer.filters // channels,
        data_format=layer.data_format,
        dilation_rate=layer.dilation_rate,
        activation=layer.activation,
        use_bias=layer.use_bias,
        dtype=layer.dtype_policy,
        name=layer.name,
    )
    shape = (None, None, None, channels)
    if layer.data_format == "channels_first":
        shape = (None, channels, None, None)
    new.build(shape)
    # Output channel c * m + j of both reads input channel c only, so the grouped kernel
    # (kh, kw, 1, C * m) is the depthwise kernel (kh, kw, C, m) in the same memory order.
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    kernel = kernel.reshape(*kernel.shape[:2], channels, layer.filters // channels)
    new.set_weights([kernel] + ([keras.ops.convert_to_numpy(layer.bias)] if layer.use_bias else []))
    return new


_LARGEST = 5  # largest depthwise kernel side LiteRT runs fast


def _depthwise_kernel(layer) -> np.ndarray:
    """The `(kh, kw, channels, multiplier)` kernel of a depthwise or grouped-depthwise conv."""
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return kernel
    return kernel.reshape(*kernel.shape[:2], layer.groups, layer.filters // layer.groups)


def _is_large_depthwise(layer: keras.layers.Layer) -> bool:
    if type(layer) is keras.layers.Conv2D:
        if not _is_depthwise_conv2d(layer):
            return False
    elif type(layer) is not keras.layers.DepthwiseConv2D or not layer.built:
        return False
    return (
        max(layer.kernel_size) > _LARGEST
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.data_format == "channels_last"
        and layer.padding in ("same", "valid")
    )


def _cuts(size: int, n: int | None, before: int, after: int) -> list[tuple[int, int]]:
    """`(start, length)` of near-equal parts of a kernel side `size`, each at most `_LARGEST`.

    With `n` input positions (None: unknown) padded by `before` and `after`, a part whose
    kernel rows only ever meet padding adds zeros and is left out (LiteRT's XNNPACK
    delegate refuses such pieces, e.g. on ConvNeXt's 1x1 last stage at 32 px).
    """
    parts = np.array_split(np.arange(size), math.ceil(size / _LARGEST))
    cuts = [(int(p[0]), len(p)) for p in parts]
    if n is None:
        return cuts
    out = n + before + after - size + 1
    # Part rows r .. r + a - 1 read padded rows r .. out + r + a - 2; the input is rows
    # before .. before + n - 1 of the padded tensor.
    return [(r, a) for r, a in cuts if r <= before + n - 1 and out + r + a - 2 >= before]


class SplitDepthwise(keras.layers.Layer):
    """A stride-1 depthwise convolution as a sum of depthwise convolutions of at most 5x5.

    With the input padded as the original layer pads it, output pixel `(i, j)` is
    `sum_{u, v} x[i + u, j + v] * K[u, v]`; the kernel's rows and columns are cut into
    parts of at most 5, and the part `K[r:r+a, c:c+b]` is a 'valid' depthwise convolution
    of the window of the padded input that starts at `(r, c)`. The sum, plus the bias and
    the activation, is the original output (up to float rounding). Built for export only
    (`rewrite`): it holds the pieces' weights and has no config of its own.

    Args:
        layer: The `DepthwiseConv2D`, or `Conv2D` with `groups == input channels`, to
            split (built, stride 1, channels_last).
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(name=layer.name, dtype=layer.dtype_policy, **kwargs)
        kernel = _depthwise_kernel(layer)
        kh, kw, channels, multiplier = kernel.shape
        self.kernel_shape = (kh, kw)
        pad = ((0, 0), (0, 0))
        if layer.padding == "same":
            pad = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
        self.pad = keras.layers.ZeroPadding2D(pad, dtype=layer.dtype_policy)
        height, width = tuple(layer.input.shape)[1:3]
        self.pieces = []
        for r, a in _cuts(kh, height, *pad[0]):
            for c, b in _cuts(kw, width, *pad[1]):
                conv = keras.layers.DepthwiseConv2D(
                    (a, b), depth_multiplier=multiplier, use_bias=False, dtype=layer.dtype_policy
                )
                conv.build((None, None, None, channels))
                conv.set_weights([kernel[r : r + a, c : c + b]])
                self.pieces.append(((r, a, c, b), conv))
        self.bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        self.activation = layer.activation

    def build(self, input_shape):
        self.pad.build(input_shape)  # the pieces were built with their weights

    def call(self, x):
        x = self.pad(x)
        kh, kw = self.kernel_shape
        out = None
        for (r, a, c, b), conv in self.pieces:
            # Rows r .. r + a - 1 of the kernel read rows r .. end - (kh - r - a) of x.
            y = conv(x[:, r : (r + a - kh) or None, c : (c + b - kw) or None, :])
            out = y if out is None else out + y
        if self.bias is not None:
            out = out + self.bias
        return self.activation(out)


def _split_depthwise(layer: keras.layers.Layer) -> SplitDepthwise:
    new = SplitDepthwise(layer)
    new.build((None, None, None, _depthwise_kernel(layer).shape[2]))
    return new


def _is_last_axis_layer_norm(layer: keras.layers.Layer) -> bool:
    if type(layer) is not keras.layers.LayerNormalization or not layer.built:
        return False
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.input.shape)
    return [int(a) % rank for a in axes] == [rank - 1] and not layer.rms_scaling


class CenteredLayerNormalization(keras.layers.Layer):
    """LayerNormalization over the last axis without a negation, for int8 conversion.

    `y = (x - mean) * rsqrt(var + epsilon) * gamma + beta`, with `mean` and `var` over the
    last axis: the formula of `keras.layers.LayerNormalization`, in ops that LiteRT's int8
    converter quantizes (`SUB` instead of Keras's `NEG`). Built for export only
    (`rewrite`).

    Args:
        layer: The `LayerNormalization` to replace (built, normalizing the last axis).
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(name=layer.name, dtype=layer.dtype_policy, **kwargs)
        self.epsilon = layer.epsilon
        self.gamma = keras.ops.convert_to_numpy(layer.gamma) if layer.scale else None
        self.beta = keras.ops.convert_to_numpy(layer.beta) if layer.center else None

    def call(self, x):
        ops = keras.ops
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(centered * centered, axis=-1, keepdims=True)
        y = centered * ops.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y


def _centered_layer_norm(layer: keras.layers.Layer) -> CenteredLayerNormalization:
    new = CenteredLayerNormalization(layer)
    new.build(layer.input.shape)
    return new


REWRITES: tuple[Rewrite, ...] = (
    Rewrite("depthwise kernel > 5x5 -> sum of <= 5x5", _is_large_depthwise, _split_depthwise),
    Rewrite(
        "LayerNormalization -> centered, no NEG", _is_last_axis_layer_norm, _centered_layer_norm
    ),
    Rewrite("grouped Conv2D -> DepthwiseConv2D", _is_depthwise_conv2d, _to_depthwise),
)


def rewrite(model: keras.Model) -> tuple[keras.Model, dict[str, int]]:
    """A copy of `model` in which every layer matching a `REWRITES` pattern is replaced.

    Layers that match nothing are shared with `model` (not copied), so the result is only
    for conversion; `model` itself is left as it is. When nothing matches, `model` is
    returned as it is.

    Args:
        model: A built functional or Sequential model (nested models are entered).

    Returns:
        `(model, counts)`: the rewritten model and how many layers each rewrite replaced,
        by `Rewrite.name` (empty when nothing matched).
    """
    from tfprune.layers import iter_layers

    counts: dict[str, int] = {}
    if not any(r.matches(layer) for layer in iter_layers(model) for r in REWRITES):
        return model, counts

    def clone(layer):
        for r in REWRITES:
            if r.matches(layer):
                counts[r.name] = counts.get(r.name, 0) + 1
                return r.replace(layer)
        return layer

    return keras.models.clone_model(model, clone_function=clone, recursive=True), counts
