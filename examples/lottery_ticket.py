"""Lottery tickets: iterative magnitude pruning with rewinding to initialisation, on digits.

python examples/lottery_ticket.py --out imp_run/           # 5 rounds of 5 epochs
python examples/lottery_ticket.py --out imp_run/ --quick   # 2 rounds of 1 epoch
"""

from __future__ import annotations

import argparse
import os

import keras

import tfprune
from tfprune import data


def build_mlp() -> keras.Model:
    """A small MLP for the 8x8 digits, output layer named "logits"."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(32, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def main(argv=None) -> dict:
    """Runs IMP on an MLP for the digits.

    Returns:
        `{"search": the LotterySearch, "model": the loaded ticket applied to a new MLP}`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="imp_run", help="folder for the search's state")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 epoch")
    args = parser.parse_args(argv)
    rounds, epochs = (2, 1) if args.quick else (5, 5)
    (x, y), (x_test, y_test) = data.digits()

    # --8<-- [start:search]
    search = tfprune.lottery.LotterySearch(
        build_mlp(),
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        rounds=rounds,
        rate=0.2,  # each round prunes 20 % of the remaining weights
        output_rate=0.1,  # 10 % of the output layer's
        rewind="init",  # back to the initial weights after each round
        directory=args.out,  # state after every round; run again to resume
    )
    ticket = search.run(x, y, epochs=epochs, batch_size=32, test_data=(x_test, y_test))
    print(ticket.remaining)  # fraction of weights kept per layer
    ticket.save(os.path.join(args.out, "ticket.npz"))
    model = tfprune.lottery.Ticket.load(os.path.join(args.out, "ticket.npz")).apply(build_mlp())
    # --8<-- [end:search]
    return {"search": search, "model": model}


if __name__ == "__main__":
    main()
