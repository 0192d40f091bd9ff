"""`LotterySearch`: iterative magnitude pruning with rewinding, round by round, resumable."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfprune import allocation
from tfprune import callbacks as callbacks_lib
from tfprune import controller as controller_lib
from tfprune.lottery._state import (
    flatten_weights,
    get_masks,
    get_weights,
    load_npz,
    save_json,
    save_npz,
    set_state,
    unflatten_weights,
)
from tfprune.lottery.ticket import Ticket
from tfprune.surgery import wrap
from tfprune.wrapper import prunable_layers

__all__ = ["CONTROLS", "REWINDS", "LotterySearch", "find_ticket"]

REWINDS = ("init", "step", "lr")
CONTROLS = (None, "reinit", "random_mask")
_STATE = "state.json"


class _RoundRecorder(keras.callbacks.Callback):
    """Records the learning rate at the start and the step count after each epoch."""

    def on_train_begin(self, logs=None):
        self.lr_start = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.start = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.epochs: list[dict[str, float]] = []
        self.steps: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({k: float(v) for k, v in (logs or {}).items()})
        self.steps.append(
            int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - self.start
        )


def _reseed(model: keras.Model, seed: int) -> None:
    """Sets the RNG state of layers such as Dropout (variables that are not weights)."""
    weights = {id(v) for v in model.weights}
    extra = [v for v in model.variables if id(v) not in weights]
    for i, v in enumerate(extra):
        if tuple(v.shape) == (2,):
            v.assign(np.array([(seed * 1009 + i) % 2**31, 0], dtype=v.dtype))


def _clone_optimizer(optimizer: Any) -> keras.optimizers.Optimizer:
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    if callable(optimizer) and not isinstance(optimizer, (str, dict)):
        return optimizer()
    return keras.optimizers.get(optimizer)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class LotterySearch:
    """Iterative magnitude pruning with rewinding: finds lottery tickets in a Keras model.

    Each round trains the model with `model.fit`, keeps the
    `round(n * (1 - rate) ** (r + 1))` largest-magnitude weights of each tensor (`scope=
    "layer"`; or of all tensors together with `scope="global"`), the output layer at
    `output_rate`, and rewinds (see the module docstring). Biases and other non-prunable
    weights stay dense and are rewound too. Training is made reproducible by calling
    `keras.utils.set_random_seed(seed + r)` before round r.

    Args:
        model: A built Sequential or functional model (its current weights are the
            initialisation), or a callable returning one. It is wrapped with
            `tfprune.wrap(model, sparsity=None)`; the model passed in is not modified.
        optimizer: A Keras optimizer (cloned from its config every round, learning-rate
            schedule included), a name, or a callable returning a fresh optimizer.
        loss: Loss for `model.compile`.
        metrics: Metrics for `model.compile`.
        rounds: Number of pruning rounds; `rounds + 1` trainings (round 0 is dense).
        rate: Fraction of the remaining weights pruned per round.
        output_rate: Rate for the output layers (Frankle & Carbin use half of `rate`).
        rewind: `"init"`, `"step"` (to `rewind_step`, weights and optimizer state) or `"lr"`.
        rewind_step: Optimizer step of the rewind point for `rewind="step"`.
        scope: `"layer"` or `"global"` (the output layers are always per layer).
        output_layers: Names of the layers pruned at `output_rate`; default: the last
            prunable layer.
        control: `None` (the ticket search), `"reinit"` or `"random_mask"`.
        reference: For controls: the `LotterySearch` (or its directory) whose masks
            (`"reinit"`) or per-layer counts (`"random_mask"`) are reused. Required for
            `"reinit"`, and for `"random_mask"` with global scope.
        directory: Where to write the state after each round (enables resuming).
        seed: Seed for training, random masks and reinitialisation.
        verbose: 0 silent, 1 one line per round, 2 also `fit`'s progress bars.

    Raises:
        ValueError: If an argument is out of range or a control lacks its reference.

    Example:

    ```python
    search = tfprune.lottery.LotterySearch(
        model, keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
        metrics=["accuracy"], rounds=10, rewind="step", rewind_step=200, directory="imp")
    ticket = search.run(x, y, epochs=5, batch_size=64, validation_data=(xv, yv),
                        test_data=(xt, yt))
    search.history[-1]["remaining_total"]   # ~0.107
    ```
    """

    def __init__(
        self,
        model: keras.Model | Callable[[], keras.Model],
        optimizer: Any,
        loss: Any,
        metrics: Sequence | None = None,
        rounds: int = 10,
        rate: float = 0.2,
        output_rate: float | None = 0.1,
        rewind: str = "init",
        rewind_step: int = 0,
        scope: str = "layer",
        output_layers: Sequence[str] | None = None,
        control: str | None = None,
        reference: LotterySearch | str | os.PathLike | None = None,
        directory: str | os.PathLike | None = None,
        seed: int = 0,
        verbose: int = 1,
    ):
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(
                f"Expected `rounds` to be an integer >= 0. Received: rounds={rounds!r}"
            )
        for name, value in (("rate", rate), ("output_rate", output_rate)):
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"Expected `{name}` in [0, 1). Received: {name}={value!r}")
        if rewind not in REWINDS:
            raise ValueError(
                f"Expected `rewind` to be one of {REWINDS}. Received: rewind={rewind!r}"
            )
        if not isinstance(rewind_step, int) or rewind_step < 0:
            raise ValueError(
                "Expected `rewind_step` to be an integer >= 0. "
                f"Received: rewind_step={rewind_step!r}"
            )
        if rewind != "step" and rewind_step:
            raise ValueError(
                f"`rewind_step` is only used with rewind='step'. Received: rewind={rewind!r}, "
                f"rewind_step={rewind_step}. Pass rewind='step'."
            )
        if scope not in ("layer", "global"):
            raise ValueError(
                f"Expected `scope` to be 'layer' or 'global'. Received: scope={scope!r}"
            )
        if control not in CONTROLS:
            raise ValueError(
                f"Expected `control` to be one of {CONTROLS}. Received: control={control!r}"
            )
        if reference is None and (control == "reinit" or (control and scope == "global")):
            raise ValueError(
                f"control={control!r} with scope={scope!r} needs the ticket search to compare "
                "with. Pass reference=<the LotterySearch or its directory>."
            )
        base = model() if callable(model) and not isinstance(model, keras.Model) else model
        if not isinstance(base, keras.Model):
            raise TypeError(
                f"Expected `model` to be a Keras model or a callable returning one. "
                f"Received: model={model!r}"
            )
        self._base = base
        self.model = wrap(base, sparsity=None)
        controller_lib.PruningController(self.model)  # marks the layers as driven
        self.optimizer, self.loss, self.metrics = optimizer, loss, metrics
        self.rounds, self.rate = rounds, rate
        self.output_rate = rate if output_rate is None else output_rate
        self.rewind, self.rewind_step, self.scope = rewind, rewind_step, scope
        self.control, self.seed, self.verbose = control, seed, verbose
        layers = prunable_layers(self.model)
        names = [layer.name for layer in layers]
        self.output_layers = list(output_layers) if output_layers is not None else names[-1:]
        unknown = sorted(set(self.output_layers) - set(names))
        if unknown:
            raise ValueError(
                f"`output_layers` names layers that are not prunable layers of the model: "
                f"{unknown}. Prunable layers: {names}"
            )
        self.directory = None if directory is None else Path(directory)
        self._reference = reference
        self.history: list[dict[str, Any]] = []
        self._masks: list[dict[str, np.ndarray]] = []
        self._start: dict[int, dict[str, list[np.ndarray]]] = {}
        self._final: dict[int, dict[str, list[np.ndarray]]] = {}
        self._rewind_weights: dict[str, list[np.ndarray]] | None = None
        self._rewind_optimizer: list[np.ndarray] = []

    # --- configuration and state files ---------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The search settings that must match for a resume."""
        return {
            "rounds": self.rounds,
            "rate": self.rate,
            "output_rate": self.output_rate,
            "rewind": self.rewind,
            "rewind_step": self.rewind_step,
            "scope": self.scope,
            "output_layers": self.output_layers,
            "control": self.control,
            "seed": self.seed,
        }

    def _write(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        if self.directory is not None:
            save_npz(self.directory / name, arrays)

    def _reference_masks(self, level: int) -> dict[str, np.ndarray]:
        ref = self._reference
        if isinstance(ref, LotterySearch):
            if level >= len(ref._masks):
                raise ValueError(
                    f"The reference search has masks for rounds 0..{len(ref._masks) - 1}, "
                    f"but this search needs round {level}. Lower `rounds` or run the "
                    "reference further."
                )
            return ref._masks[level]
        path = Path(ref) / f"masks_{level}.npz"
        if not path.exists():
            raise ValueError(
                f"The reference directory has no masks for round {level} ({path}). Lower "
                "`rounds` or run the reference search further."
            )
        return {k: v.astype(bool) for k, v in load_npz(path).items()}

    # --- pruning ---------------------------------------------------------------------------

    def _counts(self, level: int) -> dict[str, int]:
        """Weights to keep per mask at `level` for layer scope."""
        keep = {}
        for layer in prunable_layers(self.model):
            rate = self.output_rate if layer.name in self.output_layers else self.rate
            for t in layer.targets:
                n = int(np.prod(t.mask.shape))
                keep[f"{layer.name}/{t.name}"] = n - allocation.count(
                    1.0 - (1.0 - rate) ** level, n
                )
        return keep

    def _next_masks(self, level: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Masks for `level` from the current (trained) weights and masks."""
        if self.control == "reinit":
            return self._reference_masks(level)
        prev = get_masks(self.model)
        scores = {}
        for layer in prunable_layers(self.model):
            for t in layer.targets:
                key = f"{layer.name}/{t.name}"
                if self.control == "random_mask":
                    s = rng.random(prev[key].shape)
                else:
                    s = np.abs(keras.ops.convert_to_numpy(t.variable)).astype(np.float64)
                scores[key] = np.where(prev[key], s, -np.inf).ravel()
        if self._reference is not None:
            counts = {k: int(m.sum()) for k, m in self._reference_masks(level).items()}
            keys = list(scores)
        else:
            counts = self._counts(level)
            keys = [k for k in scores if k.split("/", 1)[0] in self.output_layers]
            if self.scope == "layer":
                keys = list(scores)
        new = {}
        for key in keys:
            keep = allocation.select_keep(scores[key], prev[key].ravel(), counts[key])
            new[key] = keep.reshape(prev[key].shape)
        rest = [k for k in scores if k not in new]
        if rest:
            total = sum(scores[k].size for k in rest)
            n_prune = allocation.count(1.0 - (1.0 - self.rate) ** level, total)
            keeps = allocation.select_global(
                [scores[k] for k in rest],
                [prev[k].ravel() for k in rest],
                n_prune,
                [scores[k].size for k in rest],
            )
            for k, keep in zip(rest, keeps):
                new[k] = keep.reshape(prev[k].shape)
        return new

    def _reinit_weights(self, level: int) -> dict[str, list[np.ndarray]]:
        keras.utils.set_random_seed(self.seed + 7919 * (level + 1))
        fresh = keras.models.clone_model(self._base)
        return get_weights(fresh)

    def _masked(self, weights, masks) -> dict[str, list[np.ndarray]]:
        set_state(self.model, weights, masks)
        return get_weights(self.model)

    # --- running ---------------------------------------------------------------------------

    def _resume(self) -> int:
        """Loads the state in `directory`; returns the first round still to train."""
        state_path = self.directory / _STATE
        if not state_path.exists():
            return 0
        state = json.loads(state_path.read_text())
        if state["config"] != json.loads(json.dumps(self.get_config())):
            raise ValueError(
                f"Directory {self.directory} holds a search with different settings: "
                f"{state['config']}. Received: {self.get_config()}. Use another `directory` "
                "or the same settings."
            )
        done = state["completed_round"]
        self.history = state["history"]
        self._masks = [
            {k: v.astype(bool) for k, v in load_npz(self.directory / f"masks_{r}.npz").items()}
            for r in range(min(done + 2, self.rounds + 1))
        ]
        if (self.directory / "rewind.npz").exists():
            self._rewind_weights = unflatten_weights(load_npz(self.directory / "rewind.npz"))
            opt = load_npz(self.directory / "rewind_optimizer.npz")
            self._rewind_optimizer = [opt[str(i)] for i in range(len(opt))]
        nxt = done + 1
        if nxt <= self.rounds:
            self._start[nxt] = unflatten_weights(load_npz(self.directory / f"start_{nxt}.npz"))
        return nxt

    def run(self, x=None, y=None, test_data=None, **fit_kwargs) -> Ticket:
        """Runs (or resumes) the search and returns the ticket of the last round.

        Args:
            x: Training inputs for `model.fit` (or a dataset).
            y: Training targets.
            test_data: `(x, y)` evaluated after each round with `model.evaluate`.
            **fit_kwargs: Passed to `model.fit` every round (`epochs`, `batch_size`,
                `validation_data`, `shuffle`, `callbacks`, ...). With `validation_data`,
                the history records the step of the best validation loss.

        Returns:
            The `Ticket` of round `rounds`.

        Raises:
            ValueError: If `directory` holds a search with other settings.
        """
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        first = self._resume() if self.directory is not None else 0
        if first == 0:
            self.history = []
            masks0 = get_masks(self.model)
            self._masks = [masks0]
            if self.control == "reinit":
                self._masks = [self._reference_masks(0)]
                self._start[0] = self._masked(self._reinit_weights(0), self._masks[0])
            else:
                self._start[0] = get_weights(self.model)
            self._write("masks_0.npz", self._masks[0])
            self._write("start_0.npz", flatten_weights(self._start[0]))
        user_callbacks = list(fit_kwargs.pop("callbacks", []))
        fit_kwargs.setdefault("verbose", 1 if self.verbose >= 2 else 0)
        for r in range(first, self.rounds + 1):
            self._train_round(r, x, y, test_data, fit_kwargs, user_callbacks)
        return self.ticket(self.rounds)

    def _train_round(self, r, x, y, test_data, fit_kwargs, user_callbacks) -> None:
        t0 = time.perf_counter()
        model = self.model
        set_state(model, self._start[r], self._masks[r])
        optimizer = _clone_optimizer(self.optimizer)
        model.compile(optimizer=optimizer, loss=self.loss, metrics=self.metrics)
        if r > 0 and self.rewind == "step" and self._rewind_optimizer and self.control != "reinit":
            optimizer.build(model.trainable_variables)
            for v, value in zip(optimizer.variables, self._rewind_optimizer):
                v.assign(value)
        keras.utils.set_random_seed(self.seed + r)
        _reseed(model, self.seed + r)
        recorder = _RoundRecorder()
        cbs = [recorder, *user_callbacks]
        rewind_cb = None
        if r == 0 and self.rewind != "lr":
            rewind_cb = callbacks_lib.RewindPoint(self.rewind_step)
            cbs.insert(0, rewind_cb)
        model.fit(x, y, callbacks=cbs, **fit_kwargs)
        final_weights = get_weights(model)
        if rewind_cb is not None:
            if rewind_cb.weights is None:
                raise ValueError(
                    f"Training of round 0 stopped before rewind_step={self.rewind_step}. "
                    "Train for more steps or lower `rewind_step`."
                )
            rewind_cb.restore(model, optimizer_state=False)
            self._rewind_weights = get_weights(model)
            self._rewind_optimizer = list(rewind_cb.optimizer_variables or [])
            self._write("rewind.npz", flatten_weights(self._rewind_weights))
            self._write(
                "rewind_optimizer.npz",
                {str(i): v for i, v in enumerate(self._rewind_optimizer)},
            )
            set_state(model, final_weights, {})
        self._final[r] = final_weights
        record = self._record(r, recorder, test_data, time.perf_counter() - t0)
        self._write(f"final_{r}.npz", flatten_weights(final_weights))
        if r < self.rounds:
            rng = np.random.default_rng([self.seed, r + 1])
            masks = self._next_masks(r + 1, rng)
            if self.control == "reinit":
                start = self._reinit_weights(r + 1)
            elif self.rewind == "lr":
                start = final_weights
            else:
                start = self._rewind_weights
            self._start[r + 1] = self._masked(start, masks)
            self._masks.append(masks)
            self._write(f"masks_{r + 1}.npz", masks)
            self._write(f"start_{r + 1}.npz", flatten_weights(self._start[r + 1]))
        self.history.append(record)
        if self.directory is not None:
            state = {
                "config": self.get_config(),
                "completed_round": r,
                "history": self.history,
                "seed": self.seed,
                "rng": "keras.utils.set_random_seed(seed + r) and layer seed-generator "
                "states reset from seed + r before round r; "
                "numpy.random.default_rng([seed, r]) for the masks of round r",
            }
            save_json(self.directory / _STATE, state)
        if self.verbose:
            print(self._line(record), flush=True)

    def _record(self, r, recorder, test_data, seconds) -> dict[str, Any]:
        masks = self._masks[r]
        n_total = sum(m.size for m in masks.values())
        last = recorder.epochs[-1] if recorder.epochs else {}
        record: dict[str, Any] = {
            "round": r,
            "remaining": {k: float(m.mean()) for k, m in masks.items()},
            "remaining_total": float(sum(int(m.sum()) for m in masks.values()) / n_total),
            "lr_start": recorder.lr_start,
            "steps": recorder.steps[-1] if recorder.steps else 0,
            "train": {k: _json_value(v) for k, v in last.items() if not k.startswith("val_")},
            "seconds": round(seconds, 2),
        }
        val = [e.get("val_loss") for e in recorder.epochs]
        if val and all(v is not None for v in val):
            best = int(np.argmin(val))
            record["early_stop_step"] = recorder.steps[best]
            record["val_best"] = {
                k[4:]: _json_value(v)
                for k, v in recorder.epochs[best].items()
                if k.startswith("val_")
            }
        else:
            record["early_stop_step"] = None
            record["val_best"] = {}
        if test_data is not None:
            tx, ty = test_data
            result = self.model.evaluate(tx, ty, verbose=0, return_dict=True)
            record["test"] = {k: _json_value(float(v)) for k, v in result.items()}
        else:
            record["test"] = {}
        return record

    def _line(self, record) -> str:
        parts = [
            f"round {record['round']:>2}/{self.rounds}",
            f"remaining {100 * record['remaining_total']:6.2f}%",
        ]
        parts += [f"{k} {v:.4f}" for k, v in record["train"].items() if v is not None]
        parts += [f"test_{k} {v:.4f}" for k, v in record["test"].items() if v is not None]
        if record["early_stop_step"] is not None:
            parts.append(f"early-stop step {record['early_stop_step']}")
        parts.append(f"{record['seconds']:.1f}s")
        return " - ".join(parts)

    # --- results ---------------------------------------------------------------------------

    def masks(self, r: int) -> dict[str, np.ndarray]:
        """The masks of round `r` (`{"layer/target": keep}`)."""
        self._check_round(r, len(self._masks))
        return {k: v.copy() for k, v in self._masks[r].items()}

    def weights(self, r: int, which: str = "start") -> dict[str, list[np.ndarray]]:
        """Weights of round `r`: `"start"` (after rewinding, masked) or `"final"` (trained).

        Raises:
            ValueError: If that round has not run in this process (or, for `"start"`, was
                not prepared), or `which` is unknown.
        """
        if which not in ("start", "final"):
            raise ValueError(
                f"Expected `which` to be 'start' or 'final'. Received: which={which!r}"
            )
        store = self._start if which == "start" else self._final
        if r not in store:
            name = f"{which}_{r}.npz"
            if self.directory is not None and (self.directory / name).exists():
                return unflatten_weights(load_npz(self.directory / name))
            raise ValueError(f"No {which} weights for round {r}. Received: r={r}")
        return {k: [w.copy() for w in ws] for k, ws in store[r].items()}

    def ticket(self, r: int | None = None) -> Ticket:
        """The ticket of round `r` (default: the last): its masks and start weights."""
        r = len(self._masks) - 1 if r is None else r
        self._check_round(r, len(self._masks))
        use_opt = self.rewind == "step" and self.control != "reinit" and r > 0
        return Ticket(
            self.masks(r),
            self.weights(r, "start"),
            r,
            list(self._rewind_optimizer) if use_opt else [],
        )

    @staticmethod
    def _check_round(r: int, n: int) -> None:
        if not 0 <= r < n:
            raise ValueError(f"Round {r} is not available; rounds 0..{n - 1} are. Received: r={r}")


def find_ticket(
    model: keras.Model | Callable[[], keras.Model],
    optimizer: Any,
    loss: Any,
    x=None,
    y=None,
    metrics: Sequence | None = None,
    rounds: int = 10,
    rate: float = 0.2,
    output_rate: float | None = 0.1,
    rewind: str = "init",
    rewind_step: int = 0,
    scope: str = "layer",
    control: str | None = None,
    reference: LotterySearch | str | os.PathLike | None = None,
    directory: str | os.PathLike | None = None,
    seed: int = 0,
    verbose: int = 1,
    test_data=None,
    **fit_kwargs,
) -> Ticket:
    """Runs iterative magnitude pruning and returns the last round's ticket.

    A functional form of `LotterySearch(...).run(...)`; see `LotterySearch` for the
    arguments (Frankle & Carbin, 2019; Frankle et al., 2020; Renda et al., 2020).

    Returns:
        The `Ticket` of round `rounds`.
    """
    search = LotterySearch(
        model,
        optimizer,
        loss,
        metrics=metrics,
        rounds=rounds,
        rate=rate,
        output_rate=output_rate,
        rewind=rewind,
        rewind_step=rewind_step,
        scope=scope,
        control=control,
        reference=reference,
        directory=directory,
        seed=seed,
        verbose=verbose,
    )
    return search.run(x, y, test_data=test_data, **fit_kwargs)
