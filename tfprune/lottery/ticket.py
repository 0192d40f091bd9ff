"""`Ticket`: the masks of a lottery ticket plus the weights to train them from."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np

from tfprune.lottery._state import flatten_weights, load_npz, save_npz, set_state, unflatten_weights
from tfprune.surgery import wrap
from tfprune.wrapper import prunable_layers

__all__ = ["Ticket"]


@dataclasses.dataclass
class Ticket:
    """A lottery ticket: masks plus the weights to train them from.

    Attributes:
        masks: `{"layer/target": keep}` boolean masks (`True` = kept).
        weights: `{layer name: weights}` in each (inner) layer's `get_weights()` order: the
            weights a round of the search starts from (the rewind point with `"init"` and
            `"step"` rewinding, the previous round's trained weights with `"lr"`), masked.
        round: The IMP round (pruning level) the masks belong to.
        optimizer_variables: Optimizer state to start from (late rewinding), or `[]`.

    Example:

    ```python
    ticket = tfprune.lottery.find_ticket(model, "sgd", "sparse_categorical_crossentropy",
                                         x=x, y=y, epochs=2, rounds=5)
    ticket.save("ticket.npz")
    model = tfprune.lottery.Ticket.load("ticket.npz").apply(build_model())
    ```
    """

    masks: dict[str, np.ndarray]
    weights: dict[str, list[np.ndarray]]
    round: int = 0
    optimizer_variables: list[np.ndarray] = dataclasses.field(default_factory=list)

    @property
    def remaining(self) -> dict[str, float]:
        """Fraction of weights kept, per mask."""
        return {k: float(m.mean()) for k, m in self.masks.items()}

    @property
    def sparsity(self) -> dict[str, float]:
        """Fraction of weights pruned, per mask."""
        return {k: 1.0 - v for k, v in self.remaining.items()}

    def save(self, path: str | os.PathLike) -> None:
        """Writes the ticket to one `.npz` file (atomically: temporary file, then rename).

        Args:
            path: File path; `.npz` is the conventional suffix.
        """
        path = Path(path)
        arrays = {f"mask:{k}": v for k, v in self.masks.items()}
        arrays.update({f"weight:{k}": v for k, v in flatten_weights(self.weights).items()})
        arrays.update({f"optimizer:{i}": v for i, v in enumerate(self.optimizer_variables)})
        meta = {"round": self.round, "format": "tfprune.lottery.Ticket/1"}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        save_npz(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ticket:
        """Reads a ticket written by `save`.

        Args:
            path: The `.npz` file.

        Returns:
            The ticket.

        Raises:
            ValueError: If the file is not a saved ticket.
        """
        arrays = load_npz(Path(path))
        if "meta" not in arrays:
            raise ValueError(
                f"File is not a tfprune lottery ticket (no 'meta' entry). Received: path={path}"
            )
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        masks = {k[5:]: v.astype(bool) for k, v in arrays.items() if k.startswith("mask:")}
        weights = unflatten_weights(
            {k[7:]: v for k, v in arrays.items() if k.startswith("weight:")}
        )
        opt = {int(k[10:]): v for k, v in arrays.items() if k.startswith("optimizer:")}
        return cls(masks, weights, meta["round"], [opt[i] for i in sorted(opt)])

    def apply(self, model: keras.Model) -> keras.Model:
        """Puts the ticket's weights and masks into a model of the same architecture.

        Args:
            model: A model with the same layer names and shapes; if it has no
                `tfprune.Prunable` layers it is wrapped first with
                `tfprune.wrap(model, sparsity=None)` (masks change only when set).

        Returns:
            The wrapped model holding the ticket (masked weights are exactly zero).

        Raises:
            ValueError: If a layer or mask of the ticket is missing from the model, or
                shapes differ.
        """
        if not prunable_layers(model):
            model = wrap(model, sparsity=None)
        set_state(model, self.weights, self.masks)
        return model
