"""TFLite conversion from a JAX or PyTorch process, in a TensorFlow-backend subprocess.

The converter reads a TensorFlow SavedModel, and Keras writes one only from its TensorFlow
backend (`keras.export.ExportArchive`), whose backend is fixed when Keras is imported. So
`tfprune.export.tflite` under another backend saves the stripped (and shrunk) model to a
temporary `.keras` file and has `python -m tfprune.export._tf_process` convert it with
`KERAS_BACKEND=tensorflow`: the same code path, hence the same file, as a TensorFlow
process. An error in the subprocess is raised in the caller with its type (a built-in
exception type, else RuntimeError) and message.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

_REQUEST, _ERROR, _DENSE, _SPARSE = "request.json", "error.json", "dense.tflite", "sparse.tflite"
_MODEL, _CALIBRATION = "model.keras", "calibration.npy"


def convert(
    model: keras.Model,
    batch_size: int | None,
    quantize: str | None,
    calibration: np.ndarray | None,
    int8_io: bool,
    sparse: bool,
) -> tuple[bytes, bytes | None]:
    """The dense (and, with `sparse`, sparse-encoded) TFLite bytes of `model`.

    Args:
        model: A plain Keras model (stripped, shrunk) of the calling backend.
        batch_size: Batch dimension of the file's input (`None`: dynamic).
        quantize: Quantization mode (see `tfprune.export.tflite`).
        calibration: Calibration examples for int8 / int16x8, or `None`.
        int8_io: int8 input and output tensors for `"int8"`.
        sparse: Also convert with the sparse weight encoding.

    Returns:
        `(dense, sparse_or_None)`.

    Raises:
        Exception: What the conversion raised in the subprocess, with its message.
    """
    with tempfile.TemporaryDirectory(prefix="tfprune-convert-") as tmp:
        model.save(os.path.join(tmp, _MODEL))
        if calibration is not None:
            np.save(os.path.join(tmp, _CALIBRATION), calibration)
        request = {"batch_size": batch_size, "quantize": quantize, "int8_io": int8_io}
        request["sparse"] = sparse
        with open(os.path.join(tmp, _REQUEST), "w") as f:
            json.dump(request, f)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p
        )
        proc = subprocess.run(
            [sys.executable, "-m", "tfprune.export._tf_process", tmp],
            env=env,
            capture_output=True,
            text=True,
        )
        error_path = os.path.join(tmp, _ERROR)
        if os.path.exists(error_path):
            with open(error_path) as f:
                error = json.load(f)
            kind = getattr(builtins, error["type"], None)
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = RuntimeError
            raise kind(error["message"])
        if proc.returncode != 0:
            raise RuntimeError(
                "TFLite conversion in the TensorFlow-backend subprocess failed "
                f"(exit status {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        dense = _read(os.path.join(tmp, _DENSE))
        encoded = _read(os.path.join(tmp, _SPARSE)) if sparse else None
    return dense, encoded


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _main(folder: str) -> None:
    from tfprune.export import convert as convert_lib

    try:
        with open(os.path.join(folder, _REQUEST)) as f:
            request = json.load(f)
        # Written by the calling process a moment ago, so its Lambda layers are trusted.
        model = keras.saving.load_model(
            os.path.join(folder, _MODEL), compile=False, safe_mode=False
        )
        calibration_path = os.path.join(folder, _CALIBRATION)
        calibration = np.load(calibration_path) if os.path.exists(calibration_path) else None
        specs = convert_lib._input_specs(model, request["batch_size"])
        dense, encoded = convert_lib._convert_model(
            model,
            specs,
            request["quantize"],
            calibration,
            request["int8_io"],
            request["sparse"],
        )
    except Exception as e:
        with open(os.path.join(folder, _ERROR), "w") as f:
            json.dump({"type": type(e).__name__, "message": str(e)}, f)
        return
    for name, data in ((_DENSE, dense), (_SPARSE, encoded)):
        if data is not None:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    _main(sys.argv[1])
