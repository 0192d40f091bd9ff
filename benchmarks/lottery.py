"""Lottery tickets: IMP winning tickets vs random reinitialisation vs random masks.

LeNet-300-100 on Fashion-MNIST and an MLP on MNIST-1D, iterative magnitude pruning with
20 % of the remaining weights per round (10 % for the output layer), rewinding to
initialisation (Frankle & Carbin, 2019). For every pruning level the same training is run
for three variants:

- ticket: IMP masks, weights rewound to the original initialisation;
- reinit: the same masks, a fresh random initialisation per level;
- random mask: random masks with the same per-layer counts, the original initialisation.

Prints a markdown table (test accuracy at the end of training, and the early-stopping
step = optimizer step of the best validation loss, measured once per epoch), appends it
to benchmarks/RESULTS.md and saves benchmarks/lottery.png.

Usage: python benchmarks/lottery.py [--tiny] [--no-results]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _results import append_results

import tfprune.data
from tfprune import lottery

HERE = Path(__file__).resolve().parent


def _lenet(input_dim: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="out"),
        ]
    )


def _data(name: str, n_train: int, n_val: int):
    if name == "fashion_mnist":
        (x, y), (xt, yt) = tfprune.data.fashion_mnist()
    else:
        (x, y), (xt, yt) = tfprune.data.mnist1d()
    x = x.reshape(len(x), -1).astype("float32")
    xt = xt.reshape(len(xt), -1).astype("float32")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    train, val = idx[:n_train], idx[n_train : n_train + n_val]
    return (x[train], y[train]), (x[val], y[val]), (xt, yt)


def _run(name: str, cfg: dict, workdir: Path) -> dict[str, list[dict]]:
    (x, y), val, test = _data(name, cfg["n_train"], cfg["n_val"])
    common = dict(
        optimizer=keras.optimizers.Adam(cfg["lr"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        rounds=cfg["rounds"],
        rate=0.2,
        output_rate=0.1,
        rewind="init",
        seed=0,
        verbose=1,
    )
    fit = dict(
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        validation_data=val,
        test_data=test,
        shuffle=True,
    )
    histories = {}
    ticket_dir = workdir / f"{name}_ticket"
    for variant, control in (
        ("ticket", None),
        ("reinit", "reinit"),
        ("random mask", "random_mask"),
    ):
        print(f"== {name}: {variant}", flush=True)
        search = lottery.LotterySearch(
            _lenet(x.shape[1], seed=1),
            control=control,
            reference=None if control is None else ticket_dir,
            directory=workdir / f"{name}_{control or 'ticket'}",
            **common,
        )
        search.run(x, y, **fit)
        histories[variant] = search.history
    return histories


def _table(name: str, histories: dict[str, list[dict]]) -> str:
    variants = list(histories)
    head = "| round | weights remaining | " + " | ".join(
        f"{v}: test acc | {v}: early-stop step" for v in variants
    )
    lines = [head + " |", "|" + " --- |" * (2 + 2 * len(variants))]
    for r, rec in enumerate(histories["ticket"]):
        cells = [str(r), f"{100 * rec['remaining_total']:.1f} %"]
        for v in variants:
            h = histories[v][r]
            cells += [f"{h['test']['accuracy']:.4f}", str(h["early_stop_step"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(all_histories: dict[str, dict[str, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(all_histories), figsize=(6 * len(all_histories), 8))
    axes = np.asarray(axes).reshape(2, -1)
    for col, (name, histories) in enumerate(all_histories.items()):
        for variant, hist in histories.items():
            frac = [100 * h["remaining_total"] for h in hist]
            axes[0, col].plot(frac, [h["test"]["accuracy"] for h in hist], "o-", label=variant)
            axes[1, col].plot(frac, [h["early_stop_step"] for h in hist], "o-", label=variant)
        for row, label in enumerate(("test accuracy", "early-stopping step")):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("weights remaining (%)")
            ax.set_ylabel(label)
            ax.set_title(name)
            ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--no-results", action="store_true", help="don't touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.tiny:
        configs = {
            "mnist1d": dict(n_train=1000, n_val=500, epochs=2, batch_size=100, lr=1.2e-3, rounds=2),
        }
    else:
        configs = {
            "fashion_mnist": dict(
                n_train=10000, n_val=5000, epochs=12, batch_size=100, lr=1.2e-3, rounds=14
            ),
            "mnist1d": dict(
                n_train=3500, n_val=500, epochs=30, batch_size=100, lr=1.2e-3, rounds=14
            ),
        }
    t0 = time.perf_counter()
    all_histories = {}
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs.items():
            all_histories[name] = _run(name, cfg, Path(tmp))
            desc = ", ".join(f"{k}={v}" for k, v in cfg.items())
            tables.append(
                f"### {name} (LeNet-300-100 MLP, {desc})\n\n{_table(name, all_histories[name])}"
            )
    minutes = (time.perf_counter() - t0) / 60
    png = Path(tempfile.gettempdir()) / "lottery_tiny.png" if args.tiny else HERE / "lottery.png"
    _plot(all_histories, png)
    cmd = "python benchmarks/lottery.py" + (" --tiny" if args.tiny else "")
    section = (
        "\n## Lottery tickets: IMP vs random reinit vs random masks (benchmarks/lottery.py)\n\n"
        f"Command: `{cmd}`. Machine: 2-core CPU, no GPU (shared with other jobs). "
        f"Date: {datetime.date.today()}. Runtime: {minutes:.1f} min. "
        "Adam, 20 % of remaining weights pruned per round (10 % output layer), rewinding to "
        "initialisation, layer scope, seed 0. Training subsets and epochs per round as "
        "listed; test accuracy at the end of each round's training on the full test set; "
        "early-stop step = optimizer step (within the round) of the best validation loss, "
        f"checked once per epoch. Plot: `{png if args.tiny else 'benchmarks/' + png.name}`.\n\n"
        + "\n\n".join(tables)
        + "\n"
    )
    print(section)
    if not args.no_results and not args.tiny:
        append_results(section)


if __name__ == "__main__":
    sys.exit(main())
