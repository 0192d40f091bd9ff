"""Run a .tflite file in the real TensorFlow Lite Micro interpreter, each run in a subprocess.

Needs the `tflite-micro` package (`pip install "tfprune[micro]"`). The arena a file needs is
read from TFLite Micro's `RecordingMicroAllocator` (what the interpreter actually allocated
on this 64-bit host), then confirmed by a second run with exactly that arena. Outputs are
compared with LiteRT's reference kernels (`OpResolverType.BUILTIN_REF`): TFLite Micro's
convolution kernels match them bit for bit; its per-channel int8 FULLY_CONNECTED kernel
differs by one int8 step on a few outputs (11 of 3,000 outputs of a two-layer MLP measured
here; LiteRT's optimized builtin kernels differed from TFLite Micro on 1 of the 3,000), so
`MicroRun.max_diff` reports the worst difference. LiteRT's default XNNPACK kernels round
differently again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np

from tfprune.export import _runtime
from tfprune.export._io import read_model

__all__ = ["MicroRun", "available", "run"]

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tflm_worker.py")
_RECORD = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


@dataclasses.dataclass(frozen=True)
class MicroRun:
    """What one file did in the TFLite Micro interpreter.

    Attributes:
        arena: The smallest arena (a multiple of 16 bytes) with which the file allocated and
            ran: TFLite Micro's recorded total, or a few bytes more when the planner's
            temporary scratch space needed it (64-bit host).
        recorded: Bytes the `RecordingMicroAllocator` recorded (its total).
        head: The non-persistent part of `arena` (activations, planned by TFLite Micro's
            GreedyMemoryPlanner).
        tail: The persistent part (tensor and node structs, kernel op data).
        examples: Examples run.
        max_diff: Largest absolute difference between TFLite Micro's raw outputs and LiteRT's
            reference kernels (in output units: int8 steps for an int8 file), or `None`
            when no data was compared.
        outputs: TFLite Micro's raw outputs on the examples (the output tensor's dtype).
    """

    arena: int
    recorded: int
    head: int
    tail: int
    examples: int
    max_diff: float | None
    outputs: np.ndarray

    @property
    def exact(self) -> bool | None:
        """Whether TFLite Micro equals LiteRT's reference kernels on every output."""
        return None if self.max_diff is None else self.max_diff == 0

    def format(self) -> str:
        """One line: the arena and the comparison with LiteRT."""
        line = (
            f"TFLite Micro arena {self.arena:,} B ({self.head:,} activations + {self.tail:,} "
            "persistent, measured)"
        )
        if self.max_diff is not None:
            line += f"; outputs on {self.examples} examples " + (
                "equal LiteRT's reference kernels"
                if self.exact
                else f"differ from LiteRT's reference kernels by up to {self.max_diff:g}"
            )
        return line


def available() -> bool:
    """Whether the `tflite-micro` package is installed."""
    return importlib.util.find_spec("tflite_micro") is not None


def _require() -> None:
    if not available():
        raise ImportError(
            "Running a file in TFLite Micro needs the `tflite-micro` package. Install it with "
            "`pip install 'tfprune[micro]'` (or `pip install tflite-micro`), or use "
            "`tfprune.export.arena_estimate` for an estimate."
        )


def _invoke(
    data: bytes, x: np.ndarray, arena_size: int, timeout: float, alt: int = 0
) -> tuple[dict, np.ndarray]:
    """One TFLite Micro run in a fresh process: (recorded allocations, raw outputs)."""
    with tempfile.TemporaryDirectory(prefix="tfprune-tflm-") as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npy")
        np.savez(src, model=np.frombuffer(data, np.uint8), arena_size=arena_size, x=x, alt=alt)
        try:
            proc = subprocess.run(
                [sys.executable, _WORKER, src, dst],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(
                f"TFLite Micro did not finish within {timeout:g} s (arena of {arena_size:,} "
                "bytes). Pass a larger `timeout` or fewer examples."
            ) from e
        if proc.returncode != 0:
            if proc.returncode < 0:
                sig = signal.Signals(-proc.returncode).name
                what = f"crashed with {sig}"
            else:
                last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                what = f"failed ({last[-1].strip() if last else f'exit status {proc.returncode}'})"
            raise RuntimeError(
                f"The TFLite Micro interpreter {what} with arena_size={arena_size:,} bytes. A "
                "crash or an allocation error usually means the arena is too small: call "
                "`tfprune.export.tflm.run` without `arena_size` to measure the arena it needs."
            )
        record = {k: int(v) for k, v in _RECORD.findall(proc.stderr)}
        if set(record) != {"total", "head", "tail"}:
            raise RuntimeError(
                "TFLite Micro ran but printed no allocation record; the installed tflite-micro "
                f"may be too old or too new. Its stderr ended with: {proc.stderr[-300:]!r}"
            )
        return record, np.load(dst, allow_pickle=False)


def _fits(data: bytes, x: np.ndarray, size: int, timeout: float, alt: int) -> bool:
    try:
        _invoke(data, x, size, timeout, alt)
    except RuntimeError as e:
        if "arena_size=" not in str(e):  # a timeout or a missing record: not about size
            raise
        return False
    return True


def _smallest_arena(
    data: bytes, x: np.ndarray, recorded: int, generous: int, timeout, alt: int
) -> int:
    """The smallest 16-byte multiple >= `recorded` with which the file allocates and runs.

    TFLite Micro's planner needs a little scratch space in the arena while it plans, which
    the final record does not include, so the recorded total is sometimes short (by up to
    22 % on small MLPs, whose activations are tiny). Found by doubling, then bisection.
    """
    if _fits(data, x, recorded, timeout, alt):
        return recorded
    low, step = recorded, 16  # low fails
    while recorded + step < generous and not _fits(data, x, recorded + step, timeout, alt):
        low, step = recorded + step, step * 2
    high = min(recorded + step, generous)  # fits
    while high - low > 16:
        mid = low + (high - low) // 32 * 16
        if _fits(data, x, mid, timeout, alt):
            high = mid
        else:
            low = mid
    return high


def run(
    model: str | os.PathLike | bytes,
    data=None,
    arena_size: int | None = None,
    timeout: float = 300.0,
    reference: str | os.PathLike | bytes | None = None,
    decompression_memory: int = 0,
) -> MicroRun:
    """Runs a .tflite file in TFLite Micro and measures the tensor arena it needs.

    Without `arena_size`, the file first runs with a generous arena and the
    `RecordingMicroAllocator`'s total is read; then the smallest arena (16-byte steps, from
    that total up) with which the file allocates and runs is found by running it, and a
    last run with exactly that arena confirms it (same outputs, no error). With
    `arena_size`, one run with that arena. Each run is its own subprocess, so an
    interpreter crash (TFLite Micro segfaults on some too-small arenas) becomes a
    `RuntimeError`.

    With `data`, the outputs are compared with LiteRT's reference kernels on the same
    quantized inputs (inputs are quantized with the file's scale and zero point).

    Args:
        model: Path to a .tflite file or its bytes (single input, single output).
        data: Examples `x` (float, quantized with the file's input parameters), `(x, y)`,
            or `None` (one all-zero input, no comparison).
        arena_size: Run with this arena instead of measuring it.
        timeout: Seconds one run may take.
        reference: The file LiteRT runs to quantize the inputs and to compare the outputs
            with (default: `model`). Give the uncompressed file for a LUT-compressed one,
            which LiteRT cannot load (`tfprune.export.compress_tflite`).
        decompression_memory: Bytes of alternate decompression memory given to TFLite Micro
            (`MicroInterpreter::SetDecompressionMemory`) for the decoded tensors of a
            LUT-compressed file, which then leave the arena. 0: none.

    Returns:
        A `MicroRun`.

    Raises:
        ImportError: If `tflite-micro` is not installed.
        ValueError: If `arena_size` is not a positive integer, `decompression_memory` not a
            non-negative integer, or `x` does not fit the file.
        RuntimeError: If the interpreter fails or crashes, or the confirming run differs.
    """
    _require()
    if arena_size is not None and (not isinstance(arena_size, int) or arena_size < 1):
        raise ValueError(
            f"Expected `arena_size` to be a positive integer (bytes) or None. "
            f"Received: arena_size={arena_size!r}"
        )
    if not isinstance(decompression_memory, int) or decompression_memory < 0:
        raise ValueError(
            "Expected `decompression_memory` to be a non-negative integer (bytes). "
            f"Received: decompression_memory={decompression_memory!r}"
        )
    data_bytes = read_model(model)
    reference_bytes = data_bytes if reference is None else read_model(reference)
    reference = _runtime.interpreter(reference_bytes, reference=True)
    inp = reference.get_input_details()[0]
    shape = tuple(int(d) for d in inp["shape"][1:])
    if data is None:
        x = np.zeros((1, *shape), inp["dtype"])
    else:
        raw = np.asarray(data[0] if isinstance(data, (tuple, list)) else data, np.float32)
        if tuple(raw.shape[1:]) != shape:
            raise ValueError(
                f"The data does not fit the model: examples of shape {tuple(raw.shape[1:])}, "
                f"the model expects {shape}. Received: x.shape={tuple(raw.shape)}"
            )
        x = _runtime.quantize(raw, inp)
    if arena_size is None:
        from tfprune.export.micro import arena_estimate

        generous = max(8 * arena_estimate(data_bytes).total, 1 << 18)
        alt = decompression_memory
        record, outputs = _invoke(data_bytes, x[:1], generous, timeout, alt)
        arena = _smallest_arena(data_bytes, x[:1], record["total"], generous, timeout, alt)
        record, again = _invoke(data_bytes, x, arena, timeout, alt)
        if not np.array_equal(outputs[:1], again[:1]):
            raise RuntimeError(
                f"TFLite Micro gave different outputs with an arena of {arena:,} bytes than "
                f"with {generous:,} bytes."
            )
        outputs = again
    else:
        arena = arena_size
        record, outputs = _invoke(data_bytes, x, arena_size, timeout, decompression_memory)
    max_diff = None
    if data is not None:
        out = reference.get_output_details()[0]
        expected = []
        for example in x:
            reference.set_tensor(inp["index"], example[None])
            reference.invoke()
            expected.append(reference.get_tensor(out["index"])[0])
        diff = np.abs(np.stack(expected).astype(np.float64) - outputs.astype(np.float64))
        max_diff = float(diff.max()) if diff.size else 0.0
    return MicroRun(
        arena=arena,
        recorded=record["total"],
        head=record["head"],
        tail=record["tail"],
        examples=len(x),
        max_diff=max_diff,
        outputs=outputs,
    )
