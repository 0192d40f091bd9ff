"""Callbacks inside model.fit: UpdateMasks (jit, steps_per_execution) and SparsityLogger."""

from __future__ import annotations

import glob
import os

import keras
import pytest
import tensorflow as tf
from conftest import compile_model, small_cnn, toy_data

import tfprune
from tfprune import allocation


@pytest.mark.parametrize(
    ("jit_compile", "steps_per_execution"), [(False, 1), (True, 1), (False, 3), (True, 4)]
)
def test_fit_reaches_the_scheduled_sparsity(jit_compile, steps_per_execution):
    x, y = toy_data(64)
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.75, 0, 16, frequency=4)
    model = tfprune.wrap(small_cnn(), sparsity=schedule, exclude=["out"])
    compile_model(model, jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    callback = tfprune.callbacks.UpdateMasks()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=[callback])
    assert callback.controller.step == 24  # 3 epochs x 8 batches
    for layer in callback.controller.layers:
        kernel = keras.ops.convert_to_numpy(layer.layer.kernel)
        assert (kernel == 0).sum() == allocation.count(0.75, kernel.size)
    assert isinstance(model.get_layer("out"), keras.layers.Dense)


def test_update_masks_writes_the_step_once_per_epoch_and_asks_schedules_when_due(monkeypatch):
    # Writing every layer's step after each batch and asking every schedule about each
    # step made fit 10-35 % slower for small models; now the step is written at epoch end
    # and schedules are asked only at the steps they name.
    writes, asked = [], []
    make_writer = tfprune.controller._step_writer
    next_update = tfprune.schedules.next_update

    def counting_writer(variables):
        write = make_writer(variables)
        return lambda step: writes.append((len(variables), step)) or write(step)

    def counting_next_update(schedule, last_step, step):
        asked.append(step)
        return next_update(schedule, last_step, step)

    monkeypatch.setattr(tfprune.controller, "_step_writer", counting_writer)
    monkeypatch.setattr(tfprune.schedules, "next_update", counting_next_update)
    x, y = toy_data(64)
    schedule = tfprune.schedules.ConstantSparsity(0.5, begin_step=2, frequency=5)
    model = compile_model(tfprune.wrap(small_cnn(), sparsity=schedule, exclude=["out"]))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()])
    assert writes == [(3, 8), (3, 16)]
    assert asked == [0, 0, 0, 2, 2, 2, 7, 7, 7, 12, 12, 12]  # 3 layers, at 0 and when due
    assert [int(layer.step) for layer in tfprune.controller.prunable_layers(model)] == [16] * 3


def test_a_checkpoint_saved_mid_epoch_holds_the_steps_trained(tmp_path):
    x, y = toy_data(64)
    model = compile_model(tfprune.wrap(small_cnn(), sparsity=0.5, exclude=["out"]))
    checkpoint = keras.callbacks.ModelCheckpoint(tmp_path / "mid.keras", save_freq=5)
    # The checkpoint runs before UpdateMasks in each batch, and no epoch has ended.
    callbacks = [checkpoint, tfprune.callbacks.UpdateMasks()]
    model.fit(x, y, batch_size=8, verbose=0, callbacks=callbacks)
    loaded = keras.saving.load_model(tmp_path / "mid.keras")
    steps = [int(layer.step) for layer in tfprune.controller.prunable_layers(loaded)]
    assert steps == [5] * 3


class _RestoreStep(keras.callbacks.Callback):
    """Sets the pruning step at train begin, as BackupAndRestore does when it restores."""

    def on_train_begin(self, logs=None):
        tfprune.PruningController(self.model).set_step(10)


def test_update_masks_continues_from_a_step_restored_at_train_begin():
    x, y = toy_data(64)
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.75, 10, 14, frequency=2)
    model = compile_model(tfprune.wrap(small_cnn(), sparsity=schedule, exclude=["out"]))
    callback = tfprune.callbacks.UpdateMasks()
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[callback, _RestoreStep()])
    assert callback.controller.step == 18
    for layer in callback.controller.layers:
        kernel = keras.ops.convert_to_numpy(layer.layer.kernel)
        assert (kernel == 0).sum() == allocation.count(0.75, kernel.size)


def test_fit_without_update_masks_fails_with_the_fix():
    x, y = toy_data(16)
    model = compile_model(tfprune.wrap(small_cnn(), sparsity=0.5))
    with pytest.raises(RuntimeError, match=r"Add the callback.*UpdateMasks"):
        model.fit(x, y, epochs=1, verbose=0)


def test_evaluate_and_predict_need_no_callback():
    x, y = toy_data(16)
    model = compile_model(tfprune.wrap(small_cnn(), sparsity=0.5))
    model.evaluate(x, y, verbose=0)
    assert model.predict(x, verbose=0).shape == (16, 10)


def _read_scalars(folder):
    values = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor)))
                )
    return values


def test_sparsity_logger_writes_beside_tensorboard(tmp_path):
    x, y = toy_data(32)
    model = compile_model(tfprune.wrap(small_cnn(), sparsity=0.5, exclude=["out"]))
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[
            tfprune.callbacks.UpdateMasks(),
            tfprune.callbacks.SparsityLogger(tmp_path),
            keras.callbacks.TensorBoard(tmp_path),
        ],
    )
    assert {"pruning", "train"} <= set(os.listdir(tmp_path))
    scalars = _read_scalars(tmp_path / "pruning")
    assert [s for s, _ in scalars["sparsity/global"]] == [4, 8]
    c1 = allocation.count(0.5, 72) / 72
    assert scalars["sparsity/c1/kernel"][-1][1] == pytest.approx(c1, abs=1e-6)
    total = 72 + 1152 + 25600
    expected = (allocation.count(0.5, 72) + allocation.count(0.5, 1152) + 12800) / total
    assert scalars["sparsity/global"][-1][1] == pytest.approx(expected, abs=1e-6)
    stored = tfprune.controller.thresholds(tfprune.controller.prunable_layers(model))
    assert scalars["threshold/d1/kernel"][-1][1] == pytest.approx(stored["d1/kernel"])
    assert stored["d1/kernel"] > 0


def test_sparsity_logger_batch_frequency_and_errors(tmp_path):
    with pytest.raises(ValueError, match="Received: update_freq=0"):
        tfprune.callbacks.SparsityLogger(tmp_path, update_freq=0)
    x, y = toy_data(32)
    model = compile_model(tfprune.wrap(small_cnn(), sparsity=0.5))
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[
            tfprune.callbacks.UpdateMasks(),
            tfprune.callbacks.SparsityLogger(tmp_path, update_freq=2),
        ],
    )
    steps = [s for s, _ in _read_scalars(tmp_path / "pruning")["sparsity/global"]]
    assert steps == [2, 4, 4]
    plain = compile_model(small_cnn())
    with pytest.raises(ValueError, match=r"found no tfprune.Prunable layers"):
        plain.fit(x, y, verbose=0, callbacks=[tfprune.callbacks.SparsityLogger(tmp_path)])
