"""Tests for tfprune.shrink (and wrap/strip) on models with raw keras.ops nodes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfprune

L = keras.layers
ops = keras.ops


def _randomize(model, seed=0):
    """Nonzero BN statistics and LayerScale factors, so no branch hides behind ~0."""
    rng = np.random.default_rng(seed)
    for layer in tfprune.layers.iter_layers(model):
        if isinstance(layer, L.BatchNormalization):
            for w in layer.weights:
                w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
        if type(layer).__name__ == "LayerScale":
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))


def _assert_shrinks_exactly(model, x, ratio=0.5, seed=0):
    """prune_channels + shrink: fewer parameters, outputs equal to the zeroed model's."""
    pruned = tfprune.prune_channels(model, ratio=ratio, criterion="random", seed=seed)
    small = tfprune.shrink(pruned)
    ya, yb = np.asarray(pruned(x)), np.asarray(small(x))
    assert ya.shape == yb.shape
    assert np.abs(ya - yb).max() <= 1e-5 * np.abs(ya).max() + 1e-6
    assert small.count_params() < model.count_params()
    return small


def _every_op_model():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 1, name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = x * ops.relu6(x + 3.0) / 6.0  # hard-swish, as MobileNetV3 writes it
    x = ops.maximum(x, -1.0) - 0.25
    x = x * np.linspace(0.5, 1.5, 8).astype("float32")  # per-channel constant
    x = ops.gelu(ops.clip(x, -4.0, 4.0))
    s = ops.mean(x, axis=(1, 2), keepdims=True)  # squeeze-and-excitation
    s = L.Conv2D(8, 1, name="se")(s)
    x = x * ops.hard_sigmoid(s)
    x = x + L.Conv2D(8, 1, name="c2")(x)
    a, b = ops.split(x, 2, axis=-1)
    x = ops.concatenate([ops.silu(a), ops.tanh(b)], axis=-1)
    x = ops.transpose(x, (0, 2, 1, 3))[:, 1:, ::2, :]
    x = ops.squeeze(ops.expand_dims(x, 1), 1)
    x = ops.reshape(x, (-1, 15, 8))
    v = L.Dense(6, name="v")(x)
    v = ops.max(ops.stack([v, ops.relu(v)], axis=1), axis=1)
    q = L.Dense(4, name="q")(x)
    attn = ops.softmax(ops.einsum("bqc,bkc->bqk", q, q), axis=-1)
    x = ops.sum(ops.matmul(attn, v), axis=1)
    flat = ops.reshape(L.Conv2D(4, 1, name="c3")(i), (-1, 144))
    return keras.Model(i, L.Dense(3, name="out")(ops.concatenate([x, flat], axis=-1)))


def test_every_raw_op_rule_shrinks_to_equal_outputs():
    model = _every_op_model()
    _randomize(model)
    groups = tfprune.graph.channel_groups(model)
    assert [(g.producers, g.prunable) for g in groups] == [
        (["c1", "se", "c2"], True),
        (["v"], True),
        (["q"], False),
        (["c3"], True),
        (["out"], False),
    ]
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    small = _assert_shrinks_exactly(model, x)
    assert [small.get_layer(n).filters for n in ("c1", "se", "c2", "c3")] == [4, 4, 4, 2]
    assert small.get_layer("v").units == 3


def test_wrap_and_strip_models_with_raw_ops():
    # On main: AttributeError: 'Add' object has no attribute 'built' (x * 0.5, x[:, 0], mean).
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c")(i) * 0.5
    x = ops.mean(x[:, 0], axis=1)
    model = keras.Model(i, L.Dense(2, name="d")(x))
    wrapped = tfprune.wrap(model, 0.5)
    plain = tfprune.strip(wrapped)
    data = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(plain.predict(data, verbose=0), model.predict(data, verbose=0))
    assert [type(op).__name__ for op in plain.operations] == [
        type(op).__name__ for op in model.operations
    ]


def test_grouped_depthwise_conv_shrinks_with_its_groups():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 1, name="c0")(i)
    x = L.Conv2D(8, 3, groups=8, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn")(x)
    model = keras.Model(i, L.Conv2D(2, 1, name="out")(ops.gelu(x)))
    _randomize(model)
    data = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    small = _assert_shrinks_exactly(model, data)
    dw = small.get_layer("dw")
    assert dw.filters == dw.groups == small.get_layer("c0").filters < 8


def _convnext_block(x, dim, name):
    y = L.Conv2D(dim, 7, groups=dim, padding="same", name=f"{name}_dw")(x)
    y = L.LayerNormalization(epsilon=1e-6, name=f"{name}_ln")(y)
    y = L.Dense(4 * dim, name=f"{name}_pw1")(y)
    y = L.Dense(dim, name=f"{name}_pw2")(ops.gelu(y))
    gamma = np.random.default_rng(0).uniform(0.5, 1.5, dim).astype("float32")
    return x + y * gamma  # LayerScale written as a raw op


def test_convnext_style_blocks_shrink_to_equal_outputs():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 2, strides=2, name="stem")(i)
    x = _convnext_block(x, 8, "b0")
    x = _convnext_block(x, 8, "b1")
    model = keras.Model(i, L.Dense(3, name="head")(ops.mean(x, axis=(1, 2))))
    groups = tfprune.graph.channel_groups(model)
    assert [g.producers for g in groups if g.prunable] == [["b0_pw1"], ["b1_pw1"]]
    data = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype("float32")
    small = _assert_shrinks_exactly(model, data)
    assert small.get_layer("b0_pw1").units == 16


def _mobilenet_v3(name):
    model = getattr(keras.applications, name)(
        weights=None,
        input_shape=(32, 32, 3),
        include_preprocessing=False,
        classifier_activation=None,
        classes=10,
    )
    _randomize(model)
    return model


def test_mobilenet_v3_small_channels_are_prunable():
    # Everything but the 10 logits (on main MobileNetV3Large had 4,640 of 13,752).
    groups = tfprune.graph.channel_groups(_mobilenet_v3("MobileNetV3Small"))
    assert sum(g.channels for g in groups if g.prunable) == 4872
    assert [(g.channels, g.reason) for g in groups if not g.prunable] == [
        (10, "its channels are a model output")
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "prunable"), [("MobileNetV3Small", 4872), ("MobileNetV3Large", 8696)]
)
def test_mobilenet_v3_wrap_strip_and_shrink(name, prunable):
    model = _mobilenet_v3(name)
    groups = tfprune.graph.channel_groups(model)
    assert sum(g.channels for g in groups if g.prunable) == prunable
    plain = tfprune.strip(tfprune.wrap(model, 0.5))
    data = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(plain(data)), np.asarray(model(data)))
    _assert_shrinks_exactly(model, data)


@pytest.mark.slow
def test_convnext_tiny_application():
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    _randomize(model)
    data = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    _assert_shrinks_exactly(model, data)


def test_attention_written_with_raw_ops_shrinks_every_head_alike():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="stem")(i)
    model = keras.Model(i, L.Dense(3, name="out")(_attention(x, 0, h=2, width=8)))
    groups = tfprune.graph.channel_groups(model)
    assert [(g.producers, g.channels, g.prunable) for g in groups] == [
        (["stem"], 4, True),
        (["k0", "q0"], 2, True),
        (["v0"], 4, True),
        (["out"], 3, False),
    ]
    q = next(m for m in groups[1].members if m.layer.name == "q0" and m.weight == "kernel")
    assert q.index.tolist() == [0, 1, 0, 1]  # position j of both heads is one channel
    data = np.random.default_rng(5).normal(size=(2, 4, 4, 3)).astype("float32")
    small = _assert_shrinks_exactly(model, data)
    assert small.get_layer("q0").units == small.get_layer("k0").units == 2
    assert small.get_layer("v0").units == 4  # 2 of 4 positions per head, in both heads


def test_moved_channel_axis_and_channel_slice_shrink_to_equal_outputs():
    i = keras.Input((4, 4, 3))
    x = ops.relu(L.Conv2D(8, 1, name="c1")(i))
    x = ops.moveaxis(ops.transpose(x, (0, 3, 1, 2)), 1, -1)  # away and back
    y = ops.swapaxes(ops.sigmoid(L.Conv2D(6, 1, name="c2")(i)), 1, 3)  # sigmoid(0) moved
    x = x[..., 2:7] + 1.0 + ops.swapaxes(y, 3, 1)[..., 1:6]
    model = keras.Model(i, L.Conv2D(2, 1, name="out")(x))
    groups = tfprune.graph.channel_groups(model)
    # c1's channels 2..6 meet c2's 1..5 in the sum: one group of 8 + 6 - 5 channels.
    assert [(g.producers, g.channels, g.prunable) for g in groups] == [
        (["c1", "c2"], 9, True),
        (["out"], 2, False),
    ]
    data = np.random.default_rng(6).normal(size=(2, 4, 4, 3)).astype("float32")
    pruned = tfprune.prune_channels(model, ratio=0.5, criterion="random", seed=0)
    small = tfprune.shrink(pruned)
    np.testing.assert_allclose(np.asarray(small(data)), np.asarray(pruned(data)), atol=1e-5)
    # c2's removed channels would carry sigmoid(0) = 0.5 through the swap: all are kept,
    # and with them c1's channels 2..6; c1's channels 0, 1 and 7 go when pruned.
    alive = np.abs(np.asarray(pruned.get_layer("c1").kernel)).sum(axis=(0, 1, 2)) > 0
    assert not alive[[0, 1, 7]].all()
    assert small.get_layer("c2").filters == 6
    assert small.get_layer("c1").filters == 5 + int(alive[[0, 1, 7]].sum())


def _heads(x, h):
    """(b, t, h * d) -> (b, h, t, d), as attention layers split heads."""
    t, c = int(x.shape[1]), int(x.shape[-1])
    return ops.transpose(ops.reshape(x, (-1, t, h, c // h)), (0, 2, 1, 3))


def _attention(x, k, h, width):
    """Multi-head self-attention over the positions of `x`, written with raw ops."""
    n, c = int(x.shape[1]) * int(x.shape[2]), int(x.shape[-1])
    t = ops.reshape(x, (-1, n, c))
    q = _heads(L.Dense(2 * h, name=f"q{k}")(t), h)
    key = ops.swapaxes(_heads(L.Dense(2 * h, name=f"k{k}")(t), h), -1, -2)
    v = _heads(L.Dense(width, name=f"v{k}")(t), h)
    o = ops.matmul(ops.softmax(ops.matmul(q, key) * 0.5, axis=-1), v)
    o = ops.reshape(ops.transpose(o, (0, 2, 1, 3)), (-1, n, width))
    return ops.reshape(o, (-1, *x.shape[1:3], width))


def _moved_channels(draw, x):
    """The channel axis moved away (transpose, moveaxis, swapaxes) and back."""
    how = draw(st.sampled_from(["transpose", "moveaxis", "swapaxes"]))
    if how == "transpose":
        return ops.transpose(ops.transpose(x, (0, 3, 1, 2)), (0, 2, 3, 1))
    if how == "moveaxis":
        return ops.moveaxis(ops.moveaxis(x, -1, 1), 1, -1)
    return ops.swapaxes(ops.swapaxes(x, 2, 3), -1, -2)


def _raw_block(draw, x, k):
    kinds = ["conv", "scale", "act", "add", "mul", "se", "cat", "split", "slice", "move"]
    kind = draw(st.sampled_from([*kinds, "heads", "attention"]))
    c = int(x.shape[-1])
    if kind == "slice":
        start = draw(st.integers(0, c - 1))
        return x[..., start : draw(st.integers(start + 1, c))]
    if kind == "move":
        return _moved_channels(draw, x)
    if kind == "heads":  # channels split into 2 heads, scaled per head position, merged back
        if c % 2:
            return x
        y = ops.reshape(x, (-1, 4, 4, 2, c // 2)) * np.arange(1, c // 2 + 1, dtype="float32")
        return ops.reshape(y, (-1, 4, 4, c))
    if kind == "attention":
        h = draw(st.sampled_from([1, 2]))
        return _attention(x, k, h, width=h * draw(st.integers(1, 3)))
    if kind == "conv":
        return L.Conv2D(draw(st.integers(2, 6)), 1, name=f"c{k}")(x)
    if kind == "scale":
        return x * np.linspace(0.5, 2.0, c).astype("float32") + draw(st.sampled_from([0.0, 1.0]))
    if kind == "act":
        fn = draw(st.sampled_from([ops.relu, ops.sigmoid, ops.hard_sigmoid, ops.gelu, ops.silu]))
        return fn(x)
    if kind == "add":
        return x + L.Conv2D(c, 1, name=f"c{k}")(x)
    if kind == "mul":
        return x * ops.relu6(L.Conv2D(c, 1, name=f"c{k}")(x) + 3.0) / 6.0
    if kind == "se":
        s = L.Conv2D(c, 1, name=f"c{k}")(ops.mean(x, axis=(1, 2), keepdims=True))
        return x * ops.sigmoid(s)
    if kind == "cat":
        return ops.concatenate([x, L.Conv2D(2, 1, name=f"c{k}")(x)], axis=-1)
    if c % 2:
        return x
    a, b = ops.split(x, 2, axis=-1)
    return ops.concatenate([b, ops.relu(a)], axis=-1)


def _check_random_model(data):
    i = keras.Input((4, 4, 2))
    x = L.Conv2D(data.draw(st.integers(2, 6)), 1, name="stem")(i)
    for k in range(data.draw(st.integers(1, 4))):
        x = _raw_block(data.draw, x, k)
    model = keras.Model(i, L.Conv2D(3, 1, name="head")(x))
    groups = [g for g in tfprune.graph.channel_groups(model) if g.prunable]
    for g in groups:
        keep = np.array(
            data.draw(st.lists(st.booleans(), min_size=g.channels, max_size=g.channels))
        )
        keep[data.draw(st.integers(0, g.channels - 1))] = True
        tfprune.channel_pruning.zero_channels(g, keep)
    small = tfprune.shrink(model)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype("float32")
    ya, yb = np.asarray(model(x)), np.asarray(small(x))
    assert np.abs(ya - yb).max() <= 1e-5 * np.abs(ya).max() + 1e-6
    assert small.count_params() <= model.count_params()


_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@settings(max_examples=8, deadline=None, suppress_health_check=_HEALTH)
@given(st.data())
def test_random_models_with_raw_ops_shrink_to_equal_outputs(data):
    _check_random_model(data)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=_HEALTH)
@given(st.data())
def test_random_models_with_raw_ops_shrink_to_equal_outputs_many(data):
    _check_random_model(data)


def test_export_tflite_shrinks_a_raw_op_model(tmp_path):
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="c1")(i)
    x = x * ops.relu6(x + 3.0) / 6.0
    s = L.Conv2D(8, 1, name="se")(ops.mean(x, axis=(1, 2), keepdims=True))
    x = x + L.Conv2D(8, 1, name="c2")(x * ops.hard_sigmoid(s))
    model = keras.Model(i, L.Dense(3, name="out")(ops.mean(x, axis=(1, 2))))
    pruned = tfprune.prune_channels(model, 0.5)
    result = tfprune.export.tflite(pruned, tmp_path / "m.tflite")
    assert result.ops == (
        "CONV_2D",
        "HARD_SWISH",
        "MEAN",
        "CONV_2D",
        "MUL",
        "MUL",
        "CONV_2D",
        "ADD",
        "MEAN",
        "FULLY_CONNECTED",
    )
    info = tfprune.export.describe(tmp_path / "m.tflite")
    kernels = sorted(t.shape for t in info.tensors if t.constant and len(t.shape) == 4)
    assert kernels == [(4, 1, 1, 3), (4, 1, 1, 4), (4, 1, 1, 4)]
