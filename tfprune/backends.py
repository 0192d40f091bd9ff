"""What differs between Keras backends for pruning, in one place.

tfprune runs on TensorFlow, JAX and PyTorch Keras. Two things depend on the backend:

- How masks reach the forward pass (`MASK_IN_CALL`). On TensorFlow and PyTorch each mask
  is its weights' constraint, which the optimizer applies right after every update, so the
  forward pass has no masking op. JAX trains statelessly: the optimizer's constraints see
  neither the current masks nor any variable outside the optimizer's own state, so there
  the layer computes with `where(mask, weight, 0)` and the masks, non-trainable
  variables, travel in the state of `stateless_call`.
- How gradients are taken outside `fit` (`gradients`, for the Taylor criteria): each
  backend has its own automatic differentiation.
- Where the training state lives during `model.fit` (`sync_state`). Keras's JAX trainer
  keeps weights, optimizer and metric state in arrays of its own between steps and leaves
  the variables empty; callbacks that read or write variables write that state back
  first.

Conversion to TFLite needs TensorFlow; from another backend it runs in a TensorFlow-backend
subprocess (`tfprune.export`).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

__all__ = ["MASK_IN_CALL", "gradients", "sync_state"]

MASK_IN_CALL = keras.backend.backend() == "jax"


def sync_state(model: keras.layers.Layer) -> None:
    """Writes the training state that `model.fit` holds outside the variables back to them.

    On JAX, call it in a callback before reading or changing variables mid-epoch; the
    trainer then continues from the variables. On TensorFlow and PyTorch the variables
    are always current and this does nothing.

    Args:
        model: The model being trained (any layer is accepted).
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def gradients(model: keras.Model, loss: Callable, x, y) -> dict[str, np.ndarray]:
    """Gradients of `mean(loss(y, model(x, training=False)))` on the current backend.

    Args:
        model: A built Keras model.
        loss: A Keras loss function or object, `loss(y_true, y_pred)`.
        x: A batch of inputs.
        y: The batch's targets.

    Returns:
        The gradient of every trainable variable, keyed by its `path`, as NumPy arrays.
    """
    variables = model.trainable_variables
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def value(trainable):
            out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return keras.ops.mean(loss(y, out))

        grads = jax.grad(value)([v.value for v in variables])
    elif backend == "torch":
        import torch

        value = keras.ops.mean(loss(y, model(x, training=False)))
        grads = torch.autograd.grad(value, [v.value for v in variables], allow_unused=True)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = keras.ops.mean(loss(y, model(x, training=False)))
        grads = tape.gradient(value, [v.value for v in variables])
    return {
        v.path: keras.ops.convert_to_numpy(g) for v, g in zip(variables, grads) if g is not None
    }
