"""Tests for tfprune.graph: channel dependency groups."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune

L = keras.layers


def _group(groups, producer):
    return next(g for g in groups if producer in g.producers)


def _member(group, layer, weight, role=None):
    return next(
        m
        for m in group.members
        if m.layer.name == layer and m.weight == weight and (role is None or m.role == role)
    )


def test_conv_bn_conv_groups_members_and_output():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="c1")(i)
    x = L.BatchNormalization(name="bn")(x)
    o = L.Conv2D(2, 1, name="c2")(x)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    assert [(g.channels, g.prunable) for g in groups] == [(4, True), (2, False)]
    g = groups[0]
    roles = sorted((m.layer.name, m.weight, m.role) for m in g.members)
    assert roles == [
        ("bn", "beta", "norm"),
        ("bn", "gamma", "norm"),
        ("bn", "moving_mean", "norm"),
        ("bn", "moving_variance", "norm"),
        ("c1", "bias", "output"),
        ("c1", "kernel", "output"),
        ("c2", "kernel", "input"),
    ]
    assert _member(g, "c1", "kernel").axis == 3
    assert _member(g, "c2", "kernel").axis == 2
    assert groups[1].reason == "its channels are a model output"


def test_residual_add_is_one_group_and_concatenate_offsets():
    i = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 1, name="a")(i)
    b = L.Conv2D(4, 1, name="b")(i)
    s = L.Add()([a, b])
    c = L.Conv2D(3, 1, name="c")(i)
    cat = L.Concatenate()([s, c])
    o = L.Conv2D(2, 1, name="out")(cat)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    res = _group(groups, "a")
    assert res.producers == ["a", "b"] and res.channels == 4
    np.testing.assert_array_equal(_member(res, "out", "kernel").index, [0, 1, 2, 3, -1, -1, -1])
    np.testing.assert_array_equal(
        _member(_group(groups, "c"), "out", "kernel").index, [-1, -1, -1, -1, 0, 1, 2]
    )


def test_flatten_dense_maps_every_spatial_position():
    model = keras.Sequential(
        [keras.Input((2, 3, 1)), L.Conv2D(2, 1, name="c"), L.Flatten(), L.Dense(3, name="d")]
    )
    g = _group(tfprune.graph.channel_groups(model), "c")
    np.testing.assert_array_equal(_member(g, "d", "kernel").index, [0, 1] * 6)


def test_depthwise_multiplier_maps_channels_in_major():
    i = keras.Input((5, 5, 3))
    x = L.Conv2D(2, 1, name="c")(i)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    o = L.Conv2D(1, 1, name="out")(x)
    g = _group(tfprune.graph.channel_groups(keras.Model(i, o)), "c")
    np.testing.assert_array_equal(_member(g, "dw", "kernel").index, [0, 1])
    np.testing.assert_array_equal(_member(g, "dw", "bias").index, [0, 0, 1, 1])
    np.testing.assert_array_equal(_member(g, "out", "kernel").index, [0, 0, 1, 1])


def test_squeeze_excitation_multiply_unites_gate_and_features():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", name="feat")(i)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(2, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply()([x, s])
    o = L.Conv2D(4, 1, name="out")(x)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    g = _group(groups, "feat")
    assert g.producers == ["feat", "excite"] and g.channels == 8
    assert _member(g, "squeeze", "kernel").role == "input"
    assert _group(groups, "squeeze").prunable


def test_unknown_layer_makes_touching_groups_unprunable_with_reason():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    y = L.Lambda(lambda t: t * 2.0, name="double")(x)
    z = L.Conv2D(4, 1, name="c2")(y)
    o = L.Conv2D(2, 1, name="c3")(z)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    g = _group(groups, "c1")
    assert not g.prunable
    assert g.reason == (
        "layer 'double' (Lambda): tfprune.graph has no channel rule for its type Lambda; "
        "channels that reach it are kept"
    )
    assert "double" in repr(g)
    assert _group(groups, "c2").prunable


def test_layer_normalization_over_channels_is_refused():
    i = keras.Input((4, 3))
    x = L.Dense(6, name="d1")(i)
    x = L.LayerNormalization(name="ln")(x)
    o = L.Dense(2, name="d2")(x)
    g = _group(tfprune.graph.channel_groups(keras.Model(i, o)), "d1")
    assert not g.prunable
    assert "LayerNormalization 'ln' computes statistics across channels" in g.reason


def test_nested_model_groups_and_frozen_inputs():
    inner_in = keras.Input((6, 6, 4))
    h = L.Conv2D(5, 1, name="inner_conv")(inner_in)
    inner = keras.Model(inner_in, L.ReLU()(h), name="block")
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="stem")(i)
    x = inner(x)
    o = L.Conv2D(2, 1, name="head")(x)
    groups = tfprune.graph.channel_groups(keras.Model(i, o))
    assert _group(groups, "inner_conv").prunable
    stem = _group(groups, "stem")
    assert not stem.prunable and "nested model 'block'" in stem.reason


def test_transposed_and_3d_convolutions_use_registry_axes():
    i = keras.Input((4, 4, 4, 2))
    x = L.Conv3D(3, 1, name="c3d")(i)
    o = L.Conv3DTranspose(2, 2, name="ct")(x)
    g = _group(tfprune.graph.channel_groups(keras.Model(i, o)), "c3d")
    assert _member(g, "ct", "kernel").axis == 4  # (d, h, w, out, in): input is last


def test_errors():
    with pytest.raises(TypeError, match="Received: model=3"):
        tfprune.graph.channel_groups(3)

    class Sub(keras.Model):
        def call(self, x):
            return x

    i = keras.Input((3,))
    with pytest.raises(TypeError, match="subclassed model"):
        tfprune.graph.channel_groups(keras.Model(i, Sub()(L.Dense(2)(i))))
