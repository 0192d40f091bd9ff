"""PruningController: schedules drive exact mask updates in layer and global scope."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import small_cnn

import tfprune
from tfprune import allocation


def _mask_zeros(layer):
    return {t.name: int((~keras.ops.convert_to_numpy(t.mask)).sum()) for t in layer.targets}


def test_layer_scope_hits_exact_count_per_tensor():
    model = tfprune.wrap(small_cnn(), sparsity=0.7)
    controller = tfprune.PruningController(model)
    assert controller.update(0)
    for layer in controller.layers:
        n = int(np.prod(layer.targets[0].variable.shape))
        assert _mask_zeros(layer) == {"kernel": allocation.count(0.7, n)}


def test_global_scope_hits_exact_global_count_with_ceiling():
    model = tfprune.wrap(small_cnn(), sparsity=0.9, scope="global", max_layer_sparsity=0.95)
    controller = tfprune.PruningController(model)
    controller.update(0)
    sizes = {
        layer.name: int(np.prod(layer.targets[0].variable.shape)) for layer in controller.layers
    }
    zeros = {layer.name: _mask_zeros(layer)["kernel"] for layer in controller.layers}
    assert sum(zeros.values()) == allocation.count(0.9, sum(sizes.values()))
    assert all(zeros[name] <= int(0.95 * sizes[name]) for name in sizes)
    # The global ranking is uneven: layers end at different sparsities.
    assert len({round(zeros[n] / sizes[n], 3) for n in sizes}) > 1


def test_global_threshold_is_shared():
    model = tfprune.wrap(small_cnn(), sparsity=0.5, scope="global")
    controller = tfprune.PruningController(model)
    controller.update(0)
    kept_min = min(
        np.abs(keras.ops.convert_to_numpy(t.variable))[keras.ops.convert_to_numpy(t.mask)].min()
        for layer in controller.layers
        for t in layer.targets
    )
    assert max(controller.thresholds().values()) <= kept_min


def test_updates_follow_the_schedule_and_masks_only_grow():
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.8, 0, 40, frequency=10)
    model = tfprune.wrap(small_cnn(), sparsity=schedule)
    controller = tfprune.PruningController(model)
    previous = None
    updated = []
    for step in range(60):
        if controller.update(step):
            updated.append(step)
            mask = keras.ops.convert_to_numpy(controller.layers[1].targets[0].mask)
            if previous is not None:
                assert not (mask & ~previous).any()
            previous = mask
    assert updated == [0, 10, 20, 30, 40]
    assert controller.sparsities()["d1/kernel"] == allocation.count(0.8, 256 * 32) / (256 * 32)


def test_m_n_through_the_controller():
    model = tfprune.wrap(small_cnn(), sparsity=0.5, granularity="2:4", layers=["c2", "d1"])
    tfprune.PruningController(model).update(0)
    kernel = keras.ops.convert_to_numpy(model.get_layer("d1").layer.kernel)
    groups = (kernel == 0).reshape(-1, 4, 32).transpose(0, 2, 1).reshape(-1, 4)
    assert (groups.sum(axis=1) == 2).all()


def test_custom_criterion_is_used():
    def reverse_magnitude(w):
        return -np.abs(w)

    model = tfprune.wrap(small_cnn(), sparsity=0.5, criterion=reverse_magnitude, layers=["d1"])
    kernel = keras.ops.convert_to_numpy(model.get_layer("d1").layer.kernel).copy()
    tfprune.PruningController(model).update(0)
    kept = keras.ops.convert_to_numpy(model.get_layer("d1").targets[0].mask)
    assert np.abs(kernel)[kept].max() <= np.abs(kernel)[~kept].min()


def test_controller_errors():
    with pytest.raises(ValueError, match=r"has no tfprune.Prunable layers.*tfprune.wrap"):
        tfprune.PruningController(small_cnn())
    a = tfprune.Prunable(keras.layers.Dense(2), sparsity=0.5, scope="global")
    b = tfprune.Prunable(keras.layers.Dense(2), sparsity=0.6, scope="global")
    x = keras.Input((3,))
    model = keras.Model(x, b(a(x)))
    with pytest.raises(ValueError, match="must share one schedule"):
        tfprune.PruningController(model)
    controller = tfprune.PruningController(tfprune.wrap(small_cnn(), sparsity=0.5))
    with pytest.raises(ValueError, match="Received: step=-1"):
        controller.set_step(-1)


def test_bad_foreign_schedule_value_is_reported():
    model = tfprune.wrap(small_cnn(), sparsity=lambda step: (True, 1.5), layers=["d1"])
    with pytest.raises(ValueError, match=r"returned sparsity=1.5 at step 0"):
        tfprune.PruningController(model).update(0)


def test_update_waits_for_an_unbuilt_model_then_catches_up():
    model = keras.Sequential([tfprune.Prunable(keras.layers.Dense(4, name="h"), sparsity=0.5)])
    controller = tfprune.PruningController(model)
    assert not controller.update(0)
    model(np.ones((1, 6), "float32"))
    assert controller.update(1)  # the update due at step 0 is applied now
    assert controller.sparsities()["h/kernel"] == 0.5
