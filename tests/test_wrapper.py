"""Prunable: outputs, masks, gradients, optimizers, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprune
from tfprune.wrapper import Prunable

LAYERS = [
    (lambda: keras.layers.Dense(6), [(5,)]),
    (lambda: keras.layers.Dense(6), [(4, 5)]),
    (lambda: keras.layers.EinsumDense("abc,cd->abd", (4, 6), bias_axes="d"), [(4, 5)]),
    (lambda: keras.layers.Conv1D(4, 3), [(8, 2)]),
    (lambda: keras.layers.Conv2D(4, 3), [(8, 8, 2)]),
    (lambda: keras.layers.Conv3D(4, 2), [(4, 4, 4, 2)]),
    (lambda: keras.layers.Conv1DTranspose(4, 3), [(8, 2)]),
    (lambda: keras.layers.Conv2DTranspose(4, 3, strides=2), [(5, 5, 2)]),
    (lambda: keras.layers.Conv3DTranspose(4, 2), [(3, 3, 3, 2)]),
    (lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2), [(8, 2)]),
    (lambda: keras.layers.DepthwiseConv2D(3), [(8, 8, 4)]),
    (lambda: keras.layers.SeparableConv1D(4, 3), [(8, 2)]),
    (lambda: keras.layers.SeparableConv2D(4, 3), [(8, 8, 2)]),
    (lambda: keras.layers.MultiHeadAttention(2, 4), [(5, 8), (3, 6)]),
]


def _inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, *s)).astype("float32") for s in shapes]


@pytest.mark.parametrize(("make", "shapes"), LAYERS)
def test_wrapped_layer_matches_plain_layer_then_masked_weights(make, shapes):
    layer = make()
    xs = _inputs(shapes)
    expected = layer(*xs)
    wrapped = Prunable(layer, sparsity=0.5)
    np.testing.assert_array_equal(wrapped(*xs), expected)
    controller = tfprune.PruningController(wrapped)
    assert controller.update(0)
    for target in wrapped.targets:
        mask = keras.ops.convert_to_numpy(target.mask)
        assert (~mask).sum() == tfprune.allocation.count(0.5, mask.size)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(target.variable)[~mask], 0)
    # The layer computes with exactly the masked weights.
    plain = tfprune.strip(wrapped)
    np.testing.assert_allclose(wrapped(*xs), plain(*xs), atol=1e-6)
    assert not isinstance(plain, Prunable) and type(plain) is type(layer)


def test_embedding_is_prunable():
    emb = keras.layers.Embedding(20, 8)
    ids = np.array([[1, 2, 3], [4, 5, 19]])
    expected = emb(ids)
    wrapped = Prunable(emb, sparsity=0.75)
    np.testing.assert_array_equal(wrapped(ids), expected)
    tfprune.PruningController(wrapped).update(0)
    assert (keras.ops.convert_to_numpy(wrapped.layer.embeddings) == 0).sum() == 120


def _train(wrapped, optimizer, x, steps):
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = keras.ops.sum(wrapped(x, training=True) ** 2)
        grads = tape.gradient(loss, wrapped.trainable_variables)
        optimizer.apply(grads, wrapped.trainable_variables)


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.Adam(0.1),
        lambda: keras.optimizers.AdamW(0.1, weight_decay=0.5),
    ],
    ids=["sgd_momentum", "adam", "adamw"],
)
def test_masked_weights_stay_exactly_zero_under_optimizers(optimizer):
    x = np.random.default_rng(0).normal(size=(16, 12)).astype("float32")
    wrapped = Prunable(keras.layers.Dense(8), sparsity=0.5)
    wrapped(x)
    opt = optimizer()
    controller = tfprune.PruningController(wrapped)
    _train(wrapped, opt, x, 5)  # build up momentum on every weight first
    controller.update(0)
    mask = keras.ops.convert_to_numpy(wrapped.targets[0].mask)
    _train(wrapped, opt, x, 30)
    kernel = keras.ops.convert_to_numpy(wrapped.layer.kernel)
    assert (kernel[~mask] == 0).all() and (~mask).sum() == 48
    assert (kernel[mask] != 0).all()


def test_one_sgd_step_moves_kept_weights_and_leaves_pruned_ones_at_zero():
    x = np.ones((2, 4), "float32")
    wrapped = Prunable(keras.layers.Dense(3))
    wrapped(x)
    keep = np.ones((4, 3), bool)
    keep[0] = False
    wrapped.set_mask("kernel", keep)
    tfprune.PruningController(wrapped)
    before = keras.ops.convert_to_numpy(wrapped.layer.kernel).copy()
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(wrapped(x, training=True))
    grads = tape.gradient(loss, wrapped.trainable_variables)
    keras.optimizers.SGD(0.5).apply(grads, wrapped.trainable_variables)
    after = keras.ops.convert_to_numpy(wrapped.layer.kernel)
    np.testing.assert_array_equal(after[0], 0)
    np.testing.assert_allclose(after[1:], before[1:] - 0.5 * 2, rtol=1e-6)


def test_existing_constraint_is_kept():
    layer = keras.layers.Dense(3, kernel_constraint=keras.constraints.NonNeg())
    wrapped = Prunable(layer)
    wrapped(np.ones((1, 2), "float32"))
    value = wrapped.layer.kernel.constraint(keras.ops.convert_to_tensor([[-1.0, 2.0, 3.0]] * 2))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(value), [[0, 2, 3]] * 2)


def test_training_without_controller_names_the_fix():
    wrapped = Prunable(keras.layers.Dense(3), sparsity=0.5)
    with pytest.raises(RuntimeError, match=r"callbacks=\[tfprune.callbacks.UpdateMasks\(\)\]"):
        wrapped(np.ones((1, 2), "float32"), training=True)


@pytest.mark.parametrize("gate", [None, tfprune.gates.Scale(0.0)], ids=["masks", "gated"])
def test_dropout_state_and_losses_pass_through_the_wrapper(gate):
    layer = keras.layers.Dense(3, activity_regularizer=keras.regularizers.L1(1.0))
    wrapped = Prunable(layer, gate=gate)
    x = np.ones((2, 4), "float32")
    out = wrapped(x)
    assert len(wrapped.losses) == 1 + (gate is not None)  # activity (+ the gate's penalty)
    np.testing.assert_allclose(wrapped.losses[0], np.abs(out).sum() / 2, rtol=1e-6)
    mha = keras.layers.MultiHeadAttention(1, 2, dropout=0.5, seed=3)
    q = np.ones((1, 2, 4), "float32")
    mha(q, q)
    wrapped_mha = Prunable(mha, gate=gate)
    wrapped_mha(q, q)
    tfprune.PruningController(wrapped_mha)
    state = [v for v in mha.variables if "seed" in v.name]
    before = keras.ops.convert_to_numpy(state[0]).copy()
    first = wrapped_mha(q, q, training=True)
    assert not np.array_equal(before, keras.ops.convert_to_numpy(state[0]))
    # The advanced seed gives a new dropout pattern on the next call.
    assert not np.array_equal(first, wrapped_mha(q, q, training=True))


def test_masks_are_one_byte_booleans():
    wrapped = Prunable(keras.layers.Dense(16))
    wrapped(np.ones((1, 32), "float32"))
    assert wrapped.targets[0].mask.dtype == "bool"
    assert [v.name for v in wrapped.non_trainable_weights] == [
        "prune_step",
        "kernel_mask",
        "kernel_threshold",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sparsity": 1.0}, ValueError, r"Received: sparsity=1.0"),
        ({"sparsity": -0.2}, ValueError, r"Received: sparsity=-0.2"),
        ({"granularity": "dense"}, ValueError, "Received: granularity='dense'"),
        ({"scope": "model"}, ValueError, "Received: scope='model'"),
        ({"granularity": "2:4", "scope": "global"}, ValueError, "cannot be ranked globally"),
        ({"criterion": "norm"}, ValueError, "Received: criterion='norm'"),
        ({"criterion": 0.5}, TypeError, r"`criterion` to be a string.*criterion=0.5"),
        ({"max_layer_sparsity": 1.2}, ValueError, "max_layer_sparsity=1.2"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Prunable(keras.layers.Dense(2), **kwargs)


def test_wrapping_errors():
    wrapped = Prunable(keras.layers.Dense(2))
    with pytest.raises(ValueError, match=r"already wrapped in tfprune.Prunable"):
        Prunable(wrapped)
    with pytest.raises(TypeError, match=r"wraps a Keras layer.*type str"):
        Prunable("dense")
    with pytest.raises(
        ValueError, match=r"LSTM is not supported.*Supported: CachedMultiHeadAttention, Conv1D"
    ):
        Prunable(keras.layers.LSTM(2))
    with pytest.raises(ValueError, match="BatchNormalization is not supported"):
        Prunable(keras.layers.BatchNormalization())
    m_n = Prunable(keras.layers.Dense(2), granularity="2:4")
    with pytest.raises(ValueError, match=r"n=4 to divide.*'dense.*size 6"):
        m_n(np.ones((1, 6), "float32"))


def test_unbuilt_multi_input_layer_explains_how_to_build():
    wrapped = Prunable(keras.layers.MultiHeadAttention(2, 4))
    with pytest.raises(ValueError, match="Build it before wrapping"):
        wrapped.build((None, 3, 8))


def test_set_mask_checks_shape_and_name():
    wrapped = Prunable(keras.layers.Dense(2))
    wrapped(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"Received: keep.shape=\(2, 2\)"):
        wrapped.set_mask("kernel", np.ones((2, 2), bool))
    with pytest.raises(KeyError, match="no mask 'bias'"):
        wrapped.set_mask("bias", np.ones(2, bool))


def test_channel_mask_covers_kernel_and_bias():
    layer = keras.layers.Conv2D(4, 3, bias_initializer="ones")
    wrapped = Prunable(layer, granularity="channel")
    x = np.ones((1, 5, 5, 2), "float32")
    wrapped(x)
    assert [t.name for t in wrapped.targets] == ["channel"]
    wrapped.set_mask("channel", np.array([True, False, True, False]))
    out = keras.ops.convert_to_numpy(wrapped(x))
    assert (out[..., 1] == 0).all() and (out[..., 3] == 0).all() and (out[..., 0] != 0).all()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias), [1, 0, 1, 0])
