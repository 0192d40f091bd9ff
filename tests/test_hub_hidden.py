"""Hidden width through keras-hub blocks and embeddings (`through_norms=True`)."""

from __future__ import annotations

import importlib.util
import pathlib
from contextlib import nullcontext

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune import cli
from tfprune.call_hooks import recording

L, M = keras.layers, keras_hub.models
D, VOCAB, SEQ = 16, 50, 8
_TINY = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=D, intermediate_dim=24)
NOT_EXACT = "removed hidden channels that pass through {n} normalization layer"


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _gemma(hidden_dim: int = D, **kwargs) -> keras.Model:
    """A Gemma language model: the backbone and its tied head (the token embedding reversed)."""
    config = {**_TINY, "hidden_dim": hidden_dim, **kwargs}
    backbone = M.GemmaBackbone(num_query_heads=4, num_key_value_heads=2, head_dim=8, **config)
    return keras.Model(backbone.input, backbone.token_embedding(backbone.output, reverse=True))


def _randomised(model: keras.Model, scale: float = 0.5) -> keras.Model:
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(scale=scale, size=v.shape).astype(v.dtype))
    return model


def _feed(n: int = 2) -> dict:
    rng = np.random.default_rng(1)
    return {
        "token_ids": rng.integers(1, VOCAB, (n, SEQ)),
        "padding_mask": np.ones((n, SEQ), "int32"),
    }


def _gemma_params(d: int) -> int:
    """Parameters of `_gemma()` at hidden width `d`, counted by hand.

    Per block: 2 RMSNorm scales, query and output projections (4 heads x 8) and key/value
    (2 heads x 8), the gate and up projections (12 units each) and the down projection.
    """
    block = 2 * d + 2 * (4 * 8 * d) + 2 * (2 * 8 * d) + 3 * 12 * d
    return VOCAB * d + 2 * block + d  # tied token embedding, 2 blocks, final norm


def test_gemma_stream_is_one_group_through_embedding_blocks_and_tied_head():
    model = _gemma()
    assert [(g.producers, g.channels) for g in tfprune.graph.channel_groups(model)][:1] == [
        (["decoder_block_0"], 2)  # without the opt-in: heads and MLP only, as before
    ]
    groups = tfprune.graph.channel_groups(model, through_norms=True)
    stream = groups[0]
    assert (stream.producers, stream.channels, stream.prunable) == (
        ["token_embedding", "decoder_block_0", "decoder_block_1"],
        D,
        True,
    )
    members = {(m.layer.name, m.weight, m.axis, m.role) for m in stream.members}
    per_block = {
        ("pre_attention_norm.scale", 0, "norm"),
        ("pre_ffw_norm.scale", 0, "norm"),
        ("attention.query_dense.kernel", 1, "input"),
        ("attention.key_dense.kernel", 1, "input"),
        ("attention.value_dense.kernel", 1, "input"),
        ("attention.output_dense.kernel", 2, "output"),
        ("gating_ffw.kernel", 0, "input"),
        ("gating_ffw_2.kernel", 0, "input"),
        ("ffw_linear.kernel", 1, "output"),
    }
    assert members == {
        ("token_embedding", "embeddings", 1, "output"),
        ("final_normalization", "scale", 0, "norm"),
        *((f"decoder_block_{i}", *m) for i in range(2) for m in per_block),
    }
    # Heads and MLP units of each block stay groups of their own.
    assert [(g.producers, g.channels) for g in groups[1:]] == [
        (["decoder_block_0"], 2),
        (["decoder_block_0"], 12),
        (["decoder_block_1"], 2),
        (["decoder_block_1"], 12),
    ]


def _identity_norms(model: keras.Model) -> keras.Model:
    """Every RMSNorm becomes the identity, so that removing channels is exact.

    With epsilon 1e12, RMSNorm is `x * 1e-6` whatever the channels (in float32 the mean
    square vanishes next to 1e12); a scale of `1e6 - 1` (Gemma multiplies by `1 + scale`)
    undoes it. GemmaBackbone passes `layer_norm_epsilon` to its final norm only: the blocks
    take it from their public attribute (their config), and so do their rebuilt copies.
    """
    for layer in model.layers:
        if hasattr(layer, "layer_norm_epsilon"):
            layer.layer_norm_epsilon = 1e12
            for norm in (layer.pre_attention_norm, layer.pre_ffw_norm):
                norm.epsilon = 1e12
    for v in model.weights:
        if v.path.endswith("scale"):
            v.assign(np.full(v.shape, 1e6 - 1, v.dtype))
    return model


def test_gemma_hidden_width_halves_exactly_with_identity_norms_and_round_trips(tmp_path):
    # Small weights keep the stream small next to the norms' epsilon (1e12).
    model = _identity_norms(_randomised(_gemma(layer_norm_epsilon=1e12), scale=0.2))
    assert model.count_params() == _gemma_params(D)
    feed = _feed()
    with pytest.warns(UserWarning, match=NOT_EXACT.format(n=5)):
        pruned = tfprune.prune_channels(
            model, 0.0, ratios={"token_embedding": 0.5}, through_norms=True
        )
    with pytest.warns(UserWarning, match=NOT_EXACT.format(n=5)):
        small = tfprune.shrink(pruned, through_norms=True)
    assert small.count_params() == _gemma_params(D // 2)
    assert small.get_layer("token_embedding").output_dim == D // 2
    blocks = [small.get_layer(f"decoder_block_{i}") for i in range(2)]
    assert [b.get_config()["hidden_dim"] for b in blocks] == [D // 2] * 2
    assert [b.get_config()["intermediate_dim"] for b in blocks] == [24] * 2
    assert tuple(blocks[0].attention.query_dense.kernel.shape) == (4, D // 2, 8)
    assert tuple(blocks[0].ffw_linear.kernel.shape) == (12, D // 2)
    expected = _np(pruned(feed))
    assert np.abs(expected - _np(model(feed))).max() > 0.1
    np.testing.assert_allclose(_np(small(feed)), expected, rtol=1e-4, atol=1e-4)
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras", safe_mode=True)
    np.testing.assert_allclose(_np(loaded(feed)), _np(small(feed)), atol=1e-6)


def test_gemma_heads_mlp_and_hidden_width_together_are_exact_with_identity_norms():
    model = _identity_norms(_randomised(_gemma(layer_norm_epsilon=1e12), scale=0.2))
    pruned = tfprune.prune_heads(model, 0.5, unit="group")
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(pruned, 0.5, through_norms=True)
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    config = small.get_layer("decoder_block_1").get_config()
    assert [config[k] for k in ("hidden_dim", "num_query_heads", "num_key_value_heads")] == [
        D // 2,
        2,
        1,
    ]
    assert config["intermediate_dim"] == 12
    attention = small.get_layer("decoder_block_1").attention
    assert tuple(attention.query_dense.kernel.shape) == (2, D // 2, 8)
    assert tuple(attention.output_dense.kernel.shape) == (2, 8, D // 2)
    feed = _feed()
    np.testing.assert_allclose(_np(small(feed)), _np(pruned(feed)), rtol=1e-4, atol=1e-4)


def _kept_slices(old: keras.Model, new: keras.Model, keep: np.ndarray) -> None:
    """Copies every weight of `old` into `new`, keeping the `keep` positions of each axis
    that is `D` wide in `old` and `D // 2` in `new` (the hidden axes: no other is `D`)."""
    for v_old, v_new in zip(old.weights, new.weights):
        value = _np(v_old)
        for axis, (a, b) in enumerate(zip(value.shape, v_new.shape)):
            if (a, b) == (D, D // 2):
                value = np.take(value, keep, axis=axis)
        v_new.assign(value)


def test_gemma_randomised_norms_match_a_gemma_built_at_the_kept_width():
    model = _randomised(_gemma())
    feed = _feed()
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(
            model, 0.0, ratios={"token_embedding": 0.5}, through_norms=True
        )
    keep = np.flatnonzero(np.abs(_np(pruned.get_layer("token_embedding").embeddings)).sum(0))
    assert keep.size == D // 2
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    # The reference: keras-hub's own Gemma at hidden_dim 8 holding the kept slices, whose
    # RMSNorms normalize over the 8 kept channels. Gemma scales its embeddings by
    # sqrt(hidden_dim); the shrunk model keeps sqrt(16) (it computes what the pruned model
    # computes, less the removed channels), so the reference's table is scaled by sqrt(2).
    reference = _gemma(D // 2)
    _kept_slices(model, reference, keep)
    table = reference.get_layer("token_embedding").embeddings
    table.assign(_np(table) * np.sqrt(2.0))
    hidden = keras.Model(small.input, small.get_layer("final_normalization").output)
    expected = reference.get_layer("final_normalization").output
    expected = keras.Model(reference.input, expected)(feed)
    np.testing.assert_allclose(_np(hidden(feed)), _np(expected), rtol=1e-4, atol=1e-4)
    # Not exact: the zeroed model normalizes over all 16 channels.
    zeroed = keras.Model(pruned.input, pruned.get_layer("final_normalization").output)
    assert np.abs(_np(zeroed(feed))[..., keep] - _np(expected)).max() > 1e-2


def _hub_lm(kind: str, **kwargs) -> keras.Model:
    """A BERT (token logits and a classifier on the pooled output), GPT-2 or Mistral LM."""
    kwargs = {**_TINY, **kwargs}
    if kind == "bert":
        backbone = M.BertBackbone(num_heads=4, max_sequence_length=SEQ, **kwargs)
        out = backbone.output
        logits = backbone.token_embedding(out["sequence_output"], reverse=True)
        return keras.Model(backbone.input, [logits, L.Dense(3, name="cls")(out["pooled_output"])])
    if kind == "gpt2":
        backbone = M.GPT2Backbone(num_heads=4, max_sequence_length=SEQ, **kwargs)
    elif kind == "mistral":
        backbone = M.MistralBackbone(num_query_heads=4, num_key_value_heads=2, **kwargs)
    else:
        backbone = M.QwenBackbone(num_query_heads=4, num_key_value_heads=2, **kwargs)
    return keras.Model(backbone.input, backbone.token_embedding(backbone.output, reverse=True))


def _hub_feed(model: keras.Model) -> dict:
    feed = _feed()
    if "segment_ids" in model.input:
        feed["segment_ids"] = np.random.default_rng(4).integers(0, 2, (2, SEQ))
    return feed


def _identity_layer_norms(model: keras.Model) -> keras.Model:
    """Every LayerNormalization / Mistral RMSNorm of `model` becomes the identity.

    LayerNormalization subtracts the mean over the channels, which depends on how many
    there are; with `rms_scaling` it does not (`x * rsqrt(var + epsilon) * gamma`), and with
    epsilon 1e12 it is `x * 1e-6 * gamma` (as in `_identity_norms`). The blocks build their
    norms from their config, so this is set on every model before it is called; the gammas
    (`1e6`) are weights and are set once, on the original model.
    """
    for layer in model.layers:
        stream = tfprune.hub_hidden.STREAMS.get(keras.saving.get_registered_name(type(layer)))
        norms = [getattr(layer, n) for n in stream.norms] if stream else [layer]
        for norm in norms:
            if isinstance(norm, L.LayerNormalization):
                norm.rms_scaling = True
            if hasattr(norm, "epsilon"):
                norm.epsilon = 1e12
    return model


def _identity_gammas(model: keras.Model) -> keras.Model:
    for v in model.weights:
        if v.path.endswith(("gamma", "scale")):
            v.assign(np.full(v.shape, 1e6, v.dtype))
    return model


# Parameters of `_hub_lm(kind)` at hidden width d, counted by hand: `a * d + b`. Per
# BERT/GPT-2 block: 2 LayerNorms (4d), query/key/value (3 x (16d + 16): 4 heads of 4) and
# output (16d + d) projections, the MLP (24d + 24 and 24d + d): 118d + 72. BERT adds token,
# position, segment embeddings and their norm (62d), the pooler (16d + 16) and the
# classifier (51); GPT-2 token and position embeddings and the final norm (60d). Mistral,
# without biases: an untied token embedding (100d), per block 2 norms, query/output (16d
# each), key/value (8d each: 2 heads of 4) and a gated MLP (72d), the final norm (d).
# Qwen is Mistral with the token embedding tied to the output (50d fewer) and biases on
# the query, key and value projections (16 + 8 + 8 per block, whatever the width).
_HUB_PARAMS = {
    "bert": (314, 211),
    "gpt2": (296, 144),
    "mistral": (345, 0),
    "qwen": (295, 64),
}


@pytest.mark.parametrize("kind", ["bert", "gpt2", "mistral", "qwen"])
def test_hub_hidden_width_halves_exactly_with_identity_norms_and_round_trips(kind, tmp_path):
    model = _identity_gammas(_randomised(_hub_lm(kind), scale=0.2))
    stream = tfprune.graph.channel_groups(model, through_norms=True)[0]
    assert (stream.channels, stream.prunable) == (D, True)
    feed = _hub_feed(model)
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(
            model, 0.0, ratios={"token_embedding": 0.5}, through_norms=True
        )
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    blocks = [small.get_layer(f"transformer_layer_{i}") for i in range(2)]
    sized = {
        "bert": "HeadSizedTransformerEncoder",
        "gpt2": "HeadSizedTransformerDecoder",
        "mistral": "MistralTransformerDecoder",
        "qwen": "HeadSizedQwenTransformerDecoder",
    }
    assert [type(b).__name__ for b in blocks] == [sized[kind]] * 2
    heads = "num_query_heads" if kind in ("mistral", "qwen") else "num_heads"
    assert [(b.get_config()["head_dim"], b.get_config()[heads]) for b in blocks] == [(4, 4)] * 2
    a, b = _HUB_PARAMS[kind]
    assert (model.count_params(), small.count_params()) == (a * D + b, a * D // 2 + b)
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras", safe_mode=True)
    for got, want in zip(keras.tree.flatten(loaded(feed)), keras.tree.flatten(small(feed))):
        np.testing.assert_allclose(_np(got), _np(want), rtol=1e-6)
    # Removing the channels is exact when the norms are the identity.
    expected = keras.tree.flatten(_identity_layer_norms(pruned)(feed))
    original = keras.tree.flatten(_identity_layer_norms(model)(feed))
    assert np.abs(_np(expected[0]) - _np(original[0])).max() > 0.1
    for got, want in zip(keras.tree.flatten(_identity_layer_norms(small)(feed)), expected):
        np.testing.assert_allclose(_np(got), _np(want), rtol=1e-4, atol=1e-4)


def _layer_norm(x: np.ndarray, norm, keep: np.ndarray, eps: float) -> np.ndarray:
    gamma, beta = (_np(v).astype(np.float64)[keep] for v in (norm.gamma, norm.beta))
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return x * gamma + beta


def _gpt2_block(x: np.ndarray, block, keep: np.ndarray) -> np.ndarray:
    """keras-hub's GPT-2 block (pre-norm, causal, 4 heads of 4, GELU) on the kept channels."""
    attention = block._self_attention_layer
    w = {
        n: [_np(v).astype(np.float64) for v in getattr(attention, n).weights]
        for n in ("query_dense", "key_dense", "value_dense", "output_dense")
    }
    h = _layer_norm(x, block._self_attention_layer_norm, keep, 1e-5)
    q, k, v = (np.einsum("btd,dnh->btnh", h, w[n][0][keep]) + w[n][1] for n in list(w)[:3])
    scores = np.einsum("bsnh,btnh->bnts", k, q / 2.0)  # 1 / sqrt(head size 4)
    scores = np.where(np.tril(np.ones((SEQ, SEQ), bool)), scores, -1e9)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum("bnts,bsnh->btnh", probs, v)
    kernel, bias = w["output_dense"]
    x = x + np.einsum("btnh,nhd->btd", context, kernel[..., keep]) + bias[keep]
    h = _layer_norm(x, block._feedforward_layer_norm, keep, 1e-5)
    up, up_bias = (_np(v).astype(np.float64) for v in block._feedforward_intermediate_dense.weights)
    down, down_bias = (_np(v).astype(np.float64) for v in block._feedforward_output_dense.weights)
    h = h @ up[keep] + up_bias
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return x + h @ down[:, keep] + down_bias[keep]


def test_gpt2_randomised_norms_match_a_numpy_gpt2_on_the_kept_channels():
    model = _randomised(_hub_lm("gpt2"))
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(
            model, 0.0, ratios={"token_embedding": 0.5}, through_norms=True
        )
    keep = np.flatnonzero(_np(pruned.get_layer("token_embedding").embeddings).any(axis=0))
    assert keep.size == D // 2
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    feed = _feed()
    table = _np(model.get_layer("token_embedding").embeddings).astype(np.float64)
    positions = _np(model.get_layer("position_embedding").position_embeddings)
    x = table[feed["token_ids"]][..., keep] + positions[:, keep]
    for i in range(2):
        x = _gpt2_block(x, model.get_layer(f"transformer_layer_{i}"), keep)
    x = _layer_norm(x, model.get_layer("layer_norm"), keep, 1e-5)
    np.testing.assert_allclose(_np(small(feed)), x @ table[:, keep].T, rtol=1e-4, atol=1e-4)
    # Not exact: the zeroed model normalizes over all 16 channels.
    assert np.abs(_np(pruned(feed)) - x @ table[:, keep].T).max() > 1e-2


def test_bert_stream_reaches_its_segment_embedding_norms_and_pooler():
    model = _hub_lm("bert")
    stream = tfprune.graph.channel_groups(model, through_norms=True)[0]
    per_block = {
        (f"{norm}.{w}", 0, "norm")
        for norm in ("_self_attention_layer_norm", "_feedforward_layer_norm")
        for w in ("gamma", "beta")
    } | {
        *((f"_self_attention_layer.{p}_dense.kernel", 0, "input") for p in ("query", "key")),
        ("_self_attention_layer.value_dense.kernel", 0, "input"),
        ("_self_attention_layer.output_dense.kernel", 2, "output"),
        ("_self_attention_layer.output_dense.bias", 0, "output"),
        ("_feedforward_intermediate_dense.kernel", 0, "input"),
        ("_feedforward_output_dense.kernel", 1, "output"),
        ("_feedforward_output_dense.bias", 0, "output"),
    }
    assert {(m.layer.name, m.weight, m.axis, m.role) for m in stream.members} == {
        ("token_embedding", "embeddings", 1, "output"),
        ("position_embedding", "position_embeddings", 1, "output"),
        ("segment_embedding", "embeddings", 1, "output"),
        ("embeddings_layer_norm", "gamma", 0, "norm"),
        ("embeddings_layer_norm", "beta", 0, "norm"),
        ("pooled_dense", "kernel", 0, "input"),
        *((f"transformer_layer_{i}", *m) for i in range(2) for m in per_block),
    }
    # A block whose width does not change keeps its class (and its derived head size).
    block = tfprune.shrink(model, through_norms=True).get_layer("transformer_layer_0")
    assert (type(block).__name__, block.num_heads) == ("TransformerEncoder", 4)


def test_mistral_randomised_norms_match_a_mistral_built_at_the_kept_width():
    model = _randomised(_hub_lm("mistral"))
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(
            model, 0.0, ratios={"token_embedding": 0.5}, through_norms=True
        )
    keep = np.flatnonzero(_np(pruned.get_layer("token_embedding").embeddings).any(axis=0))
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    # keras-hub's own Mistral at hidden_dim 8 with heads of 4 (its config holds head_dim).
    reference = _hub_lm("mistral", hidden_dim=D // 2, head_dim=4)
    _kept_slices(model, reference, keep)
    feed = _feed()
    expected = _np(reference(feed))
    np.testing.assert_allclose(_np(small(feed)), expected, rtol=1e-4, atol=1e-4)
    assert np.abs(_np(pruned(feed)) - expected).max() > 1e-2


def test_activation_scores_read_the_layer_norms_inside_gpt2_blocks():
    model = _randomised(_hub_lm("gpt2"))
    feed = _feed(4)
    means = tfprune.activation_scores.norm_activations(model, [feed])
    assert list(means) == [
        "layer_norm",
        *(
            f"transformer_layer_{i}/{n}"
            for i in range(2)
            for n in ("_self_attention_layer_norm", "_feedforward_layer_norm")
        ),
    ]
    table = _np(model.get_layer("token_embedding").embeddings).astype(np.float64)
    positions = _np(model.get_layer("position_embedding").position_embeddings)
    norm = model.get_layer("transformer_layer_0")._self_attention_layer_norm
    y = _layer_norm(table[feed["token_ids"]] + positions, norm, np.arange(D), 1e-5)
    np.testing.assert_allclose(
        means["transformer_layer_0/_self_attention_layer_norm"],
        np.abs(y).reshape(-1, D).mean(0),
        rtol=1e-5,
    )


def test_gpt2_heads_mlp_and_hidden_width_together_are_exact_with_identity_norms():
    model = _identity_gammas(_randomised(_hub_lm("gpt2"), scale=0.2))
    pruned = tfprune.prune_heads(model, 0.5)
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(pruned, 0.5, through_norms=True)
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    block = small.get_layer("transformer_layer_1")
    config = block.get_config()
    assert type(block).__name__ == "HeadSizedTransformerDecoder"
    assert [config[k] for k in ("num_heads", "head_dim", "intermediate_dim")] == [2, 4, 12]
    assert tuple(block._self_attention_layer.query_dense.kernel.shape) == (D // 2, 2, 4)
    assert tuple(block._self_attention_layer.output_dense.kernel.shape) == (2, 4, D // 2)
    feed = _feed()
    expected = _np(_identity_layer_norms(pruned)(feed))
    np.testing.assert_allclose(
        _np(_identity_layer_norms(small)(feed)), expected, rtol=1e-4, atol=1e-4
    )


def test_cross_attention_decoder_keeps_its_hidden_width_with_the_reason():
    decoder, encoder = keras.Input((SEQ, D)), keras.Input((SEQ, D))
    block = keras_hub.layers.TransformerDecoder(24, 4, name="dec")
    model = keras.Model([decoder, encoder], block(L.Dense(D, name="pre")(decoder), encoder))
    stream = tfprune.graph.channel_groups(model, through_norms=True)[0]
    assert (stream.producers, stream.prunable) == (["pre"], False)
    assert stream.reason == (
        "TransformerDecoder 'dec' has cross attention, whose key and value read another "
        "sequence (the encoder's) of its own width"
    )


def _rms(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


def test_activation_scores_read_the_norms_inside_blocks_by_hooks():
    model = _randomised(_gemma())
    feed = _feed(4)
    means = tfprune.activation_scores.norm_activations(model, [feed])
    assert list(means) == [
        "final_normalization",
        *(
            f"decoder_block_{i}/{n}"
            for i in range(2)
            for n in ("pre_attention_norm", "pre_ffw_norm")
        ),
    ]
    # The first block's first norm by hand: Gemma scales the embeddings by sqrt(16).
    table = _np(model.get_layer("token_embedding").embeddings).astype(np.float64)
    scale = _np(model.get_layer("decoder_block_0").pre_attention_norm.scale)
    y = _rms(table[feed["token_ids"]] * 4.0) * (1 + scale)
    np.testing.assert_allclose(
        means["decoder_block_0/pre_attention_norm"], np.abs(y).reshape(-1, D).mean(0), rtol=1e-5
    )
    assert "call" not in vars(model.get_layer("decoder_block_0").pre_attention_norm)
    group = tfprune.graph.channel_groups(model, through_norms=True)[0]
    scores = tfprune.activation_scores.activation_criterion(model, [feed])(group)
    np.testing.assert_allclose(scores, sum(means.values()), rtol=1e-6)


@pytest.mark.parametrize("criterion", ["l1", "taylor", "activation"])
def test_hidden_criteria_drop_the_gemma_channels_that_carry_nothing(criterion):
    model = _randomised(_gemma())
    group = tfprune.graph.channel_groups(model, through_norms=True)[0]
    dead = [2, 3, 7, 11]
    for m in group.members:  # these channels are zero everywhere
        var = tfprune.layers.resolve(m.layer, m.weight)
        value = _np(var).copy()
        index = [slice(None)] * value.ndim
        index[m.axis] = dead
        value[tuple(index)] = 0
        var.assign(value)
    feed = _feed(4)
    kwargs = {"criterion": criterion}
    if criterion == "taylor":
        y = np.random.default_rng(3).integers(0, VOCAB, size=(4, SEQ))
        kwargs.update(data=[(feed, y)], loss=keras.losses.SparseCategoricalCrossentropy(True))
    if criterion == "activation":
        kwargs["criterion"] = tfprune.activation_scores.activation_criterion(model, [feed])
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(
            model, 0.0, ratios={"token_embedding": 0.25}, through_norms=True, **kwargs
        )
    table = _np(pruned.get_layer("token_embedding").embeddings)
    assert np.flatnonzero(~table.any(axis=0)).tolist() == dead


def test_recording_outputs_records_what_each_call_returns():
    dense = L.Dense(2, kernel_initializer="ones")
    seen = []
    with recording([dense], lambda i, y: seen.append((i, _np(y).tolist())), outputs=True):
        dense(np.ones((1, 3), "float32"))
    assert seen == [(0, [[3.0, 3.0]])]
    assert "call" not in vars(dense)


def test_keras_hub_rms_normalization_is_rebuilt_from_its_kept_width():
    inputs = keras.Input((4, 6))
    rms = keras_hub.layers.RMSNormalization(input_dim=8)
    model = _randomised(
        keras.Model(inputs, L.Dense(2, name="d2")(rms(L.Dense(8, name="d1")(inputs))))
    )
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(model, 0.5, through_norms=True)
    with pytest.warns(UserWarning, match=rf"\('{rms.name}'\)"):
        small = tfprune.shrink(pruned, through_norms=True)
    keep = np.flatnonzero(np.abs(_np(pruned.get_layer("d1").kernel)).sum(axis=0) > 0)
    assert keep.size == 4 and small.get_layer("d1").units == 4
    (new_rms,) = [layer for layer in small.layers if isinstance(layer, type(rms))]
    assert tuple(new_rms.scale.shape) == (4,)
    w1, b1 = (_np(v) for v in model.get_layer("d1").weights)
    w2, b2 = (_np(v) for v in model.get_layer("d2").weights)
    x = np.random.default_rng(2).normal(size=(3, 4, 6)).astype("float32")
    h = _rms(x @ w1[:, keep] + b1[keep]) * _np(rms.scale)[keep]
    np.testing.assert_allclose(_np(small(x)), h @ w2[keep] + b2, rtol=1e-5, atol=1e-5)


def test_token_and_position_embedding_produces_the_hidden_width(tmp_path):
    tokens = keras.Input((SEQ,), dtype="int32")
    embed = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, SEQ, D, name="embed")
    h = L.LayerNormalization(epsilon=1e-3, name="ln")(embed(tokens))
    model = _randomised(keras.Model(tokens, L.Dense(3, name="out")(h)))
    assert not tfprune.graph.channel_groups(model)[0].prunable
    group = tfprune.graph.channel_groups(model, through_norms=True)[0]
    assert (group.producers, group.prunable) == (["embed"], True)
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(model, 0.5, through_norms=True)
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    assert small.get_layer("embed").get_config()["embedding_dim"] == D // 2
    table = _np(model.get_layer("embed").token_embedding.embeddings)
    keep = np.flatnonzero(_np(pruned.get_layer("embed").token_embedding.embeddings).any(axis=0))
    positions = _np(model.get_layer("embed").position_embedding.position_embeddings)
    gamma, beta = (_np(v) for v in model.get_layer("ln").weights)
    w, b = (_np(v) for v in model.get_layer("out").weights)
    x = _feed(3)["token_ids"]
    e = table[x][..., keep] + positions[:, keep]
    e = (e - e.mean(-1, keepdims=True)) / np.sqrt(e.var(-1, keepdims=True) + 1e-3)
    expected = (e * gamma[keep] + beta[keep]) @ w[keep] + b
    np.testing.assert_allclose(_np(small(x)), expected, rtol=1e-5, atol=1e-5)
    small.save(tmp_path / "small.keras")
    loaded = keras.saving.load_model(tmp_path / "small.keras", safe_mode=True)
    np.testing.assert_allclose(_np(loaded(x)), _np(small(x)), atol=1e-6)


def test_hub_hidden_width_example_halves_gemma_and_warns(capsys):
    path = pathlib.Path(__file__).resolve().parent.parent / "examples"
    spec = importlib.util.spec_from_file_location("ex", path / "prune_hub_hidden_width.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.warns(UserWarning, match=NOT_EXACT.format(n=5)) as caught:
        model, pruned, small = module.main()
    assert sum("tfprune.shrink(through_norms=True)" in str(w.message) for w in caught) == 1
    # Every weight is linear in the hidden width (the MLP is 32, not 24, units here).
    assert (model.count_params(), small.count_params()) == (5488, 2744)
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "hidden_dim: 8",
        "parameters: 5488 -> 2744",
    ]
    kept = _np(pruned.get_layer("token_embedding").embeddings).any(axis=0)
    np.testing.assert_array_equal(
        _np(small.get_layer("token_embedding").embeddings),
        _np(model.get_layer("token_embedding").embeddings)[:, kept],
    )


def test_hub_hidden_width_example_halves_gpt2_with_its_heads(capsys):
    path = pathlib.Path(__file__).resolve().parent.parent / "examples"
    spec = importlib.util.spec_from_file_location("ex", path / "prune_hub_hidden_width.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.warns(UserWarning, match=NOT_EXACT.format(n=5)):
        model, _, small = module.main_gpt2()
    # `_HUB_PARAMS["gpt2"]` with 32 MLP units: per block 16 more per hidden channel, 8 biases.
    assert (model.count_params(), small.count_params()) == (328 * D + 160, 328 * D // 2 + 160)
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "HeadSizedTransformerDecoder num_heads: 4 head_dim: 4",
        f"parameters: {328 * D + 160} -> {328 * D // 2 + 160}",
    ]


def test_untied_reversible_embedding_slices_its_reverse_rows():
    tokens = keras.Input((SEQ,), dtype="int32")
    embed = keras_hub.layers.ReversibleEmbedding(VOCAB, D, tie_weights=False, name="embed")
    h = L.LayerNormalization(epsilon=1e-3, name="ln")(embed(tokens))
    model = _randomised(keras.Model(tokens, embed(h, reverse=True)))
    group = tfprune.graph.channel_groups(model, through_norms=True)[0]
    assert {(m.weight, m.axis, m.role) for m in group.members} == {
        ("embeddings", 1, "output"),
        ("reverse_embeddings", 0, "input"),
        ("gamma", 0, "norm"),
        ("beta", 0, "norm"),
    }
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(model, 0.5, through_norms=True)
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    assert small.get_layer("embed").output_dim == D // 2
    table, reverse = (_np(v) for v in model.get_layer("embed").weights)
    keep = np.flatnonzero(_np(pruned.get_layer("embed").embeddings).any(axis=0))
    gamma, beta = (_np(v) for v in model.get_layer("ln").weights)
    x = _feed(3)["token_ids"]
    e = table[x][..., keep]
    e = (e - e.mean(-1, keepdims=True)) / np.sqrt(e.var(-1, keepdims=True) + 1e-3)
    expected = (e * gamma[keep] + beta[keep]) @ reverse[keep]
    np.testing.assert_allclose(_np(small(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [0.0, 0.5])
def test_removed_channels_carrying_a_constant_into_a_block_are_kept(bias):
    block_type = type(_gemma().get_layer("decoder_block_0"))
    inputs = keras.Input((SEQ, 4))
    pre = L.Dense(D, name="pre")
    block = block_type(
        intermediate_dim=24, hidden_dim=D, num_query_heads=4, num_key_value_heads=2, head_dim=8
    )
    model = _randomised(keras.Model(inputs, L.Dense(3, name="out")(block(pre(inputs)))))
    # 4 channels that no kernel writes: `pre` gives them a constant bias, or nothing.
    for m in tfprune.graph.channel_groups(model, through_norms=True)[0].members:
        if m.role == "output":
            var = tfprune.layers.resolve(m.layer, m.weight)
            value = np.moveaxis(_np(var).copy(), m.axis, 0)
            value[:4] = bias if m.weight == "bias" else 0.0
            var.assign(np.moveaxis(value, 0, m.axis))
    with pytest.warns(UserWarning, match="not exact") if bias == 0 else nullcontext():
        small = tfprune.shrink(model, through_norms=True)
    # A constant would reach the block's norms, which would mix it into every channel.
    assert small.get_layer("pre").units == (D - 4 if bias == 0 else D)
    if bias:
        x = np.random.default_rng(2).normal(size=(2, SEQ, 4)).astype("float32")
        np.testing.assert_allclose(_np(small(x)), _np(model(x)), rtol=1e-5, atol=1e-5)


def test_cli_shrink_through_norms_halves_a_saved_gemma(tmp_path, capsys):
    model = _randomised(_gemma())
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(
            model, 0.0, ratios={"token_embedding": 0.5}, through_norms=True
        )
    pruned.save(tmp_path / "pruned.keras")
    out = tmp_path / "small.keras"
    with pytest.warns(UserWarning, match="not exact"):
        assert (
            cli.main(["shrink", str(tmp_path / "pruned.keras"), str(out), "--through-norms"]) == 0
        )
    small = keras.saving.load_model(out, safe_mode=True)
    assert small.get_layer("decoder_block_0").get_config()["hidden_dim"] == D // 2
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Wrote {out}: {_gemma_params(D // 2):,} parameters (was {_gemma_params(D):,})"
    )
