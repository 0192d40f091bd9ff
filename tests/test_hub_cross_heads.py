"""Heads of a keras-hub TransformerDecoder with cross attention: removed exactly by shrink."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune import hub_sized

D, HEADS, HEAD_DIM = 16, 4, 4
# Parameters of one head of an attention layer of width D: its query, key and value
# kernel and bias slices and its output kernel rows.
PER_HEAD = 3 * (D * HEAD_DIM + HEAD_DIM) + HEAD_DIM * D


def _encoder_decoder() -> keras.Model:
    """A one-block encoder and a one-block decoder reading it, every weight random."""
    source, target = keras.Input((6, D), name="source"), keras.Input((8, D), name="target")
    memory = keras_hub.layers.TransformerEncoder(32, HEADS, name="enc")(source)
    x = keras_hub.layers.TransformerDecoder(32, HEADS, name="dec")(target, memory)
    model = keras.Model([source, target], keras.layers.Dense(5, name="head")(x))
    rng = np.random.default_rng(0)
    for v in model.weights:  # LayerNorm gammas and betas included
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(v.dtype))
    return model


def _feed() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(2, 6, D)).astype("float32"), rng.normal(size=(2, 8, D))]


def _np(y) -> np.ndarray:
    return keras.ops.convert_to_numpy(y)


@pytest.fixture(scope="module")
def case():
    model = _encoder_decoder()
    pruned = tfprune.prune_heads(model, 0.5)
    return model, pruned, tfprune.shrink(pruned)


def test_half_the_self_and_cross_attention_heads_are_removed_exactly(case, tmp_path):
    model, pruned, small = case
    heads = tfprune.heads.attention_heads(pruned)
    assert [h.name for h in heads] == [
        "enc/self_attention_layer",
        "dec/self_attention",
        "dec/cross_attention",
    ]
    scores = tfprune.heads.head_scores(model)
    for h in heads:  # each layer loses its own two lowest-scoring heads
        assert np.flatnonzero(h.dead_heads()).tolist() == sorted(
            np.argsort(scores[h.name], kind="stable")[:2].tolist()
        )
    # Which heads go is each layer's own choice (here they differ).
    assert (heads[1].dead_heads() != heads[2].dead_heads()).any()
    decoder = small.get_layer("dec")
    assert type(decoder) is hub_sized.HeadSizedTransformerDecoder
    config = decoder.get_config()
    assert (config["num_heads"], config["head_dim"]) == (2, HEAD_DIM)
    for attention in (decoder._self_attention_layer, decoder._cross_attention_layer):
        assert tuple(attention.query_dense.kernel.shape) == (D, 2, HEAD_DIM)
        assert tuple(attention.key_dense.kernel.shape) == (D, 2, HEAD_DIM)
        assert tuple(attention.output_dense.kernel.shape) == (2, HEAD_DIM, D)
    assert model.count_params() - small.count_params() == 3 * 2 * PER_HEAD
    feed = _feed()
    expected = _np(pruned(feed))
    assert np.abs(_np(small(feed)) - expected).max() < 2e-5
    path = str(tmp_path / "small.keras")
    small.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("dec")) is hub_sized.HeadSizedTransformerDecoder
    assert loaded.get_layer("dec").get_config()["num_heads"] == 2
    np.testing.assert_array_equal(_np(loaded(feed)), _np(small(feed)))


def test_shrink_keeps_as_many_heads_in_both_layers_as_the_fuller_one_needs():
    model = _encoder_decoder()
    decoder = model.get_layer("dec")
    by_name = {h.name: h for h in tfprune.heads.attention_heads(model)}
    tfprune.heads.zero_heads(by_name["dec/self_attention"], np.array([1, 0, 1, 1], bool))
    tfprune.heads.zero_heads(by_name["dec/cross_attention"], np.array([0, 0, 1, 0], bool))
    small = tfprune.shrink(model)
    config = small.get_layer("dec").get_config()
    # Self attention keeps 3 heads, so cross attention keeps its live one and two dead ones.
    assert config["num_heads"] == 3
    assert model.count_params() - small.count_params() == 2 * PER_HEAD
    cross = small.get_layer("dec")._cross_attention_layer
    old = _np(decoder._cross_attention_layer.query_dense.kernel)
    np.testing.assert_array_equal(_np(cross.query_dense.kernel), old[:, [0, 1, 2]])
    feed = _feed()
    assert np.abs(_np(small(feed)) - _np(model(feed))).max() < 2e-5


def test_prune_channels_removes_the_same_heads_of_self_and_cross_attention():
    model = _encoder_decoder()
    groups = tfprune.graph.channel_groups(model)
    [heads] = [g for g in groups if g.layers == ["dec"] and g.members[0].weight.startswith("_self")]
    assert heads.prunable and heads.channels == HEADS
    assert sorted({m.weight.split(".")[0] for m in heads.members}) == [
        "_cross_attention_layer",
        "_self_attention_layer",
    ]
    pruned = tfprune.prune_channels(model, 0.5)
    small = tfprune.shrink(pruned)
    assert small.get_layer("dec").get_config()["num_heads"] == 2
    old = tfprune.heads.attention_heads(pruned)
    assert (old[1].dead_heads() == old[2].dead_heads()).all()
    feed = _feed()
    assert np.abs(_np(small(feed)) - _np(pruned(feed))).max() < 2e-5


def test_activation_scores_and_ignore_treat_self_and_cross_attention_together():
    model = _encoder_decoder()
    source, target = _feed()
    data = [{"source": source, "target": target}]
    scores = tfprune.heads.head_scores(model, "activation", data)
    pruned = tfprune.prune_heads(model, 0.5, criterion="activation", data=data)
    for h in tfprune.heads.attention_heads(pruned):
        assert np.flatnonzero(h.dead_heads()).tolist() == sorted(
            np.argsort(scores[h.name], kind="stable")[:2].tolist()
        )
    # Ignoring the cross attention leaves the self attention of its block whole too.
    pruned = tfprune.prune_heads(model, 0.5, ignore=["dec/cross_attention"])
    dead = [int(h.dead_heads().sum()) for h in tfprune.heads.attention_heads(pruned)]
    assert dead == [2, 0, 0]
