"""Learned sparsity on Fashion-MNIST: L0 gates, group lasso and network slimming.

Each method vs its dense baseline and vs plain magnitude (L1) channel pruning, all in one
process. Usage: `python benchmarks/learned_sparsity.py [--tiny] [--epochs N] [--train N]`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time

import keras
import numpy as np
from _results import append_results

import tfprune
from tfprune import data, gates, regularizers


def _acc(model, x, y) -> float:
    pred = np.argmax(model.predict(x, batch_size=512, verbose=0), -1)
    return float(np.mean(pred == y))


def _fit(model, x, y, epochs, lr=1e-3, callbacks=None):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0, callbacks=callbacks or [])
    return model


def _macs(model) -> int:
    return tfprune.summary(model, print_fn=lambda *_: None).macs


def _params(model) -> int:
    return tfprune.summary(model, print_fn=lambda *_: None).params


def _lenet300(n, gated):
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(inp)
    for i, units in enumerate((300, 100)):
        h = keras.layers.Dense(units, name=f"fc{i}")(h)
        if gated:
            h = gates.L0Gate(lam=0.1 * units, num_examples=n, drop_rate=0.5, name=f"g{i}")(h)
        h = keras.layers.ReLU()(h)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))


def _lenet5(reg):
    inp = keras.Input((28, 28, 1))
    h = inp
    for i, f in enumerate((20, 50)):
        h = keras.layers.Conv2D(f, 5, activation="relu", kernel_regularizer=reg, name=f"conv{i}")(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Dense(500, activation="relu", name="fc")(keras.layers.Flatten()(h))
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))


def _vgg():
    inp = keras.Input((28, 28, 1))
    h = inp
    for i, f in enumerate((32, 32, 64, 64, 128)):
        h = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU()(h)
        if i in (1, 3):
            h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))


def _tflite(model, xcal, tmp, name):
    path = os.path.join(tmp, name + ".tflite")
    res = tfprune.export.tflite(model, path, quantize="int8", representative_data=xcal)
    lat = tfprune.export.latency(path, threads=1, runs=100)
    return res.size, lat.median


def _row(name, model, x, y, base_acc, base_macs, extra=""):
    acc = _acc(model, x, y)
    macs = _macs(model)
    return (
        f"| {name} | {_params(model):,} | {macs:,} | {1 - macs / base_macs:.1%} | "
        f"{1 - acc:.2%} | {100 * (base_acc - acc):+.2f} | {extra} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train", type=int, default=20000)
    args = ap.parse_args()
    if args.tiny:
        args.epochs, args.train = 1, 1000
    keras.utils.set_random_seed(0)
    (xtr, ytr), (xte, yte) = data.fashion_mnist()
    xtr, ytr = xtr[: args.train], ytr[: args.train]
    xte, yte = xte[:2000], yte[:2000]
    n, ep = len(xtr), args.epochs
    head = "| model | params | MACs | MACs removed | test error | acc loss (pt) | note |"
    rows = [head, "| --- | --- | --- | --- | --- | --- | --- |"]

    # 1. LeNet-300-100 with L0 gates on neurons; step-time ratio gated vs dense.
    dense = _fit(_lenet300(n, False), xtr, ytr, 1)
    gated = _fit(_lenet300(n, True), xtr, ytr, 1, lr=3e-3)
    times = {}
    for name, m in (("dense", dense), ("gated", gated)):
        t0 = time.perf_counter()
        m.fit(xtr, ytr, batch_size=128, epochs=1, verbose=0)
        times[name] = time.perf_counter() - t0
    for _ in range(ep - 2):
        dense.fit(xtr, ytr, batch_size=128, epochs=1, verbose=0)
        gated.fit(xtr, ytr, batch_size=128, epochs=1, verbose=0)
    small = tfprune.shrink(gates.fold(gated))
    arch = "784-" + "-".join(str(small.get_layer(f"fc{i}").units) for i in range(2)) + "-10"
    b_acc, b_macs = _acc(dense, xte, yte), _macs(dense)
    rows.append(_row("LeNet-300-100 dense", dense, xte, yte, b_acc, b_macs, "784-300-100-10"))
    rows.append(_row("LeNet-300-100 L0 gates", small, xte, yte, b_acc, b_macs, arch))
    ratios = {f"fc{i}": 1 - small.get_layer(f"fc{i}").units / u for i, u in enumerate((300, 100))}
    mag = tfprune.shrink(tfprune.prune_channels(dense, 0.0, criterion="l1", ratios=ratios))
    mag = _fit(mag, xtr, ytr, 1)
    rows.append(
        _row("LeNet-300-100 magnitude (matched)", mag, xte, yte, b_acc, b_macs, "fine-tuned 1 ep")
    )
    ratio_line = f"L0-gated / dense training time per epoch: {times['gated'] / times['dense']:.2f}"

    # 2. LeNet-5 with group lasso on filters (+ proximal step).
    dense5 = _fit(_lenet5(None), xtr, ytr, ep)
    gl = _fit(
        _lenet5(regularizers.GroupLasso(2e-3, "filters")),
        xtr,
        ytr,
        ep,
        callbacks=[regularizers.ProximalGroupLasso()],
    )
    gl_small = tfprune.shrink(tfprune.strip(gl) if hasattr(gl, "_driven") else gl)
    filt = "/".join(str(gl_small.get_layer(f"conv{i}").filters) for i in range(2))
    b_acc, b_macs = _acc(dense5, xte, yte), _macs(dense5)
    rows.append(_row("LeNet-5 dense", dense5, xte, yte, b_acc, b_macs, "filters 20/50"))
    rows.append(_row("LeNet-5 group lasso", gl_small, xte, yte, b_acc, b_macs, f"filters {filt}"))
    ratios = {
        f"conv{i}": 1 - gl_small.get_layer(f"conv{i}").filters / f for i, f in enumerate((20, 50))
    }
    mag = _fit(
        tfprune.shrink(tfprune.prune_channels(dense5, 0.0, criterion="l1", ratios=ratios)),
        xtr,
        ytr,
        1,
    )
    rows.append(
        _row("LeNet-5 magnitude (matched)", mag, xte, yte, b_acc, b_macs, "fine-tuned 1 ep")
    )

    # 3. VGG-style with slimming, 50 % / 70 % channels removed (global bn_scale).
    vgg = _fit(_vgg(), xtr, ytr, ep)
    slim = _fit(regularizers.slimming(_vgg(), 1e-4), xtr, ytr, ep)
    b_acc, b_macs = _acc(vgg, xte, yte), _macs(vgg)
    with tempfile.TemporaryDirectory() as tmp:
        size, lat = _tflite(vgg, xtr[:200], tmp, "dense")
        rows.append(
            _row(
                "VGG dense",
                vgg,
                xte,
                yte,
                b_acc,
                b_macs,
                f"int8 {size / 1024:.0f} KB, {lat * 1e3:.2f} ms",
            )
        )
        for r in (0.5, 0.7):
            for label, src, crit in (("slimming", slim, "bn_scale"), ("magnitude", vgg, "l1")):
                m = tfprune.shrink(tfprune.prune_channels(src, r, criterion=crit, scope="global"))
                m = _fit(m, xtr, ytr, 1)
                size, lat = _tflite(m, xtr[:200], tmp, f"{label}{r}")
                note = f"int8 {size / 1024:.0f} KB, {lat * 1e3:.2f} ms"
                rows.append(
                    _row(f"VGG {label} {r:.0%} ch removed", m, xte, yte, b_acc, b_macs, note)
                )

    table = "\n".join(rows)
    cfg = f"train subset {n}, test 2000, {ep} epochs (fine-tune 1 epoch)"
    flags = " --tiny" if args.tiny else f" --train {args.train} --epochs {args.epochs}"
    text = (
        f"\n## Learned sparsity (Fashion-MNIST)\n\n`python benchmarks/learned_sparsity.py"
        f"{flags}` — 2-core CPU, no GPU, "
        f"{datetime.date.today()}; {cfg}.\n\n{table}\n\n{ratio_line}\n"
    )
    print(text)
    if not args.tiny:
        append_results(text)


if __name__ == "__main__":
    main()
