"""The byte-level language model part of `benchmarks/transformers.py`: n-gram baselines,
training (cached) and the pruning table in perplexity per byte."""

from __future__ import annotations

import datetime
import time

import _transformers as T
import keras
import numpy as np
from _transformer_steps import BATCH, CRITERIA, copy_model, load_or_train, perplexity, prune, tune

import tfprune

LM_BATCH = 64  # the dense LM's training batch (fine-tuning uses BATCH, as for the ViT)
NGRAMS = {1: "unigram (add-one)", 2: "bigram", 3: "trigram", 5: "5-gram"}


class _Progress(keras.callbacks.Callback):
    """Prints the step, the training loss and the elapsed seconds every `every` steps."""

    def __init__(self, every: int):
        super().__init__()
        self.every, self.step, self.start = every, 0, time.time()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            print(
                f"step {self.step}: loss {logs['loss']:.4f}, {time.time() - self.start:.0f} s",
                flush=True,
            )


def _lm_config(args) -> dict:
    return dict(
        blocks=args.lm_blocks,
        dim=args.lm_dim,
        heads=args.lm_heads,
        mlp=args.lm_mlp,
        seq_len=args.lm_context,
    )


def _lm_data(args) -> dict:
    """`{part: (files, text, x, y)}` for the training, validation and test texts."""
    split = T.stdlib_split(args.lm_bytes, args.lm_heldout)
    return {
        key: (files, text, *T.byte_windows(text, args.lm_context))
        for key, (files, text) in split.items()
    }


def _train_lm(args, data: dict) -> tuple[keras.Model, float, bool]:
    """The dense SwiGLU byte LM, trained on `data["train"]` (validation loss printed each
    epoch) or loaded from the cache; also the training seconds and whether it was cached."""
    x, y = data["train"][2:]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def train():
        model = T.byte_lm(gated=True, **_lm_config(args))
        steps = args.lm_epochs * int(np.ceil(len(x) / LM_BATCH))
        warmup = min(args.lm_warmup, steps // 10)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, steps - warmup, warmup_target=args.lm_lr, warmup_steps=warmup
        )
        model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0), loss=loss)
        model.fit(
            x,
            y,
            batch_size=LM_BATCH,
            epochs=args.lm_epochs,
            validation_data=data["validation"][2:],
            verbose=2,
            callbacks=[_Progress(50)],
        )
        return model

    name = "byte_lm_swiglu_" + "_".join(f"{k}{v}" for k, v in _lm_config(args).items())
    name += f"_n{len(data['train'][1])}_e{args.lm_epochs}_lr{args.lm_lr}_w{args.lm_warmup}"
    return load_or_train(name, args.cache, train)


def _ngram_rows(data: dict, seq_len: int) -> list[str]:
    """Table rows: held-out perplexity of n-gram byte models counted on the training text,
    on the bytes the LM predicts (the targets of its windows)."""
    rows = []
    for n, label in NGRAMS.items():
        ppl = []
        for key in ("validation", "test"):
            text = data[key][1]
            positions = T.window_starts(len(text), seq_len)[:, None] + np.arange(1, seq_len + 1)
            ppl.append(T.ngram_perplexity(data["train"][1], text, n, positions.ravel()))
        rows.append(f"| {label} | - | - | {ppl[0]:.3f} | {ppl[1]:.3f} |")
    return rows


def lm_tables(args, conditions: str, command: str) -> list[str]:
    data = _lm_data(args)
    x, y = data["train"][2:]
    xv, yv = data["validation"][2:]
    xt, yt = data["test"][2:]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    dense, train_s, cached = _train_lm(args, data)
    calib = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    base = perplexity(dense, xt, yt)
    print(f"dense LM: test perplexity {base:.3f}, trained in {train_s:.0f} s", flush=True)
    dense_macs = tfprune.summary(dense, print_fn=None).macs
    baselines = [
        "| model | params | MACs / byte | ppl validation | ppl test |",
        "| --- | --- | --- | --- | --- |",
        *_ngram_rows(data, args.lm_context),
        f"| byte LM (dense) | {dense.count_params():,} | "
        f"{dense_macs / args.lm_context / 1e3:.0f} K | {perplexity(dense, xv, yv):.3f} | "
        f"{base:.3f} |",
    ]
    print("\n".join(baselines), flush=True)
    lines = [
        "| pruning | criterion | params | MACs / byte | ppl one-shot | ppl tuned | "
        "ppl tuned + KD |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| dense | - | {dense.count_params():,} | {dense_macs / args.lm_context / 1e3:.0f} K | "
        f"{base:.3f} | - | - |",
    ]
    pick = np.sort(np.random.default_rng(0).permutation(len(x))[: args.tune_lm])
    tune_x, tune_y, tune_s = x[pick], y[pick], []
    for kind in args.lm_kinds.split(",") + (["hidden"] if args.hidden else []):
        for name, criterion in CRITERIA.items():
            if kind == "depth" and name == "magnitude":
                continue
            small = prune(dense, kind, criterion, calib, loss, args.lm_blocks)
            oneshot = perplexity(small, xt, yt)
            tuned = {}
            for distill in (False, True):
                student = copy_model(small)
                tune_s.append(tune(student, dense, tune_x, tune_y, 1, distill, loss, 1e-3))
                tuned[distill] = perplexity(student, xt, yt)
            crit = {"heads": criterion[0], "mlp": criterion[1], "hidden": criterion[1]}.get(
                kind, "/".join(criterion)
            )
            if kind == "depth":
                crit = "ShortGPT" if name == "informed" else "random"
            macs = tfprune.summary(small, print_fn=None).macs
            lines.append(
                f"| {kind} | {crit} | {small.count_params():,} | "
                f"{macs / args.lm_context / 1e3:.0f} K | {oneshot:.3f} | {tuned[False]:.3f} | "
                f"{tuned[True]:.3f} |"
            )
            print(lines[-1], flush=True)
    source = "loaded from the cache; trained" if cached else "trained"
    files = {key: data[key][0] for key in data}
    c = args.lm_context
    return [
        "## Transformers: byte-level language model, trained (benchmarks/transformers.py)",
        "",
        f"Command: `{command}`. Machine: {conditions}, shared with other jobs; no "
        f"GPU. Date: {datetime.date.today().isoformat()}. Text: the Python standard "
        f"library's top-level `.py` files sorted by name, split by file: file i is test "
        f"when i % 10 == 0 ({len(files['test'])} files, `{files['test'][0].name}` to "
        f"`{files['test'][-1].name}`), validation when i % 10 == 5 "
        f"({len(files['validation'])} files), training otherwise ({len(files['train'])} "
        f"files, `{files['train'][0].name}` to `{files['train'][-1].name}`, concatenated: "
        f"{len(data['train'][1]):,} bytes, {len(x):,} windows of {c}). Held out: the first "
        f"{args.lm_heldout // len(files['test']):,} bytes of each validation / test file "
        f"({len(data['validation'][1]):,} / {len(data['test'][1]):,} bytes, "
        f"{len(xv):,} / {len(xt):,} windows). Model: `_transformers.byte_lm`, "
        f"{args.lm_blocks} causal pre-LN blocks, width {args.lm_dim}, {args.lm_heads} "
        f"heads, SwiGLU MLP {args.lm_mlp}, context {c}; {source} {args.lm_epochs} epoch(s) "
        f"({train_s:.0f} s; batch {LM_BATCH}, Adam {args.lm_lr:g} with {args.lm_warmup} "
        "warm-up steps then cosine to 0, gradients clipped at global norm 1). Perplexity per "
        "byte: exp of the mean next-byte cross-entropy over every target of the held-out "
        "windows. n-gram references: byte models counted on the same training text and "
        "scored on the same target bytes (interpolated Witten-Bell over add-one byte "
        "frequencies; the unigram is the add-one frequencies).",
        "",
        *baselines,
        "",
        "Every pruned model: one-shot prune (calibration: 256 training windows) -> shrink -> "
        f"fine-tune 1 epoch on {len(tune_x):,} training windows drawn at random (batch "
        f"{BATCH}, Adam 1e-3 cosine to 0; {np.median(tune_s):.0f} s median), without and "
        "with distillation (tfprune.Distiller, T=2, alpha=0.5, teacher = dense). Heads 50 %: "
        "prune_heads; MLP 50 %: prune_channels on the SwiGLU hidden units (gate and up "
        "columns with the down rows); both: the two; depth: prune_blocks removes "
        f"{max(1, args.lm_blocks // 4)} of {args.lm_blocks} layers. Criteria as for the ViT "
        "(heads/MLP: activation = Minitron, magnitude = l2/l1, random; depth: ShortGPT Block "
        "Influence or random). Perplexity on the test windows; MACs per byte of context.",
        "",
        *lines,
        "",
    ]
