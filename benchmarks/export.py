"""Benchmark: what reaches the device for dense, 90 %-unstructured and channel-pruned CNNs.

For a Fashion-MNIST CNN (Conv32-Conv64-Dense128), trained briefly, three variants are
exported to int8 TFLite with `tfprune.export.tflite`:

- dense,
- 90 % unstructured sparsity (magnitude, polynomial schedule, logits kept dense),
- channel-pruned: half the output channels of conv1, conv2 and fc removed
  (`granularity="channel"`, then `tfprune.shrink` inside the export).

It prints one markdown table (file size raw / gzipped / sparse-encoded, float vs int8
accuracy, int8 latency at 1 and 2 threads in the LiteRT interpreter) and appends it to
benchmarks/RESULTS.md. Latency ratios are vs the dense model measured in the same process.

    python benchmarks/export.py            # the real run (a few minutes on 2 CPU cores)
    python benchmarks/export.py --tiny     # 2,000 examples, 1 epoch: checks the script
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _results import append_results

import tfprune
from tfprune import data


def build(classes: int = 10) -> keras.Model:
    """Conv32-Conv64-Dense128 on 28x28x1."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="fashion_cnn")


def _compile(model: keras.Model, lr: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _prune(dense, x, y, epochs, sparsity, granularity, batch):
    steps = epochs * int(np.ceil(len(x) / batch))
    end = max(10, steps // 2 // 10 * 10)
    schedule = tfprune.schedules.PolynomialDecay(0.0, sparsity, 0, end, frequency=10)
    pruned = tfprune.wrap(dense, sparsity=schedule, granularity=granularity, exclude=["logits"])
    _compile(pruned, 5e-4).fit(
        x, y, batch_size=batch, epochs=epochs, verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks()],
    )  # fmt: skip
    return pruned


def _row(name, model, x_cal, x_test, y_test, folder, shrink):
    path = os.path.join(folder, f"{name}.tflite")
    common = dict(quantize="int8", representative_data=x_cal, shrink=shrink)
    result = tfprune.export.tflite(model, path, verify_data=(x_test, y_test), **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback; reported below
        sparse = tfprune.export.tflite(model, path + ".sparse", sparse=True, **common)
    stats = tfprune.summary(tfprune.strip(model), print_fn=None)
    v = result.verification
    return {
        "name": name,
        "nonzeros": stats.nonzeros,
        "float_acc": v.reference_accuracy,
        "int8_acc": v.accuracy,
        "raw": result.size,
        "gzip": result.gzip_size,
        "sparse": sparse.sparse_size,
        "sparse_runs": sparse.sparse_fallback is None,
        "sparse_note": sparse.sparse_fallback,
        "lat1": tfprune.export.latency(path, threads=1, runs=300, warmup=30).median,
        "lat2": tfprune.export.latency(path, threads=2, runs=300, warmup=30).median,
        "path": path,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2,000 examples, 1 epoch")
    parser.add_argument("--epochs", type=int, default=3, help="dense epochs (default 3)")
    parser.add_argument("--prune-epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.fashion_mnist()
    epochs, prune_epochs = args.epochs, args.prune_epochs
    if args.tiny:
        x_train, y_train, x_test, y_test = (
            x_train[:2000],
            y_train[:2000],
            x_test[:500],
            y_test[:500],
        )
        epochs = prune_epochs = 1
    batch = 128
    start = time.time()
    dense = _compile(build(), 1e-3)
    dense.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0)
    variants = [("dense", dense, False)]
    unstructured = _prune(dense, x_train, y_train, prune_epochs, 0.9, "weight", batch)
    variants.append(("unstructured-90%", unstructured, False))
    try:
        from tfprune.shrink import shrink

        channel = _prune(dense, x_train, y_train, prune_epochs, 0.5, "channel", batch)
        variants.append(("channel-50%", channel, True))
        missing = None
    except ImportError as e:
        missing = f"channel-pruned row not measured: tfprune.shrink is not available ({e})"
    x_cal = x_train[:300]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, model, shrink in variants:
            rows.append(_row(name, model, x_cal, x_test, y_test, folder, shrink))
    base = rows[0]
    lines = [
        "| model | nonzero weights | float acc | int8 acc | int8 file | gzipped | "
        "sparse-encoded | latency 1 thread | latency 2 threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        sparse = f"{r['sparse']:,} B" + ("" if r["sparse_runs"] else " (does not run, see note)")
        lines.append(
            f"| {r['name']} | {r['nonzeros']:,} | {r['float_acc']:.4f} | {r['int8_acc']:.4f} | "
            f"{r['raw']:,} B ({r['raw'] / base['raw']:.2f}x) | {r['gzip']:,} B | {sparse} | "
            f"{r['lat1'] * 1e6:.1f} us ({r['lat1'] / base['lat1']:.2f}x) | "
            f"{r['lat2'] * 1e6:.1f} us ({r['lat2'] / base['lat2']:.2f}x) |"
        )
    notes = [f"- {r['name']}: {r['sparse_note']}" for r in rows if r["sparse_note"]]
    if missing:
        notes.append(f"- {missing}")
    command = "python benchmarks/export.py" + (" --tiny" if args.tiny else "")
    text = "\n".join(
        [
            "## Export: dense vs unstructured vs channel-pruned int8 TFLite (benchmarks/export.py)",
            "",
            f"Command: `{command}`. Machine: 2-core CPU, no GPU (shared). "
            f"Date: {datetime.date.today().isoformat()}. Fashion-MNIST, {len(x_train):,} train / "
            f"{len(x_test):,} test; Conv32-Conv64-Dense128 trained {epochs} epochs (brief, "
            f"not to convergence), pruned variants fine-tuned {prune_epochs} more epochs from "
            "it. int8 = full-integer with int8 I/O, calibrated on 300 training images; "
            "accuracies are on the full test split, int8 run in the LiteRT interpreter. "
            "Latency: median of 300 `invoke()` of one image after 30 warm-up runs, LiteRT "
            "default (XNNPACK) configuration; ratios vs dense in the same process. "
            "'sparse-encoded' is the same int8 model exported with `sparse=True` (TFLite's "
            f"experimental sparse format). Total time {time.time() - start:.0f} s.",
            "",
            *lines,
            "",
            *notes,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        append_results("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
