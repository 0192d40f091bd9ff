"""Keras callbacks: thin adapters from `model.fit` to the pruning controller."""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfprune import controller as controller_lib
from tfprune.backends import MASK_IN_CALL, sync_state

__all__ = ["RewindPoint", "SparsityLogger", "UpdateMasks"]


def _optimizer_steps(model: keras.Model) -> int:
    sync_state(model)
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


@keras.saving.register_keras_serializable(package="tfprune")
class UpdateMasks(keras.callbacks.Callback):
    """Updates pruning masks during `model.fit` according to each layer's schedule.

    Before every training step (every execution with `steps_per_execution > 1`) it asks a
    `tfprune.PruningController` whether an update is due, which costs a comparison of two
    integers until the next step a schedule names. The pruning step is counted from the
    batch index and written to the layers only at the end of each epoch and when the model
    is saved (a `ModelCheckpoint` mid-epoch included), computed then from
    `optimizer.iterations`, which is exact even when an epoch's last execution is short.
    The stored step is read at the first batch of each epoch, so a step restored in
    `on_train_begin` (BackupAndRestore) is honoured.

    Example:

    ```python
    model = tfprune.wrap(model, sparsity=tfprune.schedules.PolynomialDecay(0, 0.9, 0, 1000))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, callbacks=[tfprune.callbacks.UpdateMasks()])
    ```
    """

    def __init__(self):
        super().__init__()
        self.controller: controller_lib.PruningController | None = None
        self._first: int | None = None  # pruning step at batch index 0 of this epoch

    def on_train_begin(self, logs=None):
        self.controller = controller_lib.PruningController(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._first = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._first is None:  # first batch of the epoch: after every on_train_begin
            step, iterations = self.controller.step, _optimizer_steps(self.model)
            self._first = step - batch
            self.controller.defer_step(lambda: step + _optimizer_steps(self.model) - iterations)
        self.controller._update_masks(self._first + batch)

    def on_epoch_end(self, epoch, logs=None):
        self.controller.flush()
        if MASK_IN_CALL:  # JAX: pruned weights computed as zero; now they are zero
            for layer in self.controller.layers:
                layer.zero_pruned()

    def on_train_end(self, logs=None):
        self.controller.defer_step(None)

    def get_config(self) -> dict:
        return {}


class SparsityLogger(keras.callbacks.Callback):
    """Writes per-mask sparsity, global sparsity and thresholds to TensorBoard.

    Scalars go to `log_dir/pruning` (so the callback can share `log_dir` with
    `keras.callbacks.TensorBoard`, which writes `train/` and `validation/`), under
    `sparsity/<layer>/<mask>`, `sparsity/global` and `threshold/<layer>/<mask>`, with the
    pruning step as the x axis.

    Args:
        log_dir: Directory for the event files.
        update_freq: `"epoch"` to write at the end of each epoch, or an integer N to write
            every N training batches as well.

    Raises:
        ValueError: If `update_freq` is neither `"epoch"` nor a positive integer.
    """

    def __init__(self, log_dir: str | os.PathLike, update_freq: str | int = "epoch"):
        super().__init__()
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(
                "Expected `update_freq` to be 'epoch' or a positive integer. "
                f"Received: update_freq={update_freq!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._layers = controller_lib.prunable_layers(self.model)
        if not self._layers:
            raise ValueError(
                "SparsityLogger found no tfprune.Prunable layers in the model. Wrap the "
                "model first: model = tfprune.wrap(model, sparsity=...)."
            )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "pruning"))

    def write(self) -> None:
        """Writes the current values now."""
        sync_state(self.model)
        step = controller_lib.stored_step(self._layers[0])
        with self._writer.as_default(step=step):
            for name, value in controller_lib.sparsities(self._layers).items():
                tf.summary.scalar(f"sparsity/{name}", value)
            for name, value in controller_lib.thresholds(self._layers).items():
                tf.summary.scalar(f"threshold/{name}", value)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self.write()

    def on_epoch_end(self, epoch, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _pruning_variable_ids(model: keras.layers.Layer) -> set[int]:
    """Ids of the variables that hold pruning state (masks, thresholds, pruning steps)."""
    ids = set()
    for layer in controller_lib.prunable_layers(model):
        ids.add(id(layer.step))
        for target in layer.targets:
            ids.update((id(target.mask), id(target.threshold)))
    return ids


class RewindPoint(keras.callbacks.Callback):
    """Snapshots the model's weights (and optimizer state) at optimizer step `step` of `fit`.

    The rewind point of the lottery ticket procedure: `step=0` keeps the initialisation
    (Frankle & Carbin, 2019), `step=k > 0` keeps the weights after k optimizer steps for
    late rewinding (Frankle et al., 2020, "Linear mode connectivity and the lottery ticket
    hypothesis"). Pruning state (masks, thresholds, pruning step) is not part of the
    snapshot. The step is the optimizer's iteration count; with `steps_per_execution > 1`
    the snapshot is taken at the first step reached that is `>= step`, recorded in
    `snapshot_step`.

    Args:
        step: Optimizer step to snapshot at (0: before the first update).
        optimizer_state: Whether to also keep the optimizer's variables.

    Attributes:
        weights: Arrays in `model.weights` order (pruning variables are `None`), or `None`
            before the step is reached.
        optimizer_variables: Arrays in `optimizer.variables` order, `[]` when the optimizer
            had no state yet (step 0), `None` before the step is reached.
        snapshot_step: The optimizer step of the snapshot.

    Raises:
        ValueError: If `step` is not a non-negative integer.

    Example:

    ```python
    rewind = tfprune.callbacks.RewindPoint(step=500)
    model.fit(x, y, epochs=3, callbacks=[rewind, tfprune.callbacks.UpdateMasks()])
    rewind.restore(model)  # weights as at step 500, current masks applied
    ```
    """

    def __init__(self, step: int = 0, optimizer_state: bool = True):
        super().__init__()
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(
                f"Expected `step` to be a non-negative integer. Received: step={step!r}"
            )
        self.step = int(step)
        self.optimizer_state = optimizer_state
        self.weights: list[np.ndarray | None] | None = None
        self.optimizer_variables: list[np.ndarray] | None = None
        self.snapshot_step: int | None = None

    def _snapshot(self, step: int) -> None:
        sync_state(self.model)
        skip = _pruning_variable_ids(self.model)
        self.weights = [
            None if id(v) in skip else np.array(keras.ops.convert_to_numpy(v))
            for v in self.model.weights
        ]
        optimizer = self.model.optimizer
        self.optimizer_variables = (
            [np.array(keras.ops.convert_to_numpy(v)) for v in optimizer.variables]
            if self.optimizer_state and optimizer.built
            else []
        )
        self.snapshot_step = step

    def on_train_begin(self, logs=None):
        if self.weights is None and _optimizer_steps(self.model) >= self.step:
            self._snapshot(_optimizer_steps(self.model))

    def on_train_batch_end(self, batch, logs=None):
        if self.weights is None and _optimizer_steps(self.model) >= self.step:
            self._snapshot(_optimizer_steps(self.model))

    def on_train_end(self, logs=None):
        if self.weights is None:
            warnings.warn(
                f"RewindPoint(step={self.step}) was never reached: training stopped at "
                f"optimizer step {_optimizer_steps(self.model)}. Train longer or lower `step`.",
                stacklevel=2,
            )

    def restore(self, model: keras.Model | None = None, optimizer_state: bool = True) -> None:
        """Sets the snapshot weights, keeping the current masks (masked weights become 0).

        Args:
            model: The model the snapshot was taken from (default: the callback's model).
            optimizer_state: Also restore the optimizer's variables (its step included).

        Raises:
            RuntimeError: If no snapshot was taken yet.
        """
        model = self.model if model is None else model
        if self.weights is None:
            raise RuntimeError(
                f"RewindPoint(step={self.step}) has no snapshot yet. Call model.fit with "
                "this callback until the step is reached."
            )
        for v, value in zip(model.weights, self.weights):
            if value is not None:
                v.assign(value)
        for layer in controller_lib.prunable_layers(model):
            for target in layer.targets:
                layer.set_mask(target.name, keras.ops.convert_to_numpy(target.mask))
        if optimizer_state and self.optimizer_variables:
            optimizer = model.optimizer
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            for v, value in zip(optimizer.variables, self.optimizer_variables):
                v.assign(value)
