"""Shared by the benchmark scripts: the benchmark architectures and tfmot's side of a run.

Each architecture is built from a Keras module passed in, `keras` (Keras 3, for tfprune) or
`tf_keras` (Keras 2, which tensorflow-model-optimization needs), so both libraries prune
exactly the same network. The output layer is named "logits" and is left dense by both.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import keras

OUTPUT = "logits"


def cnn(k: types.ModuleType = keras):
    """Fashion-MNIST CNN: Conv32-Conv64-Dense128.

    Args:
        k: `keras` (Keras 3) or `tf_keras` (Keras 2).

    Returns:
        An uncompiled Sequential model of module `k`, input (28, 28, 1), 10 logits.
    """
    return k.Sequential(
        [
            k.Input((28, 28, 1)),
            k.layers.Conv2D(32, 3, activation="relu", name="conv1"),
            k.layers.MaxPooling2D(),
            k.layers.Conv2D(64, 3, activation="relu", name="conv2"),
            k.layers.MaxPooling2D(),
            k.layers.Flatten(),
            k.layers.Dense(128, activation="relu", name="fc"),
            k.layers.Dense(10, name=OUTPUT),
        ]
    )


def lenet_300_100(k: types.ModuleType = keras):
    """LeNet-300-100 on flattened 28x28 images.

    Args:
        k: `keras` (Keras 3) or `tf_keras` (Keras 2).

    Returns:
        An uncompiled Sequential model of module `k`, input (784,), 10 logits.
    """
    return k.Sequential(
        [
            k.Input((784,)),
            k.layers.Dense(300, activation="relu", name="fc1"),
            k.layers.Dense(100, activation="relu", name="fc2"),
            k.layers.Dense(10, name=OUTPUT),
        ]
    )


def tfmot_available() -> bool:
    """Whether tensorflow-model-optimization and tf-keras can be imported."""
    try:
        import tensorflow_model_optimization  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError:
        return False
    return True


def tfmot_prune(model, schedule: Callable):
    """tfmot's `prune_low_magnitude` on every Conv2D/Dense of a tf_keras model but the output.

    Args:
        model: A built tf_keras Sequential or functional model (its weights are kept).
        schedule: A `tfmot.sparsity.keras` pruning schedule.

    Returns:
        The pruned tf_keras model (uncompiled); train it with tfmot's `UpdatePruningStep`.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras

    def clone(layer):
        kinds = (tf_keras.layers.Conv2D, tf_keras.layers.Dense)
        if isinstance(layer, kinds) and layer.name != OUTPUT:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    return tf_keras.models.clone_model(model, clone_function=clone)
