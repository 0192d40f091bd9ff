"""TFLite Micro export: the model as a 16-byte-aligned C array, its ops and an arena estimate."""

from __future__ import annotations

import dataclasses
import hashlib
import os

from tfprune._validate import c_identifier
from tfprune.export._io import output_dir, read_model, write_bytes
from tfprune.export.info import TFLiteInfo, describe

__all__ = ["ArenaEstimate", "MicroResult", "arena_estimate", "micro"]

_ALIGN = 16  # TFLite Micro aligns arena buffers (and wants the model) on 16 bytes
# Persistent (tail) allocations of TFLite Micro, fitted to its RecordingMicroAllocator on a
# 64-bit host (an upper bound for 32-bit MCUs, whose structs are smaller): a TfLiteEvalTensor
# per tensor, a TfLiteTensor plus quantization data per graph input/output, a node +
# registration and kernel op data per operator, per-channel output multipliers/shifts
# data for per-channel quantized conv / fully-connected kernels, and a fixed part with
# ~512 B of slack so that the total is not below the measured value.
_EVAL_TENSOR, _IO_TENSOR, _PER_OP, _FIXED = 24, 96, 224, 1216
_PER_CHANNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
# TFLite Micro has no kernel for these (sparse-encoded weights need DENSIFY).
_NOT_IN_MICRO = {"DENSIFY"}


@dataclasses.dataclass(frozen=True)
class ArenaEstimate:
    """Estimated TFLite Micro tensor-arena size, in bytes.

    Attributes:
        activations: Peak of the non-persistent area: every non-constant tensor (inputs,
            outputs, intermediate activations), 16-byte aligned, laid out by a greedy
            first-fit plan over tensor lifetimes like TFLite Micro's GreedyMemoryPlanner
            (largest first, lowest free offset). This is the part that dominates for CNNs.
        persistent: Heuristic estimate of TFLite Micro's persistent allocations (tensor and
            node structs, kernel op data, per-channel quantization data), fitted on a
            64-bit host; slightly high for 32-bit targets.
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
        arena: The arena estimate.
    """

    header: str
    source: str
    size: int
    ops: tuple[str, ...]
    resolver_calls: tuple[str, ...]
    arena: ArenaEstimate


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def arena_estimate(model: str | os.PathLike | bytes | TFLiteInfo) -> ArenaEstimate:
    """Estimates the tensor arena a TFLite Micro interpreter needs for a .tflite file.

    How exact: `activations` follows the same greedy plan as TFLite Micro's default memory
    planner (GreedyMemoryPlanner: buffers 16-byte aligned, largest first, each at the lowest
    offset free during its lifetime). Checked against TFLite Micro's
    `RecordingMicroAllocator` (the `tflite-micro` Python package, reference kernels, 64-bit
    host) on six single-subgraph CNNs (float32, int8, int8 with float I/O, with depthwise
    conv and a residual Add): the non-persistent "head" matched to the byte in all six.
    `persistent` is a fitted heuristic for TFLite Micro's persistent "tail" (tensor and node
    structs, kernel op data, per-channel quantization data); it was 240-1,000 B above the
    measured tail on those models, so `total` was 0.4-7.6 % above the measured arena
    (never below it).
    Not included: scratch buffers that optimized kernels request at prepare time (e.g.
    CMSIS-NN's im2col buffer for convolutions), variable tensors, and models with several
    subgraphs (only the main one is planned). On 32-bit targets the structs are smaller, so
    the estimate errs on the safe side. Confirm on the target with TFLite Micro's
    `RecordingMicroInterpreter`.

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
    buffers = [
        (_align(info.tensors[t].nbytes), first[t], last[t])
        for t in first
        if not info.tensors[t].constant
    ]
    buffers.sort(key=lambda b: (-b[0], b[1]))
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    peak = 0
    for size, start, end in buffers:
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
    per_channel = 0
    for name, ins, _ in info.operators:
        if name in _PER_CHANNEL_OPS and len(ins) > 1 and ins[1] >= 0:
            weights = info.tensors[ins[1]]
            if len(weights.scale) > 1:  # per-channel quantized kernel
                per_channel += 4 * len(weights.scale)
    persistent = (
        _FIXED
        + _EVAL_TENSOR * len(info.tensors)
        + _IO_TENSOR * (len(info.inputs) + len(info.outputs))
        + _PER_OP * n_ops
        + per_channel
    )
    return ArenaEstimate(activations=peak, persistent=persistent, total=_align(peak + persistent))


def _resolver_call(op: str) -> str:
    """`CONV_2D` -> `AddConv2D`, `MAX_POOL_2D` -> `AddMaxPool2D` (MicroMutableOpResolver)."""
    return "Add" + "".join(
        part.upper() if part[:1].isdigit() else part.capitalize() for part in op.split("_")
    )


def _c_array(data: bytes, per_line: int = 12) -> str:
    rows = (
        "  " + ", ".join(f"0x{b:02x}" for b in data[i : i + per_line])
        for i in range(0, len(data), per_line)
    )
    return ",\n".join(rows)


def micro(
    model: str | os.PathLike | bytes, out_dir: str | os.PathLike, name: str = "model"
) -> MicroResult:
    """Writes a .tflite file as C++ source for TFLite Micro: `name.h` and `name.cc`.

    `name.cc` defines `alignas(16) const unsigned char name[]` (the file's bytes) and
    `const unsigned int name_len`; `name.h` declares both and adds, without including any
    TFLite Micro header:
    - `NAME_OP_COUNT` and `NAME_ADD_OPS(resolver)`, which registers exactly the ops the model
      uses on a `tflite::MicroMutableOpResolver<NAME_OP_COUNT>`,
    - `NAME_ARENA_SIZE`, an estimate of the tensor arena (see `arena_estimate` for how exact
      it is), and a comment listing ops and tensors.

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

    Returns:
        A `MicroResult` with the paths, ops and arena estimate.

    Raises:
        TypeError: If `name` is not a string or `out_dir` not a path.
        ValueError: If `name` is not a C identifier or is a C/C++ keyword (`int`, `main`,
            ...), the data is not a TFLite file, or the model needs an op TFLite Micro does
            not have (sparse-encoded weights).
        FileNotFoundError: If a model path does not exist.
        OSError: If `out_dir` is a file or cannot be written (`NotADirectoryError`,
            `PermissionError`), checked before anything is written.
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
    ops = tuple(dict.fromkeys(info.ops))
    calls = tuple(_resolver_call(op) for op in ops)
    arena = arena_estimate(info)
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

// Tensor arena estimate: {arena.activations} B activations (greedy plan of the
// non-constant tensors, as TFLite Micro's planner does) + ~{arena.persistent} B persistent
// structs (heuristic, fitted on a 64-bit host). Kernel scratch buffers (e.g. CMSIS-NN
// im2col) are not included: leave headroom, measure with tflite::RecordingMicroInterpreter.
#define {macro}_ARENA_SIZE {arena.total}

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
    )
