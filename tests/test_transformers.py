"""Transformer blocks end to end: gated MLP width, heads + MLP together, TFLite export."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune

RNG = np.random.default_rng(0)


def _block(x, i: int, mlp: str):
    dim = int(x.shape[-1])
    h = keras.layers.LayerNormalization(name=f"ln1_{i}")(x)
    h = keras.layers.MultiHeadAttention(4, dim // 4, name=f"attn{i}")(h, h)
    x = keras.layers.Add(name=f"attn_add{i}")([x, h])
    h = keras.layers.LayerNormalization(name=f"ln2_{i}")(x)
    if mlp == "plain":
        h = keras.layers.Dense(32, activation="gelu", name=f"up{i}")(h)
    else:
        act = {"swiglu": "silu", "geglu": "gelu"}[mlp]
        gate = keras.layers.Dense(32, activation=act, name=f"gate{i}")(h)
        up = keras.layers.Dense(32, name=f"up{i}")(h)
        h = keras.layers.Multiply(name=f"mul{i}")([gate, up])
    h = keras.layers.Dense(dim, name=f"down{i}")(h)
    return keras.layers.Add(name=f"mlp_add{i}")([x, h])


def _vit(mlp: str = "plain") -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 2, strides=2, name="patches")(inputs)
    x = keras.layers.Reshape((16, 16), name="tokens")(x)
    for i in range(2):
        x = _block(x, i, mlp)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization(name="ln")(x))
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    for w in model.weights:
        w.assign(RNG.normal(size=w.shape).astype("float32") * 0.3)
    return model


def _x(n=8):
    return RNG.normal(size=(n, 8, 8, 1)).astype("float32")


@pytest.mark.parametrize("mlp", ["swiglu", "geglu"])
def test_gated_mlp_gate_and_up_columns_and_down_rows_go_together(mlp):
    model = _vit(mlp)
    mlp_groups = [
        g for g in tfprune.graph.channel_groups(model) if g.prunable and "gate0" in g.producers
    ]
    assert [(g.channels, g.producers) for g in mlp_groups] == [(32, ["gate0", "up0"])]
    assert {(m.layer.name, m.weight, m.role) for m in mlp_groups[0].members} >= {
        ("gate0", "kernel", "output"),
        ("up0", "kernel", "output"),
        ("down0", "kernel", "input"),
    }
    pruned = tfprune.prune_channels(model, ratio=0.5)
    small = tfprune.shrink(pruned)
    for i in range(2):
        assert small.get_layer(f"gate{i}").units == small.get_layer(f"up{i}").units == 16
        assert small.get_layer(f"down{i}").kernel.shape[0] == 16
    x = _x()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(pruned(x)), atol=1e-5
    )


def test_heads_and_mlp_pruned_together_are_exact_and_smaller():
    model = _vit()
    pruned = tfprune.prune_channels(tfprune.prune_heads(model, ratio=0.5), ratio=0.5)
    small = tfprune.shrink(pruned)
    assert [small.get_layer(f"attn{i}").num_heads for i in range(2)] == [2, 2]
    assert [small.get_layer(f"up{i}").units for i in range(2)] == [16, 16]
    x = _x()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(pruned(x)), atol=1e-5
    )
    per_block = 3 * (16 * 2 * 4 + 2 * 4) + 2 * 4 * 16 + 16 * 16 + 16 + 16 * 16
    assert small.count_params() == model.count_params() - 2 * per_block


@pytest.mark.slow
def test_pruned_vit_exports_to_tflite_float_and_int8(tmp_path):
    model = _vit()
    small = tfprune.shrink(tfprune.prune_heads(model, ratio=0.5))
    x = _x(64)
    labels = np.argmax(keras.ops.convert_to_numpy(small(x)), axis=-1)
    sizes = {}
    for quantize in (None, "int8"):
        path = tmp_path / f"{quantize}.tflite"
        result = tfprune.export.tflite(
            small, path, quantize=quantize, representative_data=x, verify_data=(x, labels)
        )
        sizes[quantize] = path.stat().st_size
        if quantize is None:
            assert result.verification.max_abs_error < 1e-4
            assert result.verification.agreement == 1.0
        else:
            assert result.verification.agreement >= 0.9
    unpruned = tmp_path / "unpruned.tflite"
    tfprune.export.tflite(model, unpruned, quantize="int8", representative_data=x)
    assert sizes["int8"] < unpruned.stat().st_size


def test_activation_criterion_scores_the_gated_product_fed_to_down():
    model = _vit("swiglu")
    x = _x(6)
    criterion = tfprune.activation_scores.activation_criterion(model, [x[:4], (x[4:], None)])
    (group,) = [g for g in tfprune.graph.channel_groups(model) if "gate1" in g.producers]
    probe = keras.Model(model.input, model.get_layer("mul1").output)
    expected = np.abs(keras.ops.convert_to_numpy(probe(x))).reshape(-1, 32).mean(axis=0)
    np.testing.assert_allclose(criterion(group, None), expected, rtol=1e-5)
    pruned = tfprune.prune_channels(model, ratio=0.25, criterion=criterion)
    kernel = keras.ops.convert_to_numpy(pruned.get_layer("up1").kernel)
    dropped = np.flatnonzero(~kernel.any(axis=0))
    np.testing.assert_array_equal(dropped, np.sort(np.argsort(expected)[:8]))


@pytest.mark.slow
def test_prune_transformer_example(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "prune_transformer.py"
    spec = importlib.util.spec_from_file_location("prune_transformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick"])
    small = out["small"]
    attention = [layer for layer in small.layers if layer.name.endswith("_attn")]
    assert len(attention) == 2 and all(layer.num_heads == 2 for layer in attention)
    assert all(layer.units == 32 for layer in small.layers if layer.name.endswith("_mlp_up"))
    assert len(out["report"].removed) == 1
    assert out["accuracy"]["pruned"] > 0.5
    printed = capsys.readouterr().out
    assert "removed" in printed and "top-1 agreement" in printed
