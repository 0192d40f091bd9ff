"""Quickstart: wrap -> fit with UpdateMasks -> strip -> summary, on scikit-learn's digits.

python examples/quickstart.py           # 8 epochs
python examples/quickstart.py --quick   # 2 epochs
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import tfprune
from tfprune import data, demo


def main(argv=None) -> keras.Model:
    """Trains, prunes to 75 % and strips a small CNN; returns the plain pruned model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs instead of 8")
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else 8
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()

    model = demo.build_cnn()
    steps = epochs * int(np.ceil(len(x_train) / 32))
    end = max(10, steps // 2 // 10 * 10)  # a multiple of frequency: the last update hits 75 %
    # --8<-- [start:prune]
    pruned = tfprune.wrap(
        model,
        sparsity=tfprune.schedules.PolynomialDecay(0.0, 0.75, 0, end, frequency=10),
        exclude=["logits"],
    )
    pruned.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    pruned.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks()],
    )
    final = tfprune.strip(pruned)
    tfprune.summary(final)
    # --8<-- [end:prune]
    accuracy = np.mean(np.argmax(final.predict(x_test, verbose=0), -1) == y_test)
    print(f"test accuracy {accuracy:.4f}")
    return final


if __name__ == "__main__":
    main()
