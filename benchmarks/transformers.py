"""Structured pruning of transformers: a ViT on Fashion-MNIST and a byte-level language model.

Usage: `python benchmarks/transformers.py [--epochs N] [--tune N] [--tune-epochs N]
[--tune-lr LR] [--kd-temperature T] [--kd-alpha A] [--kinds heads,mlp,both,depth]
[--validate N] [--profile] [--lm-bytes N] [--lm-epochs N] [--skip-vit] [--skip-lm] [--hidden]
[--tiny] [--no-write]` (`--help` for all options).

ViT (`_transformers.vit`; default 4 pre-LN blocks, width 64, 8 heads, MLP 256, 7x7 patches,
so 16 tokens) is trained on Fashion-MNIST; the trained model is cached on disk (`--cache`),
so a rerun skips the training. From the same trained weights it is pruned four ways, each
with an informed criterion, a magnitude baseline and a random baseline:
- heads 50 %: `tfprune.prune_heads` (activation = Minitron head-output norm; l2; random);
- MLP 50 %: `tfprune.prune_channels` on the MLP hidden units (activation = Minitron mean
  |neuron output|, `tfprune.activation_scores`; l1; random);
- both: heads then MLP, same criteria;
- depth: a quarter of the transformer layers with `tfprune.prune_blocks` (ShortGPT Block
  Influence; random; no magnitude baseline for depth);
- with `--hidden`, also hidden width 50 %: `tfprune.prune_channels(through_norms=True)`
  on the residual stream (activation = Minitron mean |LayerNorm output|; l1; random), not
  exact before fine-tuning;
then shrunk and fine-tuned for the same budget (default 1 epoch of the first 8,192 training
images, Adam 1e-3 cosine to 0) without and with distillation (`tfprune.Distiller`, T=2,
alpha=0.5, the unpruned model as teacher). `--validate N` scores on the last N training
images instead of the test set (for choosing the fine-tuning recipe). Each structure's
informed, distilled model is exported to int8 TFLite (verified in LiteRT) and timed against
the dense one (1 thread, interleaved rounds); `--profile` adds where the int8 time goes,
stage by stage (`_vit_profile`), dense against heads + MLP 50 %. A latency study times
untrained int8 ViTs of the same width with more tokens (smaller patches), dense and with
heads + MLP halved, to show how the speed-up depends on the token count.

Byte LM (`_transformers.byte_lm`; default 4 causal blocks, width 64, 4 heads, SwiGLU MLP
192, context 128) is trained on the Python standard library's top-level `.py` sources, split
by file into training, validation and test text (`_transformers.stdlib_split`; cached too);
the validation loss is printed after each epoch, and unigram, bigram, trigram and 5-gram
byte models counted on the same training text are the reference. Perplexity per byte on
the test text before and after the same prunings and criteria as the ViT, fine-tuned for
the same short budget without and with distillation. Appends both tables to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _transformers as T
import _vit_profile
import keras
import numpy as np
from _bench import compile_classifier, fashion_mnist, machine
from _lm_bench import lm_tables
from _results import publish
from _transformer_steps import (
    BATCH,
    CACHE,
    CRITERIA,
    KINDS,
    accuracy,
    copy_model,
    int8_files,
    load_or_train,
    prune,
    tune,
)

import tfprune


def _vit_config(args) -> dict:
    return dict(blocks=args.blocks, dim=args.dim, heads=args.heads, mlp=args.mlp)


def _randomise_norms(model: keras.Model, seed: int = 0) -> None:
    """Random LayerNorm scales and offsets, in place, as a trained model has.

    A freshly built LayerNorm (offset exactly 0) converts to a float NEG op that int8
    conversion leaves unquantized, and identity parameters would hide its cost.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.LayerNormalization):
            gamma, beta = layer.get_weights()
            layer.set_weights(
                [1 + 0.1 * rng.standard_normal(gamma.shape), 0.1 * rng.standard_normal(beta.shape)]
            )


def _token_study(args, conditions: str) -> list[str]:
    """int8 latency of untrained ViTs of the benchmark's width at several token counts,
    dense and with half the heads and half the MLP units (magnitude criteria)."""
    models, patches = {}, [p for p in (7, 4) if p <= args.patch]
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    for patch in patches:
        dense = T.vit(patch=patch, **_vit_config(args))
        _randomise_norms(dense)
        models[f"{patch}/dense"] = dense
        models[f"{patch}/both"] = prune(dense, "both", CRITERIA["magnitude"], [], None, 0)
    with tempfile.TemporaryDirectory() as folder:
        files = int8_files(models, folder, x, None, args.rounds)
    lines = [
        "| patch | tokens | ops | MACs dense | MACs pruned | dense | heads + MLP 50 % | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for patch in patches:
        dense, both = files[f"{patch}/dense"], files[f"{patch}/both"]
        macs = [
            tfprune.summary(models[f"{patch}/{k}"], print_fn=None).macs for k in ("dense", "both")
        ]
        lines.append(
            f"| {patch}x{patch} | {(28 // patch) ** 2} | {dense[3]} / {both[3]} | "
            f"{macs[0] / 1e6:.2f} M | {macs[1] / 1e6:.2f} M | {dense[1] * 1e3:.3f} ms | "
            f"{both[1] * 1e3:.3f} ms | {dense[1] / both[1]:.2f}x |"
        )
    return [
        "## Transformers: int8 ViT latency against token count (benchmarks/transformers.py)",
        "",
        f"Command: `{_command(args)}`. Machine: {conditions}, shared with other jobs; no "
        f"GPU. Date: {datetime.date.today().isoformat()}. Untrained ViTs of the benchmark's "
        f"width ({args.blocks} blocks, width {args.dim}, {args.heads} heads, MLP {args.mlp}; "
        "LayerNorm parameters randomised) at two patch sizes, int8 (calibrated on 64 random "
        "images), dense against half the heads and half the MLP units removed (magnitude "
        "criteria, shrunk). ops: operators in the dense / pruned file. Latency: LiteRT "
        "default (XNNPACK), 1 thread, batch 1, median of 300 invoke(), best of "
        f"{args.rounds} interleaved rounds.",
        "",
        *lines,
        "",
    ]


def _vit(args, conditions: str) -> list[str]:
    (x_train, y_train), (x_test, y_test) = fashion_mnist(args.tiny)
    x_train, y_train = x_train[: args.vit_train], y_train[: args.vit_train]
    x_test, y_test = x_test[: args.vit_test], y_test[: args.vit_test]
    if args.validate:  # recipe choices: held-out training images, never the test set
        x_test, y_test = x_train[-args.validate :], y_train[-args.validate :]
    x_tune, y_tune = x_train[: args.tune], y_train[: args.tune]
    if args.tune + args.validate > len(x_train):
        raise ValueError(
            f"--tune {args.tune} and --validate {args.validate} overlap in the "
            f"{len(x_train):,} training images; lower one of them."
        )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    config = dict(_vit_config(args), patch=args.patch)

    def train():
        model = T.vit(**config)
        compile_classifier(model, 1e-3, args.epochs * int(np.ceil(len(x_train) / BATCH)))
        model.fit(x_train, y_train, batch_size=BATCH, epochs=args.epochs, verbose=0)
        return model

    name = "vit_" + "_".join(f"{k}{v}" for k, v in config.items())
    name += f"_n{len(x_train)}_e{args.epochs}"
    dense, train_s, cached = load_or_train(name, args.cache, train)
    calib = [(x_train[i : i + 128], y_train[i : i + 128]) for i in range(0, 512, 128)]
    base = accuracy(dense, x_test, y_test)
    print(f"dense ViT: accuracy {base:.4f}, trained in {train_s:.0f} s", flush=True)
    control = "-"
    if args.dense_control:  # the dense model fine-tuned for the same budget (no KD)
        student = copy_model(dense)
        tune(student, dense, x_tune, y_tune, args.tune_epochs, False, loss, args.tune_lr)
        control = f"{accuracy(student, x_test, y_test):.4f}"
        print(f"dense ViT fine-tuned for the same budget: accuracy {control}", flush=True)
    rows, exports, tune_s = [], {"dense": dense}, []
    for kind in args.kinds + (["hidden"] if args.hidden else []):
        for name, criterion in CRITERIA.items():
            if (kind == "depth" and name == "magnitude") or (
                args.informed_only and name != "informed"
            ):
                continue
            small = prune(dense, kind, criterion, calib, loss, args.blocks)
            oneshot = accuracy(small, x_test, y_test)
            tuned = {}
            for distill in (
                (False, True) if name == "informed" or not args.kd_informed_only else (False,)
            ):
                student = copy_model(small)
                tune_s.append(
                    tune(
                        student,
                        dense,
                        x_tune,
                        y_tune,
                        args.tune_epochs,
                        distill,
                        loss,
                        args.tune_lr,
                        args.kd_temperature,
                        args.kd_alpha,
                    )
                )
                tuned[distill] = accuracy(student, x_test, y_test)
                if name == "informed" and distill:
                    exports[kind] = student
            summary = tfprune.summary(small, print_fn=None)
            rows.append((kind, name, criterion, oneshot, tuned, small.count_params(), summary.macs))
            print(kind, name, f"{oneshot:.4f}", tuned, flush=True)
    files = {}
    if not args.validate:
        with tempfile.TemporaryDirectory() as folder:
            files = int8_files(exports, folder, x_train[:200], (x_test, y_test), args.rounds)
    dense_macs = tfprune.summary(dense, print_fn=None).macs
    lines = [
        "| pruning | criterion | params | MACs | acc one-shot | acc tuned | acc tuned + KD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| dense | - | {dense.count_params():,} | {dense_macs / 1e6:.2f} M | {base:.4f} | "
        f"{control} | - |",
    ]
    for kind, name, criterion, oneshot, tuned, params, macs in rows:
        crit = {"heads": criterion[0], "mlp": criterion[1], "hidden": criterion[1]}.get(
            kind, "/".join(criterion)
        )
        if kind == "depth":
            crit = "ShortGPT" if name == "informed" else "random"
        lines.append(
            f"| {kind} | {crit} | {params:,} | {macs / 1e6:.2f} M | {oneshot:.4f} | "
            f"{tuned[False]:.4f} | {f'{tuned[True]:.4f}' if True in tuned else '-'} |"
        )
    if files:
        lines += [
            "",
            "| int8 TFLite | file | ops | latency | speed-up | int8 accuracy (LiteRT) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
    for key, (size, seconds, acc, ops) in files.items():
        lines.append(
            f"| {key} | {size / 1024:.1f} KB | {ops} | {seconds * 1e3:.3f} ms | "
            f"{files['dense'][1] / seconds:.2f}x | {acc:.4f} |"
        )
    if args.profile and "both" in exports:
        models = {"dense": dense, "heads + MLP 50 %": exports["both"]}
        lines += [
            "",
            "Where the int8 time goes (`_vit_profile.profile`: prefix models cut after each "
            "stage, time = latency of the prefix minus that of the previous one; operators = "
            "those the stage adds):",
            "",
            *_vit_profile.profile(models, x_train[:200], args.blocks, args.rounds),
        ]
    source = "loaded from the cache; trained" if cached else "trained"
    evaluation = (
        f"validation: the last {len(x_test):,} training images (seen by the dense model's "
        "training, never by fine-tuning; for recipe choices)"
        if args.validate
        else f"test: {len(x_test):,} test images"
    )
    kd = f"T={args.kd_temperature:g}, alpha={args.kd_alpha:g}"
    return [
        "## Transformers: ViT on Fashion-MNIST (benchmarks/transformers.py)",
        "",
        f"Command: `{_command(args)}`. Machine: {conditions}, shared with other jobs; no "
        f"GPU. Date: {datetime.date.today().isoformat()}. Dense ViT ({args.blocks} blocks, "
        f"width {args.dim}, {args.heads} heads, MLP {args.mlp}, {args.patch}x{args.patch} "
        f"patches = {(28 // args.patch) ** 2} tokens) {source} {args.epochs} epochs on "
        f"{len(x_train):,} training images ({train_s:.0f} s; Adam 1e-3 cosine to 0, batch "
        f"{BATCH}); {evaluation}. Every pruned model: one-shot prune "
        f"(calibration: 512 training images) -> shrink -> fine-tune {args.tune_epochs} "
        f"epoch(s) on the first {len(x_tune):,} training images (Adam {args.tune_lr:g} "
        f"cosine to 0, batch {BATCH}: {args.tune_epochs * int(np.ceil(len(x_tune) / BATCH))} "
        f"steps; {np.median(tune_s):.0f} s median), without and with distillation (KD: "
        f"tfprune.Distiller, {kd}, teacher = dense). Heads 50 %: prune_heads; MLP "
        "50 %: prune_channels on the MLP hidden units; both: the two; depth: prune_blocks "
        f"removes {max(1, args.blocks // 4)} of {args.blocks} transformer layers (attention + "
        "MLP halves as one unit). Criteria in the order heads/MLP. int8 files from the "
        "informed, distilled models, calibrated on 200 images; ops: operators in the file; "
        "latency: LiteRT default (XNNPACK), 1 thread, batch 1, median of 300 invoke(), "
        f"best of {args.rounds} interleaved rounds."
        + (" -: not run (baselines fine-tuned without KD only)." if args.kd_informed_only else "")
        + (" Variants: informed criteria only." if args.informed_only else ""),
        "",
        *lines,
        "",
    ]


def _command(args) -> str:
    if args.tiny:
        return "python benchmarks/transformers.py --tiny"
    return (
        f"python benchmarks/transformers.py --vit-train {args.vit_train} --vit-test "
        f"{args.vit_test} --patch {args.patch} --dim {args.dim} --blocks {args.blocks} "
        f"--heads {args.heads} --mlp {args.mlp} --epochs {args.epochs} --tune {args.tune} "
        f"--lm-bytes {args.lm_bytes} --lm-epochs {args.lm_epochs} --tune-lm {args.tune_lm} "
        f"--lm-blocks {args.lm_blocks} --lm-dim {args.lm_dim} --lm-heads {args.lm_heads} "
        f"--lm-mlp {args.lm_mlp} --lm-context {args.lm_context} --lm-lr {args.lm_lr} "
        f"--lm-warmup {args.lm_warmup} --lm-heldout {args.lm_heldout} "
        f"--lm-kinds {args.lm_kinds} "
        f"--rounds {args.rounds}"
        + (" --skip-vit" if args.skip_vit else "")
        + (" --skip-lm" if args.skip_lm else "")
        + ("" if args.token_study else " --no-token-study")
        + (" --kd-informed-only" if args.kd_informed_only else "")
        + (" --token-study-only" if args.token_study_only else "")
        + (" --hidden" if args.hidden else "")
        + f" --kinds {','.join(args.kinds)} --tune-epochs {args.tune_epochs} --tune-lr "
        f"{args.tune_lr:g} --kd-temperature {args.kd_temperature:g} --kd-alpha {args.kd_alpha:g}"
        + (f" --validate {args.validate}" if args.validate else "")
        + (" --informed-only" if args.informed_only else "")
        + (" --profile" if args.profile else "")
        + (" --dense-control" if args.dense_control else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-train", type=int, default=60_000, help="ViT training images")
    parser.add_argument("--vit-test", type=int, default=10_000, help="ViT test images")
    parser.add_argument("--patch", type=int, default=7, help="ViT patch side")
    parser.add_argument("--dim", type=int, default=64, help="ViT width")
    parser.add_argument("--blocks", type=int, default=4, help="ViT blocks")
    parser.add_argument("--heads", type=int, default=8, help="ViT heads per block")
    parser.add_argument("--mlp", type=int, default=256, help="ViT MLP units per block")
    parser.add_argument("--epochs", type=int, default=4, help="ViT training epochs")
    parser.add_argument("--tune", type=int, default=8192, help="ViT fine-tuning images")
    parser.add_argument("--tune-epochs", type=int, default=1, help="ViT fine-tuning epochs")
    parser.add_argument("--tune-lr", type=float, default=1e-3, help="ViT fine-tuning Adam lr")
    parser.add_argument("--kd-temperature", type=float, default=2.0, help="ViT KD temperature")
    parser.add_argument(
        "--kd-alpha", type=float, default=0.5, help="ViT KD task-loss weight (1 - KD weight)"
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: text.split(","),
        default=list(KINDS),
        help=f"ViT prunings, comma-separated (default {','.join(KINDS)})",
    )
    parser.add_argument(
        "--validate",
        type=int,
        default=0,
        help="evaluate the ViT on the last N training images instead of the test set "
        "(recipe choices; no int8 export)",
    )
    parser.add_argument(
        "--informed-only", action="store_true", help="ViT: no magnitude or random baselines"
    )
    parser.add_argument(
        "--dense-control",
        action="store_true",
        help="ViT: also fine-tune the dense model for the same budget (its 'acc tuned')",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="ViT: per-stage int8 latency of the dense and heads + MLP 50 %% models",
    )
    parser.add_argument("--lm-bytes", type=int, default=4_000_000, help="LM training bytes")
    parser.add_argument("--lm-epochs", type=int, default=1, help="LM training epochs")
    parser.add_argument("--tune-lm", type=int, default=1024, help="LM fine-tuning windows")
    parser.add_argument("--lm-blocks", type=int, default=4, help="LM blocks")
    parser.add_argument("--lm-dim", type=int, default=64, help="LM width")
    parser.add_argument("--lm-heads", type=int, default=4, help="LM heads per block")
    parser.add_argument("--lm-mlp", type=int, default=192, help="LM SwiGLU units per block")
    parser.add_argument("--lm-context", type=int, default=128, help="LM context in bytes")
    parser.add_argument("--lm-lr", type=float, default=3e-3, help="LM peak learning rate")
    parser.add_argument("--lm-warmup", type=int, default=100, help="LM warm-up steps")
    parser.add_argument(
        "--lm-kinds",
        default=",".join(KINDS),
        help=f"LM prunings, comma-separated (default {','.join(KINDS)})",
    )
    parser.add_argument(
        "--lm-heldout", type=int, default=65_536, help="LM validation and test bytes (each)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds")
    parser.add_argument("--skip-lm", action="store_true", help="ViT only")
    parser.add_argument("--skip-vit", action="store_true", help="language model only")
    parser.add_argument(
        "--no-token-study",
        dest="token_study",
        action="store_false",
        help="skip the int8 latency study at more tokens",
    )
    parser.add_argument(
        "--kd-informed-only",
        action="store_true",
        help="fine-tune the magnitude and random baselines without distillation only",
    )
    parser.add_argument(
        "--token-study-only", action="store_true", help="only the int8 latency study"
    )
    parser.add_argument(
        "--hidden", action="store_true", help="also prune half the hidden width (not exact)"
    )
    parser.add_argument(
        "--cache",
        type=pathlib.Path,
        default=CACHE,
        help=f"folder for the trained dense models (default {CACHE})",
    )
    parser.add_argument("--no-cache", dest="cache", action="store_const", const=None)
    parser.add_argument("--tiny", action="store_true", help="smoke run: minimal sizes")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.tiny:
        args.vit_train, args.vit_test, args.epochs, args.tune = 512, 256, 1, 256
        args.lm_bytes, args.lm_epochs, args.tune_lm, args.rounds = 40_000, 1, 128, 1
        args.lm_heldout, args.lm_context, args.lm_blocks = 16_384, 64, 2
        args.blocks, args.cache, args.token_study = 2, None, False
    keras.utils.set_random_seed(0)
    conditions = machine()
    if args.token_study_only:
        args.skip_vit = args.skip_lm = True
    if not args.skip_vit:
        publish(_vit(args, conditions), write=not args.no_write)
    if args.token_study and (not args.skip_vit or args.token_study_only):
        publish(_token_study(args, conditions), write=not args.no_write)
    if not args.skip_lm:
        publish(lm_tables(args, conditions, _command(args)), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
