"""One-shot pruning without retraining: SparseGPT, Wanda, magnitude and LAMP.

Usage: `python benchmarks/oneshot.py [--epochs N] [--lm-epochs N] [--lm-bytes N]
[--models cnn,vit,lm] [--no-cost] [--tiny] [--no-write]`

Two measurements, appended to benchmarks/RESULTS.md:

1. SparseGPT's cost per layer size: a d x d layer pruned to 50 % from `X^T X` of 2,048
   calibration rows, for growing d: the time to accumulate `X^T X`, the time of the solver,
   and the memory of its float64 matrices (the Hessian and its inverse factor, d^2 x 8
   bytes each).
2. The Fashion-MNIST CNN of `benchmarks/_models.py` (Conv32-Conv64-Dense128) and a small
   ViT-style model (attention projections pruned too), each trained dense, then pruned in
   one shot from 256 training images at 50 %, 70 % and 2:4 with magnitude (layer-wise),
   LAMP (global), Wanda and SparseGPT, the output layer left dense: test accuracy with no
   retraining, the calibration time, and the accuracy after one epoch of fine-tuning (the
   masks fixed) on 10,000 training images.
3. The byte-level decoder language model of `benchmarks/_transformers.py` (`byte_lm`: 4
   causal blocks, width 64, 4 heads, GELU MLP 128, context 64), trained on the standard
   library's `.py` sources, pruned the same ways from 256 training windows (every block's
   attention projections and MLP; the byte embedding and the output layer dense):
   perplexity per byte on held-out text with no retraining, the calibration time, and the
   perplexity after one epoch of fine-tuning on 2,048 windows.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _transformers
import keras
import numpy as np
from _bench import compile_classifier, fashion_mnist, machine
from _models import OUTPUT, cnn
from _results import publish

import tfprune
from tfprune.oneshot import solvers

BATCH = 128
CALIBRATION = 256
TUNE_IMAGES = 10_000
# (label, method, scope): LAMP is magnitude pruning with a global ranking of LAMP scores.
METHODS = (
    ("magnitude", "magnitude", "layer"),
    ("LAMP", "magnitude", "lamp"),
    ("Wanda", "wanda", "layer"),
    ("SparseGPT", "sparsegpt", "layer"),
)
TARGETS = (("50 %", 0.5, "weight"), ("70 %", 0.7, "weight"), ("2:4", 0.5, "2:4"))


def layer_cost(sizes: tuple[int, ...], rows: int = 2048) -> list[str]:
    """Times `X^T X` and the SparseGPT solve of a d x d layer for each d in `sizes`."""
    lines = [
        "| d | X^T X (s) | SparseGPT solve (s) | Hessian + factor (MB) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    rng = np.random.default_rng(0)
    for d in sizes:
        x = rng.normal(size=(rows, d))
        w = rng.normal(size=(1, d, d))
        start = time.perf_counter()
        h = (x.T @ x)[None]
        accumulate = time.perf_counter() - start
        start = time.perf_counter()
        solvers.sparsegpt(w, h, 0.5)
        solve = time.perf_counter() - start
        lines.append(f"| {d} | {accumulate:.3f} | {solve:.2f} | {2 * d * d * 8 / 2**20:.1f} |")
        print(lines[-1], flush=True)
    return lines


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a logits model."""
    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def vit(classes: int = 10) -> keras.Model:
    """A small ViT-style model on 28x28x1: 7x7 patches, 2 pre-norm attention blocks.

    Args:
        classes: Number of output logits.

    Returns:
        An uncompiled functional model; the patch embedding is "patches", the output
        "logits".
    """
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(64, 7, strides=7, name="patches")(inputs)
    x = keras.layers.Reshape((16, 64))(x)
    for i in range(2):
        y = keras.layers.LayerNormalization(name=f"ln{i}a")(x)
        y = keras.layers.MultiHeadAttention(4, 16, name=f"mha{i}")(y, y)
        x = keras.layers.Add()([x, y])
        y = keras.layers.LayerNormalization(name=f"ln{i}b")(x)
        y = keras.layers.Dense(128, activation="gelu", name=f"mlp{i}a")(y)
        y = keras.layers.Dense(64, name=f"mlp{i}b")(y)
        x = keras.layers.Add()([x, y])
    x = keras.layers.Flatten()(keras.layers.LayerNormalization(name="ln")(x))
    return keras.Model(inputs, keras.layers.Dense(classes, name=OUTPUT)(x))


# name -> (builder, layer whose single input channel has no groups of 4, description)
MODELS = {
    "cnn": (cnn, "conv1", "Fashion-MNIST CNN (`_models.cnn`: Conv32-Conv64-Dense128)"),
    "vit": (
        vit,
        "patches",
        "Fashion-MNIST ViT-style model (7x7 patches, 2 blocks of 4-head attention and a "
        "128-unit MLP, width 64)",
    ),
}


def prune_table(name: str, epochs: int, tiny: bool) -> list[str]:
    """Trains model `name` dense, prunes it every way, fine-tunes; returns the section."""
    build, stem, description = MODELS[name]
    (x_train, y_train), (x_test, y_test) = fashion_mnist(tiny)
    dense = build()
    steps = epochs * -(-len(x_train) // BATCH)
    compile_classifier(dense, 1e-3, steps).fit(
        x_train, y_train, batch_size=BATCH, epochs=epochs, verbose=0
    )
    weights = dense.get_weights()
    base = accuracy(dense, x_test, y_test)
    print(f"{name}: dense test accuracy {base:.4f}", flush=True)
    calibration = x_train[:CALIBRATION]
    tune = slice(0, min(TUNE_IMAGES, len(x_train)))
    rows = [
        "| target | method | one-shot accuracy | calibration (s) | after 1 epoch of fine-tuning |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for target, sparsity, granularity in TARGETS:
        for label, method, scope in METHODS:
            if scope == "lamp" and granularity != "weight":
                continue  # an N:M pattern fixes every group's sparsity: nothing to allocate
            dense.set_weights(weights)
            start = time.perf_counter()
            pruned = tfprune.oneshot(
                dense,
                calibration,
                sparsity=sparsity,
                method=method,
                granularity=granularity,
                scope=scope,
                # 2:4 needs input channels in groups of 4: the stem reads 1 channel.
                exclude=[OUTPUT] if granularity == "weight" else [OUTPUT, stem],
            )
            seconds = time.perf_counter() - start
            oneshot_acc = accuracy(pruned, x_test, y_test)
            compile_classifier(pruned, 2e-4, -(-(tune.stop) // BATCH))
            pruned.fit(
                x_train[tune],
                y_train[tune],
                batch_size=BATCH,
                epochs=1,
                verbose=0,
                callbacks=[tfprune.callbacks.UpdateMasks()],
            )
            tuned_acc = accuracy(pruned, x_test, y_test)
            rows.append(
                f"| {target} | {label} | {oneshot_acc:.4f} | {seconds:.1f} | {tuned_acc:.4f} |"
            )
            print(rows[-1], flush=True)
    return [
        f"{description}, trained dense for {epochs} epochs: test accuracy {base:.4f}. Pruned "
        f"in one shot from {CALIBRATION} training images (output layer dense, and for 2:4 "
        f"also `{stem}`, whose single input channel has no groups of 4; LAMP is global "
        "magnitude pruning with LAMP scores; 2:4 has no allocation to choose, so no LAMP "
        "row). Calibration time is the whole `tfprune.oneshot` call. Fine-tuning: one "
        f"epoch over {tune.stop} training images, Adam 2e-4 with cosine decay, masks fixed.",
        "",
        *rows,
        "",
    ]


LM_TUNE = 2048


def perplexity(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Perplexity per byte: `exp` of the mean next-byte cross-entropy over `y`."""
    logits = model.predict(x, batch_size=256, verbose=0).astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(np.exp(-np.take_along_axis(log_probs, y[..., None], axis=-1).mean()))


def _compile_lm(model: keras.Model, lr: float, steps: int) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def lm_table(epochs: int, size: int, tiny: bool) -> list[str]:
    """Trains the byte-level LM dense, prunes it every way, fine-tunes; returns the section."""
    size = 30_000 if tiny else size
    text = _transformers.stdlib_text(size + size // 8)
    x, y = _transformers.byte_windows(text[:size])
    x_val, y_val = _transformers.byte_windows(text[size:])
    dense = _transformers.byte_lm()
    start = time.perf_counter()
    _compile_lm(dense, 2e-3, epochs * -(-len(x) // BATCH))
    dense.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    train_s = time.perf_counter() - start
    weights = dense.get_weights()
    base = perplexity(dense, x_val, y_val)
    print(f"lm: dense perplexity {base:.3f}", flush=True)
    calibration = x[:CALIBRATION]
    tune = min(LM_TUNE, len(x))
    rows = [
        "| target | method | one-shot perplexity | calibration (s) | after 1 epoch of "
        "fine-tuning |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for target, sparsity, granularity in TARGETS:
        for label, method, scope in METHODS:
            if scope == "lamp" and granularity != "weight":
                continue
            dense.set_weights(weights)
            start = time.perf_counter()
            pruned = tfprune.oneshot(
                dense,
                calibration,
                sparsity=sparsity,
                method=method,
                granularity=granularity,
                scope=scope,
                exclude=[_transformers.OUTPUT, "byte_embed"],
                batch_size=CALIBRATION,  # one batch: each capture is one run of the model
            )
            seconds = time.perf_counter() - start
            oneshot_ppl = perplexity(pruned, x_val, y_val)
            _compile_lm(pruned, 5e-4, -(-tune // BATCH))
            pruned.fit(
                x[:tune],
                y[:tune],
                batch_size=BATCH,
                epochs=1,
                verbose=0,
                callbacks=[tfprune.callbacks.UpdateMasks()],
            )
            tuned_ppl = perplexity(pruned, x_val, y_val)
            rows.append(
                f"| {target} | {label} | {oneshot_ppl:.3f} | {seconds:.1f} | {tuned_ppl:.3f} |"
            )
            print(rows[-1], flush=True)
    return [
        f"Byte-level LM (`_transformers.byte_lm`: 4 causal blocks, width 64, 4 heads, GELU "
        f"MLP 128, context 64) trained dense for {epochs} epochs ({train_s:.0f} s, Adam 2e-3 "
        f"cosine) on {size:,} bytes of the standard library's top-level `.py` sources "
        f"({len(x):,} windows): held-out perplexity {base:.3f} per byte on the next "
        f"{len(text) - size:,} bytes. Pruned in one shot from {CALIBRATION} training windows "
        "(the query/key/value/output projections and both MLP kernels of every block; the "
        "byte embedding and the output layer dense; LAMP is global magnitude pruning with "
        "LAMP scores, no LAMP row for 2:4). Calibration time is the whole `tfprune.oneshot` "
        f"call. Fine-tuning: one epoch over {tune:,} training windows, Adam 5e-4 with "
        "cosine decay, masks fixed.",
        "",
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="dense training epochs")
    parser.add_argument("--lm-epochs", type=int, default=3, help="LM dense training epochs")
    parser.add_argument("--lm-bytes", type=int, default=300_000, help="LM training bytes")
    parser.add_argument(
        "--models", default="cnn,vit,lm", help="comma-separated: cnn, vit, lm (default: all)"
    )
    parser.add_argument("--no-cost", action="store_true", help="skip the per-layer-size cost")
    parser.add_argument("--tiny", action="store_true", help="a small subset (smoke test)")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    lines = []
    if not args.no_cost:
        lines += [
            "SparseGPT cost per layer size (a d x d layer, 2,048 calibration rows, 50 %, "
            "block 128, NumPy float64):",
            "",
            *layer_cost((128, 256) if args.tiny else (128, 256, 512, 1024, 2048)),
            "",
        ]
    for name in args.models.split(","):
        if name == "lm":
            lines += lm_table(args.lm_epochs, args.lm_bytes, args.tiny)
        else:
            lines += prune_table(name, args.epochs, args.tiny)
    today = datetime.date.today().isoformat()
    command = "python benchmarks/oneshot.py " + " ".join(sys.argv[1:])
    publish(
        [
            f"## One-shot pruning: SparseGPT, Wanda, magnitude, LAMP ({today})",
            "",
            f"Command: `{command.strip()}`. Machine: {machine()}.",
            "",
            *lines,
        ],
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
