"""Structured pruning of transformers: a ViT on Fashion-MNIST and a byte-level language model.

Usage: `python benchmarks/transformers.py [--vit-train N] [--epochs N] [--tune N]
[--lm-bytes N] [--lm-epochs N] [--hidden] [--tiny] [--no-write]`

ViT (`_transformers.vit`: 4 pre-LN blocks, width 64, 8 heads, MLP 128, 4x4 patches) is
trained on a subset of Fashion-MNIST (the machine is a shared 2-core CPU, so the budget is
minutes, not convergence). From the same trained weights it is pruned four ways, each with
an informed criterion, a magnitude baseline and a random baseline:
- heads 50 %: `tfprune.prune_heads` (activation = Minitron head-output norm; l2; random);
- MLP 50 %: `tfprune.prune_channels` on the MLP hidden units (activation = Minitron mean
  |neuron output|, `tfprune.activation_scores`; l1; random);
- both: heads then MLP, same criteria;
- depth: a quarter of the transformer layers (1 of 4) with `tfprune.prune_blocks`
  (ShortGPT Block Influence; random; no magnitude baseline for depth);
- with `--hidden`, also hidden width 50 %: `tfprune.prune_channels(through_norms=True)`
  on the residual stream (activation = Minitron mean |LayerNorm output|; l1; random), not
  exact before fine-tuning;
then shrunk and fine-tuned for the same short budget with and without distillation
(`tfprune.Distiller`, T=2, alpha=0.5, the unpruned model as teacher). Each structure's
informed model is exported to int8 TFLite (verified in LiteRT) and timed (1 thread,
interleaved rounds).

Byte LM (`_transformers.byte_lm`, 4 blocks, width 64, 4 heads, SwiGLU MLP 128, context 64)
is trained on the Python standard library's top-level `.py` sources; perplexity per byte on
held-out text before and after the same prunings (informed criteria), without and with a
short distillation fine-tune. Appends both tables to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _transformers as T
import keras
import numpy as np
from _bench import compile_classifier, fashion_mnist, latencies, machine
from _results import publish

import tfprune

BATCH = 128
KINDS = ("heads", "mlp", "both", "depth")


def _mlp_ignore(layer) -> bool:
    """prune_channels predicate: leave every group that is not an MLP's hidden units."""
    return not (layer.name.endswith("_mlp_up") or layer.name.endswith("_mlp_gate"))


def _prune(model, kind: str, criterion: str, calib, loss, layers: int):
    """One pruning of `model` (a zeroed copy or a shorter model), shrunk."""
    if kind in ("heads", "both"):
        model = tfprune.prune_heads(model, 0.5, criterion=criterion[0], data=calib, loss=loss)
    if kind in ("mlp", "both"):
        mlp_criterion = criterion[1]
        if mlp_criterion == "activation":
            mlp_criterion = tfprune.activation_scores.activation_criterion(
                model, [c[0] for c in calib]
            )
        model = tfprune.prune_channels(
            model, 0.5, criterion=mlp_criterion, data=calib, loss=loss, ignore=_mlp_ignore
        )
    if kind == "hidden":
        hidden_criterion = criterion[1]
        if hidden_criterion == "activation":
            hidden_criterion = tfprune.activation_scores.activation_criterion(
                model, [c[0] for c in calib]
            )
        model = tfprune.prune_channels(
            model,
            0.5,
            criterion=hidden_criterion,
            data=calib,
            loss=loss,
            ignore=lambda layer: not _mlp_ignore(layer),
            through_norms=True,
        )
    if kind == "depth":
        units = [[f"block{i}_attn_add", f"block{i}_mlp_add"] for i in range(layers)]
        n = max(1, layers // 4)
        if criterion[0] == "random":
            rng = np.random.default_rng(0)
            keep = list(rng.permutation(layers)[:n])
            units = [units[i] for i in keep]
        model, _ = tfprune.prune_blocks(model, n=n, data=[c[0] for c in calib], units=units)
    return tfprune.shrink(model, through_norms=kind == "hidden")


CRITERIA = {
    "informed": ("activation", "activation"),
    "magnitude": ("l2", "l1"),
    "random": ("random", "random"),
}


def _tune(student, teacher, x, y, epochs: int, distill: bool, loss, lr: float = 5e-4):
    steps = epochs * int(np.ceil(len(x) / BATCH))
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps))
    target = tfprune.Distiller(student, teacher, 2.0, 0.5) if distill else student
    # Eager: a few steps on a fresh model cost less than tracing them on a loaded CPU.
    target.compile(optimizer=optimizer, loss=loss, run_eagerly=True)
    target.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return student


def _logits(model, x, batch: int = 256) -> np.ndarray:
    """Eager batched calls (no `predict` tracing per model)."""
    return np.concatenate(
        [keras.ops.convert_to_numpy(model(x[i : i + batch])) for i in range(0, len(x), batch)]
    )


def _accuracy(model, x, y) -> float:
    return float((_logits(model, x).argmax(-1) == y).mean())


def _perplexity(model, x, y) -> float:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    logits = _logits(model, x, 128)
    return float(np.exp(keras.ops.convert_to_numpy(loss(y, logits))))


def _vit(args, conditions: str) -> list[str]:
    (x_train, y_train), (x_test, y_test) = fashion_mnist(args.tiny)
    x_train, y_train = x_train[: args.vit_train], y_train[: args.vit_train]
    x_test, y_test = x_test[: args.vit_test], y_test[: args.vit_test]
    x_tune, y_tune = x_train[: args.tune], y_train[: args.tune]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.time()
    dense = T.vit()
    compile_classifier(dense, 1e-3, args.epochs * int(np.ceil(len(x_train) / BATCH)))
    dense.fit(x_train, y_train, batch_size=BATCH, epochs=args.epochs, verbose=0)
    train_s = time.time() - t0
    calib = [(x_train[i : i + 128], y_train[i : i + 128]) for i in range(0, 512, 128)]
    base = _accuracy(dense, x_test, y_test)
    rows, exports = [], {"dense": dense}
    for kind in KINDS + (("hidden",) if args.hidden else ()):
        for name, criterion in CRITERIA.items():
            if kind == "depth" and name == "magnitude":
                continue
            small = _prune(dense, kind, criterion, calib, loss, 4)
            oneshot = _accuracy(small, x_test, y_test)
            tuned = {}
            for distill in (
                (False, True) if name == "informed" or not args.kd_informed_only else (False,)
            ):
                student = keras.models.clone_model(small)
                student.set_weights(small.get_weights())
                _tune(student, dense, x_tune, y_tune, 1, distill, loss)
                tuned[distill] = _accuracy(student, x_test, y_test)
                if name == "informed" and distill:
                    exports[kind] = student
            summary = tfprune.summary(small, print_fn=None)
            rows.append((kind, name, criterion, oneshot, tuned, small.count_params(), summary.macs))
    with tempfile.TemporaryDirectory() as folder:
        files = {}
        for key, model in exports.items():
            path = os.path.join(folder, f"{key}.tflite")
            result = tfprune.export.tflite(
                model,
                path,
                quantize="int8",
                representative_data=x_train[:200],
                verify_data=(x_test, y_test),
            )
            files[key] = (path, os.path.getsize(path), result.verification.accuracy)
        times = dict(zip(files, latencies([p for p, _, _ in files.values()], rounds=args.rounds)))
    dense_macs = tfprune.summary(dense, print_fn=None).macs
    lines = [
        "| pruning | criterion | params | MACs | acc one-shot | acc tuned | acc tuned + KD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| dense | - | {dense.count_params():,} | {dense_macs / 1e6:.2f} M | {base:.4f} | - | - |",
    ]
    for kind, name, criterion, oneshot, tuned, params, macs in rows:
        crit = criterion[0] if kind in ("heads", "depth") else "/".join(criterion)
        if kind in ("mlp", "hidden"):
            crit = criterion[1]
        if kind == "depth" and name == "informed":
            crit = "ShortGPT"
        lines.append(
            f"| {kind} | {crit} | {params:,} | {macs / 1e6:.2f} M | {oneshot:.4f} | "
            f"{tuned[False]:.4f} | {tuned.get(True, float('nan')):.4f} |"
        )
    lines += [
        "",
        "| int8 TFLite | file | latency | speed-up | int8 accuracy (LiteRT) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, (_, size, acc) in files.items():
        lines.append(
            f"| {key} | {size / 1024:.1f} KB | {times[key] * 1e3:.3f} ms | "
            f"{times['dense'] / times[key]:.2f}x | {acc:.4f} |"
        )
    return [
        "## Transformers: ViT on Fashion-MNIST (benchmarks/transformers.py)",
        "",
        f"Command: `{_command(args)}`. Machine: {conditions}, shared with other jobs; no "
        f"GPU. Date: {datetime.date.today().isoformat()}. Dense ViT (4 blocks, width 64, 8 "
        f"heads, MLP 128, 4x4 patches) trained {args.epochs} epochs on the first "
        f"{len(x_train):,} training images ({train_s:.0f} s; Adam 1e-3 cosine to 0), so far "
        f"from convergence; test = first {len(x_test):,} test images. Every pruned model: "
        "one-shot prune (calibration: 512 training images) -> shrink -> fine-tune 1 epoch "
        f"on {len(x_tune):,} training images (Adam 5e-4 cosine to 0), without and with "
        "distillation (KD: tfprune.Distiller, T=2, alpha=0.5, teacher = dense). Heads 50 %: "
        "prune_heads; MLP 50 %: prune_channels on the MLP hidden units; both: the two; "
        "depth: prune_blocks removes 1 of 4 transformer layers (attention + MLP halves as "
        "one unit). Criteria in the order heads/MLP. int8 files from the informed, "
        "distilled models, calibrated on 200 images; latency: LiteRT default (XNNPACK), 1 "
        f"thread, median of 300 invoke(), best of {args.rounds} interleaved rounds. "
        "nan: not run (with --kd-informed-only the baselines are fine-tuned without KD only).",
        "",
        *lines,
        "",
    ]


def _lm(args, conditions: str) -> list[str]:
    text = T.stdlib_text(args.lm_bytes + args.lm_bytes // 8)
    split = args.lm_bytes
    x, y = T.byte_windows(text[:split])
    xv, yv = T.byte_windows(text[split:])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    t0 = time.time()
    dense = T.byte_lm(gated=True)
    steps = args.lm_epochs * int(np.ceil(len(x) / BATCH))
    dense.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
        loss=loss,
    )
    dense.fit(x, y, batch_size=BATCH, epochs=args.lm_epochs, verbose=0)
    train_s = time.time() - t0
    calib = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    lines = [
        "| pruning | params | ppl one-shot | ppl + KD fine-tune |",
        "| --- | --- | --- | --- |",
        f"| dense | {dense.count_params():,} | {_perplexity(dense, xv, yv):.3f} | - |",
    ]
    tune_x, tune_y = x[: args.tune_lm], y[: args.tune_lm]
    for kind in KINDS + (("hidden",) if args.hidden else ()):
        small = _prune(dense, kind, CRITERIA["informed"], calib, loss, 4)
        oneshot = _perplexity(small, xv, yv)
        _tune(small, dense, tune_x, tune_y, 1, True, loss, lr=1e-3)
        lines.append(
            f"| {kind} | {small.count_params():,} | {oneshot:.3f} | "
            f"{_perplexity(small, xv, yv):.3f} |"
        )
    return [
        "## Transformers: byte-level language model (benchmarks/transformers.py)",
        "",
        f"Command: `{_command(args)}`. Machine: {conditions}. Date: "
        f"{datetime.date.today().isoformat()}. Text: the Python standard library's top-level "
        f"`.py` files (sorted by name, concatenated): {split:,} bytes for training "
        f"({len(x):,} windows of 64), the next {len(text) - split:,} bytes held out. Model: "
        "4 causal blocks, width 64, 4 heads, SwiGLU MLP 128; trained "
        f"{args.lm_epochs} epochs ({train_s:.0f} s; Adam 2e-3 cosine to 0). Perplexity per "
        "byte on the held-out text. Prunings as for the ViT with the informed criteria "
        "(heads and MLP: activation, depth: ShortGPT, 1 of 4 layers); fine-tune: 1 "
        f"epoch of {len(tune_x):,} windows with tfprune.Distiller (T=2, alpha=0.5).",
        "",
        *lines,
        "",
    ]


def _command(args) -> str:
    if args.tiny:
        return "python benchmarks/transformers.py --tiny"
    return (
        f"python benchmarks/transformers.py --vit-train {args.vit_train} --vit-test "
        f"{args.vit_test} --epochs {args.epochs} --tune {args.tune} --lm-bytes "
        f"{args.lm_bytes} --lm-epochs {args.lm_epochs} --tune-lm {args.tune_lm} --rounds "
        f"{args.rounds}"
        + (" --skip-vit" if args.skip_vit else "")
        + (" --skip-lm" if args.skip_lm else "")
        + (" --kd-informed-only" if args.kd_informed_only else "")
        + (" --hidden" if args.hidden else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-train", type=int, default=8192, help="ViT training images")
    parser.add_argument("--vit-test", type=int, default=2000, help="ViT test images")
    parser.add_argument("--epochs", type=int, default=3, help="ViT training epochs")
    parser.add_argument("--tune", type=int, default=2048, help="fine-tuning images")
    parser.add_argument("--lm-bytes", type=int, default=300_000, help="LM training bytes")
    parser.add_argument("--lm-epochs", type=int, default=3, help="LM training epochs")
    parser.add_argument("--tune-lm", type=int, default=1024, help="LM fine-tuning windows")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds")
    parser.add_argument("--skip-lm", action="store_true", help="ViT only")
    parser.add_argument("--skip-vit", action="store_true", help="language model only")
    parser.add_argument(
        "--kd-informed-only", action="store_true", help="baselines fine-tuned without KD only"
    )
    parser.add_argument(
        "--hidden", action="store_true", help="also prune half the hidden width (not exact)"
    )
    parser.add_argument("--tiny", action="store_true", help="smoke run: minimal sizes")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.tiny:
        args.vit_train, args.vit_test, args.epochs, args.tune = 512, 256, 1, 256
        args.lm_bytes, args.lm_epochs, args.tune_lm, args.rounds = 40_000, 1, 128, 1
    keras.utils.set_random_seed(0)
    conditions = machine()
    if not args.skip_vit:
        publish(_vit(args, conditions), write=not args.no_write)
    if not args.skip_lm:
        publish(_lm(args, conditions), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
