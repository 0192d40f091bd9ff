"""Pruning under tf.distribute.MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1.

Each worker trains the same wrapped model with `UpdateMasks` for 240 steps (a custom loop:
Keras 3 `fit` does not run under this strategy) and writes its final masks to a file; both
must hold identical masks at exactly the target sparsity.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 240

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import keras
    import tfprune

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16)
    with strategy.scope():
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(8, 3, name="c1")(inputs)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(16, activation="relu", name="d1")(h)
        model = keras.Model(inputs, keras.layers.Dense(10, name="out")(h))
        pruned = tfprune.wrap(
            model, sparsity=tfprune.schedules.PolynomialDecay(0.0, 0.8, 0, 200, frequency=20)
        )
        pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Keras 3 `fit` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585),
    # so this is the custom training loop that strategy documents, with UpdateMasks driven
    # through the callback hooks that `fit` would call.
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum_over_batch_size"
    )

    @tf.function
    def train_step(batch):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, pruned(x, training=True)) / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, pruned.trainable_variables)
            pruned.optimizer.apply_gradients(zip(grads, pruned.trainable_variables))

        strategy.run(replica_step, args=batch)

    batches = iter(strategy.experimental_distribute_dataset(data))
    callback = tfprune.callbacks.UpdateMasks()
    callback.set_model(pruned)
    callback.on_train_begin()
    for epoch in range(4):
        callback.on_epoch_begin(epoch)
        for batch in range(STEPS // 4):
            callback.on_train_batch_begin(batch)
            train_step(next(batches))
        callback.on_epoch_end(epoch)
    callback.on_train_end()
    masks = {
        f"{layer.name}/{t.name}": np.asarray(keras.ops.convert_to_numpy(t.mask))
        for layer in tfprune.wrapper.prunable_layers(pruned)
        for t in layer.targets
    }
    np.savez(sys.argv[1], **masks)
    print("RESULT" + json.dumps({"step": tfprune.PruningController(pruned).step}))
    """
).replace("STEPS", str(STEPS))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow  # two TensorFlow processes and a gRPC ring: ~1-2 minutes on 2 cores
def test_two_workers_end_with_identical_masks_at_the_target(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for index in range(2):
            env = {
                **os.environ,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
                "TF_CPP_MIN_LOG_LEVEL": "3",
                "CUDA_VISIBLE_DEVICES": "",
                "PYTHONPATH": ROOT,
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(tmp_path / f"masks{index}.npz")],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        outputs = [p.communicate(timeout=420) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert 'RESULT{"step": 240}' in out
    masks = [dict(np.load(tmp_path / f"masks{i}.npz")) for i in range(2)]
    assert sorted(masks[0]) == ["c1/kernel", "d1/kernel", "out/kernel"]
    for name, mask in masks[0].items():
        np.testing.assert_array_equal(mask, masks[1][name])
        assert int((~mask.astype(bool)).sum()) == round(0.8 * mask.size), name
