"""How well `tfprune.budget_search.WidthModel` predicts the TFLite Micro arena of thinner models.

Usage: `python benchmarks/arena_model.py [--ratios 0.25,0.5,0.75] [--no-write]`

DS-CNN and ResNet-8 as built in `benchmarks/mcu.py` (untrained: the arena depends on the
widths only), pruned uniformly (`tfprune.prune_channels(ratio=r)`), converted to int8 and
run in TFLite Micro. The width model is anchored to the measured arena at full width (an
offset, as `fit_budget` does after every step) and predicts the others from the live
activation bytes alone (the model before) and with `WidthModel.arena` (the greedy planner's
peak and TFLite Micro's 8 B per convolution output channel: requantization multiplier and
shift). Appends the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from _bench import machine
from _results import publish
from mcu import MODELS

import tfprune
from tfprune import budget as budget_lib
from tfprune.budget_search import WidthModel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.25,0.5,0.75")
    parser.add_argument("--models", default="ds_cnn,resnet8")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    start = time.time()
    x = np.random.default_rng(0).uniform(0, 1, (16, 28, 28, 1)).astype("float32")
    rows = []
    for name in args.models.split(","):
        model = MODELS[name]()
        wm = WidthModel(tfprune.prune_channels(model, ratio=0.0))
        full = wm.full
        base = None
        for ratio in [0.0, *(float(r) for r in args.ratios.split(","))]:
            pruned = tfprune.prune_channels(model, ratio=ratio)
            arena = budget_lib.measure(pruned, x, arena="tflm", litert_check=False).arena
            w = np.maximum(1, full - np.round(full * ratio)).astype(np.int64)
            live, total = float(wm.live(w).max()), float(wm.arena(w).max())
            if base is None:
                base = (arena - live, arena - total)
            old, new = live + base[0], total + base[1]
            rows.append(
                f"| {name} | {ratio:.2f} | {int(w.sum())} | {arena:,} | {old:,.0f} | "
                f"{old - arena:+,.0f} | {new:,.0f} | {new - arena:+,.0f} |"
            )
            print(rows[-1], flush=True)
    lines = [
        f"## Arena width model against TFLite Micro ({datetime.date.today()})",
        "",
        f"Command: `python benchmarks/{' '.join([os.path.basename(__file__), *sys.argv[1:]])}`",
        f"Machine: {machine()}. Run time {time.time() - start:.0f} s.",
        "Uniformly pruned int8 models (untrained), arena measured in TFLite Micro (64-bit "
        "host); predictions anchored to the measurement at ratio 0: live activation bytes "
        "only (before), and `WidthModel.arena` (planner peak + 8 B per convolution output "
        "channel).",
        "",
        "| model | ratio | channels | TFLM arena B | live only B | error | WidthModel.arena B "
        "| error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    publish(lines, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
