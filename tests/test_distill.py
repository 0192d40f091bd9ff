"""tfprune.distill: exact loss values, training in fit, frozen teacher, saving, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune.distill import distillation_loss


def _model(seed: int, units: int = 3) -> keras.Model:
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(
        units, kernel_initializer=keras.initializers.RandomNormal(seed=seed)
    )(inputs)
    return keras.Model(inputs, outputs)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reference(s, t, y, temperature, alpha) -> float:
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    ls, lt = _log_softmax(s / temperature), _log_softmax(t / temperature)
    kl = (np.exp(lt) * (lt - ls)).sum(-1).mean() * temperature**2
    task = -_log_softmax(s)[np.arange(len(y)), y].mean()
    return alpha * task + (1 - alpha) * kl


def test_distillation_loss_exact():
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32)
    t = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
    got = float(keras.ops.convert_to_numpy(distillation_loss(s, t, 2.0)))
    np.testing.assert_allclose(got, _reference(s, t, np.zeros(2, int), 2.0, 0.0), rtol=1e-6)
    assert float(keras.ops.convert_to_numpy(distillation_loss(t, t, 3.0))) == pytest.approx(
        0.0, abs=1e-7
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_compute_loss_and_evaluate_exact(alpha):
    student, teacher = _model(1), _model(2)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    distiller = tfprune.Distiller(student, teacher, temperature=3.0, alpha=alpha)
    distiller.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    s = keras.ops.convert_to_numpy(student(x))
    t = keras.ops.convert_to_numpy(teacher(x))
    expected = _reference(s, t, y, 3.0, alpha)
    got = float(keras.ops.convert_to_numpy(distiller.compute_loss(x, y, distiller(x))))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    loss = distiller.evaluate(x, y, batch_size=8, verbose=0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_fit_trains_student_only_and_moves_towards_teacher():
    student, teacher = _model(1), _model(2)
    before = [w.copy() for w in teacher.get_weights()]
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = np.zeros(64, int)
    distiller = tfprune.Distiller(student, teacher, temperature=2.0, alpha=0.0)
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    gap = float(distillation_loss(student(x), teacher(x), 2.0))
    history = distiller.fit(x, y, epochs=20, batch_size=16, verbose=0)
    after = float(distillation_loss(student(x), teacher(x), 2.0))
    assert after < 0.1 * gap
    assert history.history["loss"][-1] < history.history["loss"][0]
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(distiller.trainable_weights) == 2


def test_config_round_trip():
    distiller = tfprune.Distiller(_model(1), _model(2), temperature=4.0, alpha=0.25)
    clone = tfprune.Distiller.from_config(distiller.get_config())
    assert (clone.temperature, clone.alpha) == (4.0, 0.25)
    assert [layer.units for layer in clone.student.layers[1:]] == [3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "Received: temperature=0.0"),
        ({"alpha": 1.5}, "Received: alpha=1.5"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfprune.Distiller(_model(1), _model(2), **kwargs)


def test_bad_models_and_shapes():
    with pytest.raises(TypeError, match="Received: teacher=3 of type int"):
        tfprune.Distiller(_model(1), 3)
    with pytest.raises(ValueError, match=r"student_logits.shape=\(2, 3\)"):
        distillation_loss(np.zeros((2, 3)), np.zeros((2, 4)))
