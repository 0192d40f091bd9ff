"""keras-hub transformer blocks: wrap/strip, MLP-width groups and shrink, heads inside blocks."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune import layers as registry

M = keras_hub.models
_TINY = dict(vocabulary_size=50, num_layers=2, hidden_dim=16, intermediate_dim=32)


def _bert():
    return M.BertBackbone(num_heads=4, max_sequence_length=8, **_TINY)


def _gpt2():
    return M.GPT2Backbone(num_heads=4, max_sequence_length=8, **_TINY)


def _gemma():
    return M.GemmaBackbone(num_query_heads=4, num_key_value_heads=2, head_dim=8, **_TINY)


BUILDERS = {"bert": _bert, "gpt2": _gpt2, "gemma": _gemma}
BLOCK_NAMES = {"bert": "transformer_layer_", "gpt2": "transformer_layer_"}
BLOCK_NAMES["gemma"] = "decoder_block_"


def _slow(*names):
    """Parameters that run only with `-m slow` (the default run keeps one of each kind)."""
    return [pytest.param(n, marks=pytest.mark.slow) for n in names]


def _randomised(model):
    """Every weight drawn at random: norms' scales and biases are no longer near identity."""
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(v.dtype))
    return model


def _feed(model):
    rng = np.random.default_rng(1)
    feed = {"token_ids": rng.integers(1, 50, (2, 8)), "padding_mask": np.ones((2, 8), "int32")}
    if "segment_ids" in model.input:
        feed["segment_ids"] = rng.integers(0, 2, (2, 8))
    return feed


def _out(model, feed) -> np.ndarray:
    y = model(feed)
    return np.asarray(y["sequence_output"] if isinstance(y, dict) else y)


def _blocks(model, name):
    return [layer for layer in model.layers if layer.name.startswith(BLOCK_NAMES[name])]


def test_block_weights_are_listed_by_their_attribute_paths():
    bert = _bert()
    block = bert.get_layer("transformer_layer_0")
    paths = [s.path for s in registry.lookup(block).prunable_specs(block)]
    assert paths == [
        "_self_attention_layer.query_dense.kernel",
        "_self_attention_layer.key_dense.kernel",
        "_self_attention_layer.value_dense.kernel",
        "_self_attention_layer.output_dense.kernel",
        "_feedforward_intermediate_dense.kernel",
        "_feedforward_output_dense.kernel",
    ]
    assert registry.resolve(block, paths[4]) is block._feedforward_intermediate_dense.kernel
    gemma = _gemma().get_layer("decoder_block_0")
    assert [s.path for s in registry.lookup(gemma).prunable_specs(gemma)] == [
        "attention.query_dense.kernel",
        "attention.key_dense.kernel",
        "attention.value_dense.kernel",
        "attention.output_dense.kernel",
        "gating_ffw.kernel",
        "gating_ffw_2.kernel",
        "ffw_linear.kernel",
    ]
    # MACs per example on 8 tokens: every kernel once per token, plus scores and context.
    kernels = 3 * 16 * 16 + 16 * 16 + 16 * 32 + 32 * 16
    assert registry.macs(block, [(None, 8, 16)], (None, 8, 16)) == 8 * kernels + 2 * 8 * 8 * 16


@pytest.mark.parametrize("name", ["bert", *_slow("gpt2", "gemma")])
def test_wrap_prunes_block_kernels_to_the_exact_sparsity_and_saves(name, tmp_path):
    model = _randomised(BUILDERS[name]())
    feed = _feed(model)
    with pytest.warns(UserWarning, match=r"token_embedding \(ReversibleEmbedding\)"):
        wrapped = tfprune.wrap(model, 0.5, layers=lambda x: x.name.startswith(BLOCK_NAMES[name]))
    assert [w.name for w in tfprune.wrapper.prunable_layers(wrapped)] == [
        f"{BLOCK_NAMES[name]}0",
        f"{BLOCK_NAMES[name]}1",
    ]
    np.testing.assert_array_equal(_out(wrapped, feed), _out(model, feed))
    tfprune.PruningController(wrapped).update(0)
    wrapped.save(tmp_path / "wrapped.keras")
    loaded = keras.saving.load_model(tmp_path / "wrapped.keras", safe_mode=True)
    np.testing.assert_array_equal(_out(loaded, feed), _out(wrapped, feed))
    plain = tfprune.strip(wrapped)
    for block in _blocks(plain, name):
        for spec in registry.lookup(block).prunable_specs(block):
            w = keras.ops.convert_to_numpy(registry.resolve(block, spec.path))
            assert np.count_nonzero(w == 0) == w.size // 2, spec.path
    plain.save(tmp_path / "plain.keras")
    loaded = keras.saving.load_model(tmp_path / "plain.keras", safe_mode=True)
    np.testing.assert_allclose(_out(loaded, feed), _out(wrapped, feed), atol=1e-6)


def test_graph_exposes_heads_and_mlp_width_and_keeps_the_hidden_stream():
    groups = tfprune.graph.channel_groups(_gemma())
    assert [(g.producers, g.channels, g.prunable) for g in groups] == [
        (["decoder_block_0"], 2, True),  # key/value heads, each with its 2 query heads
        (["decoder_block_0"], 16, True),  # MLP units
        (["decoder_block_1"], 2, True),
        (["decoder_block_1"], 16, True),
    ]
    heads, mlp = groups[:2]
    assert [(m.weight, m.axis, m.role, m.index.tolist()) for m in heads.members] == [
        ("attention.query_dense.kernel", 0, "output", [0, 0, 1, 1]),
        ("attention.key_dense.kernel", 0, "output", [0, 1]),
        ("attention.value_dense.kernel", 0, "output", [0, 1]),
        ("attention.output_dense.kernel", 0, "input", [0, 0, 1, 1]),
    ]
    assert [(m.weight, m.axis, m.role) for m in mlp.members] == [
        ("gating_ffw.kernel", 1, "output"),
        ("gating_ffw_2.kernel", 1, "output"),
        ("ffw_linear.kernel", 0, "input"),
    ]
    bert_heads = tfprune.graph.channel_groups(_bert())[0]
    assert [(m.weight, m.axis) for m in bert_heads.members] == [
        (f"_self_attention_layer.{name}", axis)
        for name, axis in [
            ("query_dense.kernel", 1),
            ("query_dense.bias", 0),
            ("key_dense.kernel", 1),
            ("key_dense.bias", 0),
            ("value_dense.kernel", 1),
            ("value_dense.bias", 0),
            ("output_dense.kernel", 0),
        ]
    ]
    # shrink rebuilds it as tfprune.hub_sized.HeadSizedTransformerEncoder.
    assert bert_heads.prunable
    x, memory = keras.Input((8, 16)), keras.Input((4, 16))
    decoder = keras_hub.layers.TransformerDecoder(32, 4, name="dec")
    heads, _ = tfprune.graph.channel_groups(keras.Model([x, memory], decoder(x, memory)))
    # Self and cross attention share one head count: head k of both is one channel.
    assert heads.prunable
    assert [(m.weight, m.index.tolist()) for m in heads.members if "query" in m.weight] == [
        (f"_{attention}_attention_layer.query_dense.{weight}", [0, 1, 2, 3])
        for attention in ("self", "cross")
        for weight in ("kernel", "bias")
    ]
    bert = _bert()
    head = keras.layers.Dense(4, name="head")(bert.get_layer("transformer_layer_0").output)
    model = keras.Model(bert.input, [head, bert.output["sequence_output"]])
    group = next(g for g in tfprune.graph.channel_groups(model) if g.producers == ["head"])
    assert group.reason == "its channels are a model output"
    stream = keras.layers.Dense(16, name="pre")(bert.get_layer("embeddings_dropout").output)
    block = keras_hub.layers.TransformerEncoder(32, 4, name="enc")
    model = keras.Model(bert.input, block(stream))
    pre = next(g for g in tfprune.graph.channel_groups(model) if g.producers == ["pre"])
    assert pre.reason == (
        "TransformerEncoder 'enc' adds them to its residual stream (the hidden width of a "
        "keras-hub block is kept; its MLP units and attention heads are pruned)"
    )


def test_mlp_activation_that_does_not_map_zero_to_zero_freezes_the_width():
    x = keras.Input((8, 16))
    block = keras_hub.layers.TransformerEncoder(32, 4, activation="sigmoid", name="enc")
    model = keras.Model(x, block(x))
    _, group = tfprune.graph.channel_groups(model)
    assert group.channels == 32 and not group.prunable
    assert group.reason == (
        "the MLP activation of TransformerEncoder 'enc' does not map 0 to 0, so a removed unit "
        "would still add a constant"
    )


@pytest.mark.parametrize("name", ["bert", *_slow("gpt2"), "gemma"])
def test_prune_channels_then_shrink_halves_mlp_and_gemma_heads_exactly(name):
    model = _randomised(BUILDERS[name]())
    feed = _feed(model)
    pruned = tfprune.prune_channels(model, 0.5)
    small = tfprune.shrink(pruned)
    # Gemma's `intermediate_dim` counts the gate and up projections together.
    assert [b.get_config()["intermediate_dim"] for b in _blocks(small, name)] == [16, 16]
    # Per block: 16 units x (16 inputs + 16 outputs) + 16 biases, and 2 heads of size 4
    # (query, key, value: 16 x 8 + 8; output: 8 x 16). Gemma: 8 units x 16 x 3, and a
    # key/value group (key, value: 8 x 16) with its 2 query heads (query, output).
    heads = 3 * (16 * 8 + 8) + 8 * 16
    removed = {"bert": 2 * (528 + heads), "gpt2": 2 * (528 + heads)}
    removed = {**removed, "gemma": 2 * (384 + 6 * 8 * 16)}[name]
    if name != "gemma":
        assert [b.get_config()["num_heads"] for b in _blocks(small, name)] == [2, 2]
    else:
        heads = [
            (b.get_config()["num_query_heads"], b.num_key_value_heads) for b in _blocks(small, name)
        ]
        assert heads == [(2, 1), (2, 1)]
    assert small.count_params() == model.count_params() - removed
    assert np.abs(_out(pruned, feed) - _out(model, feed)).max() > 0.1
    np.testing.assert_allclose(_out(small, feed), _out(pruned, feed), atol=2e-5)


def test_prune_heads_finds_attention_inside_blocks_and_shrinks_gemma():
    model = _randomised(_gemma())
    feed = _feed(model)
    assert [h.name for h in tfprune.heads.attention_heads(model)] == [
        "decoder_block_0/attention",
        "decoder_block_1/attention",
    ]
    pruned = tfprune.prune_heads(model, 0.5, unit="group")
    for heads in tfprune.heads.attention_heads(pruned):
        # A whole key/value group with its two query heads, never a mix.
        dead = heads.dead_heads().tolist()
        assert dead in ([True, True, False, False], [False, False, True, True])
    pruned = tfprune.prune_channels(pruned, 0.5)
    small = tfprune.shrink(pruned)
    configs = [b.get_config() for b in _blocks(small, "gemma")]
    assert [(c["num_query_heads"], c["num_key_value_heads"], c["head_dim"]) for c in configs] == [
        (2, 1, 8),
        (2, 1, 8),
    ]
    assert [c["intermediate_dim"] for c in configs] == [16, 16]
    attention = small.get_layer("decoder_block_0").attention
    assert tuple(attention.query_dense.kernel.shape) == (2, 16, 8)
    assert tuple(attention.output_dense.kernel.shape) == (2, 8, 16)
    assert np.abs(_out(pruned, feed) - _out(model, feed)).max() > 0.1
    np.testing.assert_allclose(_out(small, feed), _out(pruned, feed), atol=2e-5)


@pytest.mark.slow
def test_prune_heads_in_gemma_query_heads_within_each_group():
    model = _randomised(_gemma())
    pruned = tfprune.prune_heads(model, 0.5, unit="head")
    for heads in tfprune.heads.attention_heads(pruned):
        dead = heads.dead_heads().reshape(2, 2)
        assert dead.sum(axis=1).tolist() == [1, 1]
    small = tfprune.shrink(pruned)
    configs = [b.get_config() for b in _blocks(small, "gemma")]
    assert [(c["num_query_heads"], c["num_key_value_heads"]) for c in configs] == [(2, 2)] * 2
    feed = _feed(model)
    np.testing.assert_allclose(_out(small, feed), _out(pruned, feed), atol=2e-5)


def test_shrink_folds_what_zero_kernel_units_with_a_bias_still_carry():
    model = _randomised(_bert())
    feed = _feed(model)
    block = model.get_layer("transformer_layer_0")
    up = registry.resolve(block, "_feedforward_intermediate_dense.kernel")
    kernel = keras.ops.convert_to_numpy(up).copy()
    kernel[:, :8] = 0  # 8 units output gelu(bias) != 0 whatever the input
    up.assign(kernel)
    small = tfprune.shrink(model)
    assert [b.get_config()["intermediate_dim"] for b in _blocks(small, "bert")] == [24, 32]
    np.testing.assert_allclose(_out(small, feed), _out(model, feed), atol=2e-5)


def test_channel_granularity_leaves_blocks_dense():
    bert = M.BertBackbone(num_heads=2, max_sequence_length=8, **{**_TINY, "num_layers": 1})
    with pytest.warns(UserWarning, match="ReversibleEmbedding"):
        wrapped = tfprune.wrap(bert, 0.5, granularity="channel")
    # The blocks' output is the residual stream: no channel of their own to mask.
    assert [w.name for w in tfprune.wrapper.prunable_layers(wrapped)] == [
        "segment_embedding",
        "pooled_dense",
    ]
