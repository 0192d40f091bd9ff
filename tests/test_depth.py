"""tfprune.depth: residual blocks, Block Influence scores, removal and its report."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune import depth

RNG = np.random.default_rng(0)


def _transformer(blocks: int = 3, dim: int = 16):
    inputs = keras.Input((5, dim))
    x = keras.layers.Dense(dim, name="embed")(inputs)
    for i in range(blocks):
        h = keras.layers.LayerNormalization(name=f"ln{i}")(x)
        h = keras.layers.MultiHeadAttention(2, 8, name=f"attn{i}")(h, h)
        x = keras.layers.Add(name=f"attn_add{i}")([x, h])
        h = keras.layers.Dense(32, activation="gelu", name=f"up{i}")(x)
        h = keras.layers.Dense(dim, name=f"down{i}")(h)
        x = keras.layers.Add(name=f"mlp_add{i}")([h, x])  # skip input second
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _x(n=4):
    return RNG.normal(size=(n, 5, 16)).astype("float32")


def test_residual_blocks_find_skip_inputs_and_ignore_projection_shortcuts():
    model = _transformer(2)
    assert depth.residual_blocks(model) == {
        "attn_add0": 0,
        "mlp_add0": 1,
        "attn_add1": 0,
        "mlp_add1": 1,
    }
    inputs = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(4, 1, name="proj")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="branch")(inputs)
    projected = keras.Model(inputs, keras.layers.Add(name="add")([a, b]))
    assert depth.residual_blocks(projected) == {}


def test_scores_are_one_minus_cosine_of_block_input_and_output():
    model = _transformer(2)
    x = _x()
    scores = tfprune.depth.block_scores(model, [x[:2], (x[2:], None)])
    probe = keras.Model(
        model.input, [model.get_layer("attn_add1").input[0], model.get_layer("attn_add1").output]
    )
    a, b = (keras.ops.convert_to_numpy(t).astype(np.float64) for t in probe(x))
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    np.testing.assert_allclose(scores["attn_add1"], 1 - cos.mean(), rtol=1e-6)
    assert list(scores) == ["attn_add0", "mlp_add0", "attn_add1", "mlp_add1"]


def test_a_zero_branch_scores_zero_is_removed_first_and_exactly():
    model = _transformer(3)
    for var in model.get_layer("down1").weights:
        var.assign(np.zeros(var.shape, "float32"))
    x = _x()
    small, report = tfprune.prune_blocks(model, n=1, data=[x])
    assert report.removed == ["mlp_add1"]
    assert report.scores["mlp_add1"] == pytest.approx(0.0, abs=1e-12)
    assert report.output_change == pytest.approx(0.0, abs=1e-6)
    names = {layer.name for layer in small.layers}
    assert {"up1", "down1", "mlp_add1"}.isdisjoint(names)
    assert small.count_params() == model.count_params() - 16 * 32 - 32 - 32 * 16 - 16
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )


def test_units_remove_whole_transformer_layers_and_report_the_change():
    model = _transformer(3)
    x = _x()
    units = [[f"attn_add{i}", f"mlp_add{i}"] for i in range(3)]
    small, report = tfprune.prune_blocks(model, n=1, data=[x], units=units)
    assert list(report.scores) == [f"attn_add{i}+mlp_add{i}" for i in range(3)]
    (key,) = report.removed
    assert report.scores[key] == min(report.scores.values())
    i = key[-1]
    assert {f"attn{i}", f"up{i}", f"down{i}"}.isdisjoint({layer.name for layer in small.layers})
    a, b = (keras.ops.convert_to_numpy(m(x)) for m in (model, small))
    expected = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert report.output_change == pytest.approx(expected, rel=1e-5)
    assert report.output_change > 0


def test_identity_blocks_of_a_cnn():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    for i in range(2):
        h = keras.layers.Conv2D(8, 3, padding="same", name=f"conv{i}")(x)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        x = keras.layers.Activation("relu")(keras.layers.Add(name=f"add{i}")([x, h]))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    small, report = tfprune.prune_blocks(model, n=2, data=[RNG.normal(size=(2, 8, 8, 3))])
    assert sorted(report.removed) == ["add0", "add1"]
    assert [layer.name for layer in small.layers if "Conv" in type(layer).__name__] == ["stem"]


def test_errors():
    model = _transformer(1)
    with pytest.raises(ValueError, match="Received: data=None"):
        tfprune.prune_blocks(model, n=1)
    with pytest.raises(ValueError, match=r"Received: n=3"):
        tfprune.prune_blocks(model, n=3, data=[_x()])
    with pytest.raises(ValueError, match=r"\['embed'\] are not"):
        tfprune.prune_blocks(model, n=1, data=[_x()], units=[["embed"]])
    seq = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="expects a functional Keras model"):
        tfprune.prune_blocks(seq, n=1, data=[np.zeros((1, 3))])


@pytest.mark.slow
def test_resnet50_identity_blocks():
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.1)
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, size=layer.moving_variance.shape))
    blocks = tfprune.depth.residual_blocks(model)
    # 16 bottleneck blocks, 4 of which have a projection shortcut.
    assert len(blocks) == 12
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    small, report = tfprune.prune_blocks(model, n=2, data=[x])
    assert len(report.removed) == 2
    removed = sorted(report.removed)
    assert sorted(report.scores, key=report.scores.get)[:2] == sorted(
        removed, key=report.scores.get
    )
    # Each removed bottleneck takes 3 convolutions and 3 BatchNormalizations with it.
    convs = [layer for layer in small.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 53 - 6
    assert np.isfinite(report.output_change) and report.output_change > 0
