"""Tests for tfprune.shrink_rules: the per-layer config table that shrink rebuilds layers with."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfprune
from tfprune.graph.rules import layers as graph_layers
from tfprune.shrink_rules import configs

L = keras.layers


class _Wide(L.Dense):
    """A Dense subclass: exact-class tables do not know it until it is registered."""


def _resize(width, kind="source", kept=None):
    return configs.Resize(width, kind, kept or {})


def test_width_rules_by_class():
    dense, conv = L.Dense(8), L.Conv2D(8, 3, groups=8)
    assert configs.lookup(dense)(dense, _resize(5)) == {"units": 5}
    assert configs.lookup(conv)(conv, _resize(5)) == {"filters": 5}
    assert configs.lookup(conv)(conv, _resize(5, "grouped")) == {"filters": 5, "groups": 5}
    assert configs.lookup(dense)(dense, _resize(None, None)) == {}
    assert configs.lookup(L.BatchNormalization()) is None
    assert configs.lookup(_Wide(8)) is None


def test_reshape_and_attention_rules():
    reshape = L.Reshape((2, 3, 8))
    assert configs.lookup(reshape)(reshape, _resize(5, "flatten")) == {"target_shape": (2, 3, 5)}
    mha = L.MultiHeadAttention(2, 4, output_shape=6)
    recorded = {"attention_output/kernel": 4, "query/kernel": 6}
    assert configs.lookup(mha)(mha, _resize(4, "attention", recorded)) == {"output_shape": (4,)}
    assert configs.lookup(mha)(mha, _resize(4, "attention", {"query/kernel": 6})) == {}
    plain = L.MultiHeadAttention(2, 4)
    assert configs.lookup(plain)(plain, _resize(4, "attention", recorded)) == {}


def test_lookup_prefers_the_class_over_the_registered_name():
    name = keras.saving.get_registered_name(_Wide)
    by_name, by_class = configs.width("units"), configs.width("units")
    configs.register(name, by_name)
    try:
        assert configs.lookup(_Wide(8)) is by_name
        configs.register(_Wide, by_class)
        assert configs.lookup(_Wide(8)) is by_class
    finally:
        configs._TABLE.pop(name)
        configs._TABLE.pop(_Wide, None)


def test_register_rejects_bad_arguments():
    where = "tfprune.shrink_rules.configs.register"
    with pytest.raises(TypeError) as err:
        configs.register(3, configs.width("units"))
    assert str(err.value) == (
        f"{where} expects a layer class, or a registered name. Received: target=3 of type int"
    )
    with pytest.raises(TypeError) as err:
        configs.register(_Wide, None)
    assert (
        str(err.value) == f"{where} expects a callable `rule(layer, resize)`. Received: rule=None"
    )
    assert configs.lookup(_Wide(8)) is None


def test_a_registered_config_rule_lets_shrink_rebuild_a_custom_producer():
    tfprune.layers.register(_Wide, tfprune.layers.lookup(L.Dense(1)))
    tfprune.graph.register(_Wide, graph_layers.source, kind="source")
    configs.register(_Wide, configs.width("units"))
    try:
        i = keras.Input((6,))
        model = keras.Model(i, L.Dense(3, name="out")(_Wide(8, name="wide")(i)))
        rng = np.random.default_rng(0)
        for w in model.weights:
            w.assign(rng.normal(size=w.shape).astype("float32"))
        wide = model.get_layer("wide")
        kernel = keras.ops.convert_to_numpy(wide.kernel)
        kernel[:, [1, 4, 6]] = 0.0  # three dead units; their bias still reaches "out"
        wide.kernel.assign(kernel)
        small = tfprune.shrink(model)
        assert type(small.get_layer("wide")) is _Wide
        assert small.get_layer("wide").units == 5
        assert small.get_layer("out").kernel.shape == (5, 3)
        x = rng.normal(size=(4, 6)).astype("float32")
        np.testing.assert_allclose(
            small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
        )
    finally:
        tfprune.layers._REGISTRY.pop(_Wide)
        tfprune.graph.table._TABLE.pop(_Wide)
        configs._TABLE.pop(_Wide)
