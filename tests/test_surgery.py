"""wrap and strip on Sequential, functional and nested models; their errors."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from conftest import small_cnn, toy_data

import tfprune
from tfprune.wrapper import Prunable


def _types(model):
    return {layer.name: type(layer).__name__ for layer in tfprune.layers.iter_layers(model)}


def test_wrap_functional_keeps_weights_and_predictions():
    model = small_cnn()
    x, _ = toy_data(8)
    wrapped = tfprune.wrap(model, sparsity=0.5)
    np.testing.assert_array_equal(wrapped.predict(x, verbose=0), model.predict(x, verbose=0))
    assert _types(wrapped)["c1"] == "Prunable" and _types(wrapped)["bn1"] == "BatchNormalization"
    # The original model is untouched and shares no variables with the wrapped one.
    assert all(not isinstance(layer, Prunable) for layer in model.layers)
    original = {id(v) for v in model.weights}
    assert not original & {id(v) for v in wrapped.weights}


def test_wrap_sequential_and_nested_models():
    inner = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="inner_a"),
            keras.layers.Dense(4, name="inner_b"),
        ],
        name="block",
    )
    x = keras.Input((6,))
    y = keras.layers.Dense(2, name="head")(inner(x))
    model = keras.Model(x, y)
    data = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    wrapped = tfprune.wrap(model, sparsity=0.5, exclude=["head"])
    np.testing.assert_allclose(wrapped.predict(data, verbose=0), model.predict(data, verbose=0))
    types = _types(wrapped)
    assert (types["inner_a"], types["inner_b"], types["head"]) == ("Prunable", "Prunable", "Dense")
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="s1")])
    assert _types(tfprune.wrap(seq, sparsity=0.2))["s1"] == "Prunable"


def test_layers_and_exclude_accept_names_and_predicates():
    model = small_cnn()
    only = tfprune.wrap(model, sparsity=0.5, layers=["c2", "d1"])
    assert [layer.name for layer in tfprune.controller.prunable_layers(only)] == ["c2", "d1"]
    convs = tfprune.wrap(
        model, sparsity=0.5, layers=lambda layer: isinstance(layer, keras.layers.Conv2D)
    )
    assert [layer.name for layer in tfprune.controller.prunable_layers(convs)] == ["c1", "c2"]
    no_out = tfprune.wrap(model, sparsity=0.5, exclude=lambda layer: layer.name == "out")
    assert [layer.name for layer in tfprune.controller.prunable_layers(no_out)] == [
        "c1",
        "c2",
        "d1",
    ]


def test_wrap_single_layer_returns_prunable():
    layer = keras.layers.Dense(3)
    wrapped = tfprune.wrap(layer, sparsity=0.5)
    assert isinstance(wrapped, Prunable) and wrapped.layer is layer


def test_unsupported_layers_are_listed_once_in_a_warning():
    x = keras.Input((5, 3))
    y = keras.layers.LSTM(4, name="lstm")(x)
    y = keras.layers.Dense(2, name="dense")(y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = tfprune.wrap(keras.Model(x, y), sparsity=0.5)
    messages = [str(w.message) for w in caught if "leaves these layers dense" in str(w.message)]
    assert messages == [
        "tfprune.wrap leaves these layers dense because their types are not in the registry: "
        "lstm (LSTM). Register a type with tfprune.layers.register to prune it."
    ]
    assert _types(wrapped)["dense"] == "Prunable" and _types(wrapped)["lstm"] == "LSTM"


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_wrap_errors():
    model = small_cnn()
    wrapped = tfprune.wrap(model, sparsity=0.5)
    with pytest.raises(ValueError, match=r"already wrapped.*tfprune.strip"):
        tfprune.wrap(wrapped, sparsity=0.5)
    sub = _Subclassed()
    sub(np.ones((1, 3), "float32"))
    with pytest.raises(TypeError, match=r"subclassed model.*tfprune.Prunable\(keras.layers.Dense"):
        tfprune.wrap(sub, sparsity=0.5)
    with pytest.raises(TypeError, match=r"expects a Keras model or layer.*type dict"):
        tfprune.wrap({"a": 1}, sparsity=0.5)
    with pytest.raises(
        ValueError, match=r"`layers` names layers that are not in the model: \['nope'\]"
    ):
        tfprune.wrap(model, sparsity=0.5, layers=["c1", "nope"])
    with pytest.raises(
        ValueError, match=r"`exclude` names layers that are not in the model: \['x'\]"
    ):
        tfprune.wrap(model, sparsity=0.5, exclude="x")
    with pytest.raises(ValueError, match=r"cannot prune: \['bn1 \(BatchNormalization\)'\]"):
        tfprune.wrap(model, sparsity=0.5, layers=["bn1"])
    with pytest.raises(ValueError, match=r"Received: sparsity=1.0"):
        tfprune.wrap(model, sparsity=1.0)


def test_subclassed_model_with_prunable_layers_trains():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = tfprune.Prunable(keras.layers.Dense(16, activation="relu"), sparsity=0.5)
            self.out = keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.hidden(keras.ops.reshape(x, (-1, 64))))

    x, y = toy_data(32)
    net = Net()
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()])
    kernel = keras.ops.convert_to_numpy(net.hidden.layer.kernel)
    assert (kernel == 0).sum() == 512


def test_strip_returns_plain_model_with_equal_predictions():
    x, y = toy_data(32)
    wrapped = tfprune.wrap(small_cnn(), sparsity=0.6, exclude=["out"])
    wrapped.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped.fit(x, y, epochs=2, verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()])
    plain = tfprune.strip(wrapped)
    assert all(
        "tfprune" not in type(layer).__module__ for layer in tfprune.layers.iter_layers(plain)
    )
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), wrapped.predict(x, verbose=0), atol=1e-6
    )
    kernel = keras.ops.convert_to_numpy(plain.get_layer("d1").kernel)
    assert (kernel == 0).sum() == tfprune.allocation.count(0.6, kernel.size)
    assert plain.get_layer("d1").kernel.constraint is None
    with pytest.raises(TypeError, match=r"expects a Keras model or a tfprune.Prunable layer"):
        tfprune.strip(np.ones(3))
