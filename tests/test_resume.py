"""Resuming an interrupted run is exact on the two documented paths:
`keras.callbacks.BackupAndRestore(save_freq="epoch")`, and `ModelCheckpoint` +
`fit(initial_epoch=...)`, for magnitude schedules, channel pruning and L0 gates.

(`BackupAndRestore(save_freq=<batches>)` restarts the interrupted epoch from batch 0 in
Keras 3.15, so it cannot be exact; see docs/troubleshooting.md.)
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

import tfprune

EPOCHS, STOP = 4, 2
RNG = np.random.default_rng(5)
X = RNG.random((32, 6, 6, 1), dtype=np.float32)
Y = RNG.integers(0, 3, 32)


def _model(kind: str) -> keras.Model:
    keras.utils.set_random_seed(11)
    base = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, name="c1"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(8, activation="relu", name="d1"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    if kind == "magnitude":
        model = tfprune.wrap(base, tfprune.schedules.PolynomialDecay(0.0, 0.8, 0, 12, frequency=2))
    elif kind == "channel":
        schedule = tfprune.schedules.PolynomialDecay(0.0, 0.5, 0, 12, frequency=4)
        model = tfprune.wrap(base, schedule, granularity="channel", exclude=["out"])
    else:
        gate = tfprune.gates.L0(lam=0.1, num_examples=32, seed=3)
        model = tfprune.wrap(base, sparsity=None, gate=gate, exclude=["out"])
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _fit(model, epochs, callbacks=(), initial_epoch=0):
    model.fit(
        X,
        Y,
        batch_size=8,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks(), *callbacks],
    )
    return model


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == STOP:
            raise KeyboardInterrupt


def _state(model: keras.Model) -> tuple[int, dict[str, np.ndarray]]:
    weights = {
        w.path.removeprefix(f"{model.name}/"): keras.ops.convert_to_numpy(w) for w in model.weights
    }
    return tfprune.PruningController(model).step, weights


@functools.cache
def _uninterrupted(kind: str) -> tuple[int, dict[str, np.ndarray]]:
    return _state(_fit(_model(kind), EPOCHS))


def _assert_same(kind: str, resumed: keras.Model) -> None:
    step, expected = _uninterrupted(kind)
    got_step, got = _state(resumed)
    assert step == got_step == 16 and sorted(got) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_allclose(got[path], value, atol=1e-5, err_msg=path)


@pytest.mark.slow  # nine short fits; the checkpoint path below runs by default
@pytest.mark.parametrize("kind", ["magnitude", "channel", "l0"])
def test_backup_and_restore_per_epoch_is_exact(tmp_path, kind):
    backup = keras.callbacks.BackupAndRestore(tmp_path / "backup", save_freq="epoch")
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(kind), EPOCHS, [backup, _Interrupt()])
    _assert_same(kind, _fit(_model(kind), EPOCHS, [backup]))


@pytest.mark.parametrize("kind", ["magnitude", "channel", "l0"])
def test_checkpoint_and_initial_epoch_is_exact(tmp_path, kind):
    checkpoint = keras.callbacks.ModelCheckpoint(tmp_path / "last.keras")
    _fit(_model(kind), STOP, [checkpoint])
    resumed = tfprune.load_model(tmp_path / "last.keras")
    _assert_same(kind, _fit(resumed, EPOCHS, initial_epoch=STOP))
