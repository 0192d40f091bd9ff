"""Training-step overhead of tfprune's wrapper, and the memory its pruning state adds.

For each model the dense model and its `tfprune.wrap`-ped copy (50 % sparsity, masks set)
are trained with `train_on_batch` on the same batch of 128, in interleaved repetitions in one
process; the table reports the median step time and the ratio wrapped / dense. Pruning state
per prunable weight is read from the model's variables (masks are bool: one byte).

    python benchmarks/overhead.py            # 25 repetitions of 20 steps per model
    python benchmarks/overhead.py --quick    # smoke run

Runs on random data of the Fashion-MNIST shapes (timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _results import append_results

import tfprune


def cnn() -> keras.Model:
    """Fashion-MNIST CNN: Conv32-Conv64-Dense128."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def lenet_300_100() -> keras.Model:
    """LeNet-300-100 on flattened 28x28 images."""
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(300, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _compiled(model: keras.Model) -> keras.Model:
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _state_bytes(model: keras.Model) -> tuple[int, int]:
    """(bytes of pruning state, number of prunable weights) of a wrapped model."""
    state, prunable = 0, 0
    for layer in tfprune.controller.prunable_layers(model):
        state += sum(
            int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in layer.non_trainable_weights
        )
        prunable += sum(int(np.prod(t.variable.shape)) for t in layer.targets)
    return state, prunable


def measure(build, shape, reps: int, steps: int) -> dict:
    """Median seconds per step of dense vs wrapped, interleaved."""
    rng = np.random.default_rng(0)
    x = rng.random((128, *shape), dtype=np.float32)
    y = rng.integers(0, 10, 128)
    dense = _compiled(build())
    wrapped = tfprune.wrap(build(), sparsity=0.5)
    tfprune.PruningController(wrapped).update(0)
    _compiled(wrapped)
    models = {"dense": dense, "wrapped": wrapped}
    for m in models.values():
        m.train_on_batch(x, y)
    times = {k: [] for k in models}
    for _ in range(reps):
        for name, m in models.items():
            start = time.perf_counter()
            for _ in range(steps):
                m.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    state, prunable = _state_bytes(wrapped)
    return {**med, "ratio": med["wrapped"] / med["dense"], "bytes": state / prunable}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 5 steps")
    args = parser.parse_args(argv)
    reps, steps = (3, 5) if args.quick else (25, 20)
    rows = [
        ("Fashion-MNIST CNN Conv32-Conv64-Dense128", cnn, (28, 28, 1)),
        ("LeNet-300-100", lenet_300_100, (784,)),
    ]
    lines = [
        "| model | dense step (ms) | wrapped step (ms) | ratio "
        "| pruning state, bytes per prunable weight |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, build, shape in rows:
        r = measure(build, shape, reps, steps)
        lines.append(
            f"| {name} | {r['dense'] * 1e3:.2f} | {r['wrapped'] * 1e3:.2f} | {r['ratio']:.3f} "
            f"| {r['bytes']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.quick:
        append_results(
            "\n## Training-step overhead (issue 3)\n\n"
            f"`python benchmarks/overhead.py`, 2-core CPU, no GPU, {datetime.date.today()}; "
            f"batch 128, median of {reps} interleaved repetitions of {steps} steps, "
            "default `compile` (no XLA).\n\n" + table + "\n"
        )


if __name__ == "__main__":
    main()
