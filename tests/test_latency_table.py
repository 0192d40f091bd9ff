"""tfprune.latency_table.LatencyTable: per-layer LiteRT latencies measured once, cached."""

from __future__ import annotations

import json

import keras

from tfprune.latency_table import LatencyTable


def _mlp(hidden: int) -> keras.Model:
    inputs = keras.Input((12,))
    x = keras.layers.Dense(hidden, activation="relu", name="h")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def test_layers_are_timed_once_and_cached_on_disk(tmp_path):
    path = tmp_path / "lut.json"
    table = LatencyTable(path, runs=5)
    first = table.predict(_mlp(8))
    assert table.measured == 2  # the two Dense layers; BatchNorm folds into them
    assert len(json.loads(path.read_text())) == 2
    again = LatencyTable(path, runs=5)
    assert again.predict(_mlp(8)) == first and again.measured == 0
    # A narrower hidden layer changes both Dense layers' keys (units, input width).
    again.predict(_mlp(4))
    assert again.measured == 2 and len(again) == 4
    model = _mlp(8)
    entries = json.loads(path.read_text())
    keys = [
        LatencyTable.key(model.get_layer(n), tuple(model.get_layer(n).input.shape))
        for n in ("h", "out")
    ]
    assert first == sum(entries[k] for k in keys) > 0
