"""Where the int8 ViT's LiteRT time goes: a per-stage profile from prefix models.

The LiteRT Python interpreter has no per-operator profiler, so the profile is measured by
difference: the ViT is cut after each stage of its first block (and after every block), each
prefix `keras.Model(inputs, layer.output)` is exported to int8 TFLite and timed with the same
interleaved protocol as the whole model; a stage's time is its prefix's latency minus the
previous prefix's, and its operators are the operators its prefix file adds. Run on the
dense model and on the pruned one, the table shows which stages shrink with the heads and
MLP units and which (LayerNorm, residual adds, the fixed per-invoke cost) do not.
"""

from __future__ import annotations

import collections
import os
import tempfile

import keras
from _bench import latencies

import tfprune

# Stages of a block in `_transformers._block` order: (layer that ends it, label).
BLOCK_STAGES = (
    ("ln1", "LayerNorm 1"),
    ("attn", "attention (MultiHeadAttention)"),
    ("attn_add", "residual add"),
    ("ln2", "LayerNorm 2"),
    ("mlp_up", "MLP up + GELU"),
    ("mlp_down", "MLP down"),
    ("mlp_add", "residual add"),
)


def _stages(blocks: int) -> list[tuple[str, str]]:
    """Prefix ends and labels: patch embedding, block 0 stage by stage, the other blocks
    whole, then the head (final LayerNorm, pooling, logits)."""
    stages = [("pos_add", "patch embedding + position (incl. input quantize)")]
    stages += [(f"block0_{end}", f"block 0: {label}") for end, label in BLOCK_STAGES]
    stages += [(f"block{i}_mlp_add", f"block {i} (whole)") for i in range(1, blocks)]
    return [*stages, (None, "head: LayerNorm, pooling, logits (incl. output dequantize)")]


def _op_delta(before: tuple[str, ...], after: tuple[str, ...]) -> str:
    """The operators `after` has beyond `before`, as `NAME xcount`, most frequent first."""
    added = collections.Counter(after) - collections.Counter(before)
    return ", ".join(f"{op} x{n}" if n > 1 else op for op, n in added.most_common())


def profile(models: dict[str, keras.Model], x_calib, blocks: int, rounds: int) -> list[str]:
    """Per-stage int8 LiteRT latency of each model, measured on prefix models.

    Args:
        models: Label -> ViT built by `_transformers.vit` (same layer names), e.g. dense and
            pruned.
        x_calib: Images for the int8 calibration.
        blocks: Number of blocks of the models.
        rounds: Interleaved timing rounds (best round per file).

    Returns:
        Markdown table lines: one row per stage, time and operators per model, then totals.
    """
    stages = _stages(blocks)
    with tempfile.TemporaryDirectory() as folder:
        paths, ops = {}, {}
        for label, source in models.items():
            # A fresh copy: the layers of a shrunk model also belong to the graph it was
            # rebuilt from, so `layer.output` need not be connected to `model.input`.
            model = keras.models.clone_model(source)
            model.set_weights(source.get_weights())
            for k, (end, _) in enumerate(stages):
                out = model.output if end is None else model.get_layer(end).output
                path = os.path.join(folder, f"{label}_{k}.tflite")
                tfprune.export.tflite(
                    keras.Model(model.input, out),
                    path,
                    quantize="int8",
                    representative_data=x_calib,
                )
                paths[label, k] = path
                ops[label, k] = tfprune.export.describe(path).ops
        times = dict(zip(paths, latencies(list(paths.values()), rounds=rounds)))
    labels = list(models)
    head = " | ".join(f"{label} (us) | {label} operators" for label in labels)
    lines = [
        f"| stage | {head} |",
        "| --- |" + " --- | --- |" * len(labels),
    ]
    for k, (_, name) in enumerate(stages):
        cells = []
        for label in labels:
            before = times[label, k - 1] if k else 0.0
            prev_ops = ops[label, k - 1] if k else ()
            cells.append(
                f"{(times[label, k] - before) * 1e6:.0f} | {_op_delta(prev_ops, ops[label, k])}"
            )
        lines.append(f"| {name} | {' | '.join(cells)} |")
    last = len(stages) - 1
    totals = " | ".join(
        f"{times[label, last] * 1e6:.0f} | {len(ops[label, last])} operators" for label in labels
    )
    lines.append(f"| whole model | {totals} |")
    return lines
