"""Pruning on the JAX backend: `model.fit`, then a `jax.jit` training loop written the way
Keras's JAX guide writes one (`stateless_call` + `optimizer.stateless_apply`).

KERAS_BACKEND=jax python examples/jax_training.py --quick
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported

import jax
import keras
import numpy as np

import tfprune
from tfprune import data, demo


def train(model: keras.Model, optimizer, x, y, epochs: int, batch_size: int) -> int:
    """Trains a wrapped model in a `jax.jit` loop that drives its `PruningController`.

    Returns:
        The number of training steps.
    """
    # --8<-- [start:loop]
    controller = tfprune.PruningController(model)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    def compute_loss(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits), non_trainable

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    @jax.jit
    def train_step(state, x, y):
        trainable, non_trainable, optimizer_variables = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        return loss, (trainable, non_trainable, optimizer_variables)

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    optimizer_variables = [v.value for v in optimizer.variables]
    step = 0
    for _ in range(epochs):
        for i in range(0, len(x), batch_size):
            # New masks when the schedule says so; they are part of the state.
            trainable, non_trainable = controller.stateless_update(step, trainable, non_trainable)
            _, (trainable, non_trainable, optimizer_variables) = train_step(
                (trainable, non_trainable, optimizer_variables),
                x[i : i + batch_size],
                y[i : i + batch_size],
            )
            step += 1
    # Write the state back to the model, as the guide does, and zero the pruned weights
    # (on JAX they are masked in the forward pass; see docs/guides/backends.md).
    for variable, value in zip(model.trainable_variables, trainable):
        variable.assign(value)
    for variable, value in zip(model.non_trainable_variables, non_trainable):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, optimizer_variables):
        variable.assign(value)
    controller.set_step(step)
    for layer in controller.layers:
        layer.zero_pruned()
    # --8<-- [end:loop]
    return step


def main(argv=None) -> dict[str, keras.Model]:
    """Prunes the digits CNN to 80 % with `fit` and with a jitted loop; returns both."""
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
        jit_compile=True,
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
