"""LUT compression for TFLite Micro: flash, arena and accuracy of a weight-shared digits MLP.

Usage: `python benchmarks/lut_micro.py [--epochs N] [--bits 4,3,2] [--no-write]`

A 64-256-256-10 MLP is trained on scikit-learn's digits (offline), then for each bit width
its Dense kernels are snapped to `2**bits` values per output channel
(`tfprune.budget_sharing.kmeans_share`: Deep Compression's linear initialization and
k-means, NOT fine-tuned, so accuracy is a lower bound of trained sharing), exported to int8 and
LUT-compressed (`tfprune.export.compress_tflite`). Both files run in the TFLite Micro
interpreter on the whole test split (`tfprune.export.verify_lut`): the outputs must be
identical, and the arena is measured three times (uncompressed; compressed with the decoded
tensors in the arena; compressed with separate decompression memory given). Appends the
table to benchmarks/RESULTS.md.
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
from _bench import machine
from _results import publish

from tfprune import data, export
from tfprune.budget_sharing import kmeans_share


def _mlp() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--bits", default="4,3,2", help="comma-separated bit widths")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    start = time.time()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    model = _mlp()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=args.epochs, verbose=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        float_size = export.tflite(model, os.path.join(tmp, "f.tflite")).size
        for bits in [None, *(int(b) for b in args.bits.split(","))]:
            shared = keras.models.clone_model(model)
            shared.set_weights(model.get_weights())
            if bits is not None:
                kmeans_share(shared, bits)
            shared.compile(metrics=["accuracy"], loss=model.loss)
            accuracy = shared.evaluate(x_test, y_test, verbose=0)[1]
            path = os.path.join(tmp, f"{bits}.tflite")
            export.tflite(shared, path, quantize="int8", representative_data=x_train[:300])
            lut = export.compress_tflite(path)
            if lut.compressed:
                check = export.verify_lut(path, lut, x_test)
                assert check.identical, check.format()
                runs = check.uncompressed, check.compressed, check.with_decompression_memory
                memory = f"{check.decompression_memory:,}"
            else:
                runs, memory = (export.tflm.run(path, x_test),) * 3, "-"
            tflm_accuracy = float(np.mean(runs[1].outputs.argmax(axis=1) == y_test))
            rows.append(
                f"| {'int8' if bits is None else f'{bits} bits'} | {accuracy:.3f} | "
                f"{tflm_accuracy:.3f} | {lut.size_before:,} | {lut.size:,} | "
                f"{float_size / lut.size:.1f}x | {len(lut.compressed)} | "
                + " | ".join(f"{r.arena:,}" for r in runs)
                + f" | {memory} |"
            )
            print(rows[-1], flush=True)
    lines = [
        f"## LUT compression for TFLite Micro: weight-shared digits MLP ({datetime.date.today()})",
        "",
        f"Command: `python benchmarks/{' '.join([os.path.basename(__file__), *sys.argv[1:]])}`",
        f"Machine: {machine()}. Run time {time.time() - start:.0f} s.",
        f"64-256-256-10 MLP, digits, {args.epochs} epochs; kernels snapped to 2^bits values per "
        "output channel (linear initialization + k-means, no fine-tuning). "
        "Accuracy: Keras (float) and the "
        "compressed file in TFLite Micro on the 360 test digits (its outputs were identical "
        f"to the uncompressed int8 file's in every row). Float32 file: {float_size:,} B. "
        "Arena: measured in TFLite Micro (64-bit host): uncompressed / compressed with the "
        "decoded tensors in the arena / with the decompression memory given.",
        "",
        "| weights | accuracy | TFLM accuracy | int8 flash B | LUT flash B | vs float32 "
        "| tensors compressed | arena B int8 | arena B decoded | arena B with memory "
        "| decompression memory B |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    publish(lines, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
