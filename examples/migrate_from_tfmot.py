"""Migrating from tensorflow-model-optimization: the same pruning run in tfmot and tfprune.

Side by side on scikit-learn's digits: one tfmot `PolynomialDecay` schedule object drives
tfmot's `prune_low_magnitude` on a `tf_keras` (Keras 2) model and `tfprune.wrap` on a
Keras 3 model; both start from the same weights, keep the output layer dense, train with
the same optimizer and data order, and are stripped to plain models at the end.

    tfmot (tf_keras)                          tfprune (Keras 3)
    prune_low_magnitude(layer, schedule)  ->  tfprune.wrap(model, sparsity=schedule,
      via clone_model(clone_function=...)       exclude=["logits"])
    callbacks.UpdatePruningStep()         ->  tfprune.callbacks.UpdateMasks()
    callbacks.PruningSummaries(log_dir)   ->  tfprune.callbacks.SparsityLogger(log_dir)
    strip_pruning(model)                  ->  tfprune.strip(model)

Needs `pip install -e ".[tfmot]"` (tensorflow-model-optimization and tf-keras). Importing
tfmot sets `TF_USE_LEGACY_KERAS=1` in the environment, so from then on `tf.keras` may mean
tf_keras in this process (and in child processes); `import keras` stays Keras 3. Name the
two explicitly (`keras`, `tf_keras`), never `tf.keras`, in code that mixes them.

python examples/migrate_from_tfmot.py           # 10 epochs
python examples/migrate_from_tfmot.py --quick   # 3 epochs
"""

from __future__ import annotations

import argparse
import types

import keras
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

import tfprune
from tfprune import data

BATCH = 32
FINAL_SPARSITY = 0.8


def build_cnn(k: types.ModuleType) -> keras.Model:
    """The same small CNN in either Keras: `k` is the `keras` or the `tf_keras` module.

    Args:
        k: `keras` (Keras 3) or `tf_keras` (Keras 2, what tfmot needs).

    Returns:
        An uncompiled Sequential model for 8x8x1 images, output layer named "logits".
    """
    return k.Sequential(
        [
            k.Input((8, 8, 1)),
            k.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            k.layers.MaxPooling2D(name="pool"),
            k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            k.layers.Flatten(name="flatten"),
            k.layers.Dense(64, activation="relu", name="fc"),
            k.layers.Dense(10, name="logits"),
        ]
    )


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _kernel_sparsity(model) -> dict[str, float]:
    """Fraction of exact zeros in each kernel of a plain (stripped) model."""
    out = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            out[layer.name] = float(np.mean(np.asarray(kernel) == 0))
    return out


def _fit(model, k: types.ModuleType, train, epochs: int, callbacks: list) -> None:
    """Compiles and trains `model` in Keras module `k` with the settings both sides share."""
    model.compile(
        optimizer=k.optimizers.Adam(3e-3),
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        *train, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks
    )


def prune_with_tfmot(
    initial_weights: list[np.ndarray], schedule, train: tuple[np.ndarray, np.ndarray], epochs: int
) -> tf_keras.Model:
    """tfmot: prune_low_magnitude on every layer but the logits, train, strip_pruning.

    Args:
        initial_weights: Starting weights, in `get_weights()` order.
        schedule: A `tfmot.sparsity.keras` schedule.
        train: `(x_train, y_train)`.
        epochs: Training epochs.

    Returns:
        The stripped tf_keras model.
    """
    # --8<-- [start:tfmot]
    model = build_cnn(tf_keras)
    model.set_weights(initial_weights)

    def prune_hidden(layer):  # tfmot's documented way to keep some layers dense
        if isinstance(layer, (tf_keras.layers.Conv2D, tf_keras.layers.Dense)) and (
            layer.name != "logits"
        ):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = tf_keras.models.clone_model(model, clone_function=prune_hidden)
    _fit(pruned, tf_keras, train, epochs, [tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(pruned)
    # --8<-- [end:tfmot]


def prune_with_tfprune(
    initial_weights: list[np.ndarray], schedule, train: tuple[np.ndarray, np.ndarray], epochs: int
) -> keras.Model:
    """tfprune: wrap with the same schedule object (logits excluded), train, strip.

    Args:
        initial_weights: Starting weights, in `get_weights()` order.
        schedule: The same tfmot schedule (or any tfprune schedule).
        train: `(x_train, y_train)`.
        epochs: Training epochs.

    Returns:
        The stripped Keras 3 model.
    """
    # --8<-- [start:tfprune]
    model = build_cnn(keras)
    model.set_weights(initial_weights)
    pruned = tfprune.wrap(model, sparsity=schedule, exclude=["logits"])
    _fit(pruned, keras, train, epochs, [tfprune.callbacks.UpdateMasks()])
    return tfprune.strip(pruned)
    # --8<-- [end:tfprune]


def main(argv=None) -> dict:
    """Runs both libraries on the same schedule and prints sparsity and accuracy.

    Args:
        argv: Command-line arguments (default: `sys.argv[1:]`).

    Returns:
        `{"tfmot": model, "tfprune": model, "accuracy": {...}, "sparsity": {...},
        "schedule": schedule}`: the two stripped models (tf_keras and Keras 3), test
        accuracy and per-kernel fraction of zeros of each, and the shared schedule.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 10")
    args = parser.parse_args(argv)
    epochs = 3 if args.quick else 10
    keras.utils.set_random_seed(0)
    tf_keras.utils.set_random_seed(0)
    train, (x_test, y_test) = data.digits()

    steps = epochs * int(np.ceil(len(train[0]) / BATCH))
    # Reach the target about two thirds into training, with end_step on the update grid
    # (a multiple of frequency), then fine-tune at constant sparsity.
    end_step = max(10, 2 * steps // 3 // 10 * 10)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=FINAL_SPARSITY,
        begin_step=0,
        end_step=end_step,
        frequency=10,
    )
    initial_weights = build_cnn(keras).get_weights()  # both start from these

    models = {
        "tfmot": prune_with_tfmot(initial_weights, schedule, train, epochs),
        "tfprune": prune_with_tfprune(initial_weights, schedule, train, epochs),
    }
    accuracy = {name: _accuracy(m, x_test, y_test) for name, m in models.items()}
    sparsity = {name: _kernel_sparsity(m) for name, m in models.items()}
    print(f"Schedule: {type(schedule).__name__}(0 -> {FINAL_SPARSITY}, steps 0..{end_step})")
    print(f"{'layer':<10}{'tfmot zeros':>14}{'tfprune zeros':>16}")
    for layer in sparsity["tfprune"]:
        print(f"{layer:<10}{sparsity['tfmot'][layer]:>14.4f}{sparsity['tfprune'][layer]:>16.4f}")
    print(f"{'accuracy':<10}{accuracy['tfmot']:>14.4f}{accuracy['tfprune']:>16.4f}")
    return {**models, "accuracy": accuracy, "sparsity": sparsity, "schedule": schedule}


if __name__ == "__main__":
    main()
