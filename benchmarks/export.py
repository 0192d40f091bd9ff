"""Benchmark: what reaches the device for dense, 90 %-unstructured and channel-pruned CNNs.

For a Fashion-MNIST CNN (Conv32-Conv64-Dense128), trained to convergence, three variants are
exported to int8 TFLite with `tfprune.export.tflite`:

- dense,
- 90 % unstructured sparsity (magnitude, polynomial schedule, logits kept dense),
- channel-pruned: half the output channels of conv1, conv2 and fc removed
  (`granularity="channel"`, then `tfprune.shrink` inside the export).

It prints one markdown table (MACs, file size raw / gzipped / sparse-encoded, float vs int8
accuracy, int8 latency at 1 and 2 threads in the LiteRT interpreter, with the MAC rate as a
sanity check) and appends it to benchmarks/RESULTS.md. Latency ratios are vs the dense model
measured in the same process, the files timed in interleaved rounds.

    python benchmarks/export.py            # the real run (about 15 minutes on 2 CPU cores)
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
from _bench import compile_classifier, fashion_mnist, latencies, machine
from _results import publish

import tfprune


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


def _prune(dense, x, y, epochs, sparsity, granularity, batch):
    steps = epochs * int(np.ceil(len(x) / batch))
    end = max(10, steps // 2 // 10 * 10)
    schedule = tfprune.schedules.PolynomialDecay(0.0, sparsity, 0, end, frequency=10)
    pruned = tfprune.wrap(dense, sparsity=schedule, granularity=granularity, exclude=["logits"])
    compile_classifier(pruned, 5e-4, steps).fit(
        x, y, batch_size=batch, epochs=epochs, verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks()],
    )  # fmt: skip
    return pruned


def _row(name, model, x_cal, x_test, y_test, path, shrink):
    common = dict(quantize="int8", representative_data=x_cal, shrink=shrink)
    result = tfprune.export.tflite(model, path, verify_data=(x_test, y_test), **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback; reported below
        sparse = tfprune.export.tflite(model, path + ".sparse", sparse=True, **common)
    stats = tfprune.summary(tfprune.shrink(model) if shrink else model, print_fn=None)
    v = result.verification
    return {
        "name": name,
        "nonzeros": stats.nonzeros,
        "macs": stats.macs,
        "float_acc": v.reference_accuracy,
        "int8_acc": v.accuracy,
        "raw": result.size,
        "gzip": result.gzip_size,
        "sparse": sparse.sparse_size,
        "sparse_runs": sparse.sparse_fallback is None,
        "sparse_note": sparse.sparse_fallback,
        "path": path,
    }


def _table(rows: list[dict]) -> list[str]:
    base = rows[0]
    lines = [
        "| model | nonzero weights | MACs | float acc | int8 acc | int8 file | gzipped | "
        "sparse-encoded | latency 1 thread | GMAC/s | latency 2 threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        sparse = f"{r['sparse']:,} B" + ("" if r["sparse_runs"] else " (does not run, see note)")
        lines.append(
            f"| {r['name']} | {r['nonzeros']:,} | {r['macs']:,} | {r['float_acc']:.4f} | "
            f"{r['int8_acc']:.4f} | {r['raw']:,} B ({r['raw'] / base['raw']:.2f}x) | "
            f"{r['gzip']:,} B | {sparse} | "
            f"{r['lat1'] * 1e6:.1f} us ({r['lat1'] / base['lat1']:.2f}x) | "
            f"{r['macs'] / r['lat1'] / 1e9:.1f} | "
            f"{r['lat2'] * 1e6:.1f} us ({r['lat2'] / base['lat2']:.2f}x) |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2,000 examples, 1 epoch")
    parser.add_argument("--epochs", type=int, default=10, help="dense epochs (default 10)")
    parser.add_argument("--prune-epochs", type=int, default=4, help="fine-tuning epochs (4)")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    start, conditions = time.time(), machine()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = fashion_mnist(args.tiny)
    epochs, prune_epochs, rounds = args.epochs, args.prune_epochs, 5
    if args.tiny:
        epochs, prune_epochs, rounds = 1, 1, 1
    batch = 128
    dense = compile_classifier(build(), 1e-3, epochs * int(np.ceil(len(x_train) / batch)))
    history = dense.fit(
        x_train, y_train, batch_size=batch, epochs=epochs, verbose=0,
        validation_data=(x_test, y_test),
    )  # fmt: skip
    curve = ", ".join(f"{a:.4f}" for a in history.history["val_accuracy"][-4:])
    variants = [
        ("dense", dense, False),
        ("unstructured-90%", _prune(dense, x_train, y_train, prune_epochs, 0.9, "weight", batch),
         False),
        ("channel-50%", _prune(dense, x_train, y_train, prune_epochs, 0.5, "channel", batch),
         True),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            _row(name, model, x_train[:300], x_test, y_test, os.path.join(folder, f"{i}.tflite"),
                 shrink)
            for i, (name, model, shrink) in enumerate(variants)
        ]  # fmt: skip
        paths = [r["path"] for r in rows]
        for key, threads in (("lat1", 1), ("lat2", 2)):
            for r, t in zip(rows, latencies(paths, threads=threads, rounds=rounds)):
                r[key] = t
    notes = [f"- {r['name']}: {r['sparse_note']}" for r in rows if r["sparse_note"]]
    command = "python benchmarks/export.py" + (" --tiny" if args.tiny else "")
    if not args.tiny and (epochs, prune_epochs) != (10, 4):
        command += f" --epochs {epochs} --prune-epochs {prune_epochs}"
    publish(
        [
            "## Export: dense vs unstructured vs channel-pruned int8 TFLite (benchmarks/export.py)",
            "",
            f"Command: `{command}`. Machine: {conditions} at the start, shared with other "
            f"jobs; no GPU. Date: {datetime.date.today().isoformat()}. Fashion-MNIST, "
            f"{len(x_train):,} train / {len(x_test):,} test, batch {batch}; "
            f"Conv32-Conv64-Dense128 trained {epochs} epochs (Adam 1e-3, cosine decay to 0; "
            f"test accuracy after the last epochs: {curve}, only reported), pruned variants "
            f"fine-tuned {prune_epochs} more epochs from it (Adam 5e-4, cosine decay; sparsity "
            "ramped over the first half; channel-50%: half the output channels of conv1, conv2 "
            "and fc, L1, removed by shrink at export). int8 = full-integer with int8 I/O, "
            "calibrated on 300 training images; accuracies are on the full test split, int8 "
            "run in the LiteRT interpreter. Latency: tfprune.export.latency, median of 300 "
            "`invoke()` of one image after 30 warm-up runs, LiteRT default (XNNPACK) "
            f"configuration, best of {rounds} rounds interleaved over the three files; ratios "
            "vs dense in the same process. GMAC/s = MACs / 1-thread latency. 2-thread "
            "latencies share the 2 cores with the other jobs, so they are the least reliable "
            "column. 'sparse-encoded' is the same int8 model exported with `sparse=True` "
            f"(TFLite's experimental sparse format). Total time {time.time() - start:.0f} s.",
            "",
            *_table(rows),
            "",
            *notes,
            "",
        ],
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
