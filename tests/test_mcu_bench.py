"""benchmarks/mcu.py: per-model budgets and recipes, repeated fine-tuning and its summary."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import load_benchmark

mcu = load_benchmark("mcu")
MODELS = ["ds_cnn", "resnet8", "mobilenet"]


def test_budgets_default_common_and_per_model():
    assert mcu.parse_budgets(None, MODELS) == {n: mcu.BUDGETS[n] for n in MODELS}
    assert mcu.parse_budgets("0.5,0.4", ["ds_cnn"]) == {"ds_cnn": (0.5, 0.4)}
    out = mcu.parse_budgets("0.5;mobilenet=0.7,0.6", MODELS)
    assert out == {"ds_cnn": (0.5,), "resnet8": (0.5,), "mobilenet": (0.7, 0.6)}
    out = mcu.parse_budgets("resnet8=0.3", MODELS)
    assert out == {
        "ds_cnn": mcu.BUDGETS["ds_cnn"],
        "resnet8": (0.3,),
        "mobilenet": mcu.BUDGETS["mobilenet"],
    }


def test_budgets_reject_unknown_models_and_fractions_outside_0_1():
    with pytest.raises(ValueError, match=r"names a model not run. Received: 'lenet=0.5'"):
        mcu.parse_budgets("lenet=0.5", MODELS)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]. Received: 'ds_cnn=1.5'"):
        mcu.parse_budgets("ds_cnn=1.5", MODELS)


def test_recipe_tag_names_what_changed_so_stale_caches_are_not_reused():
    assert mcu.Recipe().tag() == ""  # the name the first caches were saved under
    recipe = mcu.Recipe(epochs=12, lr=0.01, options=(("bn_momentum", 0.9),))
    assert recipe.tag() == "-lr0.01-bn_momentum0.9"
    assert recipe._replace(tune_lr=0.003).tag() == recipe.tag()  # fine-tuning: not the dense
    assert mcu.RECIPES["mobilenet"].tag() == "-bn_momentum0.9"
    model = mcu.mobilenet(bn_momentum=0.9)
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert len(norms) == 27 and {la.momentum for la in norms} == {0.9}
    assert len(model.layers) == len(mcu.mobilenet().layers)


def test_mean_std_and_difference_formats():
    assert mcu.mean_std([0.8]) == "0.8000"
    assert mcu.mean_std([0.8, 0.81, 0.82]) == "0.8100 ± 0.0100"
    assert mcu.difference([0.8], [0.75]) == "+0.0500"
    # standard error of the difference of two means: sqrt(0.01**2 / 3 + 0.02**2 / 3)
    assert mcu.difference([0.8, 0.81, 0.82], [0.77, 0.79, 0.81]) == "+0.0200 ± 0.0129"


def test_tune_seeds_repeats_from_the_same_weights():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    small = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, "relu")(inputs)))
    before = [w.copy() for w in small.get_weights()]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)
    evals = [(x[:32], y[:32]), (x[32:], y[32:])]
    first, acc = mcu.tune_seeds(small, x, y, evals, epochs=1, seeds=3)
    assert [len(a) for a in acc] == [3, 3]
    assert all(np.array_equal(a, b) for a, b in zip(before, small.get_weights()))
    again, acc2 = mcu.tune_seeds(small, x, y, evals, epochs=1, seeds=1)
    assert acc2 == [acc[0][:1], acc[1][:1]]  # seed 0 twice: the same run
    for a, b in zip(first.get_weights(), again.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(first.get_weights()[0], before[0])  # it was trained
