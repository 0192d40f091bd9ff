"""Save/load: .keras in safe mode, weights files, and resuming from a checkpoint."""

from __future__ import annotations

import keras
import numpy as np
from conftest import compile_model, small_cnn, toy_data

import tfprune


def _masks(model):
    return [
        keras.ops.convert_to_numpy(t.mask)
        for layer in tfprune.controller.prunable_layers(model)
        for t in layer.targets
    ]


def test_keras_file_restores_masks_schedule_and_step(tmp_path):
    x, y = toy_data(32)
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.7, 0, 8, frequency=2)
    model = compile_model(
        tfprune.wrap(small_cnn(), sparsity=schedule, granularity=(2, 2), exclude=["c1"])
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()])
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(_masks(model), _masks(loaded)):
        np.testing.assert_array_equal(a, b)
    layer = loaded.get_layer("c2")
    assert layer.schedule == schedule and layer.granularity.get_config() == [2, 2]
    assert tfprune.PruningController(loaded).step == 4
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_weights_files_round_trip(tmp_path):
    model = tfprune.wrap(small_cnn(), sparsity=0.5)
    tfprune.PruningController(model).update(0)
    model.save_weights(tmp_path / "w.weights.h5")
    fresh = tfprune.wrap(small_cnn(), sparsity=0.5)
    fresh.load_weights(tmp_path / "w.weights.h5")
    for a, b in zip(_masks(model), _masks(fresh)):
        np.testing.assert_array_equal(a, b)


def _run(epochs, initial_epoch=0, model=None, checkpoint=None):
    keras.utils.set_random_seed(7)
    x, y = toy_data(64, seed=3)
    if model is None:
        schedule = tfprune.schedules.PolynomialDecay(0.0, 0.8, 0, 30, frequency=3)
        model = compile_model(
            tfprune.wrap(small_cnn(), sparsity=schedule), optimizer=keras.optimizers.SGD(0.05, 0.9)
        )
    callbacks = [tfprune.callbacks.UpdateMasks()]
    if checkpoint is not None:
        callbacks.append(keras.callbacks.ModelCheckpoint(checkpoint))
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return model


def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    uninterrupted = _run(epochs=5)
    checkpoint = tmp_path / "mid.keras"
    _run(epochs=2, checkpoint=checkpoint)
    resumed = keras.saving.load_model(checkpoint)
    assert tfprune.PruningController(resumed).step == 16
    resumed = _run(epochs=5, initial_epoch=2, model=resumed)
    for a, b in zip(_masks(uninterrupted), _masks(resumed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(uninterrupted.weights, resumed.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5
        )
