"""LUT compression of a .tflite file for TensorFlow Lite Micro (weight sharing in flash).

A constant tensor with few distinct values (clustered weights: Deep Compression's weight
sharing, Han et al. 2016) is stored as b-bit indices into a table of its values; TFLite
Micro's DECODE operator (custom op `TFLM_DECODE`) rebuilds it at run time. The rewrite is
done by the compression tool shipped in the `tflite-micro` package
(`tflite_micro.compression.compress`); this module decides, per tensor, whether it pays,
and verifies the result in the TFLite Micro interpreter.

Cost model, per constant tensor of `n` elements of `s` bytes: with `u` distinct values per
table (per output channel for a per-channel quantized tensor, else for the whole tensor)
the indices take `ceil(log2 u)` bits each (1 to 7 bits: the tool's limit), so
`ceil(n * bits / 8)` bytes, the tables `tables * u * s` bytes, plus a 16-byte header.
The DECODE operator also adds flatbuffer metadata: the decoded tensor's copy of the
quantization parameters (12 bytes per channel), the names of two new tensors, and tensor,
operator and alignment bytes, estimated from above at `2 * len(name) + 280` bytes. A tensor
is compressed only when all of it is smaller than the original data.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from tfprune.export import tflm
from tfprune.export._io import output_path, read_model, write_bytes
from tfprune.export.info import describe

__all__ = [
    "LutCompression",
    "LutTensor",
    "LutVerification",
    "compress_tflite",
    "decompression_memory",
    "verify_lut",
]

_MAX_BITS = 7  # the LUT format's widest index (tflite_micro.compression.lut)
_HEADER = 16  # DECODE's common metadata in front of the value tables
_ALIGN = 16  # TFLite Micro's arena buffer alignment (MicroArenaBufferAlignment)
# Flatbuffer bytes a DECODE adds besides the data, measured on the tool's output: per
# channel of the decoded tensor's quantization (float32 scale + int64 zero point), its name
# twice (`name_decoded`, `name_ancillary`) and a fixed part (two tensor entries, the
# operator, buffer alignment); 248 to 274 bytes besides the names measured, 280 taken.
_META_PER_CHANNEL, _META_FIXED = 12, 280
_DECODE = "CUSTOM:TFLM_DECODE"
_SUPPORTED = {"int8", "int16", "int32", "int64", "float32", "bool"}  # DECODE's LUT types


@dataclasses.dataclass(frozen=True)
class LutTensor:
    """The decision for one constant tensor.

    Attributes:
        index: Tensor index in the main subgraph (of the uncompressed file).
        name: Tensor name.
        shape: Tensor shape.
        dtype: Element type, e.g. `"int8"`.
        per_channel: Whether one value table per channel (per-channel quantized tensors,
            along their quantized dimension) or one for the whole tensor.
        unique: Distinct values in the largest table.
        bits: Index bits, `ceil(log2(unique))` (at least 1).
        bytes_before: Bytes of the tensor's data in the uncompressed file.
        bytes_after: Indices + value tables + 16-byte header (0 when not compressible).
        metadata: Estimated flatbuffer bytes the DECODE adds (decoded tensor's quantization
            copy, tensor and operator entries).
        compressed: Whether the tensor was compressed.
        reason: Why, in words.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    per_channel: bool
    unique: int
    bits: int
    bytes_before: int
    bytes_after: int
    metadata: int
    compressed: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class LutCompression:
    """A LUT-compressed .tflite file and what was decided for each tensor.

    Attributes:
        data: The file's bytes (the input unchanged when no tensor pays).
        size_before: Bytes of the uncompressed file.
        size: Bytes of `data` (flash taken by the model).
        tensors: One `LutTensor` per constant tensor of the main subgraph.
        decompression_memory: Bytes of alternate decompression memory that keep every
            decoded tensor out of the arena (see `decompression_memory`); 0 when nothing
            was compressed.
        path: Where `data` was written, or `None`.
    """

    data: bytes
    size_before: int
    size: int
    tensors: tuple[LutTensor, ...]
    decompression_memory: int
    path: str | None = None

    @property
    def compressed(self) -> tuple[LutTensor, ...]:
        """The tensors that were compressed."""
        return tuple(t for t in self.tensors if t.compressed)

    def format(self) -> str:
        """A report: flash before/after and one line per tensor that could be compressed."""
        saved = self.size_before - self.size
        lines = [
            f"LUT compression: {self.size_before:,} -> {self.size:,} bytes of flash "
            f"({saved:,} saved, {len(self.compressed)} of {len(self.tensors)} constant tensors)"
        ]
        shown = [t for t in self.tensors if t.bits]
        if shown:
            w = max(len(_short(t.name)) for t in shown)
            lines.append(f"  {'tensor':<{w}}  table        bits  {'before':>9}  {'after':>9}")
            for t in shown:
                table = f"{t.unique}/{'channel' if t.per_channel else 'tensor'}"
                lines.append(
                    f"  {_short(t.name):<{w}}  {table:<11}  {t.bits:>4}  {t.bytes_before:>9,}  "
                    f"{t.bytes_after:>9,}  {'compressed' if t.compressed else 'kept: ' + t.reason}"
                )
        skipped = len(self.tensors) - len(shown)
        if skipped:
            lines.append(f"  {skipped} more kept: {_reasons(self.tensors)}")
        if self.decompression_memory:
            lines.append(
                f"Decoded tensors take up to {self.decompression_memory:,} bytes of arena at a "
                "time, or that much separate decompression memory given to "
                "MicroInterpreter::SetDecompressionMemory."
            )
        return "\n".join(lines)


def _short(name: str) -> str:
    return name if len(name) <= 40 else "..." + name[-37:]


def _reasons(tensors) -> str:
    counts: dict[str, int] = {}
    for t in tensors:
        if not t.bits:
            counts[t.reason] = counts.get(t.reason, 0) + 1
    return "; ".join(f"{n} {r}" for r, n in counts.items())


def check_bits(name: str, value) -> None:
    """Raises ValueError unless `value` is an index width TFLite Micro's LUT has (1 to 7)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_BITS:
        raise ValueError(
            f"Expected `{name}` to be an integer from 1 to 7 (TFLite Micro's LUT indices have "
            f"at most 7 bits). Received: {name}={value!r}"
        )


def _require() -> None:
    if not tflm.available():
        raise ImportError(
            "LUT compression uses the compression tool of the `tflite-micro` package. Install "
            "it with `pip install 'tfprune[micro]'` (or `pip install tflite-micro`)."
        )


def _decide(tensor, info, array: np.ndarray, max_bits: int, stays_constant: str) -> LutTensor:
    """Whether LUT compression of one constant tensor makes the file smaller."""
    n, size = array.size, array.nbytes
    per_channel = len(info.scale) > 1
    base = dict(
        index=info.index,
        name=info.name,
        shape=tuple(array.shape),
        dtype=info.dtype,
        per_channel=per_channel,
        bytes_before=size,
    )

    def keep(reason: str, unique=0, bits=0, after=0, meta=0) -> LutTensor:
        return LutTensor(
            **base,
            unique=unique,
            bits=bits,
            bytes_after=after,
            metadata=meta,
            compressed=False,
            reason=reason,
        )

    if info.dtype not in _SUPPORTED:
        return keep(f"{info.dtype} (DECODE tables hold {', '.join(sorted(_SUPPORTED))})")
    if stays_constant:
        return keep(f"must stay constant: {stays_constant}")
    if per_channel:
        axis = tensor.quantization.axis or 0
        if axis not in (0, array.ndim - 1):
            return keep(f"per-channel axis {axis} (DECODE supports the first and last)")
        channels = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        unique = max(len(np.unique(c)) for c in channels)
        tables = array.shape[axis]
    else:
        unique, tables = len(np.unique(array)), 1
    bits = max(1, math.ceil(math.log2(unique)))
    if bits > max_bits:
        return keep(f"{unique} values need {bits} bits (max_bits={max_bits})", unique, bits, 0, 0)
    after = -(-n * bits // 8) + tables * unique * array.itemsize + _HEADER
    meta = _META_PER_CHANNEL * len(info.scale) + 2 * len(info.name) + _META_FIXED
    if after + meta >= size:
        return keep(
            f"indices + tables + metadata {after + meta:,} B >= {size:,} B",
            unique,
            bits,
            after,
            meta,
        )
    return LutTensor(
        **base,
        unique=unique,
        bits=bits,
        bytes_after=after,
        metadata=meta,
        compressed=True,
        reason=f"saves {size - after - meta:,} B",
    )


def decompression_memory(model: str | os.PathLike | bytes) -> int:
    """Bytes of alternate decompression memory a LUT-compressed file can use.

    TFLite Micro's DECODE operator writes its decoded tensors into memory the application
    gives with `MicroInterpreter::SetDecompressionMemory` (instead of the tensor arena).
    Each DECODE resets that memory's allocations in its Prepare and its outputs are read
    only by the next operator, so the memory needed is the largest DECODE's outputs, each
    rounded up to TFLite Micro's 16-byte buffer alignment. With less, a decoded tensor that
    does not fit falls back to the arena.

    Args:
        model: Path to a .tflite file or its bytes.

    Returns:
        Bytes (0 when the file has no DECODE operator).

    Raises:
        ValueError: If the data is not a TFLite file.
        FileNotFoundError: If a model path does not exist.
    """
    info = describe(model)
    sizes = [
        sum(-(-info.tensors[o].nbytes // _ALIGN) * _ALIGN for o in outs)
        for name, _, outs in info.operators
        if name == _DECODE
    ]
    return max(sizes, default=0)


def compress_tflite(
    model: str | os.PathLike | bytes,
    path: str | os.PathLike | None = None,
    max_bits: int = _MAX_BITS,
) -> LutCompression:
    """LUT-compresses the constant tensors of a .tflite file where that saves flash.

    For every constant tensor of the main subgraph, the distinct values are counted (per
    output channel for per-channel quantized tensors, along their quantized dimension, else
    over the tensor), and the tensor is rewritten as `ceil(log2(values))`-bit indices plus
    value tables when that, with the DECODE operator's metadata, takes fewer bytes than the
    original (see the module docstring for the cost model). The rewrite is
    `tflite_micro.compression.compress`, which inserts a DECODE operator before each
    consumer. Tensors a kernel must read while preparing (shapes, paddings, ...) are kept.

    The file runs only in TFLite Micro builds that register the DECODE operator
    (`resolver.AddDecode()`); LiteRT cannot load it. Verify it in TFLite Micro with
    `verify_lut`. Int8 rounding only merges values, so a model clustered to `2**b` values
    per channel keeps at most `2**b` per channel in its int8 file.

    Args:
        model: Path to an int8 (or float) .tflite file, or its bytes.
        path: Also write the compressed file here (atomically).
        max_bits: Widest index to use, 1 to 7; tensors needing more are kept.

    Returns:
        A `LutCompression`: the bytes, the sizes and one `LutTensor` per constant tensor.
        When no tensor pays, `data` is the input unchanged.

    Raises:
        ImportError: If `tflite-micro` is not installed.
        ValueError: If `max_bits` is not an integer from 1 to 7, or the data is not a TFLite
            file.
        TypeError: If `path` is not a path.
        FileNotFoundError: If a model path does not exist.
    """
    check_bits("max_bits", max_bits)
    _require()
    out = output_path(path) if path is not None else None
    data = read_model(model)
    info = describe(data)
    from tflite_micro.tensorflow.lite.micro.compression import (
        compress,
        constant_inputs,
        model_editor,
        spec,
    )

    editable = model_editor.read(data)
    graph = editable.subgraphs[0]
    buffer_users: dict[int, int] = {}
    for t in model_editor.iter_tensors(editable):
        if t.buffer is not None and t.buffer.data:
            buffer_users[id(t.buffer)] = buffer_users.get(id(t.buffer), 0) + 1
    decisions = []
    for t_info in info.tensors:
        if not t_info.constant or t_info.sparse:
            continue
        tensor = graph.tensors[t_info.index]
        uses = constant_inputs.find_uses(graph, tensor)
        reason = "; ".join(u.describe() for u in uses)
        if buffer_users.get(id(tensor.buffer), 0) > 1:
            reason = reason or "its data is shared with another tensor"
        elif not graph.consumers_of(tensor):
            reason = reason or "no operator reads it"
        decisions.append(_decide(tensor, t_info, tensor.array, max_bits, reason))
    chosen = [d for d in decisions if d.compressed]
    if chosen:
        specs = [
            spec.Tensor(
                subgraph=0,
                tensor=d.index,
                compression=[
                    spec.LookUpTableCompression(
                        index_bitwidth=d.bits,
                        mode=spec.PerChannel(axis=graph.tensors[d.index].quantization.axis or 0)
                        if d.per_channel
                        else spec.PerTensor(),
                    )
                ],
            )
            for d in chosen
        ]
        result = bytes(compress(data, specs))
    else:
        result = data
    if out is not None:
        write_bytes(out, result)
    return LutCompression(
        data=result,
        size_before=len(data),
        size=len(result),
        tensors=tuple(decisions),
        decompression_memory=decompression_memory(result) if chosen else 0,
        path=out,
    )


@dataclasses.dataclass(frozen=True)
class LutVerification:
    """The uncompressed and the LUT-compressed file, both run in TFLite Micro.

    Attributes:
        uncompressed: The uncompressed file's run (`tflm.run`, compared with LiteRT's
            reference kernels).
        compressed: The compressed file's run, decoded tensors in the arena.
        with_decompression_memory: The compressed file's run when the application gives
            `decompression_memory` bytes of separate memory for the decoded tensors.
        decompression_memory: Those bytes (`decompression_memory(compressed)`).
        identical: Whether all three runs gave exactly the same outputs.
    """

    uncompressed: tflm.MicroRun
    compressed: tflm.MicroRun
    with_decompression_memory: tflm.MicroRun
    decompression_memory: int

    @property
    def identical(self) -> bool:
        """Whether the compressed file's outputs equal the uncompressed file's, bit for bit."""
        u = self.uncompressed.outputs
        return np.array_equal(u, self.compressed.outputs) and np.array_equal(
            u, self.with_decompression_memory.outputs
        )

    def format(self) -> str:
        """Three lines: the outputs and the arenas."""
        same = "identical to" if self.identical else "DIFFERENT from"
        return "\n".join(
            [
                f"TFLite Micro outputs of the compressed file on {self.compressed.examples} "
                f"examples: {same} the uncompressed file's",
                f"Arena: {self.uncompressed.arena:,} B uncompressed, "
                f"{self.compressed.arena:,} B compressed with decoded tensors in the arena, "
                f"{self.with_decompression_memory.arena:,} B with "
                f"{self.decompression_memory:,} B of separate decompression memory (measured)",
            ]
        )


def _examples(data: bytes, n: int = 8) -> np.ndarray:
    """`n` float inputs that quantize to random integers over the input type's range."""
    t = describe(data)
    inp = t.tensors[t.inputs[0]]
    rng = np.random.default_rng(0)
    shape = (n, *inp.shape[1:])
    if inp.scale and np.issubdtype(np.dtype(inp.dtype), np.integer):
        lim = np.iinfo(inp.dtype)
        q = rng.integers(lim.min, lim.max, shape, endpoint=True)
        return ((q - inp.zero_point[0]) * inp.scale[0]).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def verify_lut(
    uncompressed: str | os.PathLike | bytes,
    compressed: str | os.PathLike | bytes | LutCompression,
    data=None,
) -> LutVerification:
    """Runs both files in TFLite Micro and measures the arena with and without decode memory.

    The uncompressed file runs as `tflm.run` does (arena measured, outputs compared with
    LiteRT's reference kernels); the compressed file runs on the same quantized inputs twice:
    with the decoded tensors in the arena, and with `decompression_memory(compressed)`
    bytes of alternate decompression memory (`SetDecompressionMemory`), each arena measured
    as the smallest that runs. Each run is a subprocess, so a crash becomes a RuntimeError.

    Args:
        uncompressed: The int8 file that was compressed (path or bytes).
        compressed: The compressed file (path, bytes or a `LutCompression`).
        data: Examples `x` or `(x, y)`; `None` runs 8 inputs drawn uniformly from the input
            type's range (seed 0).

    Returns:
        A `LutVerification`; `.identical` tells whether the outputs are bit-exact.

    Raises:
        ImportError: If `tflite-micro` is not installed.
        ValueError: If the data does not fit the model.
        RuntimeError: If TFLite Micro fails or crashes on a file.
    """
    _require()
    original = read_model(uncompressed)
    packed = compressed.data if isinstance(compressed, LutCompression) else read_model(compressed)
    x = _examples(original) if data is None else data
    memory = decompression_memory(packed)
    return LutVerification(
        uncompressed=tflm.run(original, x),
        compressed=tflm.run(packed, x, reference=original),
        with_decompression_memory=tflm.run(
            packed, x, reference=original, decompression_memory=memory
        ),
        decompression_memory=memory,
    )
