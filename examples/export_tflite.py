"""Export: a channel-pruned digits CNN to int8 TFLite (verified) and a TFLite Micro array.

python examples/export_tflite.py --out exported/           # 6 epochs
python examples/export_tflite.py --out exported/ --quick   # 1 epoch
"""

from __future__ import annotations

import argparse
import os

import keras

import tfprune
from tfprune import data, demo


def main(argv=None) -> dict:
    """Trains, prunes 50 % of the channels, exports int8 TFLite and TFLite Micro files.

    Returns:
        `{"result": ExportResult, "latency": Latency, "micro": MicroResult}`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="exported", help="output folder")
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of 6")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    model = demo.build_cnn()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=1 if args.quick else 6, verbose=0)
    pruned = tfprune.prune_channels(model, 0.5, ignore=["logits"])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.tflite")

    # --8<-- [start:export]
    result = tfprune.export.tflite(
        pruned,  # shrunk (zeroed channels removed) and stripped on the way
        path,
        quantize="int8",  # full-integer, int8 input and output
        representative_data=x_train[:300],  # calibration
        verify_data=(x_test, y_test),  # run the file in LiteRT and compare with Keras
    )
    print(result.format())
    latency = tfprune.export.latency(path, threads=1)
    print(f"median latency {latency.median * 1e6:.1f} us")
    micro = tfprune.export.micro(path, args.out, "model")  # model.h + model.cc
    # --8<-- [end:export]
    return {"result": result, "latency": latency, "micro": micro}


if __name__ == "__main__":
    main()
