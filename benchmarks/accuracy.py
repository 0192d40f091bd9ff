"""Test accuracy after pruning: tfprune (layer and global scope) vs tfmot vs dense.

The Fashion-MNIST CNN Conv32-Conv64-Dense128 (`_models.cnn`) is trained for the same number
of epochs in every configuration, from the same initial weights, with the same optimizer,
batch size and seed: dense in Keras 3, dense in tf_keras, and pruned to each target sparsity
by `tfprune.wrap(scope="layer")`, `tfprune.wrap(scope="global")` and tfmot's
`prune_low_magnitude` (on the identical tf_keras model). One tfmot `PolynomialDecay` schedule
object is passed to both libraries: dense for the first 10 % of the steps, cubic decay to the
target by about 65 % of training, then fine-tuning at the target. The output layer stays
dense in every run. Accuracy is that of the stripped model after the last epoch on the full
test split (no selection on test data).

    python benchmarks/accuracy.py              # 10 epochs, appends to benchmarks/RESULTS.md
    python benchmarks/accuracy.py --epochs 20  # another budget
    python benchmarks/accuracy.py --tiny       # smoke run (2,000 / 500 images, 1 epoch)

Needs Fashion-MNIST (`apt-get install -y dataset-fashion-mnist`, or `--data DIR` /
`TFPRUNE_FASHION_MNIST` pointing at the four IDX files) and tfmot
(`pip install -e ".[tfmot]"`).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _bench import fashion_mnist
from _models import OUTPUT, cnn, tfmot_available, tfmot_prune
from _results import append_results

import tfprune

SPARSITIES = (0.5, 0.75, 0.9, 0.95)
BATCH = 128
LEARNING_RATE = 1e-3


def schedule_steps(total: int) -> tuple[int, int, int]:
    """`(begin_step, end_step, frequency)` of the common schedule for `total` training steps.

    Pruning starts after 10 % of the steps, updates every `frequency` steps (100, fewer for
    short runs) and ends on the update grid at about 65 % of the steps.

    Args:
        total: Number of optimizer steps of the run.

    Returns:
        The three schedule arguments.
    """
    frequency = max(1, min(100, total // 40))
    begin = total // 10
    end = begin + max(1, (int(0.65 * total) - begin) // frequency) * frequency
    return begin, end, frequency


def _hidden_sparsity(model) -> float:
    """Fraction of exact zeros over the kernels of every layer but the output."""
    zeros = total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and layer.name != OUTPUT:
            values = np.asarray(kernel)
            zeros, total = zeros + int(np.sum(values == 0)), total + values.size
    return zeros / total


def _train(model, k, train, epochs: int, seed: int, callbacks: list):
    """Compiles `model` with Adam in Keras module `k` and trains it; returns the model."""
    k.utils.set_random_seed(seed)
    model.compile(
        optimizer=k.optimizers.Adam(LEARNING_RATE),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(*train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    return model


def run(method: str, sparsity: float | None, init, train, epochs: int, seed: int):
    """Trains one configuration; returns the plain (stripped) model.

    Args:
        method: `"dense"`, `"tf_keras dense"`, `"tfprune layer"`, `"tfprune global"` or
            `"tfmot"`.
        sparsity: Target sparsity of the hidden kernels (ignored for the dense runs).
        init: Initial weights, in `get_weights()` order.
        train: `(x_train, y_train)`.
        epochs: Training epochs.
        seed: Seed set before training (shuffling, dropout-free otherwise).

    Returns:
        The trained model, stripped of pruning wrappers.
    """
    steps = epochs * math.ceil(len(train[0]) / BATCH)
    if method in ("tf_keras dense", "tfmot"):
        import tensorflow_model_optimization as tfmot
        import tf_keras

        model = cnn(tf_keras)
        model.set_weights(init)
        if method == "tf_keras dense":
            return _train(model, tf_keras, train, epochs, seed, [])
        pruned = tfmot_prune(model, _schedule(sparsity, steps))
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
        return tfmot.sparsity.keras.strip_pruning(
            _train(pruned, tf_keras, train, epochs, seed, callbacks)
        )
    model = cnn(keras)
    model.set_weights(init)
    if method == "dense":
        return _train(model, keras, train, epochs, seed, [])
    scope = method.split()[1]
    pruned = tfprune.wrap(model, _schedule(sparsity, steps), scope=scope, exclude=[OUTPUT])
    callbacks = [tfprune.callbacks.UpdateMasks()]
    return tfprune.strip(_train(pruned, keras, train, epochs, seed, callbacks))


def _schedule(sparsity: float, steps: int):
    """The common schedule as a tfmot object (tfprune converts it to its own)."""
    import tensorflow_model_optimization as tfmot

    begin, end, frequency = schedule_steps(steps)
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=begin,
        end_step=end,
        power=3,
        frequency=frequency,
    )


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


METHODS = ("tfprune layer", "tfprune global", "tfmot")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _target_lines(mean: dict, dense: float) -> list[str]:
    if ("tfmot", 0.9) not in mean:
        return []
    lines = []
    tfmot = mean[("tfmot", 0.9)]
    for method in METHODS[:2]:
        a = mean[(method, 0.9)]
        vs_tfmot = "met" if a >= tfmot else "missed"
        gap = (dense - a) * 100
        vs_dense = "met" if gap <= 0.5 else "missed"
        where = f"{gap:.2f} points below" if gap >= 0 else f"{-gap:.2f} points above"
        lines.append(
            f"- {method} at 90 %: {a:.4f} vs tfmot {tfmot:.4f} (target >= tfmot: {vs_tfmot}); "
            f"{where} Keras 3 dense {dense:.4f} (target at most 0.5 below: {vs_dense})."
        )
    return lines


def main(argv=None) -> dict:
    """Runs every configuration, prints the table and appends it to RESULTS.md.

    Args:
        argv: Command-line arguments (default: `sys.argv[1:]`).

    Returns:
        Test accuracy keyed by `(method, sparsity, seed)`; the dense runs have sparsity 0.0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds (initial weights, shuffling)"
    )
    parser.add_argument(
        "--sparsities", type=float, nargs="+", default=list(SPARSITIES), help="targets"
    )
    parser.add_argument("--data", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: 2,000 / 500 images, 1 epoch, no file"
    )
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if not tfmot_available():
        parser.exit(2, 'accuracy.py: needs tfmot and tf-keras: pip install -e ".[tfmot]"\n')
    try:
        (x_train, y_train), (x_test, y_test) = fashion_mnist(args.tiny, args.data)
    except FileNotFoundError as e:
        parser.exit(2, f"accuracy.py: {e} Here: --data DIR.\n")
    epochs = 1 if args.tiny else args.epochs
    train = (x_train, y_train)
    steps = epochs * math.ceil(len(x_train) / BATCH)
    begin, end, frequency = schedule_steps(steps)

    start = time.perf_counter()
    acc, measured = {}, {}
    configs = [("dense", 0.0), ("tf_keras dense", 0.0)]
    configs += [(m, s) for s in args.sparsities for m in METHODS]
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        init = cnn(keras).get_weights()
        for method, sparsity in configs:
            t = time.perf_counter()
            model = run(method, sparsity, init, train, epochs, seed)
            key = (method, sparsity, seed)
            acc[key] = _accuracy(model, x_test, y_test)
            measured[key] = _hidden_sparsity(model)
            print(
                f"seed {seed}  {method:<15} target {sparsity:.2f}  zeros {measured[key]:.4f}  "
                f"test acc {acc[key]:.4f}  ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    minutes = (time.perf_counter() - start) / 60

    per_config = {c: [acc[(*c, seed)] for seed in args.seeds] for c in configs}
    mean = {c: float(np.mean(v)) for c, v in per_config.items()}
    lines = [
        "| hidden-kernel sparsity | tfprune, layer scope | tfprune, global scope "
        "| tfmot prune_low_magnitude |",
        "| --- | --- | --- | --- |",
        f"| 0 % (dense) | {_cell(per_config[('dense', 0.0)])} (Keras 3) | — "
        f"| {_cell(per_config[('tf_keras dense', 0.0)])} (tf_keras) |",
    ]
    for s in args.sparsities:
        cells = [_cell(per_config[(m, s)]) for m in METHODS]
        lines.append(f"| {s * 100:g} % | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    off = [f"{k[0]} {k[1]:g}: {v:.4f}" for k, v in measured.items() if abs(v - k[1]) > 1e-3]
    notes = _target_lines(mean, mean[("dense", 0.0)])
    notes.append(
        "- Measured zeros in the hidden kernels equal the targets (to 0.1 %) in every run."
        if not off
        else "- Measured zeros differ from the target: " + "; ".join(off) + "."
    )
    print(table + "\n" + "\n".join(notes))
    if not args.tiny and not args.no_write:
        command = "python benchmarks/accuracy.py" + "".join(
            f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-write"
        )
        seeds = ", ".join(map(str, args.seeds))
        spread = " (mean ± sample standard deviation over the seeds)" if len(args.seeds) > 1 else ""
        append_results(
            "\n## Accuracy after pruning: tfprune vs tfmot, Fashion-MNIST CNN "
            "(benchmarks/accuracy.py)\n\n"
            f"Command: `{command}`. Machine: 2-core CPU, no GPU (shared with other jobs). "
            f"Date: {datetime.date.today()}. Runtime: {minutes:.0f} min. Conv32-Conv64-Dense128 "
            f"(`benchmarks/_models.py`), 60,000 train / 10,000 test images, {epochs} epochs, "
            f"batch {BATCH}, Adam({LEARNING_RATE:g}), seeds {seeds}; for each seed every run "
            "starts from the same initial weights. Schedule (one tfmot `PolynomialDecay` object, "
            f"passed to both libraries): 0 -> target, power 3, begin_step {begin}, end_step {end} "
            f"({end / steps:.0%} of {steps} steps), frequency {frequency}; output layer dense. "
            f"Test accuracy of the stripped model after the last epoch{spread}.\n\n"
            + table
            + "\n\n"
            + "\n".join(notes)
            + "\n"
        )
    return acc


if __name__ == "__main__":
    main()
