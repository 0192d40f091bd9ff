"""What differs between Keras backends for pruning, in one place.

tfprune runs on TensorFlow, JAX and PyTorch Keras. Two things depend on the backend:

- How masks reach the forward pass (`MASK_IN_CALL`). On TensorFlow and PyTorch each mask
  is its weights' constraint, which the optimizer applies right after every update, so the
  forward pass has no masking op. JAX trains statelessly: the optimizer's constraints see
  neither the current masks nor any variable outside the optimizer's own state, so there
  the layer computes with `where(mask, weight, 0)` and the masks, non-trainable
  variables, travel in the state of `stateless_call`.
- Where the training state lives during `model.fit` (`sync_state`). Keras's JAX trainer
  keeps weights, optimizer and metric state in arrays of its own between steps and leaves
  the variables empty; callbacks that read or write variables write that state back
  first.

Conversion to TFLite needs TensorFlow; from another backend it runs in a TensorFlow-backend
subprocess (`tfprune.export`).
"""

from __future__ import annotations

import keras

__all__ = ["MASK_IN_CALL", "sync_state"]

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
