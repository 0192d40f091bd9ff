"""Structured pruning: remove half the channels of the digits CNN, shrink, fine-tune.

python examples/structured_pruning.py           # 6 + 3 epochs
python examples/structured_pruning.py --quick   # 1 + 1 epochs
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import tfprune
from tfprune import data, demo


def _compile(model: keras.Model) -> None:
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def main(argv=None) -> dict[str, keras.Model]:
    """Trains the digits CNN, prunes 50 % of its channels and shrinks it.

    Returns:
        `{"dense": trained model, "pruned": zeroed copy, "small": shrunk and fine-tuned}`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 + 1 epochs instead of 6 + 3")
    args = parser.parse_args(argv)
    epochs, fine_tune = (1, 1) if args.quick else (6, 3)
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    model = demo.build_cnn()
    _compile(model)
    model.fit(x_train, y_train, epochs=epochs, verbose=0)

    # --8<-- [start:prune]
    pruned = tfprune.prune_channels(
        model,
        ratio=0.5,  # half the channels of every prunable group
        criterion="l1",  # filter norms summed over the group
        scope="layer",
        round_to=8,  # keep a multiple of 8 channels
        ignore=["logits"],  # the output layer keeps its 10 classes
    )
    small = tfprune.shrink(pruned)  # plain Keras model, fewer filters and units
    # --8<-- [end:prune]
    print(f"params: dense {model.count_params():,}, small {small.count_params():,}")
    # --8<-- [start:fine-tune]
    _compile(small)
    small.fit(x_train, y_train, epochs=fine_tune, verbose=0)
    tfprune.summary(small)
    # --8<-- [end:fine-tune]
    for name, m in (("dense", model), ("small", small)):
        accuracy = np.mean(np.argmax(m.predict(x_test, verbose=0), -1) == y_test)
        print(f"{name} test accuracy {accuracy:.4f}")
    return {"dense": model, "pruned": pruned, "small": small}


if __name__ == "__main__":
    main()
