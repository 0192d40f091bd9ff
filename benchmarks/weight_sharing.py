"""Deep Compression on a microcontroller: pruning, then 4-, 3- and 2-bit weight sharing, in
int8 TFLite files measured in TensorFlow Lite Micro.

Usage: `python benchmarks/weight_sharing.py [--train N] [--test N] [--micro-test N]
[--epochs N] [--tune-epochs N] [--sparsity F] [--models lenet,cnn] [--keep DIR] [--tiny]
[--no-write]`

For LeNet-300-100 and the Fashion-MNIST CNN (Conv32-Conv64-Dense128), trained on a
Fashion-MNIST subset (`--epochs`, Adam + cosine decay):

- dense int8;
- pruned int8: magnitude pruning to `--sparsity` of every layer but the logits
  (polynomial schedule, ten updates over the first half of the `--tune-epochs` of
  fine-tuning);
- pruned + b-bit sharing (b = 4, 3, 2): `tfprune.cluster(pruned, bits=b)` (per output
  channel; pruned zeros kept as their own value), then the same `--tune-epochs` of
  fine-tuning of the centroids, from the pruned model.

Each is exported with `tfprune.export.tflite(quantize="int8")`. Reported: test accuracy of
the Keras model and of the int8 file in TFLite Micro (first `--micro-test` test images),
flash (file bytes), the TFLite Micro arena (measured), the largest number of distinct int8
values in one channel of the file, `tfprune.sharing_report`'s Huffman-coded size (kernels'
indices, 8-bit tables and code lengths; unshared kernels at 8 bits, other weights at 32
bits) and its bits per kernel
weight, and compression ratios against the float32 .tflite of the dense model.
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
from _bench import compile_classifier, fashion_mnist, machine
from _models import OUTPUT, cnn, lenet_300_100
from _results import publish

import tfprune
from tfprune.deep_compression import int8_values_per_channel
from tfprune.export import tflm

BATCH = 64
BITS = (4, 3, 2)
MODELS = {"lenet": ("LeNet-300-100", lenet_300_100), "cnn": ("Fashion-MNIST CNN", cnn)}


def _fit(model, x, y, epochs: int, lr: float, callbacks=()) -> keras.Model:
    compile_classifier(model, lr, max(1, epochs * (len(x) // BATCH)))
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), -1) == y))


def _row(key, label, model, files, x_cal, x_test, y_test, micro_n, float_bytes) -> str:
    path = os.path.join(files, f"{key}_{label.replace(' ', '_').replace('%', '')}.tflite")
    tfprune.export.tflite(model, path, quantize="int8", representative_data=x_cal, shrink=False)
    flash = os.path.getsize(path)
    arena = tflm.run(path).arena
    outputs = tflm.run(path, data=x_test[:micro_n], arena_size=arena).outputs
    micro_acc = float(np.mean(np.argmax(outputs, -1) == y_test[:micro_n]))
    report = tfprune.sharing_report(model, codebook_bits=8)
    values = max(int8_values_per_channel(path).values())
    return (
        f"| {label} | {_accuracy(model, x_test, y_test):.4f} | {micro_acc:.4f} | {flash:,} | "
        f"{arena:,} | {values} | {report.entropy_bytes:,} | "
        f"{report.entropy_bits_per_weight:.2f} | {float_bytes / flash:.1f}x | "
        f"{float_bytes / report.entropy_bytes:.1f}x |"
    )


def run_model(key, args, data, files) -> list[str]:
    name, build = MODELS[key]
    (x_train, y_train), (x_test, y_test) = data
    if key == "lenet":
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    x_cal = x_train[:200]
    keras.utils.set_random_seed(0)
    dense = _fit(build(), x_train, y_train, args.epochs, 3e-3)
    float_path = os.path.join(files, f"{key}_float32.tflite")
    tfprune.export.tflite(dense, float_path, shrink=False)
    float_bytes = os.path.getsize(float_path)
    rows = [f"| **{name}** (float32 file {float_bytes:,} B) | | | | | | | | | |"]
    row = lambda label, model: _row(  # noqa: E731
        key, label, model, files, x_cal, x_test, y_test, args.micro_test, float_bytes
    )
    rows.append(row("dense int8", dense))
    print(rows[-1], flush=True)
    # ten mask updates over the first half of the fine-tuning, so the target is reached
    frequency = max(1, args.tune_epochs * (len(x_train) // BATCH) // 20)
    schedule = tfprune.schedules.PolynomialDecay(
        0.0, args.sparsity, 0, 10 * frequency, frequency=frequency
    )
    pruned = tfprune.wrap(dense, sparsity=schedule, exclude=[OUTPUT])
    _fit(pruned, x_train, y_train, args.tune_epochs, 1e-3, [tfprune.callbacks.UpdateMasks()])
    rows.append(row(f"pruned {args.sparsity:.0%} int8", tfprune.strip(pruned)))
    print(rows[-1], flush=True)
    for bits in BITS:
        shared = tfprune.cluster(pruned, bits=bits)
        _fit(shared, x_train, y_train, args.tune_epochs, 1e-3)
        rows.append(row(f"pruned + {bits}-bit sharing", tfprune.strip(shared)))
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=12000, help="training images used")
    parser.add_argument("--test", type=int, default=10000, help="test images (Keras)")
    parser.add_argument("--micro-test", type=int, default=500, help="test images (TFLM)")
    parser.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    parser.add_argument("--tune-epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--models", default="lenet,cnn")
    parser.add_argument("--tiny", action="store_true", help="smoke run: 1,000 images, 1 epoch")
    parser.add_argument("--keep", help="write the .tflite files to this folder (kept)")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.tiny:
        args.train, args.test, args.micro_test, args.epochs, args.tune_epochs = 1000, 300, 50, 1, 1
    start = time.time()
    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    train = x_train[: args.train], y_train[: args.train]
    data = train, (x_test[: args.test], y_test[: args.test])
    rows = []
    with tempfile.TemporaryDirectory(prefix="weight-sharing-") as tmp:
        files = args.keep or tmp
        os.makedirs(files, exist_ok=True)
        for key in args.models.split(","):
            rows += run_model(key, args, data, files)
    lines = [
        f"## Weight sharing (Deep Compression) in TFLite Micro ({datetime.date.today()})",
        "",
        f"Command: `python benchmarks/{' '.join([os.path.basename(__file__), *sys.argv[1:]])}`",
        f"Machine: {machine()}. Run time {time.time() - start:.0f} s.",
        f"Fashion-MNIST: {args.train} training images, {args.test} test images (Keras "
        f"accuracy), the first {args.micro_test} of them in TFLite Micro. Dense: "
        f"{args.epochs} epochs; pruned: {args.tune_epochs} epochs (magnitude, logits dense); "
        f"each sharing variant: {args.tune_epochs} epochs of centroid fine-tuning from the "
        "pruned model (per output channel, assignments fixed). Flash: int8 file bytes; "
        "arena: TFLite Micro, measured (64-bit host); values/ch: most distinct int8 values in "
        "one channel of the file; Huffman: `tfprune.sharing_report` (kernels' indices "
        "Huffman-coded with 8-bit tables, unshared kernels at 8 bits, other weights at 32 "
        "bits), bits/w per kernel weight; ratios against the dense model's float32 .tflite.",
        "",
        "| model / variant | acc Keras | acc TFLM | flash B | arena B | values/ch | Huffman B "
        "| bits/w | flash ratio | Huffman ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "The int8 files still store one byte per weight: sharing shows in `values/ch` and in "
        "the Huffman-coded size, and reaches the flash only through TFLite Micro's "
        "lookup-table compression (`tfprune.export.compress_tflite`, "
        "`benchmarks/weight_sharing_lut.py`).",
    ]
    publish(lines, not args.no_write and not args.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
