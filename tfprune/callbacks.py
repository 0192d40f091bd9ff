"""Keras callbacks: thin adapters from `model.fit` to the pruning controller."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tfprune import controller as controller_lib

__all__ = ["SparsityLogger", "UpdateMasks"]


@keras.saving.register_keras_serializable(package="tfprune")
class UpdateMasks(keras.callbacks.Callback):
    """Updates pruning masks during `model.fit` according to each layer's schedule.

    Before every training step (every execution with `steps_per_execution > 1`) it asks a
    `tfprune.PruningController` whether an update is due, and after it adds the optimizer
    steps that ran (read from `optimizer.iterations`, which is exact even when the last
    execution of an epoch is short), so the pruning step saved in the model always equals
    the number of steps trained.

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
        self._iterations = 0

    def _optimizer_steps(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        self.controller = controller_lib.PruningController(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        self._iterations = self._optimizer_steps()
        self.controller.update()

    def on_train_batch_end(self, batch, logs=None):
        self.controller.advance(self._optimizer_steps() - self._iterations)

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
        step = int(keras.ops.convert_to_numpy(self._layers[0].step))
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
