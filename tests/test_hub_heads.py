"""Attention heads inside keras-hub blocks: removed exactly by shrink, saved and reloaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune import hub_sized

M = keras_hub.models
_TINY = dict(vocabulary_size=50, num_layers=2, hidden_dim=16, intermediate_dim=32)


def _randomised(model):
    """Every weight drawn at random (LayerNorm gamma/beta included)."""
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(v.dtype))
    return model


def _feed(model) -> dict:
    rng = np.random.default_rng(1)
    feed = {"token_ids": rng.integers(1, 50, (2, 8)), "padding_mask": np.ones((2, 8), "int32")}
    if "segment_ids" in model.input:
        feed["segment_ids"] = rng.integers(0, 2, (2, 8))
    return feed


def _out(model, feed) -> np.ndarray:
    y = model(feed)
    return np.asarray(y["sequence_output"] if isinstance(y, dict) else y)


def _blocks(model):
    return [layer for layer in model.layers if layer.name.startswith("transformer_layer_")]


def _bert():
    return M.BertBackbone(num_heads=4, max_sequence_length=8, **_TINY)


def _gpt2():
    return M.GPT2Backbone(num_heads=4, max_sequence_length=8, **_TINY)


_SIZED = {
    "bert": (_bert, hub_sized.HeadSizedTransformerEncoder),
    "gpt2": (_gpt2, hub_sized.HeadSizedTransformerDecoder),
}


@pytest.fixture(scope="module", params=["gpt2", pytest.param("bert", marks=pytest.mark.slow)])
def case(request):
    """`(name, model, pruned with half the heads zeroed, shrunk, feed)`."""
    model = _randomised(_SIZED[request.param][0]())
    pruned = tfprune.prune_heads(model, 0.5)
    return request.param, model, pruned, tfprune.shrink(pruned), _feed(model)


def test_half_the_heads_are_removed_exactly(case):
    name, model, pruned, small, feed = case
    heads = tfprune.heads.attention_heads(pruned)
    attention = "self_attention_layer" if name == "bert" else "self_attention"
    assert [h.name for h in heads] == [f"transformer_layer_{i}/{attention}" for i in range(2)]
    assert [int(h.dead_heads().sum()) for h in heads] == [2, 2]
    blocks = _blocks(small)
    assert [type(b) for b in blocks] == [_SIZED[name][1]] * 2
    configs = [b.get_config() for b in blocks]
    assert [(c["num_heads"], c["head_dim"]) for c in configs] == [(2, 4), (2, 4)]
    [heads, _] = tfprune.heads.attention_heads(small)
    assert (heads.query_heads, heads.kv_heads) == (2, 2)
    assert tuple(heads.layer.query_dense.kernel.shape) == (16, 2, 4)
    assert tuple(heads.layer.output_dense.kernel.shape) == (2, 4, 16)
    # Per block, 2 heads of size 4: query, key, value kernels (16 x 8) and biases (8),
    # and the output rows (8 x 16).
    assert model.count_params() - small.count_params() == 2 * (3 * (16 * 8 + 8) + 8 * 16)
    zeroed = _out(pruned, feed)
    assert np.abs(zeroed - _out(model, feed)).max() > 0.1
    assert np.abs(_out(small, feed) - zeroed).max() < 2e-5


_LOAD = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    import tfprune

    assert "keras_hub" not in sys.modules, "import tfprune imported keras_hub"
    for path in sys.argv[1:]:
        model = keras.saving.load_model(path + ".keras", safe_mode=True)
        y = model(dict(np.load(path + "_feed.npz")))
        y = y["sequence_output"] if isinstance(y, dict) else y
        np.save(path + "_out.npy", keras.ops.convert_to_numpy(y))
        print(type(model.get_layer("transformer_layer_0")).__name__)
    """
)


@pytest.mark.parametrize("gqa", [("qwen", "group")], indirect=True, ids=["qwen-group"])
def test_shrunk_models_reload_in_a_fresh_process(case, gqa, tmp_path):
    """BERT or GPT-2, and Qwen, saved shrunk, loaded in one fresh process."""
    name, _, _, small, feed = case
    models = {name: (small, feed), "qwen": (gqa["small"], gqa["feed"])}
    paths = [str(tmp_path / key) for key in models]
    for path, (model, inputs) in zip(paths, models.values()):
        model.save(path + ".keras")
        np.savez(path + "_feed.npz", **inputs)
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, *paths], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [
        _SIZED[name][1].__name__,
        "HeadSizedQwenTransformerDecoder",
    ]
    for path, (model, inputs) in zip(paths, models.values()):
        np.testing.assert_array_equal(np.load(path + "_out.npy"), _out(model, inputs))


def test_shrunk_block_prunes_again_and_prune_channels_removes_heads_too():
    model = _randomised(_gpt2())
    feed = _feed(model)
    small = tfprune.shrink(tfprune.prune_channels(model, 0.5))
    # The heads group of a TransformerDecoder is prunable now, as the MLP units are.
    assert [(b.get_config()["num_heads"], b.intermediate_dim) for b in _blocks(small)] == [
        (2, 16),
        (2, 16),
    ]
    pruned = tfprune.prune_heads(small, 0.5)
    smaller = tfprune.shrink(pruned)
    assert [
        (b.get_config()["num_heads"], b.get_config()["head_dim"]) for b in _blocks(smaller)
    ] == [
        (1, 4),
        (1, 4),
    ]
    assert small.count_params() - smaller.count_params() == 2 * (3 * (16 * 4 + 4) + 4 * 16)
    np.testing.assert_allclose(_out(smaller, feed), _out(pruned, feed), atol=2e-5)


def test_head_sized_block_validates_head_dim_and_round_trips_its_config():
    block = hub_sized.HeadSizedTransformerEncoder(32, 2, head_dim=4, name="enc")
    y = block(np.zeros((1, 3, 16), "float32"))
    assert tuple(y.shape) == (1, 3, 16)
    assert tuple(block._self_attention_layer.query_dense.kernel.shape) == (16, 2, 4)
    again = hub_sized.HeadSizedTransformerEncoder.from_config(block.get_config())
    assert again.get_config() == block.get_config()
    with pytest.raises(ValueError, match=r"positive integer. Received: head_dim=0"):
        hub_sized.HeadSizedTransformerDecoder(32, 2, head_dim=0)


def test_head_sized_qwen_block_builds_its_attention_at_head_dim_and_round_trips():
    cls = hub_sized.HeadSizedQwenTransformerDecoder
    block = cls(32, 2, 1, head_dim=4, name="dec")
    y = block(np.ones((1, 3, 16), "float32"))
    assert tuple(y.shape) == (1, 3, 16)
    attention = block._self_attention_layer
    shapes = [(w.path, tuple(w.shape)) for w in attention.weights]
    assert shapes == [
        ("dec/self_attention/query/kernel", (16, 2, 4)),
        ("dec/self_attention/query/bias", (2, 4)),
        ("dec/self_attention/key/kernel", (16, 1, 4)),
        ("dec/self_attention/key/bias", (1, 4)),
        ("dec/self_attention/value/kernel", (16, 1, 4)),
        ("dec/self_attention/value/bias", (1, 4)),
        ("dec/self_attention/attention_output/kernel", (2, 4, 16)),
    ]
    assert attention._inv_norm_factor == 0.5
    again = cls.from_config(block.get_config())
    assert again.get_config() == block.get_config()
    assert keras.saving.get_registered_name(cls) == "tfprune>HeadSizedQwenTransformerDecoder"
    with pytest.raises(ValueError, match=r"positive integer. Received: head_dim=-1"):
        cls(32, 2, 1, head_dim=-1)


def _gqa(name: str):
    cls = {"mistral": M.MistralBackbone, "qwen": M.QwenBackbone}[name]
    return cls(num_query_heads=4, num_key_value_heads=2, **_TINY)


@pytest.fixture(
    scope="module",
    params=[
        ("mistral", "group"),
        ("qwen", "head"),
        ("qwen", "group"),
        pytest.param(("mistral", "head"), marks=pytest.mark.slow),
    ],
    ids=lambda p: "-".join(p),
)
def gqa(request) -> dict:
    """A grouped-query backbone (every weight random, RMSNorm scales included), its heads
    pruned by activation scores with `unit`, and shrunk."""
    name, unit = request.param
    model = _randomised(_gqa(name))
    feed = _feed(model)
    scores = tfprune.heads.head_scores(model, "activation", data=[feed])
    pruned = tfprune.prune_heads(model, 0.5, criterion="activation", data=[feed], unit=unit)
    small = tfprune.shrink(pruned)
    return dict(
        name=name, unit=unit, model=model, feed=feed, scores=scores, pruned=pruned, small=small
    )


def test_grouped_query_heads_of_mistral_and_qwen_are_removed_exactly(gqa):
    name, unit, model, pruned, small = (
        gqa[k] for k in ("name", "unit", "model", "pruned", "small")
    )
    heads = tfprune.heads.attention_heads(model)
    assert [(h.name, h.query_heads, h.kv_heads) for h in heads] == [
        (f"transformer_layer_{i}/self_attention", 4, 2) for i in range(2)
    ]
    for h in tfprune.heads.attention_heads(pruned):
        by_group = gqa["scores"][h.name].reshape(2, 2)
        if unit == "group":  # the key/value group with the lower total, with its query heads
            expected = np.repeat(np.arange(2) == np.argmin(by_group.sum(axis=1)), 2)
        else:  # the lower query head of each group
            expected = (by_group == by_group.min(axis=1, keepdims=True)).reshape(-1)
        assert h.dead_heads().tolist() == expected.tolist()
    # Rebuilt with 2 query heads of size 4: one key/value group of two, or two groups of
    # one. Mistral's config holds the head size; Qwen's block comes back as
    # HeadSizedQwenTransformerDecoder, whose config holds it.
    kv_heads = 1 if unit == "group" else 2
    blocks = _blocks(small)
    configs = [b.get_config() for b in blocks]
    assert [(c["num_query_heads"], c["num_key_value_heads"], c["head_dim"]) for c in configs] == [
        (2, kv_heads, 4)
    ] * 2
    expected_type = (
        "HeadSizedQwenTransformerDecoder" if name == "qwen" else "MistralTransformerDecoder"
    )
    assert [type(b).__name__ for b in blocks] == [expected_type] * 2
    for h in tfprune.heads.attention_heads(small):
        assert (h.query_heads, h.kv_heads) == (2, kv_heads)
        attention = h.layer
        assert tuple(attention._query_dense.kernel.shape) == (16, 2, 4)
        assert tuple(attention._key_dense.kernel.shape) == (16, kv_heads, 4)
        assert tuple(attention._output_dense.kernel.shape) == (2, 4, 16)
        assert attention._inv_norm_factor == 0.5  # 1 / sqrt(head size 4)
    # Per block, 2 query heads (query 16 x 4, output 4 x 16) and, under unit="group", a
    # group's key and value (16 x 4 each); Qwen's query, key and value have biases (4 per
    # head) too.
    removed_kv = 2 - kv_heads
    per_block = 2 * (16 * 4 + 4 * 16) + removed_kv * 2 * 16 * 4
    if name == "qwen":
        per_block += 2 * 4 + removed_kv * 2 * 4
    assert model.count_params() - small.count_params() == 2 * per_block
    zeroed = _out(pruned, gqa["feed"])
    assert np.abs(zeroed - _out(model, gqa["feed"])).max() > 0.1
    assert np.abs(_out(small, gqa["feed"]) - zeroed).max() < 2e-5
    if (name, unit) == ("qwen", "group"):
        # The head-sized block prunes again: one query head of the remaining group.
        again = tfprune.prune_heads(small, 0.5)
        smaller = tfprune.shrink(again)
        configs = [b.get_config() for b in _blocks(smaller)]
        assert [(c["num_query_heads"], c["num_key_value_heads"]) for c in configs] == [(1, 1)] * 2
        assert small.count_params() - smaller.count_params() == 2 * (16 * 4 + 4 + 4 * 16)
        assert np.abs(_out(smaller, gqa["feed"]) - _out(again, gqa["feed"])).max() < 2e-5


def test_activation_scores_of_heads_inside_a_block_equal_a_numpy_recomputation():
    inputs = keras.Input((6, 16))
    block = keras_hub.layers.TransformerEncoder(32, 4, name="enc")
    model = _randomised(keras.Model(inputs, block(inputs)))
    x = np.random.default_rng(2).normal(size=(3, 6, 16)).astype("float32")
    scores = tfprune.heads.head_scores(model, "activation", data=[x[:2], (x[2:], None)])
    assert list(scores) == ["enc/self_attention_layer"]
    [heads] = tfprune.heads.attention_heads(model)
    w = {tfprune.heads.variable_key(v): keras.ops.convert_to_numpy(v) for v in heads.layer.weights}

    def project(name):  # (batch, tokens, heads, head size)
        return np.einsum("btd,dhk->bthk", x, w[f"{name}/kernel"]) + w[f"{name}/bias"]

    q, k, v = project("query"), project("key"), project("value")
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(4)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    context = np.einsum("bhqs,bshk->bqhk", p, v)
    contribution = np.einsum("bqhk,hko->bqho", context, w["attention_output/kernel"])
    expected = np.linalg.norm(contribution, axis=-1).reshape(-1, 4).mean(axis=0)
    np.testing.assert_allclose(scores["enc/self_attention_layer"], expected, rtol=1e-4)


def test_prune_heads_by_activation_in_gpt2_drops_the_lowest_scores():
    model = _randomised(_gpt2())
    feed = _feed(model)
    scores = tfprune.heads.head_scores(model, "activation", data=[feed])
    pruned = tfprune.prune_heads(model, 0.5, criterion="activation", data=[feed])
    for heads in tfprune.heads.attention_heads(pruned):
        lowest = np.argsort(scores[heads.name], kind="stable")[:2]
        assert np.flatnonzero(heads.dead_heads()).tolist() == sorted(lowest.tolist())
    small = tfprune.shrink(pruned)
    assert [b.get_config()["num_heads"] for b in _blocks(small)] == [2, 2]
    np.testing.assert_allclose(_out(small, feed), _out(pruned, feed), atol=2e-5)
