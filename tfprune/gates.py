"""Learnable gates that `tfprune.Prunable` multiplies into the weights it wraps.

A gate is a small Keras layer holding one variable of the shape of a `Prunable` mask: one
entry per output channel (`granularity="channel"`) or per weight (`granularity="weight"`).
In the forward pass the wrapped layer runs on `weight * gate` (and the mask, as always,
keeps pruned weights at zero); a `Dense` layer with one gate per unit computes the same as
`(x W + b) * gate` before its activation, which is cheaper. `tfprune.strip` folds the
inference value of the gate into the weights, so a channel whose gate is 0 becomes an
all-zero channel that `tfprune.shrink` removes.

- `L0`: hard-concrete gates (Louizos, Welling & Kingma 2018, "Learning Sparse Neural
  Networks through L0 Regularization") with beta = 2/3, gamma = -0.1, zeta = 1.1. Training
  samples `z = min(1, max(0, sigmoid((log u - log(1 - u) + log_alpha) / beta) *
  (zeta - gamma) + gamma))`, u ~ U(0, 1); inference uses the deterministic
  `z = min(1, max(0, sigmoid(log_alpha) * (zeta - gamma) + gamma))`. The penalty is the
  expected L0 norm `lam / N * sum_j sigmoid(log_alpha_j - beta * log(-gamma / zeta))`.
- `Scale`: network-slimming scale factors (Liu et al. 2017) for channels without
  BatchNormalization: initialised to 1, with the L1 penalty `strength * sum |scale|`.

Both penalties are the gate variable's Keras regularizer, so they are in `model.losses`
and apply in `model.fit` and custom loops alike.

Example:

```python
gated = tfprune.wrap(
    model,
    sparsity=None,
    granularity="channel",
    gate=tfprune.gates.L0(lam=0.5, num_examples=len(x)),
    exclude=["logits"],
)
gated.compile(...)
gated.fit(x, y)
small = tfprune.shrink(gated)  # gates folded; channels with a zero gate removed
```
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfprune.regularizers import Slimming

__all__ = [
    "BETA",
    "GAMMA",
    "L0",
    "ZETA",
    "Gate",
    "L0Penalty",
    "Scale",
    "hard_concrete",
    "l0_penalty",
]

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1


def hard_concrete(log_alpha, u=None):
    """Hard-concrete gate values.

    Training (`u` given): `z = min(1, max(0, sigmoid((log u - log(1 - u) + log_alpha) /
    beta) * (zeta - gamma) + gamma))`; inference (`u` is None): `z = min(1, max(0,
    sigmoid(log_alpha) * (zeta - gamma) + gamma))`.

    Args:
        log_alpha: Gate location parameters.
        u: Uniform(0, 1) noise of the same shape, or `None` for the deterministic gate.

    Returns:
        Gate values in [0, 1].
    """
    if u is None:
        s = keras.ops.sigmoid(log_alpha)
    else:
        s = keras.ops.sigmoid((keras.ops.log(u) - keras.ops.log(1.0 - u) + log_alpha) / BETA)
    return keras.ops.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def l0_penalty(log_alpha):
    """Expected L0 norm `sum_j sigmoid(log_alpha_j - beta * log(-gamma / zeta))`.

    Args:
        log_alpha: Gate location parameters.

    Returns:
        Scalar: the expected number of nonzero gates.
    """
    return keras.ops.sum(keras.ops.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA)))


@keras.saving.register_keras_serializable(package="tfprune")
class L0Penalty(keras.regularizers.Regularizer):
    """`strength * l0_penalty(log_alpha)`: the expected L0 norm as a Keras regularizer.

    Args:
        strength: Coefficient, `lam / num_examples` for an `L0` gate.
    """

    def __init__(self, strength: float):
        self.strength = float(strength)

    def __call__(self, log_alpha):
        return self.strength * l0_penalty(log_alpha)

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength}


class Gate(keras.layers.Layer):
    """Base class of the gates a `tfprune.Prunable` holds.

    A gate is built with the shape of one mask of its `Prunable` and gives the values the
    covered weights are multiplied by. Subclasses create their variable in `build` and
    implement `values`.
    """

    def values(self, training: bool = False):
        """The gate values: sampled when `training`, deterministic otherwise."""
        raise NotImplementedError(f"{type(self).__name__} must implement `values(training)`.")

    def inference_values(self) -> np.ndarray:
        """The deterministic gate values as a NumPy array (what `strip` folds in)."""
        return keras.ops.convert_to_numpy(self.values(training=False))


@keras.saving.register_keras_serializable(package="tfprune")
class L0(Gate):
    """L0 hard-concrete gates (Louizos et al. 2018), one per channel or per weight.

    `log_alpha` starts at `log(1 - drop_rate) - log(drop_rate)`; the penalty
    `lam / num_examples * sum_j sigmoid(log_alpha_j - beta * log(-gamma / zeta))` is the
    regularizer of `log_alpha`. Training samples the gates (fresh noise every call);
    inference is deterministic.

    Args:
        lam: Lambda of this layer (the paper's per-layer coefficient).
        num_examples: Number of training examples N; the penalty is scaled by `1 / N`.
        drop_rate: Initial drop rate in (0, 1); 0.5 by default.
        seed: Seed of the gate noise.
        **kwargs: Base layer arguments.

    Raises:
        ValueError: If `lam` < 0, `num_examples` < 1 or `drop_rate` is not in (0, 1).
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
        if not lam >= 0:
            raise ValueError(f"`lam` must be >= 0. Received: lam={lam}. Use e.g. 0.1.")
        if not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(
                f"`num_examples` must be an integer >= 1. Received: num_examples={num_examples!r}. "
                "Pass the number of training examples."
            )
        if not 0.0 < drop_rate < 1.0:
            raise ValueError(
                f"`drop_rate` must be in (0, 1). Received: drop_rate={drop_rate}. Use e.g. 0.5."
            )
        self.lam = float(lam)
        self.num_examples = num_examples
        self.drop_rate = float(drop_rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, shape):
        self.log_alpha = self.add_weight(
            name="log_alpha",
            shape=tuple(shape),
            initializer=keras.initializers.Constant(
                math.log(1.0 - self.drop_rate) - math.log(self.drop_rate)
            ),
            regularizer=L0Penalty(self.lam / self.num_examples),
            trainable=True,
            autocast=False,
        )
        self.built = True

    def values(self, training: bool = False):
        """Hard-concrete gates: sampled when `training`, deterministic otherwise."""
        if not training:
            return hard_concrete(self.log_alpha)
        u = keras.random.uniform(
            self.log_alpha.shape, minval=1e-6, maxval=1.0 - 1e-6, seed=self.seed_generator
        )
        return hard_concrete(self.log_alpha, u)

    # The noise generator's state is saved with the weights, so a run resumed from a
    # checkpoint draws the same gate noise as an uninterrupted one.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        store["seed_state"] = keras.ops.convert_to_numpy(self.seed_generator.state)

    def load_own_variables(self, store):
        own = self.trainable_weights + self.non_trainable_weights
        for i, variable in enumerate(own):
            variable.assign(store[str(i)])
        if "seed_state" in list(store.keys()):  # absent in files saved before it was kept
            self.seed_generator.state.assign(store["seed_state"])

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "lam": self.lam,
            "num_examples": self.num_examples,
            "drop_rate": self.drop_rate,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="tfprune")
class Scale(Gate):
    """Per-channel scale factors with the slimming L1 penalty (Liu et al. 2017).

    For channel groups without BatchNormalization: the scale starts at 1 and carries
    `tfprune.regularizers.Slimming(strength)`; `prune_channels(criterion="bn_scale")` ranks
    channels by |scale| as it ranks BatchNormalization channels by |gamma|.

    Args:
        strength: L1 coefficient on |scale|.
        **kwargs: Base layer arguments.

    Raises:
        ValueError: If `strength` is negative.
    """

    def __init__(self, strength: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        Slimming(strength)  # validates
        self.strength = float(strength)

    def build(self, shape):
        self.scale = self.add_weight(
            name="scale",
            shape=tuple(shape),
            initializer="ones",
            regularizer=Slimming(self.strength),
            trainable=True,
            autocast=False,
        )
        self.built = True

    def values(self, training: bool = False):
        """The scale factors (the same in training and inference)."""
        del training
        return self.scale

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "strength": self.strength}
