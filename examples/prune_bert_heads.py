"""Remove half the attention heads of a keras-hub BERT, save it, load it back.

keras-hub's `TransformerEncoder` (BERT) and `TransformerDecoder` (GPT-2) compute their head
size as `hidden_dim // num_heads`; `tfprune.shrink` rebuilds a block that lost heads as
`tfprune.hub_sized.HeadSizedTransformerEncoder` (or `...Decoder`), the same block with its
head size in its config, so the heads keep their size and the shrunk model predicts what
the zeroed one predicts. Heads are ranked by their activations on calibration data.

Run: python examples/prune_bert_heads.py
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np

import tfprune


def build_bert():
    # A tiny BERT from a config (no preset, no download).
    return keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=4,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
    )


def main(path: str = "bert_heads.keras") -> tuple:
    backbone = build_bert()
    feed = {
        "token_ids": np.array([[5, 7, 9, 11, 2, 0]]),
        "segment_ids": np.zeros((1, 6), "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 1, 0]]),
    }
    # --8<-- [start:prune]
    pruned = tfprune.prune_heads(backbone, ratio=0.5, criterion="activation", data=[feed])
    small = tfprune.shrink(pruned)
    block = small.get_layer("transformer_layer_0")
    print(type(block).__name__, "num_heads:", block.num_heads, "head_dim:", block.head_dim)
    print("parameters:", backbone.count_params(), "->", small.count_params())
    small.save(path)
    # --8<-- [end:prune]
    # --8<-- [start:load]
    # In a fresh process: importing tfprune registers its classes (keras-hub is imported
    # when the file holds one of its blocks).
    loaded = keras.saving.load_model(path, safe_mode=True)
    # --8<-- [end:load]
    out = {k: np.asarray(v) for k, v in small(feed).items()}
    diff = np.abs(out["sequence_output"] - np.asarray(pruned(feed)["sequence_output"])).max()
    reloaded = np.abs(np.asarray(loaded(feed)["sequence_output"]) - out["sequence_output"]).max()
    print(f"max |shrunk - zeroed|: {diff:.1e}, max |loaded - shrunk|: {reloaded:.1e}")
    return backbone, small, loaded, diff, reloaded


if __name__ == "__main__":
    main()
