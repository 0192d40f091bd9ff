"""Sparsity schedules: step -> (update masks now?, target sparsity).

The contract is tensorflow-model-optimization's: a schedule is called with the training step
and returns `(should_prune, sparsity)`. So tfmot schedule objects work unchanged, and
`get` converts tfmot's `ConstantSparsity` and `PolynomialDecay` into the equivalent tfprune
schedules (which, unlike tfmot's, save inside `.keras` files).

Examples:
    >>> import tfprune
    >>> schedule = tfprune.schedules.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    >>> should_prune, sparsity = schedule(500)  # 0.8 * (1 - (1 - 500 / 1000) ** 3)
    >>> should_prune, round(sparsity, 4)
    (True, 0.7)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import keras

from tfprune._validate import fraction

__all__ = ["ConstantSparsity", "PolynomialDecay", "PruningSchedule", "get"]


def _check_sparsity(name: str, value: float) -> float:
    return fraction(name, value)


def _check_steps(begin_step: int, end_step: int | None, frequency: int) -> None:
    if not isinstance(begin_step, int) or begin_step < 0:
        raise ValueError(
            "Expected `begin_step` to be a non-negative integer. "
            f"Received: begin_step={begin_step!r}"
        )
    if end_step is not None and (not isinstance(end_step, int) or end_step < begin_step):
        raise ValueError(
            "Expected `end_step` to be None or an integer >= begin_step. "
            f"Received: begin_step={begin_step}, end_step={end_step!r}"
        )
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(
            f"Expected `frequency` to be a positive integer. Received: frequency={frequency!r}"
        )


class PruningSchedule:
    """Base class: a serializable `step -> (should_prune, sparsity)` function."""

    begin_step: int
    end_step: int | None
    frequency: int

    def __call__(self, step: int) -> tuple[bool, float]:
        """Returns whether to update masks at `step`, and the target sparsity then.

        Args:
            step: Training step (number of optimizer updates so far).

        Returns:
            `(should_prune, sparsity)`.
        """
        return self.should_prune(step), self.sparsity(step)

    def should_prune(self, step: int) -> bool:
        """True at `begin_step + k * frequency` for k >= 0, up to `end_step` inclusive."""
        in_range = step >= self.begin_step and (self.end_step is None or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def sparsity(self, step: int) -> float:
        """Target sparsity at `step`."""
        raise NotImplementedError(f"{type(self).__name__} must implement `sparsity(step)`.")

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, so that `cls(**config)` rebuilds the schedule."""
        raise NotImplementedError(f"{type(self).__name__} must implement `get_config()`.")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PruningSchedule:
        """Rebuilds a schedule from `get_config()`'s output."""
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tfprune")
class ConstantSparsity(PruningSchedule):
    """One target sparsity, applied every `frequency` steps from `begin_step`.

    Args:
        target: Fraction of weights (or units) to prune, in [0, 1).
        begin_step: First step at which masks are updated.
        end_step: Last step at which masks may be updated (`None`: no end).
        frequency: Steps between two mask updates.

    Raises:
        ValueError: If `target` is outside [0, 1) or the steps are inconsistent.
    """

    def __init__(
        self, target: float, begin_step: int = 0, end_step: int | None = None, frequency: int = 100
    ):
        self.target = _check_sparsity("target", target)
        _check_steps(begin_step, end_step, frequency)
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency

    def sparsity(self, step: int) -> float:
        del step
        return self.target

    def get_config(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tfprune")
class PolynomialDecay(PruningSchedule):
    """Gradual pruning of Zhu & Gupta (2017), "To prune, or not to prune".

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power, with t clipped to
    [t0, t1] = [begin_step, end_step]. Masks are updated every `frequency` steps in
    [begin_step, end_step]; make `end_step - begin_step` a multiple of `frequency` so the
    final update reaches `final` exactly.

    Args:
        initial: Sparsity at `begin_step`, in [0, 1).
        final: Sparsity at and after `end_step`, in [0, 1).
        begin_step: First update step.
        end_step: Last update step (> `begin_step`).
        power: Exponent of the decay (3 in the paper).
        frequency: Steps between two mask updates.

    Raises:
        ValueError: If a sparsity is outside [0, 1) or the steps are inconsistent.
    """

    def __init__(
        self,
        initial: float,
        final: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        self.initial = _check_sparsity("initial", initial)
        self.final = _check_sparsity("final", final)
        _check_steps(begin_step, end_step, frequency)
        if end_step is None or end_step == begin_step:
            raise ValueError(
                "Expected `end_step` > `begin_step` for PolynomialDecay. "
                f"Received: begin_step={begin_step}, end_step={end_step!r}"
            )
        if isinstance(power, bool) or not isinstance(power, numbers.Real):
            raise TypeError(
                "Expected `power` to be a positive number (3 in the paper). "
                f"Received: power={power!r}"
            )
        if not (math.isfinite(power) and power > 0):
            raise ValueError(
                "Expected `power` to be a finite number > 0 (3 in the paper; 1 is linear). "
                f"Received: power={power!r}"
            )
        self.begin_step, self.end_step = begin_step, end_step
        self.power, self.frequency = float(power), frequency

    def sparsity(self, step: int) -> float:
        t = min(max(step, self.begin_step), self.end_step)
        progress = (t - self.begin_step) / (self.end_step - self.begin_step)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** self.power

    def get_config(self) -> dict[str, Any]:
        return {
            "initial": self.initial,
            "final": self.final,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


def _from_tfmot(schedule: Any) -> PruningSchedule | None:
    """The tfprune equivalent of a tfmot ConstantSparsity or PolynomialDecay, else None."""
    get_config = getattr(schedule, "get_config", None)
    if get_config is None or "tensorflow_model_optimization" not in type(schedule).__module__:
        return None
    config = get_config().get("config", {})
    end = config.get("end_step", -1)
    end = None if end is None or end < 0 else int(end)
    name = type(schedule).__name__
    if name == "ConstantSparsity":
        return ConstantSparsity(
            float(config["target_sparsity"]),
            int(config["begin_step"]),
            end,
            int(config["frequency"]),
        )
    if name == "PolynomialDecay":
        return PolynomialDecay(
            float(config["initial_sparsity"]),
            float(config["final_sparsity"]),
            int(config["begin_step"]),
            end,
            float(config["power"]),
            int(config["frequency"]),
        )
    return None


def get(sparsity: float | PruningSchedule | Callable | dict | None) -> Callable | None:
    """Returns the schedule for a user-facing `sparsity` value.

    Args:
        sparsity: A float in [0, 1) (constant sparsity from step 0, updated every 100
            steps), a `PruningSchedule`, a serialized schedule dict, a tensorflow-model-
            optimization schedule (converted when it is a ConstantSparsity or
            PolynomialDecay), any other `schedule(step) -> (should_prune, sparsity)`
            callable, or `None` (masks change only when set explicitly).

    Returns:
        The schedule, or `None`.

    Raises:
        ValueError: If a float is outside [0, 1).
        TypeError: If the value is none of the above.
    """
    if sparsity is None or isinstance(sparsity, PruningSchedule):
        return sparsity
    if isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool):
        return ConstantSparsity(_check_sparsity("sparsity", sparsity))
    if isinstance(sparsity, dict):
        return keras.saving.deserialize_keras_object(sparsity)
    converted = _from_tfmot(sparsity)
    if converted is not None:
        return converted
    if callable(sparsity):
        return sparsity
    raise TypeError(
        "Expected `sparsity` to be a float in [0, 1), a tfprune.schedules schedule, or a "
        f"callable `schedule(step) -> (should_prune, sparsity)`. Received: sparsity={sparsity!r}"
    )


def evaluate(schedule: Callable, step: int) -> tuple[bool, float]:
    """Calls any schedule (tfprune's or a foreign one returning tensors) as Python values.

    Raises:
        TypeError: If the schedule does not return a `(should_prune, sparsity)` pair.
    """
    result = schedule(step)
    try:
        should, value = result
        return bool(should), float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"A pruning schedule must return a pair `(should_prune, sparsity)`, e.g. "
            f"`return step % 100 == 0, 0.5`. Received: schedule={schedule!r} returned "
            f"{result!r} at step {step}"
        ) from None


def next_update(schedule: Callable, last_step: int | None, step: int) -> tuple[bool, float]:
    """The latest scheduled update in `(last_step, step]`, as `(found, sparsity)`.

    Lets callers that only see every k-th step (`steps_per_execution=k`) apply the update
    they skipped over, as soon as they see a step at or after it.
    """
    first = step if last_step is None else last_step + 1
    found, value = False, 0.0
    for t in range(max(first, step - 100_000), step + 1):
        should, target = evaluate(schedule, t)
        if should:
            found, value = True, target
    return found, value


def first_update_after(schedule: Callable, step: int) -> float | None:
    """The first step after `step` at which `schedule` updates masks (`math.inf`: never).

    Known without calling the schedule for tfprune schedules that keep the base class's
    `should_prune`; `None` for any other schedule, which must then be asked at every step.
    """
    if not isinstance(schedule, PruningSchedule):
        return None
    if type(schedule).should_prune is not PruningSchedule.should_prune:
        return None
    start = max(step + 1, schedule.begin_step)
    periods = -(-(start - schedule.begin_step) // schedule.frequency)
    first = schedule.begin_step + periods * schedule.frequency
    return math.inf if schedule.end_step is not None and first > schedule.end_step else first


def sparsity_is_valid(value: float) -> bool:
    """True for a finite target in [0, 1)."""
    return math.isfinite(value) and 0.0 <= value < 1.0
