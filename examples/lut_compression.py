"""LUT compression: an MLP with 16 shared values per output channel, smaller in TFLite Micro.

python examples/lut_compression.py --out firmware/           # 8 epochs
python examples/lut_compression.py --out firmware/ --quick   # 1 epoch
"""

from __future__ import annotations

import argparse
import os

import keras
import numpy as np

import tfprune
from tfprune import data


def share(model: keras.Model, values: int = 16) -> None:
    """Snaps each Dense kernel's output channel to `values` evenly spaced levels.

    A stand-in for training with weight sharing: any model whose kernels have few distinct
    values per output channel (e.g. clustered during fine-tuning) compresses the same way.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            low, high = kernel.min(axis=0), kernel.max(axis=0)
            steps = np.rint((kernel - low) / (high - low) * (values - 1))
            layer.set_weights([low + steps * (high - low) / (values - 1), bias])


def main(argv=None) -> dict:
    """Trains a digits MLP, shares its weights, exports int8 and the LUT-compressed C array.

    Returns:
        `{"lut": LutCompression, "micro": MicroResult, "accuracy": float}`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="firmware", help="output folder")
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of 8")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=1 if args.quick else 8, verbose=0)
    share(model, values=16)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    print(f"test accuracy with 16 values per channel: {accuracy:.3f}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "mlp.tflite")

    # --8<-- [start:compress]
    tfprune.export.tflite(model, path, quantize="int8", representative_data=x_train[:300])
    lut = tfprune.export.compress_tflite(path, os.path.join(args.out, "mlp_lut.tflite"))
    print(lut.format())  # flash before/after, bits and bytes per tensor
    micro = tfprune.export.micro(path, args.out, "mlp", compress=True, verify_data=x_test[:20])
    print(micro.lut.format())  # identical outputs in TFLite Micro; arena with/without memory
    # --8<-- [end:compress]
    return {"lut": lut, "micro": micro, "accuracy": accuracy}


if __name__ == "__main__":
    main()
