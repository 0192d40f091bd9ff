"""Prune the hidden width of a keras-hub Gemma: its embedding, blocks, norms and tied head.

`through_norms=True` makes the residual stream of a keras-hub `GemmaBackbone` one channel
group: the token embedding (whose transpose is also the language-model head), every weight
of every `GemmaDecoderBlock` on the hidden axis, and the RMSNorm scales. The activation
criterion scores each hidden channel by its mean |output| at the RMSNorms (Minitron), read
by hooks inside the blocks. `tfprune.shrink` rebuilds each block with the smaller
`hidden_dim`. Not exact (the norms now average over fewer channels): both calls warn, and
the result is meant to be fine-tuned or distilled (`tfprune.distill`).

`main_gpt2` does the same to a keras-hub GPT-2, whose `TransformerDecoder` blocks derive
their head size from the hidden width: `shrink` rebuilds them as
`tfprune.hub_sized.HeadSizedTransformerDecoder` with the old head size.

Run: python examples/prune_hub_hidden_width.py
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np

import tfprune


def build_gemma_lm() -> keras.Model:
    # A tiny Gemma from a config (no preset, no download), with its tied output head.
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        hidden_dim=16,
        intermediate_dim=32,
    )
    logits = backbone.token_embedding(backbone.output, reverse=True)
    return keras.Model(backbone.input, logits)


def main() -> tuple:
    model = build_gemma_lm()
    rng = np.random.default_rng(0)
    calibration = [
        {"token_ids": rng.integers(1, 50, (4, 6)), "padding_mask": np.ones((4, 6), "int32")}
    ]
    # --8<-- [start:prune]
    criterion = tfprune.activation_scores.activation_criterion(model, calibration)
    pruned = tfprune.prune_channels(  # UserWarning: not exact, names the 5 RMSNorms
        model,
        ratio=0.0,  # heads and MLP units stay
        ratios={"token_embedding": 0.5},  # half the hidden width (the stream's group)
        criterion=criterion,
        through_norms=True,
    )
    small = tfprune.shrink(pruned, through_norms=True)  # the same UserWarning
    block = small.get_layer("decoder_block_0").get_config()
    print("hidden_dim:", block["hidden_dim"])
    print("parameters:", model.count_params(), "->", small.count_params())
    # --8<-- [end:prune]
    return model, pruned, small


def main_gpt2() -> tuple:
    # A tiny GPT-2 (4 heads of size 4) with its tied output head.
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=4,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    model = keras.Model(backbone.input, backbone.token_embedding(backbone.output, reverse=True))
    # --8<-- [start:gpt2]
    pruned = tfprune.prune_channels(
        model, ratio=0.0, ratios={"token_embedding": 0.5}, through_norms=True
    )
    small = tfprune.shrink(pruned, through_norms=True)
    block = small.get_layer("transformer_layer_0")
    print(type(block).__name__, "num_heads:", block.num_heads, "head_dim:", block.head_dim)
    print("parameters:", model.count_params(), "->", small.count_params())
    # --8<-- [end:gpt2]
    return model, pruned, small


if __name__ == "__main__":
    main()
    main_gpt2()
