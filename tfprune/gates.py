"""Learnable channel gates: L0 hard-concrete gates and slimming scale gates.

L0 gates follow Louizos, Welling & Kingma (2018), "Learning Sparse Neural Networks through
L0 Regularization", with beta=2/3, gamma=-0.1, zeta=1.1. Both gates are Keras layers placed
after a Dense/Conv layer; they multiply the last (channel) axis.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from tfprune.regularizers import Slimming

__all__ = ["BETA", "GAMMA", "ZETA", "L0Gate", "ScaleGate", "fold", "hard_concrete", "l0_penalty"]

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1


def hard_concrete(log_alpha, u=None):
    """Hard-concrete gate value.

    Training (u given): z = min(1, max(0, sigmoid((log u - log(1-u) + log_alpha)/beta)
    * (zeta - gamma) + gamma)); inference (u None): z = min(1, max(0, sigmoid(log_alpha)
    * (zeta - gamma) + gamma)).

    Args:
        log_alpha: Gate location parameters.
        u: Uniform(0, 1) noise of the same shape, or None for the deterministic gate.

    Returns:
        Gate values in [0, 1].
    """
    if u is None:
        s = keras.ops.sigmoid(log_alpha)
    else:
        s = keras.ops.sigmoid((keras.ops.log(u) - keras.ops.log(1.0 - u) + log_alpha) / BETA)
    return keras.ops.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def l0_penalty(log_alpha):
    """Expected L0 norm sum_j sigmoid(log_alpha_j - beta * log(-gamma / zeta)).

    Args:
        log_alpha: Gate location parameters.

    Returns:
        Scalar expected number of open gates.
    """
    return keras.ops.sum(keras.ops.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA)))


@keras.saving.register_keras_serializable(package="tfprune")
class L0Gate(keras.layers.Layer):
    """Per-channel L0 hard-concrete gate; adds `lam * L0 / num_examples` to the loss in training.

    log_alpha is initialised to log(1 - drop_rate) - log(drop_rate).

    Args:
        lam: Per-layer lambda.
        num_examples: Number of training examples N; the penalty is lam * L0 / N.
        drop_rate: Initial drop rate p in (0, 1).
        seed: Seed for the uniform noise.

    Raises:
        ValueError: If `drop_rate` is not in (0, 1) or `num_examples` < 1.
    """

    def __init__(
        self,
        lam: float = 1.0,
        num_examples: int = 1,
        drop_rate: float = 0.5,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 < drop_rate < 1.0:
            raise ValueError(
                f"`drop_rate` must be in (0, 1). Received: drop_rate={drop_rate}. Use e.g. 0.5."
            )
        if num_examples < 1:
            raise ValueError(
                f"`num_examples` must be >= 1. Received: num_examples={num_examples}. "
                "Pass the training-set size."
            )
        self.lam = float(lam)
        self.num_examples = int(num_examples)
        self.drop_rate = float(drop_rate)
        self.seed = seed
        self._seed_gen = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        init = math.log(1.0 - self.drop_rate) - math.log(self.drop_rate)
        self.log_alpha = self.add_weight(
            name="log_alpha",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(init),
            trainable=True,
        )

    def gate(self, training: bool = False):
        """Gate vector: sampled when `training`, deterministic otherwise."""
        if not training:
            return hard_concrete(self.log_alpha)
        u = keras.random.uniform(
            self.log_alpha.shape, minval=1e-6, maxval=1.0 - 1e-6, seed=self._seed_gen
        )
        return hard_concrete(self.log_alpha, u)

    def call(self, inputs, training=None):
        if training:
            self.add_loss(self.lam * l0_penalty(self.log_alpha) / self.num_examples)
        return inputs * keras.ops.cast(self.gate(bool(training)), inputs.dtype)

    def open_gates(self) -> int:
        """Number of channels whose deterministic gate is > 0."""
        return int(keras.ops.convert_to_numpy(keras.ops.sum(hard_concrete(self.log_alpha) > 0)))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "lam": self.lam,
            "num_examples": self.num_examples,
            "drop_rate": self.drop_rate,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="tfprune")
class ScaleGate(keras.layers.Layer):
    """Learnable per-channel scale, initialised to 1, with the slimming L1 penalty.

    For layer groups without BatchNormalization (Liu et al. 2017).

    Args:
        strength: L1 coefficient on |scale|.
    """

    def __init__(self, strength: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.strength = float(strength)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale",
            shape=(input_shape[-1],),
            initializer="ones",
            regularizer=Slimming(self.strength),
            trainable=True,
        )

    def call(self, inputs):
        return inputs * keras.ops.cast(self.scale, inputs.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "strength": self.strength}


_HOMOGENEOUS = ("linear", "relu")


def fold(model: keras.Model) -> keras.Model:
    """Return a copy of `model` with each gate's deterministic value folded into its producer.

    The kernel's output channels and the bias of the Dense/Conv layer feeding an `L0Gate` or
    `ScaleGate` are multiplied by the gate, and the gate becomes an `Identity` layer. Zero
    gates thus become all-zero filters, which `tfprune.shrink` removes.

    Args:
        model: A functional or Sequential model.

    Returns:
        A new model without gate variables, with equal inference outputs.

    Raises:
        ValueError: If a gate's producer has no kernel, feeds other layers too, or uses an
            activation other than linear/relu (folding would then change the output).
    """
    scaled: dict[int, list] = {}
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, (L0Gate, ScaleGate)):
            continue
        producer = layer.input._keras_history.operation
        act = getattr(getattr(producer, "activation", None), "__name__", None)
        if not hasattr(producer, "kernel") or act not in _HOMOGENEOUS:
            raise ValueError(
                f"Gate {layer.name!r} must follow a Dense/Conv layer with linear or relu "
                f"activation. Received: producer={producer.name!r}, activation={act!r}. "
                "Put the activation after the gate."
            )
        if len(producer._outbound_nodes) != 1:
            raise ValueError(
                f"Layer {producer.name!r} feeds more than the gate {layer.name!r}. "
                f"Received: consumers={len(producer._outbound_nodes)}. Gate its only output."
            )
        z = keras.ops.convert_to_numpy(
            hard_concrete(layer.log_alpha) if isinstance(layer, L0Gate) else layer.scale
        )
        weights = [keras.ops.convert_to_numpy(w) for w in producer.weights]
        scaled[id(producer)] = [w * z if w.shape[-1:] == z.shape else w for w in weights]

    def clone(layer):
        if isinstance(layer, (L0Gate, ScaleGate)):
            return keras.layers.Identity(name=layer.name)
        new = layer.__class__.from_config(layer.get_config())
        if id(layer) in scaled:
            new.build(layer.input.shape)
            new.set_weights(scaled[id(layer)])
        return new

    new = keras.models.clone_model(model, clone_function=clone)
    for old, fresh in zip(model.layers, new.layers):
        if id(old) not in scaled and not isinstance(old, (L0Gate, ScaleGate)) and old.weights:
            fresh.set_weights(old.get_weights())
    return new
