"""Learned-sparsity regularisers: network slimming and group lasso.

Network slimming (Liu et al. 2017) puts an L1 penalty on BatchNormalization gammas;
group lasso (Wen et al. 2016) sums the L2 norms of filter or input-channel groups,
weighted by sqrt(group size). Both are ordinary `keras.regularizers.Regularizer`
objects, so the penalty appears in `model.losses` and applies in plain `model.fit`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfprune.backends import sync_state
from tfprune.layers import iter_layers

__all__ = [
    "ZERO_THRESHOLD",
    "GroupLasso",
    "ProximalGroupLasso",
    "Slimming",
    "apply_proximal",
    "group_norms",
    "slimming",
]

#: A group whose L2 norm is at most this value is called "zero".
ZERO_THRESHOLD = 1e-8


@keras.saving.register_keras_serializable(package="tfprune")
class Slimming(keras.regularizers.Regularizer):
    """L1 penalty on BatchNormalization gammas: `strength * sum(|gamma|)` (Liu et al. 2017).

    A regulariser (not a callback) is used because Keras adds regulariser losses to
    `model.losses`, which `model.fit` and custom loops both include, and it saves with the
    model.

    Args:
        strength: Penalty coefficient (1e-4 for VGG-like nets, 1e-5 for residual nets).

    Raises:
        ValueError: If `strength` is negative.
    """

    def __init__(self, strength: float = 1e-4):
        if strength < 0:
            raise ValueError(
                f"`strength` must be >= 0. Received: strength={strength}. "
                "Pass a non-negative float."
            )
        self.strength = float(strength)

    def __call__(self, x):
        return self.strength * keras.ops.sum(keras.ops.abs(x))

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength}


def slimming(model: keras.Model, strength: float = 1e-4) -> keras.Model:
    """Return a clone of `model` whose BatchNormalization gammas carry `Slimming(strength)`.

    Args:
        model: A built Keras model.
        strength: L1 coefficient on |gamma|.

    Returns:
        A new model with the same weights; every scaled BatchNormalization layer has
        `gamma_regularizer=Slimming(strength)`.

    Raises:
        ValueError: If `strength` is negative or the model has no BatchNormalization
            layer with `scale=True`.
    """
    reg = Slimming(strength)
    found = []

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
            config["gamma_regularizer"] = keras.saving.serialize_keras_object(reg)
            found.append(layer.name)
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no BatchNormalization layer with scale=True. "
            "Received: model without scaled BN. Use tfprune.gates.Scale for layers without BN."
        )
    new.set_weights(model.get_weights())
    return new


def _group_axes(ndim: int, groups: str) -> tuple[int, ...]:
    if groups == "filters":
        keep = ndim - 1
    elif groups == "inputs":
        keep = max(ndim - 2, 0)
    else:
        raise ValueError(
            f"`groups` must be 'filters' or 'inputs'. Received: groups={groups!r}. "
            "Use 'filters' for output channels."
        )
    return tuple(a for a in range(ndim) if a != keep)


def group_norms(w, groups: str = "filters"):
    """L2 norm of each group of a Dense/Conv kernel (layout (..., in, out)).

    Args:
        w: Kernel tensor or array.
        groups: `"filters"` (one group per output channel) or `"inputs"` (per input channel).

    Returns:
        Tensor of group norms.

    Raises:
        ValueError: If `groups` is unknown.
    """
    axes = _group_axes(len(w.shape), groups)
    return keras.ops.sqrt(keras.ops.sum(keras.ops.square(w), axis=axes))


@keras.saving.register_keras_serializable(package="tfprune")
class GroupLasso(keras.regularizers.Regularizer):
    """Group lasso `strength * sum_g sqrt(|g|) * ||w_g||_2` (Wen et al. 2016).

    Args:
        strength: Penalty coefficient lambda.
        groups: `"filters"` (output channels) or `"inputs"` (input channels).

    Raises:
        ValueError: If `strength` < 0 or `groups` is unknown.
    """

    def __init__(self, strength: float = 1e-4, groups: str = "filters"):
        if strength < 0:
            raise ValueError(
                f"`strength` must be >= 0. Received: strength={strength}. "
                "Pass a non-negative float."
            )
        _group_axes(2, groups)
        self.strength = float(strength)
        self.groups = groups

    def __call__(self, x):
        axes = _group_axes(len(x.shape), self.groups)
        size = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        # eps inside sqrt keeps the gradient finite at an exactly-zero group
        norms = keras.ops.sqrt(keras.ops.sum(keras.ops.square(x), axis=axes) + 1e-12)
        return self.strength * math.sqrt(size) * keras.ops.sum(norms)

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength, "groups": self.groups}


@keras.saving.register_keras_serializable(package="tfprune")
class ProximalGroupLasso(keras.callbacks.Callback):
    """Group soft-threshold after each step so groups reach exactly zero.

    w_g <- max(0, 1 - lr * lambda * sqrt(|g|) / ||w_g||) * w_g, applied to the kernel of every
    layer whose `kernel_regularizer` is a `GroupLasso` (using its strength and groups).
    Groups with norm <= `ZERO_THRESHOLD` after the step are "zero".

    Args:
        learning_rate: lr used in the threshold; None reads the optimizer's current value.
    """

    def __init__(self, learning_rate: float | None = None):
        super().__init__()
        self.learning_rate = learning_rate

    def _lr(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        lr = self.model.optimizer.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def on_train_batch_end(self, batch, logs=None):
        sync_state(self.model)
        apply_proximal(self.model, self._lr())

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}


def apply_proximal(model: keras.Model, learning_rate: float) -> int:
    """Apply one group soft-threshold to every `GroupLasso`-regularised kernel of `model`.

    `w_g <- max(0, 1 - lr * lambda * sqrt(|g|) / ||w_g||) * w_g`, computed with `keras.ops`
    on the variables (layers inside wrappers such as `tfprune.Prunable` included).

    Args:
        model: Keras model.
        learning_rate: Step size lr in the threshold lr * lambda * sqrt(|g|).

    Returns:
        Number of groups that are zero (norm <= ZERO_THRESHOLD) afterwards.
    """
    zero = 0
    for layer in iter_layers(model):
        inner = layer.layer if isinstance(layer, keras.layers.Wrapper) else layer
        reg = getattr(inner, "kernel_regularizer", None)
        if not isinstance(reg, GroupLasso):
            continue
        kernel = inner.kernel
        axes = _group_axes(len(kernel.shape), reg.groups)
        size = int(np.prod([kernel.shape[a] for a in axes]))
        norms = keras.ops.sqrt(keras.ops.sum(keras.ops.square(kernel), axis=axes, keepdims=True))
        tau = learning_rate * reg.strength * math.sqrt(size)
        scale = keras.ops.relu(1.0 - tau / keras.ops.maximum(norms, 1e-30))
        kernel.assign(kernel * keras.ops.cast(scale, kernel.dtype))
        zero += int(keras.ops.convert_to_numpy(keras.ops.sum(norms * scale <= ZERO_THRESHOLD)))
    return zero
