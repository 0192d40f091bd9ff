"""Prune a small Vision Transformer: heads, MLP width and depth, then distil and export.

Usage: `python examples/prune_transformer.py [--quick]`

A ViT (2x2 patches of scikit-learn's 8x8 digits, 3 pre-LayerNorm blocks, 4 heads) is
trained, then half its attention heads and half its MLP neurons are removed (scored by
their activations on calibration data), the least influential block is dropped, and the
small model is fine-tuned against the original with `tfprune.Distiller` and exported to an
int8 TFLite file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras

import tfprune
from tfprune import data


def build(blocks: int = 3, dim: int = 32, heads: int = 4, mlp: int = 64) -> keras.Model:
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
    epochs, tune = (8, 2) if args.quick else (40, 10)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)

    # --8<-- [start:prune]
    calibration = [x_train[:256]]
    # Half the heads of every attention layer, by the norm of each head's output.
    pruned = tfprune.prune_heads(model, ratio=0.5, criterion="activation", data=calibration)
    # Half the MLP neurons, by their mean |activation| (Minitron).
    neurons = tfprune.activation_scores.activation_criterion(pruned, calibration)
    pruned = tfprune.prune_channels(pruned, ratio=0.5, criterion=neurons)
    small = tfprune.shrink(pruned)  # num_heads 4 -> 2, MLP 64 -> 32 units
    # One whole transformer layer, the one that changes its input least (ShortGPT).
    units = [[f"block{i}_attn_add", f"block{i}_mlp_add"] for i in range(3)]
    small, report = tfprune.prune_blocks(small, n=1, data=calibration, units=units)
    print("removed", report.removed, f"output change {report.output_change:.3f}")
    # --8<-- [end:prune]

    # --8<-- [start:distill]
    distiller = tfprune.Distiller(student=small, teacher=model, temperature=2.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    distiller.fit(x_train, y_train, batch_size=64, epochs=tune, verbose=0)
    # --8<-- [end:distill]

    small.compile(loss=loss, metrics=["accuracy"])
    accuracy = {
        "dense": model.evaluate(x_test, y_test, verbose=0)[1],
        "pruned": small.evaluate(x_test, y_test, verbose=0)[1],
    }
    print(f"params {model.count_params():,} -> {small.count_params():,}")
    print(f"test accuracy dense {accuracy['dense']:.4f}, pruned {accuracy['pruned']:.4f}")
    with tempfile.TemporaryDirectory() as folder:
        # --8<-- [start:export]
        result = tfprune.export.tflite(
            small,
            os.path.join(folder, "vit_int8.tflite"),
            quantize="int8",
            representative_data=x_train[:200],
            verify_data=(x_test, y_test),
        )
        print(result.format())
        # --8<-- [end:export]
    return {"model": model, "small": small, "report": report, "accuracy": accuracy}


if __name__ == "__main__":
    main(sys.argv[1:])
