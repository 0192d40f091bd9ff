"""Structured vs unstructured pruning on Fashion-MNIST: accuracy, params, MACs, int8 TFLite.

Usage: `python benchmarks/structured.py [--epochs N] [--tune-epochs N] [--tiny] [--no-write]`

A VGG-style CNN (Conv32-Conv32-pool-Conv64-Conv64-pool-Dense128, BN + ReLU) is trained
dense to convergence (Adam, cosine decay to 0); then, from the same dense weights:
- channel-pruned 50 % and 70 % with `tfprune.prune_channels` (L1, `round_to=8`, so every
  layer keeps a multiple of 8 channels as XNNPACK's int8 kernels want), global scope (the
  issue's setting) and layer scope (the same fraction in every layer, to show what the
  allocation does), shrunk with `tfprune.shrink` and fine-tuned;
- pruned unstructured (tfmot-style: layer-wise magnitude, polynomial schedule, fine-tuned
  with `UpdateMasks`) to the same number of nonzero parameters as each global
  channel-pruned model.
Every pruned model gets the same fine-tuning budget. Every model is exported to int8 TFLite
with `tfprune.export.tflite` and timed in the LiteRT interpreter (1 thread, median of 300
invocations, best of interleaved rounds); so is its first conv block alone (the stem: one
input channel, which XNNPACK pads to 8, so it runs at a fraction of the others' MAC rate).
Ratios are vs the dense model measured in the same process. Appends the table to
benchmarks/RESULTS.md.
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
from _bench import compile_classifier, fashion_mnist, latencies, machine
from _results import publish

import tfprune

BATCH = 128
CHANNEL_LAYERS = ("conv0", "conv1", "conv3", "conv4", "fc")
STEM = ("conv0", "bn0", "relu0")


def build(classes: int = 10) -> keras.Model:
    """VGG-style CNN on 28x28x1.

    Args:
        classes: Number of output logits.

    Returns:
        An uncompiled functional model; prunable layers conv0, conv1, conv3, conv4, fc.
    """
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


def _fit(model, x, y, epochs, lr, **kwargs):
    steps = epochs * int(np.ceil(len(x) / BATCH))
    compile_classifier(model, lr, steps)
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, **kwargs)


def _channel(dense, ratio, scope, x, y, epochs):
    pruned = tfprune.prune_channels(dense, ratio=ratio, criterion="l1", scope=scope, round_to=8)
    small = tfprune.shrink(pruned)
    _fit(small, x, y, epochs, 5e-4)
    return small


def _unstructured(dense, sparsity, x, y, epochs):
    steps = epochs * int(np.ceil(len(x) / BATCH))
    end = max(10, steps // 2 // 10 * 10)
    schedule = tfprune.schedules.PolynomialDecay(0.0, sparsity, 0, end, frequency=10)
    pruned = tfprune.wrap(dense, sparsity=schedule, exclude=["logits"])
    _fit(pruned, x, y, epochs, 5e-4, callbacks=[tfprune.callbacks.UpdateMasks()])
    return tfprune.strip(pruned)


def _prunable_weights(model) -> int:
    return sum(
        int(np.prod(tfprune.layers.resolve(layer, s.path).shape))
        for layer in tfprune.layers.iter_layers(model)
        if (spec := tfprune.layers.lookup(layer)) is not None and layer.name != "logits"
        for s in spec.prunable_specs(layer)
    )


def _channels(model) -> str:
    return "-".join(str(model.get_layer(n).kernel.shape[-1]) for n in CHANNEL_LAYERS)


def _export(name, model, x_cal, x_test, y_test, path):
    """Exports the model and its stem to int8; everything but the latencies."""
    result = tfprune.export.tflite(
        model, path, quantize="int8", representative_data=x_cal, verify_data=(x_test, y_test)
    )
    stats = tfprune.summary(model, print_fn=None)
    x = stem_input = keras.Input((28, 28, 1))
    for layer in STEM:
        x = model.get_layer(layer)(x)  # shrunk models share weightless layers: no `.output`
    stem = keras.Model(stem_input, x)
    stem_path = path.replace(".tflite", "_stem.tflite")
    tfprune.export.tflite(stem, stem_path, quantize="int8", representative_data=x_cal, shrink=False)
    return {
        "name": name,
        "channels": _channels(model),
        "acc": result.verification.reference_accuracy,
        "int8_acc": result.verification.accuracy,
        "params": stats.params,
        "nonzeros": stats.nonzeros,
        "macs": stats.macs,
        "stem_macs": tfprune.summary(stem, print_fn=None).macs,
        "size": result.size,
        "path": path,
        "stem_path": stem_path,
    }


def _table(rows: list[dict]) -> list[str]:
    base = rows[0]
    lines = [
        "| model | channels | test acc (Keras) | int8 acc | params | nonzeros | MACs "
        "| MAC ratio | int8 file | int8 latency, 1 thread | latency ratio | GMAC/s "
        "| stem alone |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['channels']} | {r['acc']:.4f} | {r['int8_acc']:.4f} | "
            f"{r['params']:,} | {r['nonzeros']:,} | {r['macs']:,} | "
            f"{base['macs'] / r['macs']:.2f}x | {r['size'] / 1024:.1f} KB | "
            f"{r['latency'] * 1e3:.3f} ms | {base['latency'] / r['latency']:.2f}x | "
            f"{r['macs'] / r['latency'] / 1e9:.1f} | {r['stem'] * 1e3:.3f} ms |"
        )
    return lines


def _verdicts(rows: list[dict]) -> list[str]:
    base, out, met = rows[0], [], []
    for r in rows:
        if not r["name"].startswith("channel"):
            continue
        speed, macs = base["latency"] / r["latency"], base["macs"] / r["macs"]
        loss = (base["acc"] - r["acc"]) * 100
        # The same ratios without the stem (first conv block), which runs at a low MAC rate.
        rest_speed = (base["latency"] - base["stem"]) / (r["latency"] - r["stem"])
        rest_macs = (base["macs"] - base["stem_macs"]) / (r["macs"] - r["stem_macs"])
        out.append(
            f"- {r['name']}: {speed:.2f}x lower latency (target >= 3x: "
            f"{'met' if speed >= 3 else 'missed'}), accuracy change {-loss:+.2f} points "
            f"(target >= -1: {'met' if loss <= 1 else 'missed'}), latency ratio / MAC ratio "
            f"{speed:.2f} / {macs:.2f} = {speed / macs:.2f} (target >= 0.8: "
            f"{'met' if speed / macs >= 0.8 else 'missed'}); the stem takes "
            f"{r['stem'] / r['latency']:.0%} of its latency (dense: "
            f"{base['stem'] / base['latency']:.0%}); without it {rest_speed:.2f} / "
            f"{rest_macs:.2f} = {rest_speed / rest_macs:.2f}."
        )
        if speed >= 3 and loss <= 1:
            met.append(r["name"])
    out.append(
        "- 3x lower latency at no more than 1 point accuracy loss: "
        + (f"met by {', '.join(met)}." if met else "not met by any setting.")
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="dense epochs (default 12)")
    parser.add_argument("--tune-epochs", type=int, default=4, help="fine-tuning epochs (4)")
    parser.add_argument("--tiny", action="store_true", help="small subset, 1 epoch (smoke)")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    start, conditions = time.time(), machine()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = fashion_mnist(args.tiny)
    epochs, tune, rounds = args.epochs, args.tune_epochs, 5
    if args.tiny:
        epochs, tune, rounds = 1, 1, 1
    dense = build()
    history = _fit(dense, x_train, y_train, epochs, 1e-3, validation_data=(x_test, y_test))
    curve = ", ".join(f"{a:.4f}" for a in history.history["val_accuracy"][-4:])
    models = {"dense": dense}
    for scope in ("global", "layer"):
        for ratio in (0.5, 0.7):
            models[f"channel {ratio:.0%} {scope}"] = _channel(
                dense, ratio, scope, x_train, y_train, tune
            )
    dense_prunable = _prunable_weights(dense)
    for ratio in (0.5, 0.7):
        small = models[f"channel {ratio:.0%} global"]
        sparsity = min(0.99, (dense.count_params() - small.count_params()) / dense_prunable)
        models[f"unstructured {sparsity:.1%} (= channel {ratio:.0%} global params)"] = (
            _unstructured(dense, sparsity, x_train, y_train, tune)
        )
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            _export(name, model, x_train[:300], x_test, y_test, os.path.join(folder, f"{i}.tflite"))
            for i, (name, model) in enumerate(models.items())
        ]
        paths = [r["path"] for r in rows] + [r["stem_path"] for r in rows]
        times = latencies(paths, threads=1, rounds=rounds)
    for r, t, s in zip(rows, times[: len(rows)], times[len(rows) :]):
        r["latency"], r["stem"] = t, s
    command = "python benchmarks/structured.py" + (" --tiny" if args.tiny else "")
    if not args.tiny and (epochs, tune) != (12, 4):
        command += f" --epochs {epochs} --tune-epochs {tune}"
    publish(
        [
            "## Structured vs unstructured pruning, Fashion-MNIST VGG-style "
            "(benchmarks/structured.py)",
            "",
            f"Command: `{command}`. Machine: {conditions} at the start, shared with other "
            f"jobs; no GPU. Date: {datetime.date.today().isoformat()}. {len(x_train):,} train "
            f"/ {len(x_test):,} test images, batch {BATCH}. Dense trained {epochs} epochs "
            f"(Adam 1e-3, cosine decay to 0; test accuracy after the last epochs: {curve}, "
            f"only reported). Every pruned model fine-tuned {tune} epochs from the dense "
            "weights (Adam 5e-4, cosine decay to 0). Channel: prune_channels L1 with "
            "round_to=8 (kept counts rounded up to a multiple of 8, so fewer channels go "
            "than the nominal ratio) at global scope (one threshold over all channels, "
            "scores divided by each layer's mean) or layer scope (the same fraction per "
            "layer) -> shrink -> fine-tune the small model. Unstructured: tfprune.wrap "
            "layer-wise magnitude, polynomial schedule over the first half of fine-tuning, "
            "logits kept dense, stripped. int8 = full-integer TFLite via "
            "tfprune.export.tflite, calibrated on 300 training images; int8 accuracy in the "
            "LiteRT interpreter on the test split. Latency: tfprune.export.latency, LiteRT "
            "default (XNNPACK), 1 thread, median of 300 invoke() of one image after 30 "
            f"warm-up runs, best of {rounds} rounds interleaved over all files. Channels: "
            "conv0-conv1-conv3-conv4-fc. GMAC/s = MACs / latency. Stem alone: the first "
            "conv block (conv0 + BN + ReLU, 28x28, one input channel) exported and timed "
            "by itself. Ratios vs dense, same process. Total time "
            f"{time.time() - start:.0f} s.",
            "",
            *_table(rows),
            "",
            *_verdicts(rows),
            "",
        ],
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
