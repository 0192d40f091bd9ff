"""Importance criteria for weight-level pruning.

A criterion is a function from a weight array (numpy) to an array of importance scores of
the same shape; the lowest scores are pruned first. Built-in: `"magnitude"` (|w|, Han et al.
2015). A user function works too; register it with
`keras.saving.register_keras_serializable` so a model that uses it saves and loads.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

__all__ = ["get", "magnitude", "serialize"]


def magnitude(weights: np.ndarray) -> np.ndarray:
    """Absolute value of each weight.

    Args:
        weights: A weight array.

    Returns:
        `|weights|`, the same shape.
    """
    return np.abs(weights)


_BUILTIN: dict[str, Callable[[np.ndarray], np.ndarray]] = {"magnitude": magnitude}


def get(criterion: str | Callable | dict) -> Callable[[np.ndarray], np.ndarray]:
    """Returns the criterion function for a name, a callable or a serialized function.

    Args:
        criterion: `"magnitude"`, a function `weights -> scores`, or its serialized form.

    Returns:
        The function.

    Raises:
        ValueError: For an unknown name.
        TypeError: For a value that is neither a string nor callable.
    """
    if isinstance(criterion, str):
        if criterion not in _BUILTIN:
            raise ValueError(
                f"Unknown `criterion`. Expected one of {sorted(_BUILTIN)} or a callable "
                f"`weights -> scores`. Received: criterion={criterion!r}"
            )
        return _BUILTIN[criterion]
    if isinstance(criterion, dict):
        return keras.saving.deserialize_keras_object(criterion)
    if callable(criterion):
        return criterion
    raise TypeError(
        "Expected `criterion` to be a string or a callable `weights -> scores`. "
        f"Received: criterion={criterion!r}"
    )


def serialize(criterion: Callable) -> str | dict:
    """Config value of a criterion: its name when built in, else Keras serialization."""
    for name, fn in _BUILTIN.items():
        if fn is criterion:
            return name
    return keras.saving.serialize_keras_object(criterion)
