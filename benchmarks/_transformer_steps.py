"""Shared by the transformer benchmarks (`transformers.py`, `_lm_bench.py`): pruning one
model in each of the ways the issue names, fine-tuning, evaluation and the cache of trained
dense models."""

from __future__ import annotations

import json
import os
import pathlib
import time

import keras
import numpy as np
from _bench import latencies

import tfprune

BATCH = 128
CACHE = pathlib.Path.home() / ".cache" / "tfprune-benchmarks"
KINDS = ("heads", "mlp", "both", "depth")


def mlp_ignore(layer) -> bool:
    """prune_channels predicate: leave every group that is not an MLP's hidden units."""
    return not (layer.name.endswith("_mlp_up") or layer.name.endswith("_mlp_gate"))


def prune(model, kind: str, criterion: tuple[str, str], calib, loss, layers: int):
    """One pruning of `model` (heads/MLP: zeroed copy; depth: a shorter model), shrunk."""
    if kind in ("heads", "both"):
        model = tfprune.prune_heads(model, 0.5, criterion=criterion[0], data=calib, loss=loss)
    if kind in ("mlp", "both"):
        mlp_criterion = criterion[1]
        if mlp_criterion == "activation":
            mlp_criterion = tfprune.activation_scores.activation_criterion(
                model, [c[0] for c in calib]
            )
        model = tfprune.prune_channels(
            model, 0.5, criterion=mlp_criterion, data=calib, loss=loss, ignore=mlp_ignore
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
            ignore=lambda layer: not mlp_ignore(layer),
            through_norms=True,
        )
    if kind == "depth":
        units = [[f"block{i}_attn_add", f"block{i}_mlp_add"] for i in range(layers)]
        n = max(1, layers // 4)
        if criterion[0] == "random":
            rng = np.random.default_rng(0)
            units = [units[i] for i in rng.permutation(layers)[:n]]
        model, _ = tfprune.prune_blocks(model, n=n, data=[c[0] for c in calib], units=units)
    return tfprune.shrink(model, through_norms=kind == "hidden")


CRITERIA = {
    "informed": ("activation", "activation"),
    "magnitude": ("l2", "l1"),
    "random": ("random", "random"),
}


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy with the same weights (a teacher the Distiller may freeze)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def tune(
    student,
    teacher,
    x,
    y,
    epochs: int,
    distill: bool,
    loss,
    lr: float,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> float:
    """Fine-tunes `student` in place (Adam, cosine to 0), optionally distilled (`temperature`,
    `alpha`: the Distiller's); seconds."""
    t0 = time.time()
    steps = epochs * int(np.ceil(len(x) / BATCH))
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps))
    # The Distiller freezes its teacher: give it a copy, so the dense model (from which the
    # next variants are pruned) stays trainable.
    target = (
        tfprune.Distiller(student, copy_model(teacher), temperature, alpha) if distill else student
    )
    # No XLA: a few dozen steps on each new model cost less than compiling them.
    target.compile(optimizer=optimizer, loss=loss, jit_compile=False)
    target.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return time.time() - t0


def logits(model, x, batch: int = 256) -> np.ndarray:
    """Eager batched calls (no `predict` tracing per model)."""
    return np.concatenate(
        [keras.ops.convert_to_numpy(model(x[i : i + batch])) for i in range(0, len(x), batch)]
    )


def accuracy(model, x, y) -> float:
    """Top-1 accuracy; one traced `predict` (faster than eager calls on 10,000 images)."""
    return float((model.predict(x, batch_size=1000, verbose=0).argmax(-1) == y).mean())


def perplexity(model, x, y) -> float:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    losses = [
        float(keras.ops.convert_to_numpy(loss(y[i : i + 128], logits(model, x[i : i + 128]))))
        * len(x[i : i + 128])
        for i in range(0, len(x), 128)
    ]
    return float(np.exp(sum(losses) / len(x)))


def load_or_train(name: str, folder: pathlib.Path | None, train) -> tuple[keras.Model, float, bool]:
    """The model `train()` returns, saved as `folder/name.keras` and loaded from there next
    time; also the training seconds (stored beside it) and whether it came from the cache."""
    if folder is None:
        t0 = time.time()
        return train(), time.time() - t0, False
    path, meta = folder / f"{name}.keras", folder / f"{name}.json"
    if path.exists() and meta.exists():
        return keras.saving.load_model(path), json.loads(meta.read_text())["train_s"], True
    t0 = time.time()
    model = train()
    train_s = time.time() - t0
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)
    meta.write_text(json.dumps({"train_s": train_s}))
    return model, train_s, False


def int8_files(models: dict, folder: str, x_calib, verify, rounds: int) -> dict:
    """Exports each model to int8 TFLite (verified), times the files in interleaved rounds.

    Returns `{key: (bytes, seconds, LiteRT accuracy or None, number of operators)}`.
    """
    files = {}
    for key, model in models.items():
        path = os.path.join(folder, key.replace("/", "_") + ".tflite")
        result = tfprune.export.tflite(
            model, path, quantize="int8", representative_data=x_calib, verify_data=verify
        )
        accuracy = result.verification.accuracy if verify is not None else None
        ops = len(tfprune.export.describe(path).ops)
        files[key] = (path, os.path.getsize(path), accuracy, ops)
    times = latencies([f[0] for f in files.values()], rounds=rounds)
    return {k: (f[1], t, f[2], f[3]) for (k, f), t in zip(files.items(), times)}
