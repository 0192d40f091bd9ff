"""Export to TFLite and TFLite Micro: convert, verify, measure, and write C arrays.

- `tflite(model, path, quantize=...)`: strip + shrink + convert + verify, written atomically.
- `verify(file, data, reference)`: compare a .tflite file with the Keras model in LiteRT.
- `latency(file, threads=1)`: median invoke time in the LiteRT interpreter.
- `micro(file, out_dir, name)`: `name.h` / `name.cc` for TFLite Micro (`compress=True`: LUT).
- `compress_tflite(file)`: LUT compression for TFLite Micro where it saves flash.
- `tflm.run(file, x)`: run in the real TFLite Micro interpreter, arena measured.
- `describe(file)`: ops, tensors and sizes of a .tflite file.
- `rewrite(model)`: layers LiteRT runs slowly replaced by equal ones (done by `tflite`).
"""

from __future__ import annotations

from tfprune.export import tflm
from tfprune.export.convert import QUANTIZE_MODES, ExportResult, tflite
from tfprune.export.info import TensorInfo, TFLiteInfo, describe
from tfprune.export.latency import Latency, latency
from tfprune.export.lut import (
    LutCompression,
    LutTensor,
    LutVerification,
    compress_tflite,
    decompression_memory,
    verify_lut,
)
from tfprune.export.micro import ArenaEstimate, MicroResult, arena_estimate, micro
from tfprune.export.rewrite import REWRITES, Rewrite, rewrite
from tfprune.export.verify import Verification, verify

__all__ = [
    "QUANTIZE_MODES",
    "REWRITES",
    "ArenaEstimate",
    "ExportResult",
    "Latency",
    "LutCompression",
    "LutTensor",
    "LutVerification",
    "MicroResult",
    "Rewrite",
    "TFLiteInfo",
    "TensorInfo",
    "Verification",
    "arena_estimate",
    "compress_tflite",
    "decompression_memory",
    "describe",
    "latency",
    "micro",
    "rewrite",
    "tflite",
    "tflm",
    "verify",
    "verify_lut",
]
