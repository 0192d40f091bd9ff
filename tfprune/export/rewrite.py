"""Rewrites before conversion: layers that LiteRT runs slowly become equal layers it runs fast.

`tfprune.export.tflite` calls `rewrite` on the model it converts. Each entry of `REWRITES`
is a pattern (a predicate on a layer) and a replacement (a function that builds the new
layer from the old one, weights included); the replacement computes the same outputs.

- `Conv2D` with `groups == input channels` (filters a multiple of it) -> `DepthwiseConv2D`
  with `depth_multiplier = filters / groups`. LiteRT has no fast kernel for a grouped
  `CONV_2D`, and Keras's ConvNeXt writes its depthwise convolutions this way
  (`docs/guides/real-models.md` has the latency before and after).
- `LayerNormalization` over the last axis -> the same normalization written as
  `(x - mean) * rsqrt(var + eps) * gamma + beta`. Keras computes `x * inv - mean * inv`,
  whose `NEG` the int8 converter leaves in float32 (a mixed file that
  `tflite(quantize="int8")` refuses); `x - mean` converts to an int8 `SUB`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

__all__ = ["REWRITES", "Rewrite", "rewrite"]


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


class _CenteredLayerNormalization(keras.layers.LayerNormalization):
    """LayerNormalization over the last axis as `(x - mean) * rsqrt(var + eps)`, scaled."""

    def call(self, inputs):
        mean, variance = keras.ops.moments(inputs, axes=[-1], keepdims=True)
        outputs = (inputs - mean) * keras.ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * self.gamma
        if self.center:
            outputs = outputs + self.beta
        return outputs


def _is_last_axis_layer_norm(layer: keras.layers.Layer) -> bool:
    if type(layer) is not keras.layers.LayerNormalization or not layer.built:
        return False
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    rank = len(layer.get_build_config()["input_shape"])
    return not layer.rms_scaling and [a % rank for a in axes] == [rank - 1]


def _to_centered(layer: keras.layers.LayerNormalization) -> keras.layers.LayerNormalization:
    new = _CenteredLayerNormalization.from_config(layer.get_config())
    new.build_from_config(layer.get_build_config())
    new.set_weights(layer.get_weights())
    return new


REWRITES: tuple[Rewrite, ...] = (
    Rewrite("grouped Conv2D -> DepthwiseConv2D", _is_depthwise_conv2d, _to_depthwise),
    Rewrite("LayerNormalization -> (x - mean) form", _is_last_axis_layer_norm, _to_centered),
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
