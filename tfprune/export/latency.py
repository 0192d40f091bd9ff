"""Measure how long a .tflite file takes to run in the LiteRT interpreter."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from tfprune.export import _runtime
from tfprune.export._io import read_model

__all__ = ["Latency", "latency"]


@dataclasses.dataclass(frozen=True)
class Latency:
    """Invoke times of one .tflite file, in seconds.

    Attributes:
        median: Median time of one `invoke()` (one batch, usually one example).
        mean: Mean time.
        min: Fastest run.
        threads: Interpreter threads.
        runs: Timed runs (after warm-up).
    """

    median: float
    mean: float
    min: float
    threads: int
    runs: int

    def format(self) -> str:
        """One line with the median and minimum in milliseconds."""
        return (
            f"median {self.median * 1e3:.3f} ms, min {self.min * 1e3:.3f} ms per invoke "
            f"({self.threads} thread{'s' if self.threads != 1 else ''}, {self.runs} runs)"
        )


def latency(
    model: str | os.PathLike | bytes,
    threads: int = 1,
    runs: int = 200,
    warmup: int = 20,
    xnnpack: bool = True,
) -> Latency:
    """Median `invoke()` time of a .tflite file in the LiteRT interpreter, after warm-up.

    Inputs are random values of the file's input dtype; the time covers `invoke()` only
    (not setting inputs or reading outputs). Timings depend on the machine and its load:
    compare files measured in the same process.

    Args:
        model: Path to a .tflite file or its bytes.
        threads: Interpreter threads (`num_threads`).
        runs: Timed invocations.
        warmup: Untimed invocations first (XNNPACK packs weights on the first run).
        xnnpack: Use LiteRT's default XNNPACK delegate (what apps get); `False` times the
            builtin kernels.

    Returns:
        A `Latency`; `.median` is in seconds.

    Raises:
        ValueError: If `threads`, `runs` or `warmup` is out of range.
        RuntimeError: If the interpreter cannot prepare or run the file.
    """
    for name, value, low in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(
                f"Expected `{name}` to be an integer >= {low}. Received: {name}={value!r}"
            )
    data = read_model(model)
    try:
        interp = _runtime.interpreter(data, threads=threads, xnnpack=xnnpack)
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(
            f"The LiteRT interpreter could not prepare the file: {' '.join(str(e).split())}"
        ) from e
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, d["shape"], endpoint=True).astype(dtype)
        else:
            value = rng.random(d["shape"]).astype(dtype)
        interp.set_tensor(d["index"], value)
    for _ in range(warmup):
        interp.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        interp.invoke()
        times[i] = time.perf_counter() - start
    return Latency(
        median=float(np.median(times)),
        mean=float(times.mean()),
        min=float(times.min()),
        threads=threads,
        runs=runs,
    )
