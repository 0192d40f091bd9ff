"""Deep Compression: prune the digits CNN, share its weights at 4 bits, export int8.

python examples/weight_sharing.py           # 8 + 3 + 3 epochs
python examples/weight_sharing.py --quick   # 1 + 1 + 1 epochs
"""

from __future__ import annotations

import argparse
import os
import tempfile

import keras
import numpy as np

import tfprune
from tfprune import data, demo


def _compile(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(argv=None) -> dict:
    """Trains the digits CNN, prunes 80 % of its weights, shares them at 4 bits, exports.

    Returns:
        `{"pruned": stripped pruned model, "final": stripped shared model, "report":
        tfprune.SharingReport, "int8_values": int8 values per channel in the file}`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 + 1 + 1 epochs")
    args = parser.parse_args(argv)
    epochs, tune = (1, 1) if args.quick else (8, 3)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    model = _compile(demo.build_cnn())
    model.fit(x_train, y_train, epochs=epochs, verbose=0)

    # --8<-- [start:prune]
    pruned = tfprune.wrap(model, sparsity=tfprune.schedules.ConstantSparsity(0.8))
    _compile(pruned).fit(
        x_train, y_train, epochs=tune, verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()]
    )
    # --8<-- [end:prune]
    # --8<-- [start:cluster]
    shared = tfprune.cluster(pruned, bits=4)  # 16 values per output channel, 0 included
    _compile(shared).fit(x_train, y_train, epochs=tune, verbose=0)  # trains the centroids
    final = tfprune.strip(shared)  # plain Keras model with the shared values
    # --8<-- [end:cluster]
    # --8<-- [start:export]
    with tempfile.TemporaryDirectory() as out:
        path = os.path.join(out, "shared.tflite")
        tfprune.export.tflite(final, path, quantize="int8", representative_data=x_train[:200])
        values = tfprune.deep_compression.int8_values_per_channel(path)
        print("most int8 values in one channel:", max(values.values()))
        report = tfprune.sharing_report(final, files={"int8 .tflite": path})
        print(report.format())
    # --8<-- [end:export]
    for name, m in (("pruned", tfprune.strip(pruned)), ("shared", final)):
        accuracy = np.mean(np.argmax(m.predict(x_test, verbose=0), -1) == y_test)
        print(f"{name} test accuracy {accuracy:.4f}")
    return {
        "pruned": tfprune.strip(pruned),
        "final": final,
        "report": report,
        "int8_values": values,
    }


if __name__ == "__main__":
    main()
