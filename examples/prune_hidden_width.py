"""Prune the hidden (embedding) width of a small Vision Transformer, then distil.

Usage: `python examples/prune_hidden_width.py [--quick]`

A ViT (2x2 patches of scikit-learn's 8x8 digits, 2 pre-LayerNorm blocks, a residual
stream of 32 channels) is trained, then half of its hidden channels are removed from the
whole residual stream (patch embedding, every LayerNormalization, the attention layers'
query/key/value inputs and output projections, the MLPs, the classifier's input), scored
by their mean |activation| at the LayerNormalization outputs (Minitron). Removing channels
changes what LayerNormalization computes, so the result is not exact: it is fine-tuned
against the original model with `tfprune.Distiller`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

import tfprune
from tfprune import data


def build(blocks: int = 2, dim: int = 32, heads: int = 4, mlp: int = 64) -> keras.Model:
    """A ViT for 8x8x1 images: 2x2 patches, pre-LayerNorm blocks, mean pooling."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(dim, 2, strides=2, name="patches")(inputs)
    x = keras.layers.Reshape((16, dim), name="tokens")(x)
    for i in range(blocks):
        h = keras.layers.LayerNormalization(name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attn")(h, h)
        x = keras.layers.Add(name=f"block{i}_attn_add")([x, h])
        h = keras.layers.LayerNormalization(name=f"block{i}_ln2")(x)
        h = keras.layers.Dense(mlp, activation="gelu", name=f"block{i}_mlp_up")(h)
        h = keras.layers.Dense(dim, name=f"block{i}_mlp_down")(h)
        x = keras.layers.Add(name=f"block{i}_mlp_add")([x, h])
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs (for tests)")
    args = parser.parse_args(argv)
    epochs, tune = (4, 2) if args.quick else (40, 10)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)

    # --8<-- [start:prune]
    calibration = [x_train[:256]]
    # Mean |activation| of each hidden channel at the LayerNormalization outputs (Minitron).
    criterion = tfprune.activation_scores.activation_criterion(model, calibration)
    mlps = [f"block{i}_mlp_up" for i in range(2)]  # prune the hidden width only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "... the result is not exact ..."
        pruned = tfprune.prune_channels(
            model, ratio=0.5, criterion=criterion, ignore=mlps, through_norms=True
        )
        small = tfprune.shrink(pruned, through_norms=True)  # residual stream 32 -> 16
    # --8<-- [end:prune]

    small.compile(loss=loss, metrics=["accuracy"])
    before_tuning = small.evaluate(x_test, y_test, verbose=0)[1]

    # --8<-- [start:distill]
    distiller = tfprune.Distiller(student=small, teacher=model, temperature=2.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    distiller.fit(x_train, y_train, batch_size=64, epochs=tune, verbose=0)
    # --8<-- [end:distill]

    model.compile(loss=loss, metrics=["accuracy"])
    result = {
        "params": (model.count_params(), small.count_params()),
        "hidden": (model.get_layer("patches").filters, small.get_layer("patches").filters),
        "accuracy": {
            "dense": model.evaluate(x_test, y_test, verbose=0)[1],
            "pruned": before_tuning,
            "distilled": small.evaluate(x_test, y_test, verbose=0)[1],
        },
    }
    print(result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
