"""Pruning in a custom training loop: a tf.function train step + PruningController.

python examples/custom_training_loop.py --quick
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
import tensorflow as tf

import tfprune
from tfprune import data, demo


def main(argv=None) -> keras.Model:
    """Prunes the digits CNN to 80 % in a hand-written loop; returns the wrapped model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of 5")
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else 5
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32)
    steps = epochs * len(dataset)

    # --8<-- [start:loop]
    model = tfprune.wrap(
        demo.build_cnn(),
        sparsity=tfprune.schedules.PolynomialDecay(0.0, 0.8, 0, steps - 1, frequency=1),
        exclude=["logits"],
    )
    controller = tfprune.PruningController(model)
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step = 0
    for _ in range(epochs):
        for x, y in dataset:
            controller.update(step)  # new masks when the schedule says so
            train_step(x, y)
            step += 1
    controller.set_step(step)
    # --8<-- [end:loop]
    accuracy = np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
    print(f"sparsity {controller.sparsities()['global']:.4f}, test accuracy {accuracy:.4f}")
    return model


if __name__ == "__main__":
    main()
