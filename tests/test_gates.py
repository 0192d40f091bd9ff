from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from tfprune import gates


def test_hard_concrete_formulas():
    la = np.array([-3.0, 0.0, 2.0], "float32")
    u = np.array([0.3, 0.5, 0.9], "float32")
    s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + la) / (2 / 3)))
    want = np.clip(s * 1.2 - 0.1, 0, 1)
    np.testing.assert_allclose(gates.hard_concrete(la, u), want, rtol=1e-5)
    det = np.clip(1 / (1 + np.exp(-la)) * 1.2 - 0.1, 0, 1)
    np.testing.assert_allclose(gates.hard_concrete(la), det, rtol=1e-5)


def test_l0_penalty_formula():
    la = np.array([-1.0, 0.5], "float32")
    want = sum(1 / (1 + math.exp(-(a - (2 / 3) * math.log(0.1 / 1.1)))) for a in la)
    assert float(gates.l0_penalty(la)) == pytest.approx(want, rel=1e-5)


def _model():
    inp = keras.Input((5,))
    h = keras.layers.Dense(7)(inp)
    h = gates.L0Gate(lam=2.0, num_examples=10, drop_rate=0.3, seed=1, name="gate")(h)
    return keras.Model(inp, keras.layers.Dense(2)(h))


def test_gate_init_range_and_determinism():
    model = _model()
    g = model.get_layer("gate")
    np.testing.assert_allclose(g.log_alpha.numpy(), math.log(0.7 / 0.3), rtol=1e-6)
    x = np.random.rand(4, 5).astype("float32")
    sampled = keras.ops.convert_to_numpy(g.gate(training=True))
    assert sampled.min() >= 0 and sampled.max() <= 1
    np.testing.assert_array_equal(model(x), model(x))
    assert g.open_gates() == 7


def test_gate_penalty_added_in_training():
    model = _model()
    g = model.get_layer("gate")
    x = np.random.rand(4, 5).astype("float32")
    model(x, training=True)
    want = 2.0 * float(gates.l0_penalty(g.log_alpha)) / 10
    assert float(model.losses[0]) == pytest.approx(want, rel=1e-6)


def test_gate_bad_drop_rate():
    with pytest.raises(ValueError, match=r"Received: drop_rate=1\.5"):
        gates.L0Gate(drop_rate=1.5)


def test_gates_round_trip(tmp_path):
    model = _model()
    inp = keras.Input((7,))
    model.get_layer("gate").log_alpha.assign(np.linspace(-3, 3, 7).astype("float32"))
    x = np.random.rand(4, 5).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    scaled = keras.Model(inp, gates.ScaleGate(0.1)(inp))
    scaled.save(tmp_path / "s.keras")
    s2 = keras.saving.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(s2.layers[-1].scale.numpy(), np.ones(7, "float32"))
    assert float(s2.losses[0]) == pytest.approx(0.7, rel=1e-6)


def test_fold_exact_and_shrinkable():
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, activation="relu")(inp)
    h = gates.L0Gate(name="g")(h)
    h = keras.layers.Dense(4)(h)
    h = gates.ScaleGate(name="s")(h)
    model = keras.Model(inp, keras.layers.Dense(2)(h))
    model.get_layer("g").log_alpha.assign(np.array([-9, -9, 0, 1, 5, 9], "float32"))
    model.get_layer("s").scale.assign(np.array([0.0, 0.5, 2.0, 1.0], "float32"))
    folded = gates.fold(model)
    x = np.random.rand(8, 5).astype("float32")
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-5, atol=1e-6)
    assert not any(isinstance(lay, (gates.L0Gate, gates.ScaleGate)) for lay in folded.layers)
    k = folded.layers[1].kernel.numpy()
    assert np.count_nonzero(k[:, :2]) == 0 and np.count_nonzero(k[:, 2:]) == 5 * 4


def test_fold_refuses_nonhomogeneous_activation():
    inp = keras.Input((3,))
    h = keras.layers.Dense(2, activation="tanh")(inp)
    model = keras.Model(inp, gates.L0Gate()(h))
    with pytest.raises(ValueError, match="activation='tanh'"):
        gates.fold(model)
