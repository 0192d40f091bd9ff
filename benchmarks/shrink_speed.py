"""Time graph analysis + shrink of keras.applications.MobileNetV2(weights=None) on one core.

Usage: `python benchmarks/shrink_speed.py [--no-write]`

The model is channel-pruned 50 % (layer scope, L1) once, untimed; then
`tfprune.graph.channel_groups` and `tfprune.shrink` are timed separately (median of 5 runs,
TensorFlow limited to one thread). The baseline is a plain copy of the same model with
`keras.models.clone_model` + `tfprune.surgery.clone_layer`, the rebuild every shrink pays,
measured in the same process. Appends a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import tensorflow as tf
from _results import publish

import tfprune


def _median_seconds(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.applications.MobileNetV2(weights=None)
    pruned = tfprune.prune_channels(model, ratio=0.5, criterion="l1")
    t_graph = _median_seconds(lambda: tfprune.graph.channel_groups(pruned))
    t_shrink = _median_seconds(lambda: tfprune.shrink(pruned))
    t_copy = _median_seconds(
        lambda: keras.models.clone_model(
            pruned, clone_function=tfprune.surgery.clone_layer, recursive=True
        )
    )
    small = tfprune.shrink(pruned)
    groups = tfprune.graph.channel_groups(pruned)
    rows = [
        ("graph analysis (`channel_groups`)", t_graph),
        ("shrink (graph + rebuild + slicing)", t_shrink),
        ("baseline: plain `clone_model` copy", t_copy),
    ]
    lines = [
        "| step | median time (s) | vs plain copy |",
        "| --- | --- | --- |",
        *[f"| {name} | {t:.3f} | {t / t_copy:.2f}x |" for name, t in rows],
    ]
    publish(
        [
            "## Shrink speed: MobileNetV2 (benchmarks/shrink_speed.py)",
            "",
            "Command: `python benchmarks/shrink_speed.py`. Machine: 2-core CPU, no GPU "
            f"(shared with other jobs), TensorFlow limited to 1 thread. Date: "
            f"{datetime.date.today().isoformat()}. `keras.applications.MobileNetV2("
            f"weights=None)` (224x224, {model.count_params():,} params, {len(groups)} channel "
            f"groups, {sum(g.prunable for g in groups)} prunable), 50 % of channels zeroed "
            f"per group (L1); shrunk to {small.count_params():,} params. Median of 5 runs. "
            "Target: graph analysis + shrink well under 2 s.",
            "",
            *lines,
            "",
        ],
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
