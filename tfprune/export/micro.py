"""TFLite Micro export: the model as a 16-byte-aligned C array, its ops and its arena.

The arena is measured in the real TFLite Micro interpreter when `tflite-micro` is installed
(`tfprune.export.tflm`), and estimated otherwise (`arena_estimate`). With `compress=True`
the array holds the LUT-compressed file (`tfprune.export.lut`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from tfprune._validate import c_identifier
from tfprune.export import tflm
from tfprune.export._io import output_dir, read_model, write_bytes
from tfprune.export.info import TFLiteInfo, describe
from tfprune.export.lut import LutCompression, LutVerification, compress_tflite, verify_lut
from tfprune.export.tflm import MicroRun

__all__ = ["ArenaEstimate", "MicroResult", "arena_estimate", "micro"]

_ALIGN = 16  # TFLite Micro aligns arena buffers (and wants the model) on 16 bytes
# Persistent (tail) allocations of TFLite Micro, a least-squares fit (non-negative) to the
# tail its RecordingMicroAllocator records on a 64-bit host, over 20 int8 files (CNNs with
# pooling and BatchNorm, depthwise/pointwise blocks with a residual Add, MLPs; int8 and float
# I/O): a fixed part, per tensor (TfLiteEvalTensor and bookkeeping), per operator (node and
# registration), per conv / fully-connected operator (kernel op data) and per output channel
# of a per-channel quantized kernel (int32 multiplier and shift).
_FIXED, _PER_TENSOR, _PER_OP, _PER_WEIGHTED_OP, _PER_CHANNEL = 760, 53, 54, 50, 8
_PER_CHANNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
# TFLite Micro has no kernel for these (sparse-encoded weights need DENSIFY).
_NOT_IN_MICRO = {"DENSIFY"}
_CUSTOM_CALLS = {"CUSTOM:TFLM_DECODE": "AddDecode"}  # custom ops MicroMutableOpResolver has


@dataclasses.dataclass(frozen=True)
class ArenaEstimate:
    """Estimated TFLite Micro tensor-arena size, in bytes.

    Attributes:
        activations: Peak of the non-persistent area: every non-constant tensor (inputs,
            outputs, intermediate activations), 16-byte aligned, laid out by a greedy
            first-fit plan over tensor lifetimes like TFLite Micro's GreedyMemoryPlanner
            (largest first, lowest free offset). This is the part that dominates for CNNs.
        persistent: Estimate of TFLite Micro's persistent allocations (tensor and node
            structs, kernel op data, per-channel quantization data), a fit to what TFLite
            Micro records on a 64-bit host; 32-bit targets need less.
        total: `activations + persistent`, rounded up to 16 bytes: a starting value for
            `kTensorArenaSize`.
    """

    activations: int
    persistent: int
    total: int


@dataclasses.dataclass(frozen=True)
class MicroResult:
    """The files `micro` wrote.

    Attributes:
        header: Path of `name.h`.
        source: Path of `name.cc`.
        size: Model bytes in the array.
        ops: The distinct operators, in order of first use.
        resolver_calls: The `MicroMutableOpResolver` method for each op, e.g. `"AddConv2D"`.
        arena: The arena estimate (always computed).
        measured: The run in TFLite Micro (`tfprune.export.tflm.run`), or `None` when
            `tflite-micro` is not installed or `measure=False`. For a compressed model, the
            compressed file's run with the decoded tensors in the arena.
        compression: With `compress=True`, the `LutCompression` (flash before/after, the
            decision for each tensor), else `None`.
        lut: With `compress=True`, when a tensor was compressed and the run measured: both
            files in TFLite Micro (`tfprune.export.verify_lut`), else `None`.
    """

    header: str
    source: str
    size: int
    ops: tuple[str, ...]
    resolver_calls: tuple[str, ...]
    arena: ArenaEstimate
    measured: MicroRun | None = None
    compression: LutCompression | None = None
    lut: LutVerification | None = None

    @property
    def arena_size(self) -> int:
        """The arena written to the header: measured by TFLite Micro, else the estimate."""
        return self.measured.arena if self.measured is not None else self.arena.total

    @property
    def arena_source(self) -> str:
        """`"measured by TFLite Micro"` or `"estimate"`."""
        return "measured by TFLite Micro" if self.measured is not None else "estimate"


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def planned_peak(buffers: list[tuple[int, int, int]]) -> int:
    """Bytes TFLite Micro's GreedyMemoryPlanner needs for buffers with these lifetimes.

    Buffers are 16-byte aligned and placed largest first (equal sizes in the order given:
    the planner sorts stably), each at the lowest offset free during its lifetime.

    Args:
        buffers: `(bytes, first op, last op)` per buffer.

    Returns:
        The highest end of a placed buffer.
    """
    ordered = sorted(((_align(int(n)), a, b) for n, a, b in buffers), key=lambda b: -b[0])
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    peak = 0
    for size, start, end in ordered:
        live = sorted(
            (o, s) for o, s, a, b in placed if not (b < start or end < a)
        )  # buffers alive at the same time
        offset = 0
        for o, s in live:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, start, end))
        peak = max(peak, offset + size)
    return peak


def arena_estimate(model: str | os.PathLike | bytes | TFLiteInfo) -> ArenaEstimate:
    """Estimates the tensor arena a TFLite Micro interpreter needs for a .tflite file.

    This is an estimate; `tfprune.export.tflm.run` measures the arena in the real
    interpreter when `tflite-micro` is installed.

    How exact: `activations` follows TFLite Micro's default memory planner
    (GreedyMemoryPlanner: buffers 16-byte aligned, largest first, equal sizes in tensor
    order, each at the lowest offset free during its lifetime); it equalled the "head" that
    TFLite Micro's `RecordingMicroAllocator` records (64-bit host) to the byte on 20 int8
    files (CNNs, depthwise blocks with a residual Add, MLPs; int8 and float I/O).
    `persistent` is a fit to the recorded "tail" (see `_FIXED` and the per-tensor, per-op and
    per-channel terms); `total` was within 3 % of the recorded arena on those 20 files
    (0.7 % below to 3.0 % above). TFLite Micro also needs a little temporary space while it
    plans, which it does not record: for models with tiny activations (MLPs) the smallest
    arena that runs was up to 22 % above the recorded total; `tflm.run` finds that size.
    Not included: scratch buffers that optimized kernels request at prepare time (e.g.
    CMSIS-NN's im2col buffer for convolutions), variable tensors, and models with several
    subgraphs (only the main one is planned). On 32-bit targets the structs are smaller.

    Args:
        model: Path to a .tflite file, its bytes, or a `TFLiteInfo` from `describe`.

    Returns:
        An `ArenaEstimate` in bytes.
    """
    info = model if isinstance(model, TFLiteInfo) else describe(model)
    n_ops = len(info.operators)
    first: dict[int, int] = {i: 0 for i in info.inputs}
    last: dict[int, int] = {i: n_ops for i in info.outputs}
    for step, (_, ins, outs) in enumerate(info.operators):
        for t in outs:
            first.setdefault(t, step)
            last[t] = max(last.get(t, step), step)
        for t in ins:
            if t >= 0:
                first.setdefault(t, step)
                last[t] = max(last.get(t, step), step)
    peak = planned_peak(
        [
            (info.tensors[t].nbytes, first[t], last[t])
            for t in sorted(first, reverse=True)
            if not info.tensors[t].constant
        ]
    )
    weighted, channels = 0, 0
    for name, ins, _ in info.operators:
        if name in _PER_CHANNEL_OPS:
            weighted += 1
            if len(ins) > 1 and ins[1] >= 0 and len(info.tensors[ins[1]].scale) > 1:
                channels += len(info.tensors[ins[1]].scale)  # per-channel quantized kernel
    persistent = (
        _FIXED
        + _PER_TENSOR * len(info.tensors)
        + _PER_OP * n_ops
        + _PER_WEIGHTED_OP * weighted
        + _PER_CHANNEL * channels
    )
    return ArenaEstimate(activations=peak, persistent=persistent, total=_align(peak + persistent))


def _resolver_call(op: str) -> str:
    """`CONV_2D` -> `AddConv2D`, `MAX_POOL_2D` -> `AddMaxPool2D` (MicroMutableOpResolver)."""
    if op in _CUSTOM_CALLS:
        return _CUSTOM_CALLS[op]
    return "Add" + "".join(
        part.upper() if part[:1].isdigit() else part.capitalize() for part in op.split("_")
    )


def _arena_comment(arena: ArenaEstimate, measured: MicroRun | None) -> str:
    if measured is not None:
        return (
            f"// Tensor arena measured by the TFLite Micro interpreter (64-bit host, reference\n"
            f"// kernels): {measured.head} B activations + {measured.tail} B persistent recorded;\n"
            f"// the smallest arena that ran was {measured.arena} B. 32-bit targets need a little\n"
            "// less; optimized kernels (e.g. CMSIS-NN) may request scratch buffers: measure\n"
            "// with tflite::RecordingMicroInterpreter on the device."
        )
    return (
        f"// Tensor arena ESTIMATE (tflite-micro not installed): {arena.activations} B\n"
        f"// activations (greedy plan, as TFLite Micro's planner does) + ~{arena.persistent} B\n"
        "// persistent structs (fitted on a 64-bit host). Kernel scratch buffers (e.g. CMSIS-NN\n"
        "// im2col) are not included: leave headroom, measure with\n"
        "// tflite::RecordingMicroInterpreter."
    )


def _compression_comment(macro: str, compression: LutCompression, lut: LutVerification | None):
    """The header lines for a LUT-compressed model: flash, tensors, decode memory, C++ lines."""
    lines = [f"// {line}" for line in compression.format().splitlines()]
    if not compression.compressed:
        return "\n".join(lines) + "\n"
    lines += [
        "// The DECODE operator writes each decoded tensor just before the operator that reads",
        f"// it. By default into the arena ({macro}_ARENA_SIZE includes them). The application",
        "// can give separate decompression memory instead (TFLite Micro's",
        "// MicroInterpreter::SetDecompressionMemory, before AllocateTensors()):",
        f"//   alignas(16) static uint8_t decompression_memory[{macro}_DECOMPRESSION_MEMORY_SIZE];",
        "//   static const tflite::MicroContext::AlternateMemoryRegion regions[] = {",
        "//       {decompression_memory, sizeof(decompression_memory)}};",
        "//   interpreter.SetDecompressionMemory(regions, 1);",
    ]
    if lut is not None:
        lines.append(
            f"// Then the arena needs {macro}_ARENA_SIZE_WITH_DECOMPRESSION_MEMORY bytes "
            "(measured; outputs"
        )
        lines.append("// identical to the uncompressed model's in TFLite Micro).")
    lines.append(f"#define {macro}_DECOMPRESSION_MEMORY_SIZE {compression.decompression_memory}")
    if lut is not None:
        lines.append(
            f"#define {macro}_ARENA_SIZE_WITH_DECOMPRESSION_MEMORY "
            f"{lut.with_decompression_memory.arena}"
        )
    return "\n".join(lines) + "\n"


def _c_array(data: bytes, per_line: int = 12) -> str:
    rows = (
        "  " + ", ".join(f"0x{b:02x}" for b in data[i : i + per_line])
        for i in range(0, len(data), per_line)
    )
    return ",\n".join(rows)


def micro(
    model: str | os.PathLike | bytes,
    out_dir: str | os.PathLike,
    name: str = "model",
    verify_data=None,
    measure: bool | None = None,
    compress: bool = False,
) -> MicroResult:
    """Writes a .tflite file as C++ source for TFLite Micro: `name.h` and `name.cc`.

    `name.cc` defines `alignas(16) const unsigned char name[]` (the file's bytes) and
    `const unsigned int name_len`; `name.h` declares both and adds, without including any
    TFLite Micro header:
    - `NAME_OP_COUNT` and `NAME_ADD_OPS(resolver)`, which registers exactly the ops the model
      uses on a `tflite::MicroMutableOpResolver<NAME_OP_COUNT>`,
    - `NAME_ARENA_SIZE`, the tensor arena: measured in the real TFLite Micro interpreter
      (`tfprune.export.tflm.run`: recorded allocations, confirmed by a run with that size)
      when `tflite-micro` is installed, else an estimate (see `arena_estimate`); the comment
      says which. Also a comment listing ops and tensors.

    With `compress=True` the array holds the LUT-compressed file
    (`tfprune.export.compress_tflite`: tensors with few distinct values, e.g. clustered
    weights, stored as b-bit indices into value tables where that saves flash, decoded by
    TFLite Micro's DECODE operator, registered by `NAME_ADD_OPS` as `AddDecode()`). The
    header then also reports flash before/after and each tensor's decision, and defines
    `NAME_DECOMPRESSION_MEMORY_SIZE` with the C++ lines that give TFLite Micro separate
    decompression memory; when measured, the compressed file runs in TFLite Micro against
    the uncompressed one on `verify_data` (or 8 random inputs), and must give identical
    outputs, and `NAME_ARENA_SIZE_WITH_DECOMPRESSION_MEMORY` is the arena measured with
    that memory given.

    Usage on the device:

    ```c++
    #include "model.h"
    tflite::MicroMutableOpResolver<MODEL_OP_COUNT> resolver;
    MODEL_ADD_OPS(resolver);
    alignas(16) static uint8_t arena[MODEL_ARENA_SIZE];
    tflite::MicroInterpreter interpreter(tflite::GetModel(model), resolver, arena,
                                         MODEL_ARENA_SIZE);
    ```

    Both files are written atomically.

    Args:
        model: Path to a .tflite file or its bytes (e.g. from `tfprune.export.tflite`).
        out_dir: Folder for the two files (created if missing).
        name: C identifier for the array and the file names.
        verify_data: Examples `x` or `(x, y)` to run in TFLite Micro and compare with
            LiteRT's reference kernels (`result.measured.max_diff`; 0 when they agree bit
            for bit). Needs `tflite-micro`.
        measure: Measure the arena in TFLite Micro: `None` (default) when `tflite-micro`
            is installed, `True` always (ImportError without it), `False` never.
        compress: Write the LUT-compressed model (needs `tflite-micro`).

    Returns:
        A `MicroResult` with the paths, ops, arena estimate and TFLite Micro run.

    Raises:
        TypeError: If `name` is not a string or `out_dir` not a path.
        ValueError: If `name` is not a C identifier or is a C/C++ keyword (`int`, `main`,
            ...), the data is not a TFLite file, or the model needs an op TFLite Micro does
            not have (sparse-encoded weights).
        FileNotFoundError: If a model path does not exist.
        OSError: If `out_dir` is a file or cannot be written (`NotADirectoryError`,
            `PermissionError`), checked before anything is written.
        ImportError: If `measure=True`, `compress=True` or `verify_data` is given without
            `tflite-micro`.
        RuntimeError: If TFLite Micro fails or crashes on the file, or the compressed file's
            outputs differ from the uncompressed file's.
    """
    c_identifier("name", name)
    out_dir = output_dir(out_dir)
    data = read_model(model)
    info = describe(data)
    missing = sorted(set(info.ops) & _NOT_IN_MICRO)
    if missing:
        raise ValueError(
            f"The model uses {missing}, which TFLite Micro does not implement: it was exported "
            "with sparse=True. Export it with sparse=False for microcontrollers. "
            f"Received: a file with ops {sorted(set(info.ops))}"
        )
    if measure is None:
        measure = tflm.available() or verify_data is not None
    compression, lut = None, None
    if compress:
        compression = compress_tflite(data)
        if compression.compressed and measure:
            lut = verify_lut(data, compression, verify_data)
            if not lut.identical:
                raise RuntimeError(
                    "The LUT-compressed model gives different outputs than the uncompressed "
                    f"one in TFLite Micro ({lut.format()}). Please report this; export with "
                    "compress=False meanwhile."
                )
        data = compression.data
        info = describe(data)
    ops = tuple(dict.fromkeys(info.ops))
    calls = tuple(_resolver_call(op) for op in ops)
    arena = arena_estimate(info)
    if lut is not None:
        measured = lut.compressed
    else:
        measured = tflm.run(data, verify_data) if measure else None
    arena_size = measured.arena if measured is not None else arena.total
    macro = name.upper()
    guard = f"TFPRUNE_{macro}_H_"
    digest = hashlib.sha256(data).hexdigest()[:16]
    source_name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<bytes>"
    io_lines = []
    for kind, idx in (("input", info.inputs), ("output", info.outputs)):
        for i in idx:
            t = info.tensors[i]
            q = f", scale {t.scale[0]:.9g}, zero point {t.zero_point[0]}" if t.scale else ""
            io_lines.append(f"//   {kind}: {t.dtype} {list(t.shape)}{q}")
    add_ops = " \\\n".join(f"    (resolver).{c}();" for c in calls)
    header = f"""\
// Generated by tfprune.export.micro from {os.path.basename(source_name)}
// ({len(data)} bytes, sha256 {digest}...). Do not edit.
#ifndef {guard}
#define {guard}

// The model: a TFLite flatbuffer, 16-byte aligned as TFLite Micro requires.
extern const unsigned char {name}[];
extern const unsigned int {name}_len;

{chr(10).join(io_lines)}
// Ops ({len(ops)}): {", ".join(f"{k} x{v}" for k, v in info.op_counts.items())}

// Register exactly the ops the model needs:
//   tflite::MicroMutableOpResolver<{macro}_OP_COUNT> resolver;
//   {macro}_ADD_OPS(resolver);
#define {macro}_OP_COUNT {len(ops)}
#define {macro}_ADD_OPS(resolver) \\
  do {{ \\
{add_ops} \\
  }} while (0)

{_arena_comment(arena, measured)}
#define {macro}_ARENA_SIZE {arena_size}
{"" if compression is None else chr(10) + _compression_comment(macro, compression, lut)}
#endif  // {guard}
"""
    source = f"""\
// Generated by tfprune.export.micro from {os.path.basename(source_name)}
// ({len(data)} bytes, sha256 {digest}...). Do not edit.
#include "{name}.h"

alignas(16) const unsigned char {name}[] = {{
{_c_array(data)}
}};
const unsigned int {name}_len = {len(data)};
"""
    header_path = os.path.join(out_dir, f"{name}.h")
    source_path = os.path.join(out_dir, f"{name}.cc")
    write_bytes(header_path, header.encode())
    write_bytes(source_path, source.encode())
    return MicroResult(
        header=header_path,
        source=source_path,
        size=len(data),
        ops=ops,
        resolver_calls=calls,
        arena=arena,
        measured=measured,
        compression=compression,
        lut=lut,
    )
