"""Pruning under tf.distribute.MirroredStrategy on two logical CPU devices.

Logical devices must be configured before TensorFlow starts, so the training runs in a
subprocess that prints its findings as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    import numpy as np
    import tfprune

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    with strategy.scope():
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(8, 3, name="c1")(inputs)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(16, activation="relu", name="d1")(h)
        model = keras.Model(inputs, keras.layers.Dense(10, name="out")(h))
        pruned = tfprune.wrap(
            model,
            sparsity=tfprune.schedules.PolynomialDecay(0.0, 0.75, 0, 12, frequency=3),
            scope="global",
        )
        pruned.compile(
            "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    pruned.fit(x, y, batch_size=16, epochs=4, verbose=0,
               callbacks=[tfprune.callbacks.UpdateMasks()])
    result = {"replicas": strategy.num_replicas_in_sync, "layers": {}}
    for layer in tfprune.controller.prunable_layers(pruned):
        kernel = layer.targets[0].variable
        copies = [np.asarray(v) for v in kernel.value.values] if hasattr(
            kernel.value, "values") else [np.asarray(kernel.value)]
        masks = [np.asarray(m) for m in layer.targets[0].mask.value.values]
        result["layers"][layer.name] = {
            "size": int(copies[0].size),
            "zeros": [int((c == 0).sum()) for c in copies],
            "mask_zeros": [int((~m).sum()) for m in masks],
            "replicas_equal": all(np.array_equal(copies[0], c) for c in copies),
        }
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_masks_are_exact_and_identical_on_replicas():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT") :])
    assert result["replicas"] == 2
    layers = result["layers"]
    total = sum(info["size"] for info in layers.values())
    mask_zeros = [info["mask_zeros"] for info in layers.values()]
    assert all(len(set(z)) == 1 for z in mask_zeros)  # same masks on both replicas
    assert sum(z[0] for z in mask_zeros) == round(0.75 * total)
    for info in layers.values():
        assert info["replicas_equal"]
        assert min(info["zeros"]) >= info["mask_zeros"][0]
