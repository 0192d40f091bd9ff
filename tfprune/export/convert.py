"""Convert a Keras model to a TFLite file: strip, shrink, quantize, sparse-encode, verify."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable

import keras
import numpy as np

from tfprune._validate import integer
from tfprune.export import _precision, _runtime, _tf_process, tflm
from tfprune.export._io import output_path, temp_dir, write_bytes
from tfprune.export.info import describe
from tfprune.export.rewrite import rewrite
from tfprune.export.tflm import MicroRun
from tfprune.export.verify import Verification, verify

__all__ = ["QUANTIZE_MODES", "ExportResult", "tflite"]

QUANTIZE_MODES = (None, "dynamic", "float16", "int8", "int16x8")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `tfprune.export.tflite` wrote.

    Attributes:
        path: The .tflite file.
        size: File size in bytes.
        gzip_size: Size after gzip (what the zeros of unstructured pruning compress to).
        ops: Operator names in execution order.
        quantize: The quantization mode used.
        sparse: Whether the file uses TFLite's sparse weight encoding (False after a
            fallback, or when the converter found no weights sparse enough to encode).
        dense_size: Size of the same model without sparse encoding.
        sparse_size: Size with sparse encoding, or `None` when `sparse=False`.
        sparse_fallback: Why the sparse-encoded file was not used (it could not run in
            LiteRT's default configuration), or `None`.
        verification: The comparison with the Keras model, or `None` without
            `verify_data`.
        micro: The run in TFLite Micro (`verify_micro=True`), or `None`.
        activations: The types of the tensors the file's ops compute, read from the file
            (QUANTIZE/DEQUANTIZE at the edges excluded): `("int8",)` for a full-integer
            file, `("float32",)` for float and dynamic-range files.
    """

    path: str
    size: int
    gzip_size: int
    ops: tuple[str, ...]
    quantize: str | None
    sparse: bool
    dense_size: int
    sparse_size: int | None = None
    sparse_fallback: str | None = None
    verification: Verification | None = None
    activations: tuple[str, ...] = ()
    micro: MicroRun | None = None

    @property
    def sparse_saved_bytes(self) -> int | None:
        """Bytes the sparse encoding saves over the dense file (`None` if not tried)."""
        return None if self.sparse_size is None else self.dense_size - self.sparse_size

    def format(self) -> str:
        """A few lines for a terminal: file, sizes, ops and verification."""
        mode = self.quantize or "float32"
        if self.activations:
            mode += f" ({'/'.join(self.activations)} activations)"
        lines = [
            f"Wrote {self.path}: {self.size:,} bytes ({self.gzip_size:,} gzipped), {mode}"
            + (", sparse-encoded" if self.sparse else ""),
            "Ops: " + ", ".join(dict.fromkeys(self.ops)),
        ]
        if self.sparse_size is not None:
            lines.append(
                f"Sparse encoding: {self.sparse_size:,} bytes vs {self.dense_size:,} dense "
                f"(saves {self.sparse_saved_bytes:,})"
                + (f"; not used: {self.sparse_fallback}" if self.sparse_fallback else "")
            )
        if self.verification is not None:
            lines.append("Verification: " + self.verification.format())
        if self.micro is not None:
            lines.append(self.micro.format())
        return "\n".join(lines)


def _input_specs(model: keras.Model, batch_size: int | None) -> list:
    import tensorflow as tf

    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise ValueError(
            f"Model '{model.name}' has no known inputs, so its input signature is unknown. "
            "Export a functional or Sequential model with an Input layer (or call "
            "`model.build(input_shape)` first)."
        )
    return [
        tf.TensorSpec((batch_size, *tuple(t.shape)[1:]), dtype=t.dtype or "float32", name=t.name)
        for t in inputs
    ]


def _calibration_array(data, specs: list, limit: int | None) -> np.ndarray:
    """Stacks up to `limit` single examples from an array, dataset or iterable of x or (x, y)."""
    import tensorflow as tf

    if len(specs) != 1:
        raise ValueError(
            "int8 / int16x8 calibration supports models with one input. "
            f"Received: a model with {len(specs)} inputs"
        )
    want = tuple(specs[0].shape[1:])
    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == len(want) + 1:
        data = data[0]  # (x, y)
    if isinstance(data, np.ndarray):
        batches: Iterable = [data[:limit] if limit else data]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        batches = data
    else:
        raise TypeError(
            "Expected `representative_data` to be a numpy array, a tf.data.Dataset or an "
            "iterable of arrays (or of (x, y) pairs). "
            f"Received: representative_data of type {type(data).__name__}"
        )
    examples: list[np.ndarray] = []
    for item in batches:
        x = item[0] if isinstance(item, (tuple, list)) else item
        x = np.asarray(x, np.float32)
        if x.shape == want:  # one example without a batch axis
            x = x[None]
        if x.shape[1:] != want:
            raise ValueError(
                "`representative_data` does not fit the model's input: examples of shape "
                f"{tuple(x.shape[1:])}, the input '{specs[0].name}' expects {want}. "
                f"Received: a batch of shape {tuple(x.shape)}"
            )
        examples.extend(x)
        if limit and len(examples) >= limit:
            break
    if not examples:
        raise ValueError("`representative_data` is empty. Pass 100-500 training examples.")
    stacked = np.stack(examples[:limit] if limit else examples)
    if not np.isfinite(stacked).all():
        raise ValueError(
            "`representative_data` contains NaN or infinity, which makes int8 calibration "
            "fail silently (a float file). Pass finite training examples. Received: "
            f"{int((~np.isfinite(stacked)).sum())} non-finite values in {stacked.shape}"
        )
    return stacked


def _saved_model(model: keras.Model, specs: list, folder: str) -> None:
    """Writes the model's inference call (training=False) as a SavedModel `serve` endpoint."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda *args: model(list(args) if len(args) > 1 else args[0], training=False),
        input_signature=specs,
    )
    archive.write_out(folder, verbose=False)


def _convert(
    saved_model: str,
    quantize: str | None,
    calibration: np.ndarray | None,
    int8_io: bool,
    sparse: bool,
) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    optimizations = [tf.lite.Optimize.DEFAULT] if quantize else []
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize in ("int8", "int16x8"):
        converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    if quantize == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    if quantize == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    return converter.convert()


def _convert_model(
    model: keras.Model,
    specs: list,
    quantize: str | None,
    calibration: np.ndarray | None,
    int8_io: bool,
    sparse: bool,
) -> tuple[bytes, bytes | None]:
    """The dense (and, with `sparse`, sparse-encoded) TFLite bytes; TensorFlow backend."""
    with temp_dir("tfprune-export") as tmp:
        _saved_model(model, specs, tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter's own deprecation chatter
            dense = _convert(tmp, quantize, calibration, int8_io, sparse=False)
            encoded = _convert(tmp, quantize, calibration, int8_io, sparse=True) if sparse else None
    return dense, encoded


def _prepare(model: keras.Model, shrink: bool) -> keras.Model:
    from tfprune.clustering import Clustered
    from tfprune.layers import iter_layers
    from tfprune.surgery import strip
    from tfprune.wrapper import Prunable

    if shrink:
        try:
            from tfprune.shrink import shrink as shrink_model
        except ImportError as e:
            raise ImportError(
                "tfprune.export.tflite(..., shrink=True) needs tfprune.shrink, which could not "
                f"be imported ({e}). Pass shrink=False to export without removing channels."
            ) from e
        model = shrink_model(model)
    if any(isinstance(layer, (Prunable, Clustered)) for layer in iter_layers(model)):
        model = strip(model)
    return rewrite(model)[0]


def tflite(
    model: keras.Model,
    path: str | os.PathLike,
    quantize: str | None = None,
    representative_data=None,
    sparse: bool = False,
    shrink: bool = True,
    verify_data=None,
    int8_io: bool = True,
    batch_size: int | None = 1,
    calibration_size: int | None = 500,
    on_sparse_failure: str = "dense",
    verify_micro: bool = False,
    litert_check: bool = True,
) -> ExportResult:
    """Exports a (pruned) Keras model to a verified TFLite file, written atomically.

    Steps: `tfprune.shrink` (pruned channels physically removed, when `shrink=True`) ->
    `tfprune.strip` (wrappers removed, masks baked in) -> `tfprune.export.rewrite` (layers
    LiteRT runs slowly replaced by equal ones, e.g. depthwise `Conv2D(groups=C)` by
    `DepthwiseConv2D`) -> the model's inference call
    (`training=False`) as a SavedModel endpoint via `keras.export.ExportArchive` ->
    `tf.lite.TFLiteConverter.from_saved_model` -> a check that the file allocates and runs in
    LiteRT's default configuration -> optional verification -> the file, written to a
    temporary file beside `path` and moved into place with `os.replace`, so `path` is never
    half-written and nothing is left there on an error or KeyboardInterrupt.

    Quantization (`quantize`):

    - `None`: float32.
    - `"dynamic"`: int8 weights, float activations (no calibration).
    - `"float16"`: float16 weights.
    - `"int8"`: full-integer; weights and activations int8, calibrated on
      `representative_data`; int8 input and output tensors (for microcontrollers and NPUs)
      unless `int8_io=False`, which keeps float32 I/O with QUANTIZE/DEQUANTIZE ops.
    - `"int16x8"`: int16 activations, int8 weights, float32 I/O, calibrated.

    Sparse encoding (`sparse=True`) stores weights in TFLite's experimental sparse format
    (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`, DENSIFY ops at load time). It saves bytes only
    for weights with many zeros, and some kernels cannot run it: on LiteRT 2.x an int8
    sparse FULLY_CONNECTED fails to prepare in the default XNNPACK delegate, and int16x8
    sparse files fail to prepare at all. The file is therefore always test-run first; if it
    cannot run, `on_sparse_failure="dense"` writes the dense encoding instead (with a
    warning; `result.sparse_fallback` says why) and `"raise"` raises RuntimeError.

    Mixed precision: a `mixed_float16` / `mixed_bfloat16` model (whose layers keep their
    dtype policy when saved) is converted through a float32 copy with the same weights, so
    the file is the one a float32 model gives. The result's `activations` is read from the
    written file, so it says what the file computes.

    Args:
        model: A built functional or Sequential Keras model, pruned or not.
        path: Output .tflite path; its folder must exist.
        quantize: One of `None`, `"dynamic"`, `"float16"`, `"int8"`, `"int16x8"`.
        representative_data: Calibration examples for `"int8"` / `"int16x8"`: a numpy array
            (n, ...), `(x, y)`, a `tf.data.Dataset` (batched or not, of x or (x, y)), or an
            iterable of such batches. 100-500 training examples are typical.
        sparse: Use TFLite's sparse weight encoding (see above).
        shrink: Physically remove pruned channels with `tfprune.shrink` first.
        verify_data: `x` or `(x, y)` to compare the file with `model` in the LiteRT
            interpreter (see `tfprune.export.verify`).
        int8_io: For `"int8"`, int8 input and output tensors (default) or float32.
        batch_size: Batch dimension of the file's input, an integer >= 1; 1 (default) gives a
            static graph without shape ops, as TFLite Micro needs; `None` keeps it dynamic.
        calibration_size: At most this many calibration examples are used, an integer >= 1
            (`None`: all).
        on_sparse_failure: `"dense"` or `"raise"`, see above.
        verify_micro: Also run `verify_data` in the TFLite Micro interpreter (needs
            `tflite-micro`): outputs compared with LiteRT's reference kernels and the arena
            measured (`result.micro`, see `tfprune.export.tflm.run`).
        litert_check: Test-run the file in LiteRT's default configuration and raise if it
            cannot run (default). `False` skips that run for callers that only measure the
            file (`tfprune.fit_budget`'s steps); the file may then not run in LiteRT.

    Returns:
        An `ExportResult` (path, sizes, ops, verification); `print(result.format())`.

    Raises:
        ValueError: For an unknown `quantize`, int8/int16x8 without `representative_data`,
            or data that does not fit the model's input.
        TypeError: For a `path`, `batch_size` or `calibration_size` of the wrong type.
        RuntimeError: If the converted file cannot run in the LiteRT interpreter (with
            `litert_check`), or an
            `"int8"` / `"int16x8"` file would not compute in that type.
        OSError: If `path` cannot be written (`FileNotFoundError` for a missing folder,
            `IsADirectoryError`, `PermissionError`), checked before any slow work.

    Example:

    ```python
    result = tfprune.export.tflite(model, "model.tflite", quantize="int8",
                                   representative_data=x_train[:300],
                                   verify_data=(x_test, y_test))
    print(result.format())
    ```
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"Unknown `quantize`. Expected one of {QUANTIZE_MODES}. Received: quantize={quantize!r}"
        )
    if quantize in ("int8", "int16x8") and representative_data is None:
        raise ValueError(
            f"quantize={quantize!r} calibrates activation ranges and needs "
            "`representative_data` (e.g. 100-500 training examples). Pass "
            "representative_data=x_train[:300], or use quantize='dynamic', which needs no "
            "data. Received: representative_data=None"
        )
    if verify_micro and verify_data is None:
        raise ValueError(
            "verify_micro=True needs `verify_data` (examples x or (x, y)) to run in TFLite "
            "Micro. Received: verify_data=None"
        )
    if on_sparse_failure not in ("dense", "raise"):
        raise ValueError(
            "Expected `on_sparse_failure` to be 'dense' or 'raise'. "
            f"Received: on_sparse_failure={on_sparse_failure!r}"
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected `model` to be a keras.Model. Received: model of type {type(model).__name__}"
        )
    batch_size = integer("batch_size", batch_size, allow_none=True)
    calibration_size = integer("calibration_size", calibration_size, allow_none=True)
    path = output_path(path)
    final = _precision.as_float32(_prepare(model, shrink))
    _precision.check_finite(final)
    specs = _input_specs(final, batch_size)
    calibration = (
        _calibration_array(representative_data, specs, calibration_size)
        if quantize in ("int8", "int16x8")
        else None
    )
    if keras.backend.backend() == "tensorflow":
        dense, encoded = _convert_model(final, specs, quantize, calibration, int8_io, sparse)
    else:  # Keras writes SavedModels from its TensorFlow backend only
        dense, encoded = _tf_process.convert(
            final, batch_size, quantize, calibration, int8_io, sparse
        )
    data, fallback = dense, None
    if encoded is not None:
        problem = _runtime.check_runnable(encoded)
        if problem is None:
            data = encoded
        else:
            fallback = (
                f"the sparse-encoded {quantize or 'float32'} file cannot run in LiteRT's default "
                f"configuration ({problem})"
            )
            if on_sparse_failure == "raise":
                raise RuntimeError(
                    f"Sparse encoding failed: {fallback}. Export with sparse=False (gzip the "
                    "file if transfer size matters), try another `quantize` mode, or pass "
                    "on_sparse_failure='dense' to write the dense encoding instead."
                )
            warnings.warn(
                f"Writing the dense encoding instead: {fallback}. The dense file is "
                f"{len(dense):,} bytes, the sparse one would have been {len(encoded):,}.",
                RuntimeWarning,
                stacklevel=2,
            )
    problem = _runtime.check_runnable(data) if litert_check else None
    if problem is not None:
        raise RuntimeError(
            f"The converted file cannot run in the LiteRT interpreter ({problem}); nothing was "
            f"written to {path}. Try another `quantize` mode or report the model's layers."
        )
    info = describe(data)
    activations = _precision.activation_types(info)
    if quantize in ("int8", "int16x8") and activations != (quantize[:5],):
        raise RuntimeError(
            f"quantize={quantize!r} was requested, but the converter produced a file whose ops "
            f"compute {'/'.join(activations)} tensors; nothing was written to {path}. Some "
            "layers could not be quantized: check `representative_data` (100-500 real "
            "training examples) and the model's layers, or use quantize='dynamic'."
        )
    verification = None
    if verify_data is not None:
        verification = verify(data, verify_data, reference=model)
    micro = tflm.run(data, verify_data) if verify_micro else None
    write_bytes(path, data)
    return ExportResult(
        path=path,
        size=len(data),
        gzip_size=info.gzip_size,
        ops=info.ops,
        quantize=quantize,
        sparse=any(t.sparse for t in info.tensors),
        dense_size=len(dense),
        sparse_size=None if encoded is None else len(encoded),
        sparse_fallback=fallback,
        verification=verification,
        micro=micro,
        activations=activations,
    )
