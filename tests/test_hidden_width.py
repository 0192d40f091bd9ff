"""Hidden (embedding) width of transformers: `through_norms=True` in the channel graph."""

from __future__ import annotations

import importlib.util
import pathlib
import warnings

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune import cli

L = keras.layers
DIM, VOCAB, SEQ, MLP, BLOCKS = 16, 20, 6, 12, 1
NOT_EXACT = (
    r"removed hidden channels that pass through {n} normalization layer\(s\) \({names}\)\. "
    r"These compute statistics across channels, so the result is not exact: fine-tune or "
    r"distil it \(tfprune\.distill\) afterwards\."
)


def _norm(kind: str, name: str):
    return {
        "ln": lambda: L.LayerNormalization(epsilon=1e-6, name=name),
        "rms": lambda: L.RMSNormalization(name=name),
        "identity": lambda: L.Identity(name=name),
    }[kind]()


def _attention(kind: str, name: str):
    if kind == "gqa":
        return L.GroupQueryAttention(4, 4, 2, name=name)
    return L.MultiHeadAttention(2, 4, name=name)


def _blocks(x, norm: str, attention: str = "mha", causal: bool = False):
    for i in range(BLOCKS):
        h = _norm(norm, f"ln1_{i}")(x)
        h = _attention(attention, f"attn{i}")(h, h, use_causal_mask=causal)
        x = L.Add(name=f"attn_add{i}")([x, h])
        h = _norm(norm, f"ln2_{i}")(x)
        h = L.Dense(MLP, activation="gelu", name=f"up{i}")(h)
        x = L.Add(name=f"mlp_add{i}")([x, L.Dense(DIM, name=f"down{i}")(h)])
    return _norm(norm, "final_ln")(x)


def _randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32") * 0.3)
    return model


def gpt(norm: str = "ln", attention: str = "mha") -> keras.Model:
    """A GPT-style decoder: token and position embeddings, causal pre-norm blocks."""
    tok = keras.Input((SEQ,), dtype="int32")
    x = L.Embedding(VOCAB, DIM, name="emb")(tok)
    x = L.Add(name="pos_add")([x, keras_hub.layers.PositionEmbedding(SEQ, name="pos")(x)])
    x = _blocks(x, norm, attention, causal=True)
    return _randomize(keras.Model(tok, L.Dense(VOCAB, name="logits")(x)))


def vit(norm: str = "ln") -> keras.Model:
    """A ViT: 2x2 patches of 8x8 images, position embedding, pre-norm blocks, mean pooling."""
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(DIM, 2, strides=2, name="patches")(inputs)
    x = L.Reshape((16, DIM), name="tokens")(x)
    x = L.Add(name="pos_add")([x, keras_hub.layers.PositionEmbedding(16, name="pos")(x)])
    x = L.GlobalAveragePooling1D(name="pool")(_blocks(x, norm))
    return _randomize(keras.Model(inputs, L.Dense(4, name="logits")(x)))


def _tokens(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).integers(0, VOCAB, size=(n, SEQ)).astype("int32")


def _images(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 8, 8, 1)).astype("float32")


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _gpt_params(d: int, attention: str = "mha") -> int:
    """Parameters of `gpt()` with hidden width `d`, counted by hand."""
    heads, kv_heads, head_dim = (4, 2, 4) if attention == "gqa" else (2, 2, 4)
    qkv = d * (heads + 2 * kv_heads) * head_dim + (heads + 2 * kv_heads) * head_dim
    out = heads * head_dim * d + d
    mlp = (d * MLP + MLP) + (MLP * d + d)
    return VOCAB * d + SEQ * d + BLOCKS * (qkv + out + mlp) + d * VOCAB + VOCAB


def test_without_the_opt_in_the_stream_is_frozen_with_a_reason_naming_norm_and_opt_in():
    groups = tfprune.graph.channel_groups(vit())
    stream = next(g for g in groups if "patches" in g.producers)
    assert (stream.producers, stream.prunable) == (["patches", "pos", "down0"], False)
    assert stream.reason == (
        "LayerNormalization 'ln1_0' computes statistics across channels, so removing channels "
        "would change its output; pass `through_norms=True` to prune the hidden width through "
        "it anyway (not exact: fine-tune or distil afterwards)"
    )
    # A token embedding keeps its channels, as before, and says how to prune them.
    by_producer = {tuple(g.producers): g for g in tfprune.graph.channel_groups(gpt())}
    assert sorted(by_producer) == [("down0",), ("logits",), ("up0",)]
    assert by_producer[("down0",)].reason == (
        "Add 'mlp_add0' merges it with a channel of the output of Embedding 'emb' (hidden "
        "width, pruned only with `through_norms=True`)"
    )
    small = tfprune.shrink(tfprune.prune_channels(gpt(), 0.5))
    assert small.get_layer("emb").output_dim == DIM
    assert small.get_layer("up0").units == MLP // 2


def test_through_norms_makes_the_residual_stream_one_group():
    model = gpt()
    groups = tfprune.graph.channel_groups(model, through_norms=True)
    assert [(g.producers, g.channels, g.prunable) for g in groups] == [
        (["emb", "pos", "attn0", "down0"], DIM, True),
        (["up0"], MLP, True),
        (["logits"], VOCAB, False),
    ]
    members = {(m.layer.name, m.weight, m.axis, m.role) for m in groups[0].members}
    for i in range(BLOCKS):
        assert {
            (f"ln1_{i}", "gamma", 0, "norm"),
            (f"ln1_{i}", "beta", 0, "norm"),
            (f"attn{i}", "query/kernel", 0, "input"),
            (f"attn{i}", "key/kernel", 0, "input"),
            (f"attn{i}", "value/kernel", 0, "input"),
            (f"attn{i}", "attention_output/kernel", 2, "output"),
            (f"attn{i}", "attention_output/bias", 0, "output"),
            (f"up{i}", "kernel", 0, "input"),
            (f"down{i}", "kernel", 1, "output"),
        } <= members
    assert {
        ("emb", "embeddings", 1, "output"),
        ("pos", "position_embeddings", 1, "output"),
        ("final_ln", "gamma", 0, "norm"),
        ("logits", "kernel", 0, "input"),
    } <= members
    assert len(members) == 5 + BLOCKS * 12


@pytest.mark.parametrize("attention", ["mha", "gqa"])
def test_identity_norms_shrink_exactly_to_half_the_hidden_width(attention):
    model = gpt("identity", attention)
    assert model.count_params() == _gpt_params(DIM, attention)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no norm: nothing is inexact
        pruned = tfprune.prune_channels(model, 0.5, ignore=["up0"], through_norms=True)
        small = tfprune.shrink(pruned, through_norms=True)
    assert small.count_params() == _gpt_params(DIM // 2, attention)
    assert small.get_layer("emb").output_dim == DIM // 2
    assert small.get_layer("attn0").weights[0].shape[0] == DIM // 2
    assert small.get_layer("down0").units == DIM // 2
    x = _tokens()
    np.testing.assert_allclose(_np(small(x)), _np(pruned(x)), atol=1e-5)


@pytest.mark.parametrize("attention", ["mha", "gqa"])
def test_hidden_width_and_heads_together_are_exact_with_identity_norms(attention):
    model = tfprune.prune_heads(gpt("identity", attention), ratio=0.5)
    pruned = tfprune.prune_channels(model, 0.5, through_norms=True)
    small = tfprune.shrink(pruned, through_norms=True)
    query, output = (small.get_layer("attn0").weights[i].shape for i in (0, -2))
    heads = 2 if attention == "gqa" else 1  # 4 query heads in 2 groups, or 2 heads
    assert (tuple(query), tuple(output)) == ((DIM // 2, heads, 4), (heads, 4, DIM // 2))
    x = _tokens()
    np.testing.assert_allclose(_np(small(x)), _np(pruned(x)), atol=1e-5)


def test_attention_with_its_own_output_width_is_a_group_of_its_own():
    inputs = keras.Input((5, 8))
    h = L.Dense(8, name="d1")(inputs)
    y = L.MultiHeadAttention(2, 4, output_shape=12, name="attn")(h, h)
    model = _randomize(keras.Model(inputs, L.Dense(3, name="d2")(y)))
    groups = tfprune.graph.channel_groups(model, through_norms=True)
    assert [(g.producers, g.channels, g.prunable) for g in groups] == [
        (["d1"], 8, True),
        (["attn"], 12, True),
        (["d2"], 3, False),
    ]
    pruned = tfprune.prune_channels(model, 0.5, through_norms=True)
    small = tfprune.shrink(pruned, through_norms=True)
    assert small.get_layer("attn").get_config()["output_shape"] == (6,)
    assert small.get_layer("attn").query_dense.kernel.shape == (4, 2, 4)
    x = np.random.default_rng(2).normal(size=(3, 5, 8)).astype("float32")
    np.testing.assert_allclose(_np(small(x)), _np(pruned(x)), atol=1e-5)
    h = L.Dense(8, name="d1")(inputs)
    y = L.MultiHeadAttention(2, 4, output_shape=(2, 6), name="attn")(h, h)
    model = keras.Model(inputs, L.Dense(3, name="d2")(y))
    groups = tfprune.graph.channel_groups(model, through_norms=True)
    assert groups[0].producers == ["d1"] and groups[0].reason == (
        "layer 'attn' (MultiHeadAttention): its output_shape=(2, 6) has more than one axis"
    )


def test_layer_norm_over_the_kept_channels_matches_a_reference_by_hand():
    inputs = keras.Input((5,))
    h = L.Dense(8, name="d1")(inputs)
    h = L.LayerNormalization(epsilon=1e-3, name="ln")(h)
    model = _randomize(keras.Model(inputs, L.Dense(3, name="d2")(h)))
    assert not tfprune.graph.channel_groups(model)[0].prunable
    message = r"tfprune\.prune_channels\(through_norms=True\) " + NOT_EXACT.format(
        n=1, names="'ln'"
    )
    with pytest.warns(UserWarning, match=message):
        pruned = tfprune.prune_channels(model, 0.5, through_norms=True)
    with pytest.warns(UserWarning, match=r"tfprune\.shrink\(through_norms=True\) removed"):
        small = tfprune.shrink(pruned, through_norms=True)
    keep = np.flatnonzero(np.abs(_np(pruned.get_layer("d1").kernel)).sum(axis=0) > 0)
    assert keep.size == 4 and small.get_layer("d1").units == 4
    w1, b1 = (_np(v) for v in model.get_layer("d1").weights)
    gamma, beta = (_np(v) for v in model.get_layer("ln").weights)
    w2, b2 = (_np(v) for v in model.get_layer("d2").weights)
    x = np.random.default_rng(2).normal(size=(6, 5)).astype("float32")
    h = x @ w1[:, keep] + b1[keep]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-3)
    expected = (h * gamma[keep] + beta[keep]) @ w2[keep] + b2
    np.testing.assert_allclose(_np(small(x)), expected, atol=1e-5)
    # Not exact: the zeroed model still normalizes over all 8 channels.
    assert np.abs(_np(pruned(x)) - expected).max() > 1e-3


@pytest.mark.parametrize(
    "build,norm,x",
    [(vit, "ln", _images), (gpt, "ln", _tokens), (gpt, "rms", _tokens)],
    ids=["vit", "gpt", "gpt-rms"],
)
def test_transformers_prune_to_half_hidden_width_run_and_round_trip(build, norm, x, tmp_path):
    model = build(norm)
    with pytest.warns(UserWarning, match=r"pass through 3 normalization layer\(s\)"):
        pruned = tfprune.prune_channels(model, 0.5, ignore=["up0"], through_norms=True)
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(pruned, through_norms=True)
    assert small.get_layer("down0").units == DIM // 2
    assert tuple(small.get_layer("pos").position_embeddings.shape)[1] == DIM // 2
    assert tuple(small.get_layer("attn0").output_dense.kernel.shape) == (2, 4, DIM // 2)
    assert tuple(small.get_layer("final_ln").weights[0].shape) == (DIM // 2,)
    batch = x()
    out = _np(small(batch))
    assert out.shape == _np(model(batch)).shape and np.isfinite(out).all()
    path = str(tmp_path / "small.keras")
    small.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(_np(loaded(batch)), out, atol=1e-6)


def _zero_channels(model, channels):
    """Zeroes every weight slice (producers, consumers, norms) of some hidden channels."""
    group = tfprune.graph.channel_groups(model, through_norms=True)[0]
    keep = np.ones(group.channels, bool)
    keep[channels] = False
    for m in group.members:
        var = tfprune.layers.resolve(m.layer, m.weight)
        value = _np(var).copy()
        index = [slice(None)] * value.ndim
        index[m.axis] = np.flatnonzero((m.index >= 0) & ~keep[np.maximum(m.index, 0)])
        value[tuple(index)] = 0
        var.assign(value)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "activation"])
def test_hidden_criteria_drop_the_channels_that_carry_nothing(criterion):
    model = gpt()
    _zero_channels(model, [1, 5, 9, 13])
    x = _tokens(8)
    y = np.random.default_rng(3).integers(0, VOCAB, size=(8, SEQ))
    kwargs = {"criterion": criterion, "ignore": ["up0"], "through_norms": True}
    if criterion == "taylor":
        kwargs.update(data=[(x, y)], loss=keras.losses.SparseCategoricalCrossentropy(True))
    if criterion == "activation":
        kwargs["criterion"] = tfprune.activation_scores.activation_criterion(model, [x])
    with pytest.warns(UserWarning, match="not exact"):
        small = tfprune.shrink(tfprune.prune_channels(model, 0.25, **kwargs), through_norms=True)
    kept = [c for c in range(DIM) if c not in (1, 5, 9, 13)]
    np.testing.assert_array_equal(
        _np(small.get_layer("emb").embeddings), _np(model.get_layer("emb").embeddings)[:, kept]
    )


def test_activation_score_of_a_hidden_channel_is_the_mean_norm_output():
    model = gpt()
    x = _tokens(8)
    group = tfprune.graph.channel_groups(model, through_norms=True)[0]
    scores = tfprune.activation_scores.activation_criterion(model, [x])(group)
    norms = ["ln1_0", "ln2_0", "final_ln"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in norms])
    expected = sum(np.abs(_np(y)).reshape(-1, DIM).mean(axis=0) for y in probe(x))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_keras_hub_rms_normalization_passes_channels_by_its_registered_name():
    inputs = keras.Input((4, 6))
    rms = keras_hub.layers.RMSNormalization(input_dim=8)
    y = L.Dense(2, name="d2")(rms(L.Dense(8, name="d1")(inputs)))
    model = keras.Model(inputs, y)
    frozen = tfprune.graph.channel_groups(model)[0]
    assert frozen.reason.startswith(f"RMSNormalization '{rms.name}' computes statistics")
    group = tfprune.graph.channel_groups(model, through_norms=True)[0]
    assert (group.producers, group.prunable) == (["d1"], True)
    assert {(m.layer.name, m.weight, m.role) for m in group.members} == {
        ("d1", "kernel", "output"),
        ("d1", "bias", "output"),
        (rms.name, "scale", "norm"),
        ("d2", "kernel", "input"),
    }


def test_cli_shrink_through_norms(tmp_path, capsys):
    inputs = keras.Input((5,))
    h = L.LayerNormalization(name="ln")(L.Dense(8, name="d1")(inputs))
    model = _randomize(keras.Model(inputs, L.Dense(3, name="d2")(h)))
    with pytest.warns(UserWarning, match="not exact"):
        pruned = tfprune.prune_channels(model, 0.5, through_norms=True)
    pruned.save(tmp_path / "pruned.keras")
    out = tmp_path / "small.keras"
    assert cli.main(["shrink", str(tmp_path / "pruned.keras"), str(out)]) == 0
    assert keras.saving.load_model(out).get_layer("d1").units == 8
    with pytest.warns(UserWarning, match="not exact"):
        assert (
            cli.main(["shrink", str(tmp_path / "pruned.keras"), str(out), "--through-norms"]) == 0
        )
    assert keras.saving.load_model(out).get_layer("d1").units == 4
    assert capsys.readouterr().out.splitlines()[-1] == f"Wrote {out}: 47 parameters (was 91)"


def test_through_norms_must_be_a_bool():
    with pytest.raises(TypeError, match=r"Received: through_norms='yes'"):
        tfprune.prune_channels(gpt(), 0.5, through_norms="yes")


@pytest.mark.slow
def test_prune_hidden_width_example_halves_the_stream_and_distillation_recovers():
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "prune_hidden_width.py"
    spec = importlib.util.spec_from_file_location("prune_hidden_width", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick"])
    assert result["hidden"] == (32, 16)
    dense, small = result["params"]
    # Per hidden channel: per block 4 x 32 attention and 2 x 64 MLP weights, 2 LayerNorms'
    # gamma and beta, the attention output and MLP down biases; then the patch kernel (4)
    # and bias, the final LayerNorm and the classifier row (10). Half of 32 channels go.
    per_channel = 2 * (4 * 32 + 2 * 64 + 2 * 2 + 2) + 5 + 2 + 10
    assert dense - small == 16 * per_channel
    accuracy = result["accuracy"]
    assert accuracy["distilled"] > accuracy["pruned"]
