"""Tests for tfprune.export.rewrite: LiteRT-friendly layers with the same outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune.export import rewrite

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


def _layer_norm_model(**kwargs):
    i = keras.Input((6, 16))
    x = L.Dense(16, name="pre")(i)
    x = L.LayerNormalization(name="ln", **kwargs)(x)
    model = keras.Model(i, L.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return model


def _tokens(n=4):
    return np.random.default_rng(1).normal(size=(n, 6, 16)).astype("float32")


@pytest.mark.parametrize("kwargs", [dict(), dict(center=False), dict(scale=False, axis=2)])
def test_layer_norm_becomes_subtract_mean_form_with_same_outputs(kwargs):
    model = _layer_norm_model(**kwargs)
    new, counts = rewrite(model)
    assert counts == {"LayerNormalization -> (x - mean) form": 1}
    ln = new.get_layer("ln")
    assert isinstance(ln, L.LayerNormalization) and type(ln) is not L.LayerNormalization
    x = _tokens()
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert type(model.get_layer("ln")) is L.LayerNormalization


@pytest.mark.parametrize("kwargs", [dict(axis=1), dict(axis=[1, 2]), dict(rms_scaling=True)])
def test_other_layer_norms_are_left_alone(kwargs):
    model = _layer_norm_model(**kwargs)
    new, counts = rewrite(model)
    assert new is model and counts == {}


def test_tflite_int8_layer_norm_has_no_float_ops(tmp_path):
    # Keras's `-mean * inv` converts to a NEG that stayed float32, and the mixed file was
    # refused ("... produced a file whose ops compute float32/int8 tensors").
    model = _layer_norm_model()
    x = _tokens(32)
    result = tfprune.export.tflite(
        model, tmp_path / "m.tflite", quantize="int8", representative_data=x, verify_data=x
    )
    assert "NEG" not in result.ops and "DEQUANTIZE" not in result.ops
    assert result.ops.count("SUB") == 1
    assert result.verification.max_abs_error < 0.05 * np.abs(model.predict(x, verbose=0)).max()
