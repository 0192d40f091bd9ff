"""Learned sparsity on digits: network slimming, group lasso and L0 gates, each then shrunk.

python examples/learned_sparsity.py           # 8 epochs each
python examples/learned_sparsity.py --quick   # 1 epoch each
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import tfprune
from tfprune import data, demo, gates, regularizers


def _compile(model: keras.Model) -> None:
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def main(argv=None) -> dict[str, keras.Model]:
    """Trains with each method and shrinks; returns the trained and the shrunk models."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of 8")
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else 8
    keras.utils.set_random_seed(0)
    (x, y), _ = data.digits()

    # --8<-- [start:slimming]
    # Network slimming (Liu et al. 2017): L1 on the BatchNormalization gammas.
    slim = regularizers.slimming(demo.build_cnn(), strength=1e-4)  # clone with the penalty
    _compile(slim)
    slim.fit(x, y, epochs=epochs, verbose=0)  # the penalty is in slim.losses
    slim_pruned = tfprune.prune_channels(
        slim, 0.5, criterion="bn_scale", ignore=["fc", "logits"]
    )  # rank conv channels by |gamma|
    slim_small = tfprune.shrink(slim_pruned)
    # --8<-- [end:slimming]

    # --8<-- [start:group-lasso]
    # Group lasso (Wen et al. 2016) on the filters, with exact zeros from a proximal step.
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(
        32,
        3,
        activation="relu",
        kernel_regularizer=regularizers.GroupLasso(1e-3, "filters"),
        name="conv",
    )(inputs)
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h))
    lasso = keras.Model(inputs, outputs)
    _compile(lasso)
    lasso.fit(x, y, epochs=epochs, verbose=0, callbacks=[regularizers.ProximalGroupLasso()])
    lasso_small = tfprune.shrink(lasso)  # filters that are exactly zero are removed
    # --8<-- [end:group-lasso]

    # --8<-- [start:gates]
    # L0 hard-concrete gates (Louizos et al. 2018), one per channel, learned in training.
    gated = tfprune.wrap(
        demo.build_cnn(),
        sparsity=None,  # no schedule: training decides
        granularity="channel",
        gate=gates.L0(lam=1.0, num_examples=len(x)),
        exclude=["logits"],
    )
    _compile(gated)
    gated.fit(x, y, epochs=epochs, verbose=0)  # loss += lam / N * expected L0
    tfprune.summary(gated)  # a "gates open" column
    gated_small = tfprune.shrink(gated)  # gates folded in, closed channels removed
    # --8<-- [end:gates]

    for name, m in (("slimming", slim_small), ("group lasso", lasso_small), ("L0", gated_small)):
        print(f"{name}: {m.count_params():,} params after shrink")
    probe = np.asarray(x[:64])
    return {
        "slim": slim,
        "slim_pruned": slim_pruned,
        "slim_small": slim_small,
        "lasso": lasso,
        "lasso_small": lasso_small,
        "gated": gated,
        "gated_small": gated_small,
        "probe": probe,
    }


if __name__ == "__main__":
    main()
