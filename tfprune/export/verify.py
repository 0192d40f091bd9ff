"""Check an exported .tflite file against the Keras model in the LiteRT interpreter."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from tfprune.export import _runtime
from tfprune.export._io import read_model

__all__ = ["Verification", "verify"]


@dataclasses.dataclass(frozen=True)
class Verification:
    """How the .tflite file's outputs compare with the reference (Keras) outputs.

    Attributes:
        examples: Number of examples compared.
        max_abs_error: Largest |tflite - reference| over all outputs, after dequantizing
            the file's outputs. Tight (around 1e-6) for float exports; for quantized exports
            it is of the order of the output scale and `agreement` is the better measure.
        mean_abs_error: Mean |tflite - reference|.
        agreement: Fraction of examples whose top-1 class (argmax of the last axis) is the
            same in both, or `None` when the output has a single unit.
        accuracy: Top-1 accuracy of the file on the labels, or `None` without labels.
        reference_accuracy: Top-1 accuracy of the reference on the labels, or `None`.
    """

    examples: int
    max_abs_error: float
    mean_abs_error: float
    agreement: float | None
    accuracy: float | None
    reference_accuracy: float | None

    def format(self) -> str:
        """One line: agreement, accuracies and errors."""
        parts = [f"{self.examples} examples"]
        if self.agreement is not None:
            parts.append(f"top-1 agreement {self.agreement:.4f}")
        if self.accuracy is not None:
            parts.append(
                f"accuracy {self.accuracy:.4f} (Keras {self.reference_accuracy:.4f})"
                if self.reference_accuracy is not None
                else f"accuracy {self.accuracy:.4f}"
            )
        parts.append(f"max abs error {self.max_abs_error:.3g}")
        return ", ".join(parts)


def _split(data) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        return np.asarray(x, np.float32), None if y is None else np.asarray(y)
    return np.asarray(data, np.float32), None


def _top1(outputs: np.ndarray) -> np.ndarray | None:
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        return None
    return np.argmax(outputs, axis=-1)


def verify(
    model: str | os.PathLike | bytes,
    data,
    reference: keras.Model | np.ndarray | None = None,
) -> Verification:
    """Runs a .tflite file in the LiteRT interpreter and compares it with a reference.

    Inputs are quantized and outputs dequantized with the scale and zero point stored in
    the file (`q = round(x / scale) + zero_point`, `x = (q - zero_point) * scale`), so an
    int8-I/O file is compared on the same float scale as the Keras model.

    Args:
        model: Path to a .tflite file or its bytes (single input, single output).
        data: Examples `x`, or `(x, y)` with integer class labels `y`.
        reference: The Keras model the file came from, or its outputs on `x`. Without it,
            only `accuracy` is reported (errors and agreement are NaN / None).

    Returns:
        A `Verification`.

    Raises:
        ValueError: If the file does not have exactly one input and one output, `y` does
            not hold one label per example, or `x` does not match the file's input shape.
        RuntimeError: If the interpreter cannot prepare or run the file.
    """
    data_bytes = read_model(model)
    x, y = _split(data)
    if y is not None and y.reshape(-1).shape[0] != len(x):
        raise ValueError(
            f"`data` holds {len(x)} examples but {y.reshape(-1).shape[0]} labels; pass (x, y) "
            "with one integer label per example. "
            f"Received: x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )
    try:
        interp = _runtime.interpreter(data_bytes)
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(
            f"The LiteRT interpreter could not prepare the file: {' '.join(str(e).split())}"
        ) from e
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(
            "verify supports files with one input and one output. "
            f"Received: a file with {len(ins)} inputs and {len(outs)} outputs"
        )
    expected = tuple(int(d) for d in ins[0]["shape"][1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"The verification data does not fit the model: examples of shape "
            f"{tuple(x.shape[1:])}, the model expects {expected}. Pass data shaped "
            f"(n, {', '.join(map(str, expected))}). Received: x.shape={tuple(x.shape)}"
        )
    outputs = _runtime.predict(interp, x)
    if isinstance(reference, keras.Model):
        ref = np.asarray(reference.predict(x, batch_size=256, verbose=0), np.float32)
    elif reference is not None:
        ref = np.asarray(reference, np.float32)
    else:
        ref = None
    if ref is not None:
        err = np.abs(outputs - ref.reshape(outputs.shape))
        max_err, mean_err = float(err.max()), float(err.mean())
    else:
        max_err = mean_err = float("nan")
    top, ref_top = _top1(outputs), None if ref is None else _top1(ref)
    agreement = None if top is None or ref_top is None else float(np.mean(top == ref_top))
    accuracy = reference_accuracy = None
    if y is not None and top is not None:
        labels = y.reshape(-1)
        accuracy = float(np.mean(top == labels))
        if ref_top is not None:
            reference_accuracy = float(np.mean(ref_top == labels))
    return Verification(
        examples=len(x),
        max_abs_error=max_err,
        mean_abs_error=mean_err,
        agreement=agreement,
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
    )
