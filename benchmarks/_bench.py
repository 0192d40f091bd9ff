"""Shared by the benchmarks: training setup, the machine, step times, interleaved latency.

Latency on a shared CPU is noisy, and an int8 number means little without the CPU it ran
on: XNNPACK picks AVX2, AVX-512 VNNI or AMX kernels at run time, and a core with AMX runs an
int8 convolution ten times faster than one with AVX2 only. So every table says which CPU
features were present, and files compared in one table are timed in interleaved rounds.
"""

from __future__ import annotations

import os
import platform
import time

import keras

import tfprune
from tfprune import data

# /proc/cpuinfo flag -> name, for the instruction sets XNNPACK's int8 kernels use on x86.
_INT8_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
}


def compile_classifier(model: keras.Model, lr: float, steps: int) -> keras.Model:
    """Compiles for integer labels and logits: Adam, cosine decay from `lr` to 0.

    Args:
        model: The model to compile (in place).
        lr: Initial learning rate.
        steps: Optimizer steps over which the rate decays to 0 (the whole run).

    Returns:
        `model`, compiled.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fashion_mnist(tiny: bool = False, directory: str | None = None):
    """Fashion-MNIST `(x_train, y_train), (x_test, y_test)`, or a subset for smoke runs.

    Args:
        tiny: Keep only the first 2,000 training and 500 test images.
        directory: Folder with the four IDX files (default: `tfprune.data`'s search).

    Returns:
        The two splits.

    Raises:
        FileNotFoundError: If the files are missing (the message says how to get them).
    """
    (x_train, y_train), (x_test, y_test) = data.fashion_mnist(directory)
    if tiny:
        return (x_train[:2000], y_train[:2000]), (x_test[:500], y_test[:500])
    return (x_train, y_train), (x_test, y_test)


def batch_timer(k=keras):
    """A callback that records when each training batch of `fit` begins.

    The differences of consecutive `times` are training-step times inside `fit`: every
    callback included, no per-`fit` setup.

    Args:
        k: The Keras module whose callback class to use (`keras` or `tf_keras`).

    Returns:
        The callback; its `times` list grows by one `time.perf_counter()` per batch.
    """

    class BatchTimer(k.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            self.times.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            if k is keras and keras.backend.backend() == "jax":  # JAX dispatches steps
                keras.tree.map_structure(keras.ops.convert_to_numpy, logs)  # async: wait

    return BatchTimer()


def machine() -> str:
    """One line describing this CPU for RESULTS.md: model, cores, int8 features, load.

    Returns:
        E.g. "AMD EPYC, 2 cores (AVX2; no AVX-512 VNNI, AMX-INT8), load average 6.1".
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    present = [name for flag, name in _INT8_FLAGS.items() if flag in flags]
    absent = [name for flag, name in _INT8_FLAGS.items() if flag not in flags]
    features = "; ".join(
        part for part in (", ".join(present), "no " + ", ".join(absent) if absent else "") if part
    )
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{model}, {os.cpu_count()} cores ({features}){load}"


def latencies(
    paths: list[str], threads: int = 1, rounds: int = 5, runs: int = 300, warmup: int = 30
) -> list[float]:
    """Median invoke time of each file, best of interleaved rounds, in seconds.

    Each round times every file once with `tfprune.export.latency` (median of `runs`
    invocations); files take turns, so a burst of load from other processes hits all of them
    alike instead of one. A file's result is its lowest round median.

    Args:
        paths: .tflite files.
        threads: Interpreter threads.
        rounds: Rounds over all files.
        runs: Timed invocations per file and round.
        warmup: Untimed invocations first, per file and round.

    Returns:
        One time per file, in the order of `paths`.
    """
    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, path in enumerate(paths):
            t = tfprune.export.latency(path, threads=threads, runs=runs, warmup=warmup).median
            best[i] = min(best[i], t)
    return best
