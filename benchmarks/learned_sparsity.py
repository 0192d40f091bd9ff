"""Learned sparsity on Fashion-MNIST: L0 gates, group lasso and network slimming.

Usage: `python benchmarks/learned_sparsity.py [--only SECTION ...] [--tiny] [--no-write]`

Each method is compared, in one process, with its dense baseline and with plain magnitude
(L1) channel pruning of the dense model to exactly the same architecture (matched
parameter counts), fine-tuned for the same number of epochs:

- `l0`: LeNet-300-100 with L0 hard-concrete gates on the hidden units (Louizos et al.
  2018), trained from scratch; gates folded and closed units removed by `tfprune.shrink`.
- `group_lasso`: a LeNet-5-style CNN with group lasso on the filters of both convolutions
  (Wen et al. 2016) and the proximal step, SGD with momentum as in the paper.
- `slimming`: a VGG-style CNN with the L1 penalty on BatchNormalization gammas (Liu et al.
  2017), then 50 % and 70 % of the channels removed globally by |gamma|, fine-tuned, and
  exported to int8 TFLite (size and LiteRT latency, 1 thread).
- `overhead`: median training-step time of L0-gated LeNet-300-100 (channel and weight
  gates) over the dense model, interleaved in one process.

Fashion-MNIST: `apt-get install -y dataset-fashion-mnist`, or point
`TFPRUNE_FASHION_MNIST` at a directory with the four IDX files.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _bench import batch_timer, fashion_mnist
from _results import append_results

import tfprune
from tfprune import gates, regularizers

SECTIONS = ("l0", "group_lasso", "slimming", "overhead")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@dataclasses.dataclass
class Budget:
    """Epochs of each phase (the same for a method and its magnitude control)."""

    dense: int
    sparse: int
    tune: int


def _train(model, x, y, epochs, optimizer, callbacks=(), batch_size=100) -> keras.Model:
    model.compile(optimizer=optimizer, loss=LOSS)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def _accuracy(model, x, y) -> float:
    logits = model.predict(x, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def _stats(model):
    return tfprune.summary(model, print_fn=None)


def _widths(model, attr: str) -> list[int]:
    return [
        getattr(layer, attr)
        for layer in model.layers
        if hasattr(layer, attr) and layer.name != "logits"
    ]


def _without_regularizers(model: keras.Model) -> keras.Model:
    """A copy with the same weights and no kernel/gamma regularizers (for fine-tuning)."""

    def clone(layer):
        config = layer.get_config()
        for key in ("kernel_regularizer", "gamma_regularizer"):
            if key in config:
                config[key] = None
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _matched_magnitude(dense: keras.Model, small: keras.Model, attr: str) -> keras.Model:
    """Dense model L1-channel-pruned to exactly `small`'s widths (layer scope), shrunk."""
    ratios = {
        layer.name: 1.0 - getattr(small.get_layer(layer.name), attr) / getattr(layer, attr)
        for layer in dense.layers
        if hasattr(layer, attr) and layer.name != "logits"
    }
    pruned = tfprune.prune_channels(dense, ratio=0.0, criterion="l1", ratios=ratios)
    return tfprune.shrink(pruned)


def _row(name, model, x, y, base, attr, note="") -> dict:
    stats = _stats(model)
    acc = _accuracy(model, x, y)
    return {
        "model": name,
        "widths": "-".join(str(w) for w in _widths(model, attr)),
        "params": stats.params,
        "macs": stats.macs,
        "removed": 1.0 - stats.macs / base["macs"] if base else 0.0,
        "acc": acc,
        "delta": 100.0 * (acc - base["acc"]) if base else 0.0,
        "note": note,
    }


def _table(rows: list[dict], width_label: str) -> str:
    head = "params | MACs | MACs removed | test acc | vs dense (pt) | note"
    lines = [f"| model | {width_label} | {head} |", "| --- " * 8 + "|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['widths']} | {r['params']:,} | {r['macs']:,} | "
            f"{r['removed']:.1%} | {r['acc']:.4f} | {r['delta']:+.2f} | {r['note']} |"
        )
    return "\n".join(lines)


def _verdict(rows: list[dict], method_rows: list[str]) -> list[str]:
    out = []
    for r in rows:
        if r["model"] in method_rows:
            macs_ok, acc_ok = r["removed"] >= 0.5, r["delta"] >= -1.0
            out.append(
                f"- {r['model']}: {r['removed']:.1%} fewer MACs (target >= 50 %: "
                f"{'met' if macs_ok else 'missed'}), {r['delta']:+.2f} points vs dense "
                f"(target >= -1: {'met' if acc_ok else 'missed'})."
            )
    return out


# --- LeNet-300-100 with L0 gates ------------------------------------------------------


def lenet300() -> keras.Model:
    """LeNet-300-100: 784-300-100-10, ReLU."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(300, activation="relu", name="fc0")(h)
    h = keras.layers.Dense(100, activation="relu", name="fc1")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="lenet300")


def l0_gated(num_examples: int, lam_per_weight: float) -> keras.Model:
    """LeNet-300-100 with an L0 gate on every hidden unit.

    Each gate's lambda is `lam_per_weight` times the number of weights it switches off (the
    unit's fan-in), as the reference implementation counts a gate's weights.
    """
    model = lenet300()
    return tfprune.wrap(
        model,
        sparsity=None,
        granularity="channel",
        gate={
            "fc0": gates.L0(lam_per_weight * 784, num_examples, drop_rate=0.5, seed=0),
            "fc1": gates.L0(lam_per_weight * 300, num_examples, drop_rate=0.5, seed=1),
        },
    )


def section_l0(train, test, budget: Budget, lam: float) -> str:
    (x, y), (xt, yt) = train, test
    keras.utils.set_random_seed(0)
    dense = _train(lenet300(), x, y, budget.dense, keras.optimizers.Adam(1e-3))
    base = _row("LeNet-300-100 dense", dense, xt, yt, None, "units")
    keras.utils.set_random_seed(0)
    gated = _train(l0_gated(len(x), lam), x, y, budget.sparse, keras.optimizers.Adam(1e-3))
    open_gates = _stats(gated).gates
    small = tfprune.shrink(gated)
    rows = [base, _row("L0 gates, shrunk", small, xt, yt, base, "units", "no fine-tune")]
    _train(small, x, y, budget.tune, keras.optimizers.Adam(3e-4))
    rows.append(_row("L0 gates, shrunk + fine-tune", small, xt, yt, base, "units"))
    magnitude = _train(
        _matched_magnitude(dense, small, "units"), x, y, budget.tune, keras.optimizers.Adam(3e-4)
    )
    rows.append(_row("magnitude (same widths) + fine-tune", magnitude, xt, yt, base, "units"))
    return "\n".join(
        [
            f"### LeNet-300-100, L0 gates on hidden units (lambda = {lam} x fan-in, "
            f"N = {len(x):,}, drop rate 0.5)",
            "",
            f"Adam 1e-3, batch 100: dense {budget.dense} epochs; gated {budget.sparse} epochs "
            f"from scratch; fine-tune {budget.tune} epochs at 3e-4. Open gates after training: "
            f"{open_gates[0]}/{open_gates[1]}.",
            "",
            _table(rows, "hidden units"),
            "",
            *_verdict(rows, ["L0 gates, shrunk", "L0 gates, shrunk + fine-tune"]),
        ]
    )


# --- LeNet-5 with group lasso ---------------------------------------------------------


def lenet5(regularizer=None) -> keras.Model:
    """LeNet-5-style: Conv20(5x5)-pool-Conv50(5x5)-pool-Dense500-Dense10."""
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for k, filters in enumerate((20, 50)):
        h = keras.layers.Conv2D(
            filters, 5, activation="relu", kernel_regularizer=regularizer, name=f"conv{k}"
        )(h)
        h = keras.layers.MaxPooling2D(name=f"pool{k}")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(500, activation="relu", name="fc")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="lenet5")


def _sgd(lr: float) -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(lr, momentum=0.9)


def section_group_lasso(train, test, budget: Budget, strength: float) -> str:
    (x, y), (xt, yt) = train, test
    keras.utils.set_random_seed(0)
    dense = _train(lenet5(), x, y, budget.dense, _sgd(0.02))
    base = _row("LeNet-5 dense", dense, xt, yt, None, "filters")
    keras.utils.set_random_seed(0)
    sparse = _train(
        lenet5(regularizers.GroupLasso(strength, "filters")),
        x,
        y,
        budget.sparse,
        _sgd(0.02),
        callbacks=[regularizers.ProximalGroupLasso()],
    )
    small = _without_regularizers(tfprune.shrink(sparse))
    rows = [base, _row("group lasso, shrunk", small, xt, yt, base, "filters", "no fine-tune")]
    _train(small, x, y, budget.tune, _sgd(0.005))
    rows.append(_row("group lasso, shrunk + fine-tune", small, xt, yt, base, "filters"))
    magnitude = _train(_matched_magnitude(dense, small, "filters"), x, y, budget.tune, _sgd(0.005))
    rows.append(_row("magnitude (same widths) + fine-tune", magnitude, xt, yt, base, "filters"))
    return "\n".join(
        [
            f"### LeNet-5, group lasso on filters (lambda = {strength}, proximal step)",
            "",
            f"SGD momentum 0.9, batch 100: dense {budget.dense} epochs at 0.02; group lasso "
            f"{budget.sparse} epochs at 0.02 with `ProximalGroupLasso` (a filter is removed when "
            f"its L2 norm is <= {regularizers.ZERO_THRESHOLD}); fine-tune {budget.tune} epochs at "
            "0.005 without the penalty.",
            "",
            _table(rows, "filters"),
            "",
            *_verdict(rows, ["group lasso, shrunk", "group lasso, shrunk + fine-tune"]),
        ]
    )


# --- VGG with network slimming --------------------------------------------------------


def vgg() -> keras.Model:
    """VGG-style: Conv16-Conv16-pool-Conv32-Conv32-pool-Conv64, BN + ReLU, GAP, Dense10.

    BatchNormalization momentum 0.9, so the moving statistics follow the weights within a
    short training budget.
    """
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for i, filters in enumerate((16, 16, 32, 32, 64)):
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        if i in (1, 3):
            h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="vgg")


def _int8(model, x_cal, folder: str, name: str) -> str:
    path = os.path.join(folder, f"{name}.tflite")
    result = tfprune.export.tflite(model, path, quantize="int8", representative_data=x_cal)
    latency = tfprune.export.latency(path, threads=1, runs=300, warmup=30)
    return f"int8 {result.size / 1024:.1f} KB, {latency.median * 1e3:.3f} ms"


def section_slimming(train, test, budget: Budget, strength: float) -> str:
    (x, y), (xt, yt) = train, test
    keras.utils.set_random_seed(0)
    dense = _train(vgg(), x, y, budget.dense, _sgd(0.05), batch_size=128)
    keras.utils.set_random_seed(0)
    slim = _train(
        regularizers.slimming(vgg(), strength), x, y, budget.sparse, _sgd(0.05), batch_size=128
    )
    rows, method_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        base = _row("VGG dense", dense, xt, yt, None, "filters", _int8(dense, x[:300], folder, "d"))
        rows.append(base)
        for ratio in (0.5, 0.7):
            pruned = tfprune.prune_channels(slim, ratio, criterion="bn_scale", scope="global")
            small = _without_regularizers(tfprune.shrink(pruned))
            _train(small, x, y, budget.tune, _sgd(0.01), batch_size=128)
            name = f"slimming, {ratio:.0%} of channels removed + fine-tune"
            method_rows.append(name)
            rows.append(
                _row(name, small, xt, yt, base, "filters", _int8(small, x[:300], folder, name[:14]))
            )
            magnitude = _train(
                _matched_magnitude(dense, small, "filters"),
                x,
                y,
                budget.tune,
                _sgd(0.01),
                batch_size=128,
            )
            rows.append(
                _row(
                    "magnitude (same widths) + fine-tune",
                    magnitude,
                    xt,
                    yt,
                    base,
                    "filters",
                    _int8(magnitude, x[:300], folder, f"m{ratio}"),
                )
            )
    return "\n".join(
        [
            f"### VGG-style CNN, network slimming (lambda = {strength} on BN gammas)",
            "",
            f"SGD momentum 0.9, batch 128: dense {budget.dense} epochs at 0.05; slimming "
            f"{budget.sparse} epochs at 0.05 from scratch (SGD as in the paper: under Adam the L1 "
            "term shrank all gammas alike instead of sparsifying them); global channel pruning "
            'by |gamma| (`criterion="bn_scale"`), shrink, fine-tune '
            f"{budget.tune} epochs at 0.01 without the penalty. int8: full-integer TFLite "
            "calibrated on 300 training images; latency: LiteRT, 1 thread, median of 300 "
            "invokes of one image.",
            "",
            _table(rows, "filters"),
            "",
            *_verdict(rows, method_rows),
        ]
    )


# --- training-step overhead of L0 gates -----------------------------------------------


def section_overhead(train, repetitions: int = 15, steps: int = 200) -> str:
    x, y = train
    x, y = x[: steps * 128], y[: steps * 128]
    models = {
        "dense": lenet300(),
        "L0 gates per unit": tfprune.wrap(
            lenet300(), None, granularity="channel", gate=gates.L0(1.0, 60000), exclude=["logits"]
        ),
        "L0 gates per weight": tfprune.wrap(
            lenet300(), None, granularity="weight", gate=gates.L0(1.0, 60000), exclude=["logits"]
        ),
    }
    for model in models.values():
        _train(model, x, y, 1, keras.optimizers.Adam(1e-3), batch_size=128)  # compile, warm up
    times = {name: [] for name in models}
    for _ in range(repetitions):
        for name, model in models.items():
            timer = batch_timer()
            model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[timer])
            times[name].extend(np.diff(timer.times))
    base = np.median(times["dense"])
    lines = ["| model | step (ms) | ratio vs dense |", "| --- | --- | --- |"]
    for name, t in times.items():
        lines.append(
            f"| LeNet-300-100, {name} | {np.median(t) * 1e3:.2f} | {np.median(t) / base:.3f} |"
        )
    return "\n".join(
        [
            "### Training-step overhead of L0 gates (LeNet-300-100, batch 128)",
            "",
            "Median time between consecutive training batches inside `fit` (as in "
            f"overhead.py), over {repetitions} interleaved repetitions of {steps} steps (one "
            "epoch of `fit` each), Adam, default `compile`. Target for gates: ratio <= 1.15.",
            "",
            *lines,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--tiny", action="store_true", help="2,000 examples, 1 epoch (smoke)")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--l0-lambda", type=float, default=0.25, help="L0 lambda per weight")
    parser.add_argument("--group-lasso", type=float, default=2e-4, help="group lasso lambda")
    parser.add_argument("--slimming", type=float, default=5e-4, help="slimming lambda")
    args = parser.parse_args(argv)
    start = time.time()
    (x, y), (xt, yt) = fashion_mnist(args.tiny)
    budgets = {
        "l0": Budget(20, 20, 5),
        "group_lasso": Budget(10, 10, 3),
        "slimming": Budget(6, 6, 2),
    }
    if args.tiny:
        budgets = {name: Budget(1, 1, 1) for name in budgets}
    train, test = (x, y), (xt, yt)
    parts = []
    for name in args.only:
        t0 = time.time()
        if name == "l0":
            parts.append(section_l0(train, test, budgets[name], args.l0_lambda))
        elif name == "group_lasso":
            parts.append(section_group_lasso(train, test, budgets[name], args.group_lasso))
        elif name == "slimming":
            parts.append(section_slimming(train, test, budgets[name], args.slimming))
        else:
            parts.append(section_overhead(train, 3 if args.tiny else 15))
        parts[-1] += f"\n\n({name}: {time.time() - t0:.0f} s)\n"
        print(parts[-1], flush=True)
    command = "python benchmarks/learned_sparsity.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = "\n".join(
        [
            "\n## Learned sparsity on Fashion-MNIST (benchmarks/learned_sparsity.py)",
            "",
            f"Command: `{command.strip()}`. Machine: 2-core CPU, no GPU (shared with other "
            f"jobs). Date: {datetime.date.today().isoformat()}. {len(x):,} training / "
            f"{len(xt):,} test images. Total time {time.time() - start:.0f} s.",
            "",
            *parts,
        ]
    )
    if not (args.no_write or args.tiny):
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
