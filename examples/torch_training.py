"""Pruning on the PyTorch backend: `model.fit`, then a training loop written the way
Keras's PyTorch guide writes one (`loss.backward()` + `optimizer.apply`).

KERAS_BACKEND=torch python examples/torch_training.py --quick
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported

import keras
import numpy as np
import torch

import tfprune
from tfprune import data, demo


def train(model: keras.Model, optimizer, x, y, epochs: int, batch_size: int) -> int:
    """Trains a wrapped model in an eager PyTorch loop that drives its `PruningController`.

    Returns:
        The number of training steps.
    """
    # --8<-- [start:loop]
    controller = tfprune.PruningController(model)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = 0
    for _ in range(epochs):
        for i in range(0, len(x), batch_size):
            controller.update(step)  # new masks when the schedule says so
            logits = model(x[i : i + batch_size], training=True)
            loss = loss_fn(torch.as_tensor(y[i : i + batch_size]), logits)
            model.zero_grad()
            loss.backward()
            weights = model.trainable_weights
            with torch.no_grad():
                optimizer.apply([w.value.grad for w in weights], weights)
            step += 1
    controller.set_step(step)
    # --8<-- [end:loop]
    return step


def main(argv=None) -> dict[str, keras.Model]:
    """Prunes the digits CNN to 80 % with `fit` and with a hand-written loop; returns both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of 5")
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else 5
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    steps = epochs * -(-len(x_train) // 32)
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.8, 0, steps - 1, frequency=1)
    results = {}

    fitted = tfprune.wrap(demo.build_cnn(), sparsity=schedule, exclude=["logits"])
    fitted.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    fitted.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks()],
    )
    results["fit"] = fitted

    looped = tfprune.wrap(demo.build_cnn(), sparsity=schedule, exclude=["logits"])
    train(looped, keras.optimizers.Adam(1e-3), x_train, y_train, epochs, batch_size=32)
    results["loop"] = looped

    for name, model in results.items():
        final = tfprune.strip(model)
        accuracy = np.mean(np.argmax(final.predict(x_test, verbose=0), -1) == y_test)
        sparsity = tfprune.PruningController(model).sparsities()["global"]
        print(f"{name}: sparsity {sparsity:.4f}, test accuracy {accuracy:.4f}")
    return results


if __name__ == "__main__":
    main()
