"""Registry: weight specs per layer type and MACs per example."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfprune import layers as registry


def _built(layer, *shapes):
    layer(*[np.zeros((1, *s), "float32") for s in shapes])
    return layer


@pytest.mark.parametrize(
    ("layer", "shape", "paths"),
    [
        (keras.layers.Dense(4), (3,), ["kernel", "bias"]),
        (keras.layers.Dense(4, use_bias=False), (3,), ["kernel"]),
        (keras.layers.Conv1D(4, 3), (8, 2), ["kernel", "bias"]),
        (keras.layers.Conv2D(4, 3), (8, 8, 2), ["kernel", "bias"]),
        (keras.layers.Conv3D(4, 3), (5, 5, 5, 2), ["kernel", "bias"]),
        (keras.layers.Conv2DTranspose(4, 3), (8, 8, 2), ["kernel", "bias"]),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 2), ["kernel", "bias"]),
        (keras.layers.DepthwiseConv1D(3), (8, 2), ["kernel", "bias"]),
        (
            keras.layers.SeparableConv2D(4, 3),
            (8, 8, 2),
            ["depthwise_kernel", "pointwise_kernel", "bias"],
        ),
        (
            keras.layers.SeparableConv1D(4, 3),
            (8, 2),
            ["depthwise_kernel", "pointwise_kernel", "bias"],
        ),
        (
            keras.layers.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c"),
            (3,),
            ["kernel", "bias"],
        ),
    ],
)
def test_weight_specs_resolve_every_weight(layer, shape, paths):
    _built(layer, shape)
    spec = registry.lookup(layer)
    specs = spec.weight_specs(layer)
    assert [s.path for s in specs] == paths
    assert {id(registry.resolve(layer, s.path)) for s in specs} == {id(w) for w in layer.weights}


def test_embedding_and_attention_specs():
    emb = keras.layers.Embedding(50, 6)
    emb(np.zeros((1, 3), "int32"))
    assert [s.path for s in registry.lookup(emb).prunable_specs(emb)] == ["embeddings"]
    mha = _built(keras.layers.MultiHeadAttention(2, 4), (5, 8), (3, 6))
    prunable = [s.path for s in registry.lookup(mha).prunable_specs(mha)]
    assert prunable == [
        "query_dense.kernel",
        "key_dense.kernel",
        "value_dense.kernel",
        "output_dense.kernel",
    ]
    q = registry.lookup(mha).weight_specs(mha)[0]
    assert (q.in_axes, q.out_axes, q.output) == ((0,), (1, 2), False)


def test_einsum_axes_from_equation():
    assert registry._einsum_axes("abc,cde->abde") == ((0,), (1, 2))
    assert registry._einsum_axes("abcd,cde->abe") == ((0, 1), (2,))
    with pytest.raises(ValueError, match="Cannot parse EinsumDense equation"):
        registry._einsum_axes("abc->c")


def test_unregistered_and_subclass_are_not_matched():
    class MyDense(keras.layers.Dense):
        pass

    assert registry.lookup(MyDense(3)) is None
    assert registry.lookup(keras.layers.LSTM(3)) is None
    registry.register(MyDense, registry.lookup(keras.layers.Dense(1)))
    try:
        assert registry.lookup(MyDense(3)) is registry.lookup(keras.layers.Dense(1))
    finally:
        del registry._REGISTRY[MyDense]


def test_register_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"subclass of keras.layers.Layer"):
        registry.register(int, registry.LayerSpec(()))
    with pytest.raises(TypeError, match="LayerSpec"):
        registry.register(keras.layers.Dense, {"kernel": 0})


def test_supported_lists_prunable_types_only():
    names = registry.supported()
    assert "Dense" in names and "MultiHeadAttention" in names and "Conv3DTranspose" in names
    assert "BatchNormalization" not in names


@pytest.mark.parametrize(
    ("layer", "in_shape", "expected"),
    [
        # Dense on (T, D): T * D * units
        (keras.layers.Dense(5), (7, 3), 7 * 3 * 5),
        # Conv2D valid 3x3, 8x8x2 -> 6x6x4: 6*6 * 3*3*2*4
        (keras.layers.Conv2D(4, 3), (8, 8, 2), 36 * 72),
        # stride 2 same: 4x4 outputs
        (keras.layers.Conv2D(4, 3, strides=2, padding="same"), (8, 8, 2), 16 * 72),
        # transposed: each of 8*8 inputs multiplies the whole 3x3x4x2 kernel
        (keras.layers.Conv2DTranspose(4, 3), (8, 8, 2), 64 * 72),
        # depthwise 3x3, 2 channels x mult 2, 6x6 outputs
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 2), 36 * 9 * 4),
        # separable: depthwise 36*9*2 + pointwise 36*2*4
        (keras.layers.SeparableConv2D(4, 3), (8, 8, 2), 36 * 18 + 36 * 8),
        (keras.layers.Conv1D(4, 3), (8, 2), 6 * 3 * 2 * 4),
    ],
)
def test_macs(layer, in_shape, expected):
    x = keras.Input(in_shape)
    y = layer(x)
    assert registry.macs(layer, [x.shape], y.shape) == expected


def test_macs_of_attention_and_embedding():
    q, v = keras.Input((5, 8)), keras.Input((3, 6))
    mha = keras.layers.MultiHeadAttention(2, 4)
    out = mha(q, v)
    # projections: q 5*8*8, k 3*6*8, v 3*6*8, out 5*8*8; scores + weighted sum 2*5*3*(4+4)
    expected = 5 * 64 + 3 * 48 + 3 * 48 + 5 * 64 + 2 * 5 * 3 * 8
    assert registry.macs(mha, [q.shape, v.shape], out.shape) == expected
    emb = keras.layers.Embedding(50, 6)
    ids = keras.Input((3,), dtype="int32")
    assert registry.macs(emb, [ids.shape], emb(ids).shape) == 0


def test_iter_layers_enters_nested_models_once():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")], name="inner"
    )
    x = keras.Input((4,))
    y = inner(x)
    y = inner(y[:, :3] @ np.ones((3, 4), "float32"))
    model = keras.Model(x, keras.layers.Dense(2, name="head")(y))
    names = [layer.name for layer in registry.iter_layers(model)]
    assert names.count("inner") == 1 and names.count("inner_dense") == 1 and "head" in names
