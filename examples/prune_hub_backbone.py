"""Prune a keras-hub text backbone: MLP units and attention heads inside its blocks.

keras-hub's BERT, GPT-2 and Gemma keep every Dense inside one layer per transformer block.
`tfprune.prune_channels` removes MLP units of each block (the intermediate width),
`tfprune.prune_heads` removes attention heads, and `tfprune.shrink` rebuilds every block
from its config with the smaller `intermediate_dim` (and, for Gemma, fewer heads). The
shrunk backbone predicts what the zeroed one predicts.

Run: python examples/prune_hub_backbone.py
"""

from __future__ import annotations

import keras_hub
import numpy as np

import tfprune


def build_gemma():
    # A tiny Gemma from a config (no preset, no download).
    return keras_hub.models.GemmaBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        hidden_dim=16,
        intermediate_dim=32,
    )


def main() -> tuple:
    backbone = build_gemma()
    feed = {"token_ids": np.array([[5, 7, 9, 11, 2, 0]]), "padding_mask": np.ones((1, 6))}
    # --8<-- [start:prune]
    pruned = tfprune.prune_heads(backbone, ratio=0.5, unit="group")  # whole key/value groups
    pruned = tfprune.prune_channels(pruned, ratio=0.5)  # half the MLP units of every block
    small = tfprune.shrink(pruned)
    block = small.get_layer("decoder_block_0").get_config()
    print("heads:", block["num_query_heads"], "query,", block["num_key_value_heads"], "key/value")
    print("intermediate_dim:", block["intermediate_dim"])
    print("parameters:", backbone.count_params(), "->", small.count_params())
    diff = np.abs(np.asarray(small(feed)) - np.asarray(pruned(feed))).max()
    print(f"max |shrunk - zeroed|: {diff:.1e}")
    # --8<-- [end:prune]
    return backbone, pruned, small, diff


if __name__ == "__main__":
    main()
