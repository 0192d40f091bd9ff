"""Budget-driven vs uniform channel pruning of MLPerf-Tiny-style models, measured in TFLite Micro.

Usage: `python benchmarks/mcu.py [--train N] [--epochs N] [--tune-epochs N] [--seeds N]
[--models ds_cnn,resnet8,mobilenet] [--budgets 0.5,0.35,0.25 | --budgets
ds_cnn=0.5,0.35;mobilenet=0.6] [--step F] [--tiny] [--criterion l1|loss|taylor]
[--methods budget,uniform] [--val N] [--no-write]`

Three MLPerf Tiny reference architectures, built here at small size and trained on
Fashion-MNIST (offline; not their own data sets: keyword spotting, CIFAR-10 and Visual Wake
Words are not available here):
- DS-CNN (keyword spotting): Conv64 stride 2, four depthwise-separable blocks (64), average
  pool, Dense; on 28x28x1 images.
- ResNet-8 (image classification): Conv16, three residual stages (16, 32/2, 64/2) with 1x1
  projections, average pool, Dense; on 28x28x1.
- MobileNetV1, width 0.25 (visual wake words): `keras.applications.MobileNet(alpha=0.25,
  weights=None, include_top=False, pooling="avg")` + Dense; on 32x32x1 (images zero-padded);
  its BatchNormalization momentum set to 0.9 as in the other two (Keras' 0.99 left the
  moving statistics of pruned models stale after one fine-tuning epoch: near chance).
Each is trained on a subset (`--train` images, Adam + cosine decay, epochs and learning rate
per model in `RECIPES`; the trained model is cached in `$TFPRUNE_CACHE` or
`~/.cache/tfprune` under a name that says the recipe), exported to int8, and pruned to
budgets that are fractions of its int8 flash AND of its TFLite Micro arena (per model in
`BUDGETS`, or `--budgets`):
- budget-driven: `tfprune.fit_budget` (`--criterion` importance per resource saved at the
  current widths, default L1; re-measured every step, arena confirmed in TFLite Micro,
  then channels given back while every limit holds and moved between groups; the
  least-pruned uniform model is returned instead when it keeps more channels in every
  group, or when `judge` (a quarter epoch of fine-tuning, then validation accuracy) scores
  it higher);
- uniform: `tfprune.prune_channels(ratio=r)` with the same ratio in every layer, `r` the
  smallest (1/64 steps) whose int8 file meets both limits (found on the width model,
  confirmed on the file).
Each pruned model is found once (the searches are deterministic), then fine-tuned `--seeds`
times from the same pruned weights with seeds 0, 1, ... (`--tune-epochs` on the same
subset, the same for both methods). Reported per model: accuracy of the fine-tuned Keras
model (mean and standard deviation over the seeds) on a validation split (`--val` training
images after the first `--train`, never trained on; used to choose between criteria) and
on the test set, budget - uniform on validation (difference of the means, and its
standard error), and, for the model fine-tuned with seed 0: int8 flash, TFLite Micro arena
(measured; estimate without tflite-micro), MACs, LiteRT latency (1 thread, XNNPACK, median
of 50 invokes), and whether each limit is met. Appends the table to benchmarks/RESULTS.md.
Run it from the repository root with `PYTHONPATH=.`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _bench import compile_classifier, fashion_mnist, machine
from _results import publish

import tfprune
from tfprune import budget as budget_lib
from tfprune.budget_search import Search, WidthModel

L = keras.layers
BATCH = 32
LR = 3e-3  # dense training's initial rate unless a recipe says otherwise


def _bn(x):
    # momentum 0.9: with a few hundred training steps, 0.99's moving statistics lag behind
    return L.BatchNormalization(momentum=0.9)(x)


def _bn_relu(x):
    return L.ReLU()(_bn(x))


def ds_cnn() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = _bn_relu(L.Conv2D(64, (5, 3), strides=2, padding="same")(inputs))
    for _ in range(4):
        x = _bn_relu(L.DepthwiseConv2D(3, padding="same")(x))
        x = _bn_relu(L.Conv2D(64, 1)(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x), name="ds_cnn")


def resnet8() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = _bn_relu(L.Conv2D(16, 3, padding="same")(inputs))
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        y = _bn_relu(L.Conv2D(filters, 3, strides=stride, padding="same")(x))
        y = _bn(L.Conv2D(filters, 3, padding="same")(y))
        if stride != 1:
            x = L.Conv2D(filters, 1, strides=stride)(x)
        x = L.ReLU()(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x), name="resnet8")


def mobilenet(bn_momentum: float | None = None) -> keras.Model:
    """MobileNetV1-0.25 on 32x32x1, with BatchNormalization momentum `bn_momentum` if given."""
    base = keras.applications.MobileNet(
        input_shape=(32, 32, 1), alpha=0.25, weights=None, include_top=False, pooling="avg"
    )  # one flat functional graph (not a nested model), as the other two
    model = keras.Model(base.input, L.Dense(10)(base.output), name="mobilenet_v1_025")
    if bn_momentum is None:
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = bn_momentum
    return keras.Model.from_config(config)


MODELS = {"ds_cnn": ds_cnn, "resnet8": resnet8, "mobilenet": mobilenet}


class Recipe(NamedTuple):
    """How one model is trained.

    Dense: `epochs`, Adam's initial rate `lr` (cosine decay to 0), `options` (keyword
    arguments of its `MODELS` builder). `tune_lr`: Adam's initial rate when fine-tuning
    every pruned model (both methods).
    """

    epochs: int = 4
    lr: float = LR
    options: tuple[tuple[str, object], ...] = ()
    tune_lr: float = 1e-3

    def tag(self) -> str:
        """What the dense model's cache file name says about the recipe beyond the epochs."""
        parts = [] if self.lr == LR else [f"lr{self.lr:g}"]
        return "".join(f"-{p}" for p in parts + [f"{k}{v}" for k, v in self.options])


RECIPES = {
    "ds_cnn": Recipe(),
    "resnet8": Recipe(),
    # Validation: 4 epochs, momentum 0.99: 0.737; 10 epochs, 0.9: 0.804 (6: 0.800, but
    # uniform 50 % then recovers to 0.597 in 1 epoch at 1e-3, from 10 epochs to 0.655).
    # Uniform 50 / 75 % of the 10-epoch model, 1 epoch at 3e-3: 0.717 / 0.577 (1e-3:
    # 0.655 / 0.424).
    "mobilenet": Recipe(epochs=10, options=(("bn_momentum", 0.9),), tune_lr=3e-3),
}
# Fractions of the dense int8 flash AND arena per model, the grid 50 / 35 / 25 % where a
# model can meet it. At one channel per group: DS-CNN 25.1 % of its flash, so 30 % instead
# of 25 %; MobileNetV1-0.25 36.2 % of its arena (TFLite Micro's per-op and per-tensor data
# at 32x32), so 60 / 50 / 40 %.
BUDGETS = {
    "ds_cnn": (0.5, 0.35, 0.3),
    "resnet8": (0.5, 0.35, 0.25),
    "mobilenet": (0.6, 0.5, 0.4),
}


def parse_budgets(text: str | None, models: list[str]) -> dict[str, tuple[float, ...]]:
    """Budget fractions per model from `--budgets`.

    Args:
        text: `None` (each model's `BUDGETS`), fractions for every model (`"0.5,0.35"`) or
            per model (`"ds_cnn=0.5,0.35;mobilenet=0.6"`; models not named get `BUDGETS`).
        models: The models run.

    Returns:
        `{model: fractions}` for every model in `models`.

    Raises:
        ValueError: For a fraction outside (0, 1] or a model not in `models`.
    """
    out = {name: BUDGETS[name] for name in models}
    if not text:
        return out
    for part in text.split(";"):
        name, _, fractions = part.rpartition("=")
        if name and name not in models:
            raise ValueError(f"--budgets names a model not run. Received: {part!r}")
        values = tuple(float(f) for f in fractions.split(","))
        if not all(0 < v <= 1 for v in values):
            raise ValueError(f"--budgets fractions must be in (0, 1]. Received: {part!r}")
        out.update({name: values} if name else dict.fromkeys(models, values))
    return out


def _fit(model, x, y, epochs: int, lr: float) -> keras.Model:
    compile_classifier(model, lr, max(1, epochs * (len(x) // BATCH)))
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return model


def _dense(name: str, x, y, args) -> keras.Model:
    """The trained dense model, from the cache when this configuration was trained before."""
    recipe = RECIPES[name]
    epochs = args.epochs or recipe.epochs
    root = os.environ.get("TFPRUNE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfprune"
    )
    path = os.path.join(root, f"mcu-{name}-{args.train}-{epochs}{recipe.tag()}.keras")
    if os.path.isfile(path):
        return keras.saving.load_model(path)
    keras.utils.set_random_seed(0)
    model = _fit(MODELS[name](**dict(recipe.options)), x, y, epochs, recipe.lr)
    os.makedirs(root, exist_ok=True)
    model.save(path)
    return model


def _accuracy(model, x, y) -> float:
    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def tune_seeds(small, x, y, evals, epochs: int, seeds: int, lr: float = 1e-3):
    """Fine-tunes copies of `small` with seeds 0..seeds-1; their accuracy on each of `evals`.

    Args:
        small: The pruned (shrunk) model; left unchanged.
        x: Training images.
        y: Their labels.
        evals: `(x, y)` pairs to evaluate on.
        epochs: Fine-tuning epochs (Adam, cosine decay to 0).
        seeds: How many fine-tuning runs.
        lr: Adam's initial rate.

    Returns:
        `(model fine-tuned with seed 0, accuracies)`, `accuracies[i][s]` on `evals[i]` after
        the run with seed `s`.
    """
    first, accuracies = None, [[] for _ in evals]
    for seed in range(seeds):
        model = keras.models.clone_model(small)
        model.set_weights(small.get_weights())
        keras.utils.set_random_seed(seed)
        _fit(model, x, y, epochs, lr)
        for acc, (xe, ye) in zip(accuracies, evals):
            acc.append(_accuracy(model, xe, ye))
        if first is None:
            first = model
    return first, accuracies


def mean_std(values) -> str:
    """`"0.812 ± 0.006"` (sample standard deviation), or `"0.812"` for one value."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def difference(a, b) -> str:
    """Mean of `a` minus mean of `b`, with its standard error when both have repeats."""
    text = f"{np.mean(a) - np.mean(b):+.4f}"
    if len(a) > 1 and len(b) > 1:
        se = np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
        text += f" ± {se:.4f}"
    return text


def _uniform(model, limits, x_cal, dense):
    """The smallest layer-scope ratio (1/64 steps) whose int8 file meets the limits.

    Starts from the smallest ratio that fits by `tfprune.budget_search.WidthModel` anchored
    to the dense file, then measures real files: 1/64 lower while the file fits, or 1/64
    higher until it does.
    """
    search = Search(WidthModel(tfprune.prune_channels(model, ratio=0.0)), limits.limits(), [1])
    search.anchor(dataclasses.asdict(dense))
    full = search.model.full
    ratio = next(
        (
            r / 64
            for r in range(64)
            if not search.excess(np.maximum(1, full - np.round(full * r / 64)).astype(np.int64))
        ),
        63 / 64,  # nothing fits: the thinnest is measured and reported as not met
    )
    best = None
    while True:  # from the model's guess: down while the file fits, else up until it does
        pruned = tfprune.prune_channels(model, ratio=ratio)
        res = budget_lib.measure(pruned, x_cal, arena="auto", litert_check=False)
        fits = res.flash <= limits.flash and res.arena <= limits.arena
        if fits:
            best = (pruned, ratio)
        elif best is not None:
            return best
        if (fits and ratio <= 0) or (not fits and ratio >= 63 / 64):
            return best or (pruned, ratio)
        ratio += -1 / 64 if fits else 1 / 64


def _row(name, method, model, x_cal, accuracies, limits, note="", versus=""):
    try:
        res = budget_lib.measure(model, x_cal, latency=True, arena="auto")
        latency = f"{res.latency * 1e3:.3f}"
    except RuntimeError:  # LiteRT's XNNPACK refuses the file: measured, not timed
        res = budget_lib.measure(model, x_cal, arena="auto", litert_check=False)
        latency, note = "-", f"{note}; LiteRT (XNNPACK) cannot run the file".lstrip("; ")
    met = (res.flash <= limits.flash, res.arena <= limits.arena)
    accuracy = " | ".join(mean_std(a) for a in accuracies)
    return (
        f"| {name} | {method} | {accuracy} | {versus} | {res.flash:,} | "
        f"{res.arena:,} | {res.macs:,} | {latency} | "
        f"{'yes' if met[0] else 'NO'} / {'yes' if met[1] else 'NO'} | {note} |"
    )


def judge(x, y, evals, lr: float):
    """`fit_budget`'s `compare_uniform` judge: a quarter epoch of fine-tuning (2,000 images,
    seed 0), then the accuracy on the validation split (`evals[0]`)."""

    def score(small: keras.Model) -> float:
        keras.utils.set_random_seed(0)
        _fit(small, x[:2000], y[:2000], 1, lr)
        return _accuracy(small, *evals[0])

    return score


def _budget_model(model, xt, y_train, limits, args, evals=None, lr=1e-3):
    """`(pruned model, note)` from `tfprune.fit_budget`, or `(None, its error)`."""
    options = {} if args.min_keep is None else {"min_keep": args.min_keep}
    if evals is not None:
        options["compare_uniform"] = judge(xt, y_train, evals, lr)
    try:
        small, report = tfprune.fit_budget(
            model,
            limits,
            (xt[:512], y_train[:512]),
            criterion=args.criterion,
            step=args.step,
            verbose=False,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            **options,
        )
    except ValueError as e:
        return None, str(e)
    note = (
        f"{args.criterion}, {report.iterations} steps, {report.given_back} given back, "
        f"{report.swapped} moved"
    )
    if report.uniform is not None:
        note += f"; the uniform model (ratio {report.uniform:.3f}) was better and is returned"
    return small, note


def _cell(label, model, xt, y_train, evals, limits, dense, args, recipe) -> list[str]:
    """The rows of one model @ budget: each method's pruned model, fine-tuned `--seeds` times."""
    found = {}
    if "budget" in args.methods:
        found["budget"] = _budget_model(model, xt, y_train, limits, args, evals, recipe.tune_lr)
    if "uniform" in args.methods:
        uniform, ratio = _uniform(model, limits, xt[:200], dense)
        found["uniform"] = tfprune.shrink(uniform), f"ratio {ratio:.3f}"
    tuned = {
        method: tune_seeds(small, xt, y_train, evals, args.tune_epochs, args.seeds, recipe.tune_lr)
        for method, (small, _) in found.items()
        if small is not None
    }
    rows = []
    for method, (small, note) in found.items():
        if small is None:
            rows.append(f"| {label} | {method} | - | - | - | - | - | - | - | unmeetable | {note} |")
            continue
        first, accuracies = tuned[method]
        versus = ""
        if method == "budget" and "uniform" in tuned:
            versus = difference(accuracies[0], tuned["uniform"][1][0])
        rows.append(_row(label, method, first, xt[:200], accuracies, limits, note, versus))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=8000, help="training images used")
    parser.add_argument("--test", type=int, default=2000, help="test images used")
    parser.add_argument(
        "--val", type=int, default=2000, help="validation images (training images after --train)"
    )
    parser.add_argument("--criterion", default="l1", help="fit_budget's criterion")
    parser.add_argument("--methods", default="budget,uniform")
    parser.add_argument(
        "--epochs", type=int, default=None, help="dense training epochs (default: RECIPES)"
    )
    parser.add_argument("--tune-epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning runs per pruned model")
    parser.add_argument("--step", type=float, default=0.5, help="fit_budget's step")
    parser.add_argument("--min-keep", type=float, default=None, help="fit_budget's min_keep")
    parser.add_argument("--models", default="ds_cnn,resnet8,mobilenet")
    parser.add_argument(
        "--budgets", default=None, help="fractions, for all models or per model (default: BUDGETS)"
    )
    parser.add_argument("--tiny", action="store_true", help="smoke run: 1,000 images, 1 epoch")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.tiny:
        args.train, args.test, args.epochs = 1000, 300, 1
    models = args.models.split(",")
    budgets = parse_budgets(args.budgets, models)
    keras.utils.set_random_seed(0)
    start = time.time()
    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    x_val, y_val = x_train[args.train : args.train + args.val], y_train[args.train :][: args.val]
    x_train, y_train = x_train[: args.train], y_train[: args.train]
    x_test, y_test = x_test[: args.test], y_test[: args.test]
    rows = []
    for name in models:
        pad = (MODELS[name]().inputs[0].shape[1] - 28) // 2
        xt, xv, xs = (
            np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0))) for a in (x_train, x_val, x_test)
        )
        evals = [(xv, y_val), (xs, y_test)]
        x_cal = xt[:200]
        model = _dense(name, xt, y_train, args)
        dense = budget_lib.measure(model, x_cal, arena="auto")
        limits0 = tfprune.Budget(flash=dense.flash, arena=dense.arena)
        accuracies = [[_accuracy(model, x, y)] for x, y in evals]
        rows.append(_row(name, "dense", model, x_cal, accuracies, limits0))
        print(rows[-1], flush=True)
        for fraction in budgets[name]:
            limits = tfprune.Budget(
                flash=int(dense.flash * fraction), arena=int(dense.arena * fraction)
            )
            label = f"{name} @ {fraction:.0%}"
            cell = _cell(label, model, xt, y_train, evals, limits, dense, args, RECIPES[name])
            for row in cell:
                rows.append(row)
                print(row, flush=True)
    recipes = "; ".join(
        f"{n} {args.epochs or RECIPES[n].epochs} epochs, Adam {RECIPES[n].lr:g}"
        + "".join(f", {k}={v}" for k, v in RECIPES[n].options)
        + f", fine-tuning Adam {RECIPES[n].tune_lr:g}"
        for n in models
    )
    lines = [
        f"## MCU budgets: budget-driven vs uniform pruning ({datetime.date.today()})",
        "",
        f"Command: `python benchmarks/{' '.join([os.path.basename(__file__), *sys.argv[1:]])}`",
        f"Machine: {machine()}. Run time {time.time() - start:.0f} s.",
        f"Fashion-MNIST subset: {args.train} training / {args.test} test images (not the "
        f"MLPerf Tiny data sets); training ({recipes}; cosine decay), fine-tuning "
        f"{args.tune_epochs} epoch(s) for every pruned model, {args.seeds} time(s) from the "
        "same pruned weights (seeds 0, 1, ...; mean ± sample standard deviation). "
        "Budgets are fractions of the dense int8 flash AND TFLite Micro arena. Accuracy: the "
        f"Keras model (float) on {args.val} validation images (training images after the "
        "first --train) and on the test images; budget - uniform: validation, difference of "
        "the means ± its standard error; flash: int8 file bytes; arena: TFLite "
        "Micro measured (64-bit host) when tflite-micro is installed; latency: LiteRT, 1 "
        "thread, median of 50 invokes (the seed-0 model).",
        "",
        "| model @ budget | method | val accuracy | test accuracy | budget - uniform (val) "
        "| flash B | arena B | MACs | latency ms | flash / arena met | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    publish(lines, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
