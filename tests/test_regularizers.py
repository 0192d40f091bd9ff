from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from tfprune import regularizers


def test_slimming_value():
    g = np.array([1.0, -2.0, 0.5], "float32")
    assert float(regularizers.Slimming(0.1)(g)) == pytest.approx(0.35, rel=1e-6)


def test_slimming_negative_strength():
    with pytest.raises(ValueError, match="Received: strength=-1"):
        regularizers.Slimming(-1)


def test_group_lasso_filters_and_inputs():
    w = np.arange(12, dtype="float32").reshape(3, 4) - 5.0
    got = float(regularizers.GroupLasso(0.5, "filters")(w))
    want = 0.5 * math.sqrt(3) * np.linalg.norm(w, axis=0).sum()
    assert got == pytest.approx(want, rel=1e-5)
    got = float(regularizers.GroupLasso(0.5, "inputs")(w))
    want = 0.5 * math.sqrt(4) * np.linalg.norm(w, axis=1).sum()
    assert got == pytest.approx(want, rel=1e-5)


def test_group_lasso_bad_groups():
    with pytest.raises(ValueError, match="Received: groups='rows'"):
        regularizers.GroupLasso(1.0, "rows")


def test_group_lasso_serializes():
    r = regularizers.GroupLasso(0.2, "inputs")
    r2 = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(r))
    assert isinstance(r2, regularizers.GroupLasso)
    assert r2.get_config() == {"strength": 0.2, "groups": "inputs"}


def test_proximal_zeroes_small_groups():
    layer = keras.layers.Dense(3, kernel_regularizer=regularizers.GroupLasso(1.0))
    model = keras.Sequential([keras.Input((4,)), layer])
    w = np.zeros((4, 3), "float32")
    w[:, 0] = 0.01  # norm 0.02 <= tau = 0.1 * 1 * 2
    w[:, 1] = 1.0  # norm 2
    w[:, 2] = 0.05  # norm 0.1 <= 0.2
    layer.kernel.assign(w)
    zero = regularizers.apply_proximal(model, 0.1)
    k = layer.kernel.numpy()
    assert zero == 2
    assert np.count_nonzero(k[:, [0, 2]]) == 0
    np.testing.assert_allclose(k[:, 1], 1.0 * (1 - 0.2 / 2.0), rtol=1e-6)


def test_slimming_in_losses_and_drives_gammas_down():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8)(inp)
    h = keras.layers.BatchNormalization()(h)
    out = keras.layers.Dense(1)(h)
    model = keras.Model(inp, out)
    slim = regularizers.slimming(model, strength=0.05)
    assert len(slim.losses) == 1
    bn = next(lay for lay in slim.layers if isinstance(lay, keras.layers.BatchNormalization))
    assert float(slim.losses[0]) == pytest.approx(0.05 * 8, rel=1e-6)
    slim.compile("sgd", "mse")
    x = np.random.rand(64, 6).astype("float32")
    slim.fit(x, np.zeros((64, 1)), epochs=3, verbose=0)
    assert np.abs(bn.gamma.numpy()).sum() < 8.0


def test_slimming_requires_bn():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no BatchNormalization"):
        regularizers.slimming(model)


def test_proximal_callback_in_fit_reaches_exact_zero():
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(4, kernel_regularizer=regularizers.GroupLasso(1.0))
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.rand(32, 3).astype("float32")
    model.fit(
        x, np.zeros((32, 1)), epochs=5, verbose=0, callbacks=[regularizers.ProximalGroupLasso()]
    )
    norms = np.linalg.norm(layer.kernel.numpy(), axis=0)
    assert np.all(norms == 0.0)


def test_proximal_reaches_kernels_inside_prunable_wrappers():
    import tfprune

    conv = keras.layers.Conv2D(2, 1, kernel_regularizer=regularizers.GroupLasso(1.0, "filters"))
    model = tfprune.wrap(keras.Sequential([keras.Input((3, 3, 1)), conv]), sparsity=None)
    kernel = model.layers[0].layer.kernel
    kernel.assign(np.array([[[[0.01, 3.0]]]], "float32"))  # tau = 0.1 * 1 * sqrt(1) = 0.1
    assert regularizers.apply_proximal(model, 0.1) == 1
    np.testing.assert_allclose(kernel.numpy().reshape(-1), [0.0, 2.9], rtol=1e-6)
