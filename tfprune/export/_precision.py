"""Precision on both sides of conversion: a float32 model for the converter, and the
activation types a converted file really has."""

from __future__ import annotations

import keras
import numpy as np

from tfprune.export.info import TFLiteInfo

__all__: list[str] = []

_HALF = ("float16", "bfloat16")
_CASTS = ("QUANTIZE", "DEQUANTIZE")
_ACTIVATION_TYPES = ("float32", "float16", "int8", "int16")


def _is_half(layer: keras.layers.Layer) -> bool:
    policy = layer.dtype_policy
    return policy.compute_dtype in _HALF or policy.variable_dtype in _HALF


def as_float32(model: keras.Model) -> keras.Model:
    """`model` with every layer in float32, or `model` itself when it is already float32.

    A `mixed_float16` / `mixed_bfloat16` model keeps its layers' dtype policies when it is
    saved and reloaded, and TFLite's converter rejects float16 Conv2D/MatMul/BiasAdd. The
    float32 copy has the same weights (cast), so it converts exactly like a model trained
    in float32; quantization then happens in the converter as usual.
    """
    from tfprune.layers import iter_layers

    if not any(_is_half(layer) for layer in iter_layers(model)):
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights([np.asarray(w, np.float32) for w in model.get_weights()])
    return copy


def check_finite(model: keras.Model) -> None:
    """Raises ValueError naming the first weight that holds NaN or infinity."""
    for w in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(w)).all():
            raise ValueError(
                f"Weight '{w.path}' of model '{model.name}' contains NaN or infinity, so the "
                "exported file would compute garbage (and int8 calibration fails). Training "
                "has diverged: restart from a finite checkpoint with a lower learning rate. "
                f"Received: model={model.name!r}"
            )


def activation_types(info: TFLiteInfo) -> tuple[str, ...]:
    """The types of the tensors computed by the file's ops (casts at the edges excluded).

    A full-integer int8 file gives `("int8",)`; a float file `("float32",)`; a file the
    converter could only partly quantize gives both.
    """
    found = {
        info.tensors[t].dtype
        for name, _, outs in info.operators
        if name not in _CASTS
        for t in outs
        if t >= 0 and info.tensors[t].dtype in _ACTIVATION_TYPES
    }
    return tuple(sorted(found))
