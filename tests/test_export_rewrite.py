"""Tests for tfprune.export.rewrite: LiteRT-friendly layers with the same outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune.export import rewrite
from tfprune.export.rewrite import CenteredLayerNormalization, SplitDepthwise

L = keras.layers


def _grouped(filters=8, groups=8, strides=1, dilation=1, bias=True, activation=None):
    i = keras.Input((9, 9, 8))
    x = L.Conv2D(8, 1, name="pre")(i)
    x = L.Conv2D(
        filters,
        3,
        groups=groups,
        strides=strides,
        dilation_rate=dilation,
        padding="same",
        use_bias=bias,
        activation=activation,
        name="dw",
    )(x)
    x = x * 0.5 + 1.0  # raw ops after the grouped conv
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return model


def _x(n=4):
    return np.random.default_rng(1).normal(size=(n, 9, 9, 8)).astype("float32")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(strides=2, bias=False),
        dict(dilation=2, activation="relu"),
        dict(filters=16),  # depth multiplier 2
    ],
)
def test_depthwise_grouped_conv_becomes_depthwise_with_same_outputs(kwargs):
    model = _grouped(**kwargs)
    new, counts = rewrite(model)
    assert counts == {"grouped Conv2D -> DepthwiseConv2D": 1}
    dw = new.get_layer("dw")
    assert type(dw) is L.DepthwiseConv2D
    assert dw.depth_multiplier == model.get_layer("dw").filters // 8
    x = _x()
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert new.get_layer("pre") is model.get_layer("pre")  # other layers are shared
    assert type(model.get_layer("dw")) is L.Conv2D  # the input model is left as it was


def test_other_convolutions_are_left_alone():
    model = _grouped(groups=2)
    new, counts = rewrite(model)
    assert new is model and counts == {}


def test_tflite_export_writes_depthwise_conv(tmp_path):
    model = _grouped()
    x = _x(16)
    result = tfprune.export.tflite(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=x, verify_data=x
    )
    assert result.ops.count("DEPTHWISE_CONV_2D") == 1
    assert result.ops.count("CONV_2D") == 1  # "pre" only
    assert result.verification.max_abs_error < 0.05 * np.abs(model.predict(x, verbose=0)).max()


def _large(layer, size=(10, 9)):
    i = keras.Input((*size, 4))
    model = keras.Model(i, layer(L.Conv2D(4, 1, name="pre")(i)))
    rng = np.random.default_rng(2)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return model


@pytest.mark.parametrize(
    ("layer", "pieces"),
    [
        (lambda: L.DepthwiseConv2D(7, padding="same", name="dw"), [(4, 4), (4, 3), (3, 4), (3, 3)]),
        (
            lambda: L.Conv2D(4, 7, groups=4, padding="same", name="dw"),
            [(4, 4), (4, 3), (3, 4), (3, 3)],
        ),
        (
            lambda: L.DepthwiseConv2D((6, 3), depth_multiplier=2, activation="relu", name="dw"),
            [(3, 3), (3, 3)],
        ),
        (
            lambda: L.Conv2D(8, (3, 11), groups=4, padding="same", use_bias=False, name="dw"),
            [(3, 4), (3, 4), (3, 3)],
        ),
    ],
    ids=["depthwise-7x7-same", "grouped-7x7-same", "6x3-valid-multiplier-2", "3x11-no-bias"],
)
def test_large_depthwise_kernel_becomes_a_sum_of_small_ones(layer, pieces):
    model = _large(layer())
    new, counts = rewrite(model)
    assert counts == {"depthwise kernel > 5x5 -> sum of <= 5x5": 1}
    split = new.get_layer("dw")
    assert type(split) is SplitDepthwise
    assert [conv.kernel_size for _, conv in split.pieces] == pieces
    x = np.random.default_rng(3).normal(size=(2, 10, 9, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-4)


def test_strided_large_depthwise_is_not_split():
    model = _large(L.Conv2D(4, 7, strides=2, groups=4, padding="same", name="dw"))
    assert rewrite(model)[1] == {"grouped Conv2D -> DepthwiseConv2D": 1}


def test_tflite_export_of_a_7x7_depthwise_runs_four_small_ones(tmp_path):
    model = _large(L.Conv2D(4, 7, groups=4, padding="same", name="dw"))
    x = np.random.default_rng(4).normal(size=(16, 10, 9, 4)).astype("float32")
    result = tfprune.export.tflite(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=x, verify_data=x
    )
    assert result.ops.count("DEPTHWISE_CONV_2D") == 4
    assert result.ops.count("CONV_2D") == 1  # "pre" only
    assert result.verification.max_abs_error < 0.05 * np.abs(model.predict(x, verbose=0)).max()


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(center=False), dict(scale=False, epsilon=0.1)], ids=str
)
def test_layer_normalization_is_rewritten_without_a_negation(kwargs):
    i = keras.Input((5, 8))
    x = L.LayerNormalization(name="ln", **kwargs)(L.Dense(8, name="pre")(i))
    model = keras.Model(i, L.Dense(2, name="out")(x))
    rng = np.random.default_rng(5)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    new, counts = rewrite(model)
    assert counts == {"LayerNormalization -> centered, no NEG": 1}
    assert type(new.get_layer("ln")) is CenteredLayerNormalization
    data = rng.normal(size=(3, 5, 8)).astype("float32")
    np.testing.assert_allclose(np.asarray(new(data)), np.asarray(model(data)), atol=1e-5)


def test_layer_normalization_over_other_axes_is_left_alone():
    i = keras.Input((5, 8))
    model = keras.Model(i, L.LayerNormalization(axis=1)(i))
    assert rewrite(model) == (model, {})


def test_int8_export_of_a_layer_normalization_is_all_int8(tmp_path):
    # Keras's formula left a float NEG, so the export was refused as a float/int8 file.
    i = keras.Input((8, 8, 3))
    x = L.LayerNormalization(epsilon=1e-6)(L.Conv2D(16, 1)(i))
    model = keras.Model(i, L.Dense(4)(x))
    data = np.random.default_rng(6).normal(size=(8, 8, 8, 3)).astype("float32")
    result = tfprune.export.tflite(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=data
    )
    assert "NEG" not in result.ops and result.ops.count("SUB") == 1


def test_pieces_that_only_read_padding_are_left_out(tmp_path):
    # On a 1x1 input a 'same' 7x7 kernel meets the pixel with its centre only: the 4x4
    # piece holds it, the other pieces would add zeros (and XNNPACK refused them).
    model = _large(L.Conv2D(4, 7, groups=4, padding="same", name="dw"), size=(1, 1))
    new, _ = rewrite(model)
    assert [conv.kernel_size for _, conv in new.get_layer("dw").pieces] == [(4, 4)]
    x = np.random.default_rng(7).normal(size=(16, 1, 1, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    result = tfprune.export.tflite(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=x
    )
    assert result.ops.count("DEPTHWISE_CONV_2D") == 1
