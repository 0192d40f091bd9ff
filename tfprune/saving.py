"""Loading `.keras` files that may hold tfprune objects, with clear errors for bad files."""

from __future__ import annotations

import os
import zipfile

import keras

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike, compile: bool = True, safe_mode: bool = True
) -> keras.Model:
    """Loads a `.keras` file saved with or without tfprune layers.

    A model that still holds `tfprune.Prunable` wrappers (saved during training) needs
    tfprune's classes registered with Keras, which importing tfprune does; this function is
    `keras.saving.load_model` with that guaranteed and with clear errors for a missing or
    damaged file. A model passed through `tfprune.strip` holds no tfprune objects and also
    loads with plain `keras.saving.load_model` in a process that never imports tfprune.

    Args:
        path: A `.keras` file.
        compile: Whether to compile the model after loading (as in Keras).
        safe_mode: Refuse lambda layers with arbitrary code (as in Keras; default True).

    Returns:
        The model.

    Raises:
        TypeError: If `path` is not a str or os.PathLike.
        FileNotFoundError: If `path` does not exist.
        ValueError: If the file is not a `.keras` zip archive (damaged, truncated, or an
            HDF5/SavedModel file).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "Expected `path` to be the path of a .keras file (str or os.PathLike). "
            f"Received: path={path!r} of type {type(path).__name__}"
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such .keras file. Check the path. Received: path={path!r}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a readable .keras archive: it is damaged or truncated (an "
            "interrupted copy or save), or not a file written by model.save('model.keras'). "
            f"Save the model again. Received: path={path!r}"
        )
    return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
