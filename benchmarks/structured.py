"""Structured vs unstructured pruning on Fashion-MNIST: accuracy, params, MACs, int8 TFLite.

Usage: `python benchmarks/structured.py [--tiny] [--no-write]`

A VGG-style CNN (Conv32-Conv32-pool-Conv64-Conv64-pool-Dense128, BN + ReLU) is trained
dense; then, from the same dense weights:
- channel-pruned 50 % and 70 % (global L1 over channel groups, `tfprune.prune_channels`),
  shrunk with `tfprune.shrink`, and fine-tuned;
- pruned unstructured (tfmot-style: layer-wise magnitude, polynomial schedule, fine-tuned
  with `UpdateMasks`) to the same number of nonzero parameters as each channel-pruned model.
Every model is exported to int8 TFLite with `tfprune.export.tflite` and timed with
`tfprune.export.latency` (LiteRT interpreter, 1 thread, median). Ratios are vs the dense
model measured in the same process. Appends the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _results import append_results

import tfprune
from tfprune import data

BATCH = 64


def build(classes: int = 10) -> keras.Model:
    """VGG-style CNN on 28x28x1."""
    x = inputs = keras.Input((28, 28, 1), name="image")
    for k, filters in enumerate((32, 32, "pool", 64, 64, "pool")):
        if filters == "pool":
            x = keras.layers.MaxPooling2D(name=f"pool{k}")(x)
            continue
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{k}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{k}")(x)
        x = keras.layers.ReLU(name=f"relu{k}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg_fashion")


def _compile(model: keras.Model, lr: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _channel(dense, ratio, x, y, epochs):
    pruned = tfprune.prune_channels(dense, ratio=ratio, criterion="l1", scope="global")
    small = tfprune.shrink(pruned)
    _compile(small, 5e-4).fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return small


def _unstructured(dense, sparsity, x, y, epochs):
    steps = epochs * int(np.ceil(len(x) / BATCH))
    end = max(10, steps // 2 // 10 * 10)
    schedule = tfprune.schedules.PolynomialDecay(0.0, sparsity, 0, end, frequency=10)
    pruned = tfprune.wrap(dense, sparsity=schedule, exclude=["logits"])
    _compile(pruned, 5e-4).fit(
        x, y, batch_size=BATCH, epochs=epochs, verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks()],
    )  # fmt: skip
    return tfprune.strip(pruned)


def _prunable_weights(model) -> int:
    return sum(
        int(np.prod(tfprune.layers.resolve(layer, s.path).shape))
        for layer in tfprune.layers.iter_layers(model)
        if (spec := tfprune.layers.lookup(layer)) is not None and layer.name != "logits"
        for s in spec.prunable_specs(layer)
    )


def _measure(name, model, x_cal, x_test, y_test, folder):
    path = os.path.join(folder, f"{name}.tflite")
    result = tfprune.export.tflite(
        model, path, quantize="int8", representative_data=x_cal, verify_data=(x_test, y_test)
    )
    stats = tfprune.summary(model, print_fn=None)
    return {
        "name": name,
        "acc": result.verification.reference_accuracy,
        "int8_acc": result.verification.accuracy,
        "params": stats.params,
        "nonzeros": stats.nonzeros,
        "macs": stats.macs,
        "size": result.size,
        "latency": tfprune.export.latency(path, threads=1, runs=300, warmup=30).median,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small subset, 1 epoch (smoke)")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    start = time.time()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.fashion_mnist()
    epochs, tune = 3, 2
    if args.tiny:
        x_train, y_train, x_test, y_test = (
            x_train[:2000],
            y_train[:2000],
            x_test[:500],
            y_test[:500],
        )
        epochs, tune = 1, 1
    dense = build()
    _compile(dense, 1e-3).fit(x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0)
    models = {"dense": dense}
    for ratio in (0.5, 0.7):
        models[f"channel {ratio:.0%}"] = _channel(dense, ratio, x_train, y_train, tune)
    dense_prunable = _prunable_weights(dense)
    for ratio in (0.5, 0.7):
        small = models[f"channel {ratio:.0%}"]
        removed = dense.count_params() - small.count_params()
        sparsity = min(0.99, removed / dense_prunable)
        models[f"unstructured {sparsity:.1%} (= channel {ratio:.0%} params)"] = _unstructured(
            dense, sparsity, x_train, y_train, tune
        )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            rows.append(_measure(name.split(" (")[0].replace(" ", "_").replace("%", ""),
                                 model, x_train[:300], x_test, y_test, folder))  # fmt: skip
            rows[-1]["name"] = name
    base = rows[0]
    lines = [
        "| model | test acc (Keras) | int8 acc | params | nonzeros | MACs | MACs ratio "
        "| int8 file | int8 latency, 1 thread | latency ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['acc']:.4f} | {r['int8_acc']:.4f} | {r['params']:,} | "
            f"{r['nonzeros']:,} | {r['macs']:,} | {base['macs'] / r['macs']:.2f}x | "
            f"{r['size'] / 1024:.1f} KB | {r['latency'] * 1e3:.3f} ms | "
            f"{base['latency'] / r['latency']:.2f}x |"
        )
    verdicts = []
    for r in rows[1:3]:
        speed, macs = base["latency"] / r["latency"], base["macs"] / r["macs"]
        loss = (base["acc"] - r["acc"]) * 100
        verdicts.append(
            f"- {r['name']}: {speed:.2f}x lower latency (target >= 3x: "
            f"{'met' if speed >= 3 else 'missed'}), accuracy change {-loss:+.2f} points "
            f"(target >= -1: {'met' if loss <= 1 else 'missed'}), latency ratio / MAC ratio "
            f"{speed / macs:.2f} (target >= 0.8: {'met' if speed / macs >= 0.8 else 'missed'})."
        )
    command = "python benchmarks/structured.py" + (" --tiny" if args.tiny else "")
    text = "\n".join(
        [
            "## Structured vs unstructured pruning, Fashion-MNIST VGG-style "
            "(benchmarks/structured.py)",
            "",
            f"Command: `{command}`. Machine: 2-core CPU, no GPU (shared with other jobs). Date: "
            f"{datetime.date.today().isoformat()}. {len(x_train):,} train / {len(x_test):,} "
            f"test images. Dense trained {epochs} epochs; every pruned model fine-tuned "
            f"{tune} epochs from the dense weights (channel: prune_channels global L1 -> "
            "shrink -> fine-tune the small model; unstructured: tfprune.wrap layer-wise "
            "magnitude with a polynomial schedule, logits kept dense, stripped). int8 = "
            "full-integer TFLite via tfprune.export.tflite, calibrated on 300 training "
            "images; int8 accuracy in the LiteRT interpreter on the test split. Latency: "
            "median of 300 invoke() of one image, 1 thread, via tfprune.export.latency. "
            f"Ratios vs dense, same process. Total time {time.time() - start:.0f} s.",
            "",
            *lines,
            "",
            *verdicts,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        append_results("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
