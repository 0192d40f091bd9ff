"""`tfprune demo`: prune a small CNN on scikit-learn's bundled digits, end to end.

Stages: train dense -> prune to 80 % unstructured sparsity with a polynomial schedule while
fine-tuning -> strip -> report; then, from the dense model, remove 50 % of the channels
(global L1) -> shrink -> fine-tune; finally export the dense and the shrunk model to float32
and int8 TFLite side by side (all measured in LiteRT) and the shrunk int8 file to TFLite
Micro source. Each stage prints what it did; the whole demo runs in about two minutes on two
CPU cores.
"""

from __future__ import annotations

import os

import keras
import numpy as np

import tfprune
from tfprune import data
from tfprune._validate import integer

__all__ = ["build_cnn", "run"]


def build_cnn(input_shape: tuple[int, ...] = (8, 8, 1), classes: int = 10) -> keras.Model:
    """The demo's CNN: two 3x3 conv blocks with batch norm, then a dense classifier.

    Args:
        input_shape: Image shape, channels last.
        classes: Number of classes.

    Returns:
        An uncompiled functional model.
    """
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _compile(model: keras.Model, lr: float = 1e-3) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _export_stage(
    models: dict[str, keras.Model],
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    out_dir: str,
) -> dict[str, float]:
    """Exports each model to float32 and int8 TFLite and measures them all in LiteRT.

    Every row is a .tflite file run by the same interpreter on one thread, so sizes and
    latencies compare like with like. The last model's int8 file also becomes TFLite Micro
    source.
    """
    rows = []
    for label, model in models.items():
        for quantize in (None, "int8"):
            mode = quantize or "float32"
            path = os.path.join(out_dir, f"digits_{label}_{mode}.tflite")
            result = tfprune.export.tflite(
                model,
                path,
                quantize=quantize,
                representative_data=x_train[:300],
                shrink=False,
                verify_data=(x_test, y_test),
            )
            speed = tfprune.export.latency(path, threads=1, runs=100).median
            rows.append((f"{label} {mode}", path, result.size, speed, result.verification))
    micro = tfprune.export.micro(rows[-1][1], out_dir, f"digits_{label}_int8")
    base_size, base_speed = rows[0][2], rows[0][3]
    print(f"\n== Export to {out_dir}/ (LiteRT, median latency of one example, 1 thread)")
    print(
        f"{'TFLite file':<16}{'size':>12}{'vs dense':>9}{'latency':>12}{'speed-up':>10}"
        f"{'accuracy':>10}"
    )
    for name, _, size, speed, check in rows:
        print(
            f"{name:<16}{size:>10,} B{size / base_size:>8.2f}x{speed * 1e3:>9.3f} ms"
            f"{base_speed / speed:>9.2f}x{check.accuracy:>10.4f}"
        )
    print(
        f"TFLite Micro: {micro.source} + .h, ops {', '.join(micro.ops)}, "
        f"tensor arena ~{micro.arena.total:,} B."
    )
    return {f"tflite_{name.replace(' ', '_')}": check.accuracy for name, *_, check in rows}


def _channel_stage(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    epochs: int,
) -> tuple[keras.Model, dict[str, float]]:
    """Removes 50 % of the dense model's channels (global L1), shrinks, and fine-tunes."""
    pruned = tfprune.prune_channels(model, ratio=0.5, criterion="l1", scope="global")
    small = tfprune.shrink(pruned)
    acc_pruned, acc_small = _accuracy(pruned, x_test, y_test), _accuracy(small, x_test, y_test)
    _compile(small, lr=5e-4)
    small.fit(x_train, y_train, batch_size=32, epochs=max(1, epochs // 2), verbose=0)
    acc_tuned = _accuracy(small, x_test, y_test)
    before = tfprune.summary(pruned, print_fn=None)
    print("\n== Channel pruning: 50 % of channels removed (global L1), then shrunk")
    after = tfprune.summary(small)
    print(
        f"params {before.params:,} -> {after.params:,}, MACs {before.macs:,} -> "
        f"{after.macs:,} ({before.macs / max(after.macs, 1):.1f}x fewer)\n"
        f"test accuracy: zeroed {acc_pruned:.4f}, shrunk {acc_small:.4f} (same model), "
        f"after fine-tuning {max(1, epochs // 2)} epoch(s) {acc_tuned:.4f}"
    )
    return small, {"channel_pruned": acc_pruned, "shrunk": acc_small, "shrunk_finetuned": acc_tuned}


def run(epochs: int = 8, seed: int = 0, out_dir: str = "tfprune-demo") -> dict[str, float]:
    """Runs the demo and prints its report.

    Args:
        epochs: Dense training epochs (pruning fine-tunes for as many).
        seed: Random seed for weights and shuffling.
        out_dir: Folder for files the demo writes.

    Returns:
        Test accuracies keyed by stage (`"dense"`, `"pruned"`, `"channel_pruned"`,
        `"shrunk"`, `"shrunk_finetuned"`, and `"tflite_dense_float32"`,
        `"tflite_dense_int8"`, `"tflite_shrunk_float32"`, `"tflite_shrunk_int8"` for the
        exported files).

    Raises:
        TypeError: If `epochs` or `seed` is not an integer.
        ValueError: If `epochs` < 1 or `seed` < 0.
    """
    epochs = integer("epochs", epochs)
    seed = integer("seed", seed, minimum=0)
    keras.utils.set_random_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = data.digits(seed=seed)
    print(f"Data: scikit-learn digits, {len(x_train)} train / {len(x_test)} test images, 8x8.")

    model = build_cnn()
    _compile(model)
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    results = {"dense": _accuracy(model, x_test, y_test)}
    print(f"\n== Dense model: test accuracy {results['dense']:.4f}")
    tfprune.summary(model)

    steps = epochs * int(np.ceil(len(x_train) / 32))
    # Reach 80 % half-way through fine-tuning; end_step on the frequency grid so that the
    # last update lands exactly on the final target.
    end_step = max(10, steps // 2 // 10 * 10)
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.8, 0, end_step, frequency=10)
    pruned = tfprune.wrap(model, sparsity=schedule, exclude=["logits"])
    _compile(pruned, lr=5e-4)
    pruned.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks()],
    )
    stripped = tfprune.strip(pruned)
    results["pruned"] = _accuracy(stripped, x_test, y_test)
    print(
        f"\n== Pruned to 80 % unstructured sparsity (logits layer kept dense): "
        f"test accuracy {results['pruned']:.4f}"
    )
    tfprune.summary(stripped)
    print(
        "\nZeros alone do not make the model smaller or faster on a device: the MACs are unchanged."
    )
    small, accuracies = _channel_stage(model, x_train, y_train, x_test, y_test, epochs)
    results.update(accuracies)
    exported = _export_stage({"dense": model, "shrunk": small}, x_train, x_test, y_test, out_dir)
    results.update(exported)
    return results
