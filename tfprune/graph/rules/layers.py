"""Channel rules of Keras layers: producers, normalizations, merges, reshapes, pass-through.

Each rule maps the channel ids of a layer call's inputs (`call.ids`) to those of its output
and records the weight slices the layer owns; weight axes come from the weight registry
(`tfprune.layers`).
"""

from __future__ import annotations

import math

import keras
import numpy as np

from tfprune import layers as registry
from tfprune.graph._state import Call, Graph, static_size, width
from tfprune.graph.table import register

_L = keras.layers

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


def _channels_first(layer) -> str | None:
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return (
            "it uses data_format='channels_first' (tfprune.graph follows channels on the last axis)"
        )
    return None


def _out_channels(layer) -> int:
    spec = registry.lookup(layer)
    main = next(s for s in spec.weight_specs(layer) if s.output)
    w = registry.resolve(layer, main.path)
    return math.prod(w.shape[a] for a in main.out_axes)


def source(g: Graph, call: Call):
    """Dense / Conv / ConvTranspose: new output channels; kernels consume the input.

    A grouped convolution (`groups=k`) couples input channel group `j` with output channel
    group `j`: its kernel is `(..., in / k, out)`, so an input channel can only be removed
    together with the same position of every input group, which nothing ties together;
    the input channels are frozen and the output channels stay prunable only when
    removing output channels keeps the groups equal, which they cannot guarantee either.
    `groups == in == out` is a depthwise convolution and uses the depthwise rule.
    """
    layer = call.layer
    if reason := _channels_first(layer):
        return _frozen_producer(g, call, reason)
    groups = getattr(layer, "groups", 1)
    if groups != 1:
        if groups == width(call.shapes[0]) == layer.filters:
            return _grouped_depthwise(g, call)
        return _frozen_producer(
            g,
            call,
            f"it is a grouped convolution (groups={groups}): removing channels would make "
            "its groups unequal",
        )
    ids = call.ids
    out = g.new(_out_channels(layer))
    for spec in registry.lookup(layer).weight_specs(layer):
        if spec.in_axes:
            g.record(layer, spec.path, spec.in_axes[0], ids[0], "input")
        if spec.out_axes:
            g.record(layer, spec.path, spec.out_axes[0], out, "output")
    return out


def _frozen_producer(g: Graph, call: Call, reason: str):
    """A producer whose channel mapping is not followed: its input and output are kept.

    Its output channels still form a group (frozen, with the reason), so every producer
    of the model appears in `channel_groups`.
    """
    layer = call.layer
    reason = f"layer '{layer.name}' ({type(layer).__name__}): {reason}"
    for ids in call.ids:
        g.freeze(ids, reason)
    out = g.new(_out_channels(layer))
    for spec in registry.lookup(layer).weight_specs(layer):
        if spec.out_axes:
            g.record(layer, spec.path, spec.out_axes[0], out, "output")
    g.freeze(out, reason)
    return out


def _grouped_depthwise(g: Graph, call: Call):
    """`Conv2D(groups=C)` on C channels: output channel c depends on input channel c only."""
    layer, ids = call.layer, call.ids[0]
    call.kind = "grouped"
    g.record(layer, "kernel", -1, ids, "output")
    if layer.use_bias:
        g.record(layer, "bias", 0, ids, "output")
    return ids


def depthwise(g: Graph, call: Call):
    """DepthwiseConv: output channel `c * mult + m` is input channel `c`."""
    layer, ids = call.layer, call.ids
    if reason := _channels_first(layer):
        return reason
    out = np.repeat(ids[0], layer.depth_multiplier)
    for spec in registry.lookup(layer).weight_specs(layer):
        # The kernel's output axes are (in, mult): its first one holds the input channels.
        per_input = len(spec.out_axes) == 2
        g.record(layer, spec.path, spec.out_axes[0], ids[0] if per_input else out, "output")
    return out


def separable(g: Graph, call: Call):
    """SeparableConv: a depthwise half on the input channels, then a pointwise producer."""
    layer, ids = call.layer, call.ids
    if reason := _channels_first(layer):
        return reason
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


def batch_norm(g: Graph, call: Call):
    """BatchNormalization over the channel axis: four vectors mirror the channels."""
    layer, ids = call.layer, call.ids
    if layer.axis not in (-1, len(call.shapes[0]) - 1):
        return f"it normalizes over axis {layer.axis}, not the channel axis"
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        g.record(layer, name, 0, ids[0], "norm")
    return ids[0]


def across_channels(g: Graph, call: Call):
    """Layers that mix the channel axis (GroupNormalization, Softmax): shrinking changes them.

    LayerNormalization and RMSNormalization have a rule of their own (`rules/hidden.py`),
    which can pass the hidden width through them on request.
    """
    g.freeze(
        call.ids[0],
        f"{type(call.layer).__name__} '{call.layer.name}' computes statistics across "
        "channels, so removing channels would change its output",
    )
    return call.ids[0]


def elementwise(g: Graph, call: Call):
    """Activations, Dropout, pooling, padding, cropping, upsampling: channels pass through."""
    if reason := _channels_first(call.layer):
        return reason
    return call.ids[0]


def merge(g: Graph, call: Call):
    """Add/Subtract/Multiply/Average/Maximum/Minimum: every input shares one channel set."""
    ids = call.ids
    size = max(i.size for i in ids)
    wide = [i for i in ids if i.size == size]
    for other in wide[1:]:
        g.union(wide[0], other, call.name)
    narrow = [i for i in ids if i.size != size]
    if narrow:
        # A broadcast input adds data to every channel, so none of them can be removed.
        return f"it broadcasts {narrow[0].size} channel(s) over {size}"
    return wide[0]


def concatenate(g: Graph, call: Call):
    """Concatenate: along channels, each input's channels keep their ids at an offset."""
    ids, rank = call.ids, len(call.shapes[0])
    axis = call.layer.axis if isinstance(call.layer, _L.Concatenate) else call.config()["axis"]
    if axis in (-1, rank - 1):
        return np.concatenate(ids)
    for other in ids[1:]:
        g.union(ids[0], other, call.name)
    return ids[0]


def flatten_ids(ids: np.ndarray, shape: tuple):
    """Channel ids after flattening a channels-last tensor: `s * C + c` is channel `c`."""
    spatial = static_size(shape[1:-1])
    if spatial is None:
        return f"it flattens a tensor of unknown shape {shape}"
    return np.tile(ids, spatial)


def flatten(g: Graph, call: Call):
    """Flatten (channels last): feature `s * C + c` is channel `c` at spatial position `s`."""
    if reason := _channels_first(call.layer):
        return reason
    return flatten_ids(call.ids[0], call.shapes[0])


def reshape(g: Graph, call: Call):
    """Reshape layer or op: the channel ids of the last axis after a row-major reshape.

    With `C` input channels and `d` output positions on the last axis: `d == m * C`
    (flattening, merging attention heads back) makes position `p` channel `p mod C`;
    `C == h * d` (splitting channels into `h` heads of `d`) makes position `j` the channels
    `j, j + d, ..., j + (h - 1) d`, which are tied so that every head keeps the same
    positions. Any other reshape mixes the channel axis with other axes.
    """
    in_shape, out_shape = tuple(call.shapes[0]), tuple(call.out_shape)
    c = in_shape[-1] if in_shape else None
    d = out_shape[-1] if out_shape else None
    if c is None or d is None:
        return f"it reshapes {in_shape} to {out_shape}, an unknown channel axis"
    ids = call.ids[0]
    if d % c == 0:
        return np.tile(ids, d // c)
    if c % d == 0:
        rows = ids.reshape(-1, d)
        for row in rows[1:]:
            g.union(rows[0], row, call.name)
        return rows[0]
    return f"it reshapes {in_shape} to {out_shape}, which mixes the channel axis with others"


def layer_scale(g: Graph, call: Call):
    """keras.applications' LayerScale (ConvNeXt): one factor per channel, `gamma`."""
    g.record(call.layer, "gamma", 0, call.ids[0], "norm")
    return call.ids[0]


def model_input(g: Graph, call: Call):
    """A model input: its channels belong to no group."""
    return g.fixed(width(call.out_shape), f"the model input '{call.layer.name}'")


def _register(kind: str, fn, *classes: type) -> None:
    for cls in classes:
        register(cls, fn, kind)


_register("input", model_input, _L.InputLayer)
_register("source", source, _L.Dense, *CONVOLUTIONS)
_register("depthwise", depthwise, _L.DepthwiseConv1D, _L.DepthwiseConv2D)
_register("separable", separable, _L.SeparableConv1D, _L.SeparableConv2D)
_register("norm", batch_norm, _L.BatchNormalization)
_register(
    "mixed",
    across_channels,
    _L.GroupNormalization,
    _L.Softmax,
    _L.UnitNormalization,
)
_register(
    "elementwise",
    elementwise,
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
_register(
    "spatial",
    elementwise,
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
_register("pad", elementwise, _L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D)
_register("merge", merge, _L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
_register("concat", concatenate, _L.Concatenate)
_register("flatten", flatten, _L.Flatten)
_register("elementwise", layer_scale, "LayerScale")
_register("flatten", reshape, _L.Reshape)
