"""The pruning engine: at an update step, scores -> allocation -> new masks.

`PruningController` is what `tfprune.callbacks.UpdateMasks` runs inside `model.fit`, and what
a custom training loop calls directly:

```python
controller = tfprune.PruningController(model)
for step, (x, y) in enumerate(dataset):
    controller.update(step)        # new masks when the schedule says so
    train_step(x, y)               # your tf.function; masks are applied inside the model
```

A `jax.jit` loop that holds the model's state in arrays passes it through
`controller.stateless_update(step, trainable, non_trainable)` instead (see
`examples/jax_training.py`).

The controller holds no state that matters between runs: the step, masks and thresholds
are variables of the model's `Prunable` layers, so they save with the model and a resumed
run continues where it stopped. Mask updates run eagerly between training steps, in the
cross-replica context under `tf.distribute`, so every replica gets the same masks.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable

import keras
import numpy as np

from tfprune import allocation, channel_pruning, granularity
from tfprune import schedules as schedules_lib
from tfprune._validate import integer
from tfprune.backends import sync_state
from tfprune.wrapper import Prunable, PruneTarget, prunable_layers

__all__ = ["PruningController", "prunable_layers", "sparsities", "thresholds"]


def stored_step(layer: Prunable) -> int:
    """The pruning step of `layer`, after its controller has written any step it deferred.

    Args:
        layer: A `Prunable`.

    Returns:
        The step.
    """
    layer._flush_step()
    return int(_to_numpy(layer.step))


def _to_numpy(variable: keras.Variable) -> np.ndarray:
    return keras.ops.convert_to_numpy(variable)


def _step_writer(variables: list[keras.Variable]) -> Callable[[int], None]:
    """A function that assigns one step to all `variables` (the layers' pruning steps).

    `UpdateMasks` writes the step after every training batch. With the TensorFlow backend
    the assignments run in one `tf.function` call (traced once per number of variables), so
    that cost does not grow with the number of prunable layers as eager assignments would.
    """
    if keras.backend.backend() != "tensorflow" or len(variables) < 2:

        def write(step: int) -> None:
            for v in variables:
                v.assign(step)

        return write
    import tensorflow as tf

    values = [v.value for v in variables]
    return lambda step: _assign_all(values, tf.constant(step, tf.int64))


def _assign_all_fn():
    import tensorflow as tf

    @tf.function(autograph=False)
    def assign_all(variables, value):
        for v in variables:
            v.assign(value)

    return assign_all


_assign_all = _assign_all_fn() if keras.backend.backend() == "tensorflow" else None


class PruningController:
    """Updates the masks of every `Prunable` layer of a model according to its schedule.

    Args:
        model: A model (Sequential, functional or subclassed) or layer that contains
            `tfprune.Prunable` layers.

    Raises:
        ValueError: If `model` contains no `Prunable` layer, or its global-scope layers use
            different schedules.
    """

    def __init__(self, model: keras.layers.Layer):
        self.model = model
        self.layers = prunable_layers(model)
        if not self.layers:
            raise ValueError(
                f"Model '{getattr(model, 'name', model)}' has no tfprune.Prunable layers. "
                "Wrap it first: model = tfprune.wrap(model, sparsity=...)."
            )
        for layer in self.layers:
            layer._controller = weakref.ref(self)
        global_schedules = {
            repr(layer.schedule)
            for layer in self.layers
            if layer.scope in allocation.GLOBAL_SCOPES and layer.schedule is not None
        }
        if len(global_schedules) > 1:
            raise ValueError(
                "Global-scope layers rank their weights together, so they must share one "
                f"schedule. Received {len(global_schedules)} different schedules: "
                f"{sorted(global_schedules)}"
            )
        self._last_step: int | None = None
        self._next_due: float | None = None  # first step of a scheduled update, if known
        self._built = False
        self._pending: Callable[[], int] | None = None
        self._written: int | None = None  # the step last written by this controller
        self._write_step = _step_writer([layer.step for layer in self.layers])

    # --- step --------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The pruning step (number of training steps seen), as saved in the model."""
        if self._pending is not None:
            return self._pending()
        return int(_to_numpy(self.layers[0].step))

    def set_step(self, step: int) -> None:
        """Sets the pruning step of every layer.

        Args:
            step: Non-negative training step.

        Raises:
            TypeError: If `step` is not an integer.
            ValueError: If `step` is negative.
        """
        step = integer("step", step, minimum=0)
        self._pending = None
        self._write_step(int(step))
        self._written = int(step)

    def advance(self, steps: int = 1) -> None:
        """Adds `steps` training steps to the pruning step."""
        self.set_step(self.step + steps)

    def defer_step(self, source: Callable[[], int] | None) -> None:
        """Makes `source()` the pruning step, written to the layers only when needed.

        Writing every layer's step variable after each training step costs as much as a
        small model's step, so the writes wait until the model is saved
        (`Prunable.save_own_variables` calls `flush`), `flush` is called or deferring stops.
        `step` returns `source()` meanwhile.

        Args:
            source: Returns the current step when called; `None` writes the deferred step
                now and stops deferring.
        """
        if source is None:
            self.flush()
        self._pending = source

    def flush(self) -> None:
        """Writes the step deferred with `defer_step` (or `update`) to the layers, if it
        changed since the last write."""
        if self._pending is not None:
            step = self._pending()
            if step != self._written:
                self._write_step(step)
                self._written = step

    # --- updates -----------------------------------------------------------------------

    def update(self, step: int | None = None) -> bool:
        """Recomputes masks if a schedule has an update due.

        An update is due when a schedule says so at `step`, or at a step skipped since the
        previous call (so `steps_per_execution > 1` applies the update at the first step the
        caller sees after it). While some layer is not built yet (a subclassed model before
        its first call), nothing is updated and the due update is applied at the first call
        after the model is built.

        Args:
            step: The current training step; `None` uses the step stored in the model.
                A given step becomes the model's step (as with `defer_step`: written to
                the layers when the model is saved or `flush` is called).

        Returns:
            True if any mask was recomputed.

        Raises:
            ValueError: If a schedule returns a sparsity outside [0, 1).
        """
        if step is None:
            step = self.step
        else:
            step = integer("step", step, minimum=0)
            self.defer_step(lambda: step)
        return self._update_masks(step)

    def stateless_update(self, step: int, trainable_variables, non_trainable_variables):
        """`update` for a stateless training loop (JAX: `stateless_call` under `jax.jit`).

        Such a loop holds the model's state in arrays of its own; when an update is due
        they are written to the model's variables, the masks are recomputed (pruned weights
        set to zero) and the new state is returned. When nothing is due the arrays are
        returned as they are, at the cost of comparing two integers.

        Args:
            step: The current training step (it becomes the model's step, as in `update`).
            trainable_variables: Values of `model.trainable_variables`, in that order.
            non_trainable_variables: Values of `model.non_trainable_variables` (the masks
                are among them).

        Returns:
            `(trainable_variables, non_trainable_variables)` to continue training with.

        Example:

        ```python
        for step, (x, y) in enumerate(batches):
            trainable, non_trainable = controller.stateless_update(step, trainable, non_trainable)
            loss, (trainable, non_trainable, opt_vars) = train_step(
                (trainable, non_trainable, opt_vars), (x, y)
            )
        ```
        """
        model = self.model

        def write_state() -> None:
            pairs = zip(
                [*model.trainable_variables, *model.non_trainable_variables],
                [*trainable_variables, *non_trainable_variables],
            )
            for variable, value in pairs:
                variable.assign(value)

        self.defer_step(lambda: step)
        if not self._update_masks(step, sync=write_state):
            return trainable_variables, non_trainable_variables
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )

    def _update_masks(self, step: int, sync: Callable[[], None] | None = None) -> bool:
        """`update` without touching the stored step: the caller keeps it equal to `step`.

        `sync` writes the training state to the variables once an update is due
        (default: `tfprune.backends.sync_state`)."""
        if not self._built:
            self._built = all(layer.built for layer in self.layers)
            if not self._built:
                if self._last_step is None:
                    self._last_step = step - 1
                return False
        known = self._next_due is not None and self._last_step is not None
        if known and self._last_step < step < self._next_due:  # nothing due: ask no schedule
            self._last_step = step
            return False
        due: dict[int, float] = {}
        for i, layer in enumerate(self.layers):
            if layer.schedule is None:
                continue
            found, sparsity = schedules_lib.next_update(layer.schedule, self._last_step, step)
            if found:
                if not schedules_lib.sparsity_is_valid(sparsity):
                    raise ValueError(
                        f"The schedule of layer '{layer.name}' returned sparsity={sparsity} at "
                        f"step {step}; expected a value in [0, 1)."
                    )
                due[i] = sparsity
        self._last_step = step
        self._next_due = self._first_update_after(step)
        if not due:
            return False
        if sync is None:
            sync_state(self.model)
        else:
            sync()
        for layer in self._prune_channel_groups(due):
            del due[self.layers.index(layer)]
        local = [i for i in due if self.layers[i].scope == "layer"]
        for i in local:
            self.prune_layer(self.layers[i], due[i])
        for scope in allocation.GLOBAL_SCOPES:
            shared = [self.layers[i] for i in due if self.layers[i].scope == scope]
            if shared:
                self.prune_global(shared, due[self.layers.index(shared[0])])
        return True

    def _first_update_after(self, step: int) -> float | None:
        """The first step after `step` with an update due, `None` if a schedule can't say."""
        steps = [
            schedules_lib.first_update_after(layer.schedule, step)
            for layer in self.layers
            if layer.schedule is not None
        ]
        return None if None in steps else min(steps, default=math.inf)

    def _prune_channel_groups(self, due: dict[int, float]) -> list[Prunable]:
        """Prunes channel-granularity layers by dependency group (`tfprune.graph`).

        Returns the layers handled; the others are pruned one by one as before. Only
        Sequential and functional models have a visible graph; channel-granularity layers
        of a subclassed model are pruned one by one.
        """
        channel = {
            self.layers[i]: s
            for i, s in due.items()
            if isinstance(self.layers[i].granularity, granularity.Channel)
        }
        model = self.model
        graph_model = isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"
        if not channel or not graph_model:
            return []
        # Wrappers outside a prunable group (a model output, a group that reaches a layer of
        # unknown semantics or an unwrapped producer) keep all their channels.
        try:
            channel_pruning.update_channel_groups(model, channel, lambda w: w.scope)
        except TypeError:  # a nested subclassed model hides part of the graph
            return []
        return list(channel)

    def prune_layer(self, layer: Prunable, sparsity: float) -> None:
        """Prunes each mask of `layer` to `sparsity` on its own (layer scope).

        Args:
            layer: A built `Prunable`.
            sparsity: Target fraction of pruned units, in [0, 1).
        """
        for target in layer.targets:
            scores = self._scores(layer, target)
            prev = _to_numpy(target.mask)
            keep = layer.granularity.keep_mask(scores, prev, sparsity, target.spec)
            layer.set_mask(target.name, keep, self._threshold(layer, target, scores, keep))

    def prune_global(self, layers: Iterable[Prunable], sparsity: float) -> None:
        """Prunes the masks of `layers` to `sparsity` with one ranking (global scope).

        Args:
            layers: Built `Prunable` layers whose units are ranked together.
            sparsity: Target fraction of all their units, in [0, 1).

        Raises:
            ValueError: If per-layer ceilings make the target unreachable.
        """
        layers = list(layers)
        entries = [(layer, target) for layer in layers for target in layer.targets]
        scores, units, prevs, caps = [], [], [], []
        for layer, target in entries:
            g, spec = layer.granularity, target.spec
            s = self._scores(layer, target)
            scores.append(s)
            u = g.to_units(s, spec)
            units.append(allocation.lamp(u) if layer.scope == "lamp" else u)
            full_prev = g.expand(_to_numpy(target.mask), s.shape, spec)
            prevs.append(g.to_units(full_prev, spec) > 0)
            n = units[-1].size  # a tensor keeps at least one unit (see tfprune.allocation)
            caps.append(min(allocation.ceiling_count(layer.max_layer_sparsity, n), max(n - 1, 0)))
        total = sum(u.size for u in units)
        n_prune = allocation.rounded(sparsity, total)
        if n_prune > sum(caps) and all(layer.max_layer_sparsity is None for layer in layers):
            warnings.warn(
                f"Global sparsity={sparsity!r} would empty some layers; each keeps at least one "
                f"unit, so {sum(caps)} of {total} units are pruned instead of {n_prune}. Lower "
                "the target or set `max_layer_sparsity` (e.g. 0.98).",
                RuntimeWarning,
                stacklevel=2,
            )
            n_prune = sum(caps)
        keeps = allocation.select_global(units, prevs, n_prune, caps)
        for (layer, target), s, keep in zip(entries, scores, keeps):
            mask = layer.granularity.from_units(keep, s.shape, target.spec)
            layer.set_mask(target.name, mask, self._threshold(layer, target, s, mask))

    @staticmethod
    def _scores(layer: Prunable, target: PruneTarget) -> np.ndarray:
        g = layer.granularity
        weights = _to_numpy(target.variable)
        keep = g.expand(_to_numpy(target.mask), weights.shape, target.spec)
        scores = np.asarray(layer.criterion(np.where(keep, weights, 0)), np.float64)
        if scores.shape == weights.shape and not np.isfinite(scores).all():
            bad = "weights" if not np.isfinite(weights).all() else "criterion scores"
            raise ValueError(
                f"The {bad} of '{target.spec.path}' in layer '{layer.name}' contain NaN or "
                "infinity, so pruning would pick weights by position. Training has diverged: "
                "lower the learning rate or clip gradients and restart from a finite "
                f"checkpoint{'' if bad == 'weights' else ', or fix the criterion'}. "
                f"Received: criterion={layer.criterion!r}"
            )
        if scores.shape != weights.shape:
            raise ValueError(
                f"Criterion {layer.criterion!r} returned scores of shape {scores.shape} for "
                f"weight '{target.spec.path}' of layer '{layer.name}' with shape "
                f"{weights.shape}; it must return one score per weight."
            )
        return scores

    @staticmethod
    def _threshold(layer: Prunable, target: PruneTarget, scores, keep) -> float:
        g, spec = layer.granularity, target.spec
        units = g.to_units(scores, spec)
        kept = g.to_units(g.expand(keep, scores.shape, spec), spec) > 0
        return float(units[~kept].max()) if (~kept).any() else 0.0

    def sparsities(self) -> dict[str, float]:
        """See `tfprune.controller.sparsities`."""
        return sparsities(self.layers)

    def thresholds(self) -> dict[str, float]:
        """See `tfprune.controller.thresholds`."""
        return thresholds(self.layers)


def sparsities(layers: Iterable[Prunable]) -> dict[str, float]:
    """Fraction of masked weights per mask, keyed `"layer/mask"`, plus `"global"`.

    Args:
        layers: Built `Prunable` layers.

    Returns:
        The fractions; `"global"` counts every prunable weight of `layers` together.
    """
    out, pruned, total = {}, 0, 0
    for layer in layers:
        for target in layer.targets:
            keep = _to_numpy(target.mask)
            n_pruned = n_total = 0
            for spec, w in target.weights:
                if not spec.prunable:
                    continue
                full = layer.granularity.expand(keep, tuple(w.shape), spec)
                n_pruned += int(full.size - np.count_nonzero(full))
                n_total += full.size
            out[f"{layer.name}/{target.name}"] = n_pruned / max(n_total, 1)
            pruned, total = pruned + n_pruned, total + n_total
    out["global"] = pruned / max(total, 1)
    return out


def thresholds(layers: Iterable[Prunable]) -> dict[str, float]:
    """Highest score pruned at the last update, per mask, keyed `"layer/mask"`.

    Args:
        layers: Built `Prunable` layers.

    Returns:
        The thresholds (0.0 before the first update).
    """
    return {
        f"{layer.name}/{target.name}": float(_to_numpy(target.threshold))
        for layer in layers
        for target in layer.targets
    }
