"""Weights and masks of a model as name-keyed dicts, and their files (npz, json)."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfprune import layers as registry
from tfprune.export._io import atomic_path, write_bytes
from tfprune.wrapper import Prunable, prunable_layers


def inner(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.layer if isinstance(layer, Prunable) else layer


def weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers of `model` that hold weights (wrappers included), depth-first."""
    return [layer for layer in registry.iter_layers(model) if inner(layer).weights]


def get_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """`{layer name: inner layer weights}` for every layer that has weights."""
    return {layer.name: inner(layer).get_weights() for layer in weight_layers(model)}


def get_masks(model: keras.Model) -> dict[str, np.ndarray]:
    """`{"layer/target": keep}` for every mask of the model."""
    return {
        f"{layer.name}/{t.name}": np.array(keras.ops.convert_to_numpy(t.mask), bool)
        for layer in prunable_layers(model)
        for t in layer.targets
    }


def set_state(
    model: keras.Model, weights: Mapping[str, list[np.ndarray]], masks: Mapping[str, np.ndarray]
) -> None:
    """Sets inner weights, then masks (which zero the pruned weights)."""
    layers = {layer.name: layer for layer in weight_layers(model)}
    missing = sorted(set(weights) - set(layers))
    if missing:
        raise ValueError(
            f"The weights name layers that model '{model.name}' does not have: {missing}. "
            "Apply them to a model of the same architecture (same layer names)."
        )
    for name, values in weights.items():
        inner(layers[name]).set_weights(list(values))
    by_name = {layer.name: layer for layer in prunable_layers(model)}
    for key, keep in masks.items():
        layer_name, target = key.split("/", 1)
        if layer_name not in by_name:
            raise ValueError(
                f"Mask '{key}' names a layer that is not a tfprune.Prunable of model "
                f"'{model.name}'. Received: layers={sorted(by_name)}"
            )
        by_name[layer_name].set_mask(target, keep)


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_json(path: Path, obj: Any) -> None:
    write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def flatten_weights(weights: Mapping[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{name}:{i}": w for name, ws in weights.items() for i, w in enumerate(ws)}


def unflatten_weights(arrays: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    out: dict[str, dict[int, np.ndarray]] = {}
    for key, value in arrays.items():
        name, i = key.rsplit(":", 1)
        out.setdefault(name, {})[int(i)] = np.array(value)
    return {name: [ws[i] for i in sorted(ws)] for name, ws in out.items()}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"No such .npz file. Received: path={os.fspath(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.array(data[k]) for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"Could not read {os.fspath(path)!r} as a NumPy .npz archive ({type(e).__name__}); "
            "the file is damaged or not written by np.savez / Ticket.save. Write it again. "
            f"Received: path={os.fspath(path)!r}"
        ) from None
