"""Training-step overhead of tfprune's wrapper and of tfmot's, and the memory they add.

Step time: for each model, four configurations train in interleaved repetitions of `fit`
in one process, on the same batches of 128: the Keras 3 dense model, its `tfprune.wrap`
copy (with `UpdateMasks`), the same architecture in tf_keras, and tfmot's
`prune_low_magnitude` of it (with `UpdatePruningStep`). Both libraries get the same schedule
object, 50 % sparsity updated every 100 steps from step 0. A step is the time between two
consecutive batches inside `fit`, so it includes every callback and no per-`fit` setup;
the table gives the median over all steps and the ratios pruned / dense.

Memory: each configuration trains for `--memory-steps` steps with a polynomial schedule
(real mask updates) in its own subprocess, which reports its peak resident set size
(VmHWM; Linux's `ru_maxrss` would carry this parent's peak into the child), so the peaks
do not mix. Pruning state per prunable weight is read from the
pruned model's non-trainable variables (tfprune masks are bool: one byte).

    python benchmarks/overhead.py            # 25 repetitions of 20 steps per configuration
    python benchmarks/overhead.py --quick    # smoke run, nothing written
    python benchmarks/overhead.py --backend jax --reps 10 --no-memory   # JAX or torch Keras

Runs on random data of the Fashion-MNIST shapes (timing does not depend on the values).
The tfmot columns need `pip install -e ".[tfmot]"`; without it, and on the JAX and PyTorch
backends (tfmot is TensorFlow-only), they are left out. `--backend` runs the script again in
a process with that `KERAS_BACKEND` (Keras fixes its backend at import).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _bench import batch_timer
from _models import cnn, lenet_300_100, tfmot_available, tfmot_prune
from _results import append_results

import tfprune

BATCH = 128
MODELS = {
    "cnn": ("Fashion-MNIST CNN Conv32-Conv64-Dense128", cnn, (28, 28, 1)),
    "lenet": ("LeNet-300-100", lenet_300_100, (784,)),
}
CONFIGS = ("dense", "tfprune", "tf_keras dense", "tfmot")


def _data(shape: tuple[int, ...], steps: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((steps * BATCH, *shape), dtype=np.float32)
    return x, rng.integers(0, 10, len(x))


def _schedule(polynomial: bool, steps: int, foreign: bool):
    """50 % sparsity, constant (updated every 100 steps) or reached by a polynomial decay.

    Args:
        polynomial: Polynomial decay from 0 over `steps` (update every 10 steps) instead of
            constant sparsity.
        steps: Training steps of the run.
        foreign: Build tfmot's schedule object (tfprune converts it), else tfprune's.

    Returns:
        The schedule.
    """
    if foreign:
        import tensorflow_model_optimization as tfmot

        lib = tfmot.sparsity.keras
        if polynomial:
            return lib.PolynomialDecay(0.0, 0.5, 0, steps // 10 * 10, frequency=10)
        return lib.ConstantSparsity(0.5, 0, frequency=100)
    if polynomial:
        return tfprune.schedules.PolynomialDecay(0.0, 0.5, 0, steps // 10 * 10, frequency=10)
    return tfprune.schedules.ConstantSparsity(0.5, 0, frequency=100)


def build(model: str, config: str, schedule) -> tuple[object, object, list]:
    """One configuration, compiled with Adam.

    Args:
        model: A key of `MODELS`.
        config: One of `CONFIGS`.
        schedule: The pruning schedule of the pruned configurations.

    Returns:
        `(model, keras_module, callbacks)`: the model, the Keras module it belongs to
        (`keras` or `tf_keras`) and the callbacks its training needs.
    """
    architecture = MODELS[model][1]
    if config in ("tf_keras dense", "tfmot"):
        import tensorflow_model_optimization as tfmot
        import tf_keras as k

        net, callbacks = architecture(k), []
        if config == "tfmot":
            net = tfmot_prune(net, schedule)
            callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    else:
        k, net, callbacks = keras, architecture(keras), []
        if config == "tfprune":
            net = tfprune.wrap(net, sparsity=schedule, exclude=["logits"])
            callbacks = [tfprune.callbacks.UpdateMasks()]
    net.compile(
        optimizer=k.optimizers.Adam(), loss=k.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return net, k, callbacks


def state_bytes(model) -> tuple[int, int]:
    """(bytes of pruning state, number of prunable weights) of a tfprune or tfmot model.

    Args:
        model: A `tfprune.wrap`-ped Keras 3 model or a tfmot-pruned tf_keras model.

    Returns:
        The two totals over its pruning wrappers.
    """
    state = prunable = 0
    for layer in model.layers:
        if isinstance(layer, tfprune.Prunable):
            weights = [t.variable for t in layer.targets]
        elif hasattr(layer, "pruning_vars"):  # tfmot's PruneLowMagnitude
            weights = [w for w, _, _ in layer.pruning_vars]
        else:
            continue
        state += sum(np.asarray(v).nbytes for v in layer.non_trainable_weights)
        prunable += sum(int(np.prod(w.shape)) for w in weights)
    return state, prunable


def measure_steps(model: str, configs: tuple[str, ...], reps: int, steps: int) -> dict:
    """Median seconds per training step of each configuration, interleaved in one process.

    Args:
        model: A key of `MODELS`.
        configs: The configurations to compare.
        reps: Repetitions (one `fit` call each per configuration).
        steps: Batches per repetition.

    Returns:
        `{config: seconds}` plus `{"<config> bytes": state bytes per prunable weight}` for
        the pruned configurations.
    """
    x, y = _data(MODELS[model][2], steps)
    schedule = _schedule(polynomial=False, steps=steps, foreign="tfmot" in configs)
    runs = {c: build(model, c, schedule) for c in configs}
    for net, _, callbacks in runs.values():  # trace, build, and set the masks (step 0)
        net.fit(x, y, batch_size=BATCH, verbose=0, shuffle=False, callbacks=callbacks)
    intervals: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(reps):
        for config, (net, k, callbacks) in runs.items():
            timer = batch_timer(k)
            net.fit(x, y, batch_size=BATCH, verbose=0, shuffle=False, callbacks=[timer, *callbacks])
            intervals[config].extend(np.diff(timer.times))
    result = {c: float(np.median(v)) for c, v in intervals.items()}
    for config in ("tfprune", "tfmot"):
        if config in runs:
            state, prunable = state_bytes(runs[config][0])
            result[f"{config} bytes"] = state / prunable
    return result


def _child(model: str, config: str, steps: int) -> None:
    """Trains one configuration for `steps` steps and prints its peak RSS as JSON."""
    x, y = _data(MODELS[model][2], steps)
    foreign = config in ("tf_keras dense", "tfmot")  # Keras 3 runs never import tfmot
    net, _, callbacks = build(model, config, _schedule(True, steps, foreign))
    net.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks)
    print("PEAK" + json.dumps({"peak_mib": _peak_rss_kib() / 1024}))


def _peak_rss_kib() -> int:
    """Peak resident set size of this process, in KiB.

    Linux's `ru_maxrss` carries the parent's peak over fork + exec, so a child started by a
    large parent would report the parent's peak; VmHWM belongs to the process's own memory
    map. Other systems fall back to `ru_maxrss`.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_memory(model: str, config: str, steps: int) -> float:
    """Peak resident memory (MiB) of a training run of one configuration, in a subprocess.

    Args:
        model: A key of `MODELS`.
        config: One of `CONFIGS`.
        steps: Training steps of the run.

    Returns:
        The child's peak RSS in MiB.

    Raises:
        RuntimeError: If the child fails.
    """
    env = dict(os.environ)
    if config in ("dense", "tfprune"):
        env.pop("TF_USE_LEGACY_KERAS", None)  # set by importing tfmot in this process
    command = [sys.executable, __file__, "--child", model, config, "--memory-steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in done.stdout.splitlines():
        if line.startswith("PEAK"):
            return json.loads(line[4:])["peak_mib"]
    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}"


def main(argv=None) -> None:
    """Measures, prints the two tables and appends them to RESULTS.md.

    Args:
        argv: Command-line arguments (default: `sys.argv[1:]`).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 5 steps")
    parser.add_argument("--memory-steps", type=int, default=200, help="steps of a memory run")
    parser.add_argument("--no-write", action="store_true", help="print only, no RESULTS.md")
    parser.add_argument(
        "--backend", choices=["tensorflow", "jax", "torch"], help="Keras backend to measure"
    )
    parser.add_argument("--reps", type=int, default=25, help="repetitions of 20 steps")
    parser.add_argument("--no-memory", action="store_true", help="step times only")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child, args.memory_steps)
        return
    backend = keras.backend.backend()
    if args.backend is not None and args.backend != backend:
        env = {**os.environ, "KERAS_BACKEND": args.backend}
        argv = sys.argv[1:] if argv is None else list(argv)
        subprocess.run([sys.executable, __file__, *argv], env=env, check=True)
        return
    reps, steps = (3, 5) if args.quick else (args.reps, 20)
    memory_steps = 20 if args.quick else args.memory_steps
    configs = CONFIGS if tfmot_available() and backend == "tensorflow" else CONFIGS[:2]
    step_lines = [
        "| model | Keras 3 dense (ms) | tfprune (ms) | tfprune / dense "
        "| tf_keras dense (ms) | tfmot (ms) | tfmot / tf_keras dense | tfmot / Keras 3 dense |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    memory_lines = [
        "| model | configuration | peak RSS (MiB) | vs its dense, MiB (ratio) "
        "| pruning state, bytes per prunable weight |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, (name, _, _) in MODELS.items():
        t = measure_steps(key, configs, reps, steps)
        cells = [f"{t['dense'] * 1e3:.2f}", f"{t['tfprune'] * 1e3:.2f}"]
        cells.append(_ratio(t["tfprune"], t["dense"]))
        if "tfmot" in t:
            cells += [f"{t['tf_keras dense'] * 1e3:.2f}", f"{t['tfmot'] * 1e3:.2f}"]
            cells += [_ratio(t["tfmot"], t["tf_keras dense"]), _ratio(t["tfmot"], t["dense"])]
        else:
            cells += ["n/a"] * 4
        step_lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if args.no_memory:
            print(step_lines[-1], flush=True)
            continue
        peaks = {  # median of 3 runs each
            c: float(np.median([measure_memory(key, c, memory_steps) for _ in range(3)]))
            for c in configs
        }
        for config in configs:
            dense = peaks["tf_keras dense" if config in ("tf_keras dense", "tfmot") else "dense"]
            state = f"{t[config + ' bytes']:.3f}" if config + " bytes" in t else "—"
            memory_lines.append(
                f"| {name} | {config} | {peaks[config]:.0f} | {peaks[config] - dense:+.1f} "
                f"({_ratio(peaks[config], dense)}) | {state} |"
            )
        print("\n".join(step_lines[-1:] + memory_lines[-len(configs) :]), flush=True)
    tables = "\n".join(step_lines)
    if not args.no_memory:
        tables += "\n\n" + "\n".join(memory_lines)
    print(tables)
    command = " ".join(["python benchmarks/overhead.py", *(sys.argv[1:] if argv is None else argv)])
    if not (args.quick or args.no_write):
        append_results(
            "\n## Training-step overhead and memory, tfprune vs tfmot (benchmarks/overhead.py)"
            f"\n\nCommand: `{command}`. Keras backend: {backend}. Machine: 2-core CPU, no "
            f"GPU. Date: "
            f"{datetime.date.today()}. Step time: batch {BATCH}, `fit` with each library's "
            f"callback, median over {reps} interleaved repetitions of {steps} steps (time "
            "between consecutive batches, callbacks included), default `compile` (no XLA); "
            "both libraries use one schedule object (50 %, updated every 100 steps). Peak RSS: "
            "one subprocess per configuration and run (median of 3 runs), "
            f"{memory_steps} training steps with a polynomial schedule to 50 % (mask update "
            "every 10 steps), peak RSS = VmHWM.\n\n" + tables + "\n"
        )


if __name__ == "__main__":
    main()
