"""keras-hub backbones (Functional subclasses) through the graph, wrap/strip and shrink."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest

import tfprune

L = keras.layers


def _bert():
    return keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )


def _feed():
    return {
        "token_ids": np.array([[1, 2, 3, 0]]),
        "segment_ids": np.zeros((1, 4), "int32"),
        "padding_mask": np.array([[1, 1, 1, 0]]),
    }


def test_bert_backbone_is_read_as_a_functional_model():
    # On main: TypeError "subclassed model ... Keras cannot see".
    groups = tfprune.graph.channel_groups(_bert())
    assert [(g.producers, g.channels, g.reason) for g in groups] == [
        # The block's heads and MLP units.
        (["transformer_layer_0"], 2, groups[0].reason),
        (["transformer_layer_0"], 16, None),
        (["pooled_dense"], 8, "its channels are a model output"),
    ]


def test_keras_hub_blocks_freeze_with_a_reason():
    bert = _bert()
    x = L.Dense(4, name="head_a")(bert.output["sequence_output"])
    model = keras.Model(bert.input, L.Dense(2, name="head_b")(x))
    assert _reason(model, "head_a") is None
    seq = bert.get_layer("transformer_layer_0").output
    hidden = L.Dense(8, name="pre")(seq)
    rms = keras_hub.layers.RMSNormalization(input_dim=8)
    norm = rms(hidden)
    blocked = keras_hub.layers.TransformerEncoder(16, 2, name="enc")(L.Dense(8, name="pre2")(norm))
    model2 = keras.Model(bert.input, [blocked, L.Dense(2, name="o")(norm)])
    assert _reason(model2, "pre") == (
        f"RMSNormalization '{rms.name}' computes statistics across channels, so removing "
        "channels would change its output; pass `through_norms=True` to prune the hidden "
        "width through it anyway (not exact: fine-tune or distil afterwards)"
    )
    assert _reason(model2, "pre2") == (
        "TransformerEncoder 'enc' adds them to its residual stream (the hidden width of a "
        "keras-hub block is kept; its MLP units and attention heads are pruned)"
    )
    pos = keras_hub.layers.PositionEmbedding(8, name="pos")
    model3 = keras.Model(bert.input, pos(L.Dense(8, name="pre3")(seq)))
    # PositionEmbedding adds a per-position table: channels pass through to the output.
    assert _reason(model3, "pre3") == "its channels are a model output"


def _reason(model, producer):
    return next(g for g in tfprune.graph.channel_groups(model) if producer in g.producers).reason


def test_bert_head_prunes_and_shrinks_through_the_backbone():
    bert = _bert()
    x = L.Dense(6, activation="relu", name="head_a")(bert.output["pooled_output"])
    model = keras.Model(bert.input, L.Dense(2, name="head_b")(x))
    with pytest.warns(UserWarning, match=r"token_embedding \(ReversibleEmbedding\)"):
        wrapped = tfprune.wrap(model, 0.5, layers=["head_a", "head_b"])
    plain = tfprune.strip(wrapped)
    np.testing.assert_allclose(np.asarray(plain(_feed())), np.asarray(model(_feed())), atol=1e-6)
    pruned = tfprune.prune_channels(model, 0.5)
    small = tfprune.shrink(pruned)
    assert small.get_layer("head_a").units == 3
    np.testing.assert_allclose(np.asarray(small(_feed())), np.asarray(pruned(_feed())), atol=1e-5)


def test_gpt2_backbone_clones_although_its_blocks_build_only_from_a_call():
    gpt2 = keras_hub.models.GPT2Backbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )
    feed = {"token_ids": np.array([[1, 2, 3]]), "padding_mask": np.ones((1, 3), "int32")}
    # Every Dense of GPT-2 sits inside a TransformerDecoder, which tfprune.hub_blocks knows.
    with pytest.warns(UserWarning, match=r"token_embedding \(ReversibleEmbedding\)"):
        wrapped = tfprune.wrap(gpt2, 0.5)
    assert [w.name for w in tfprune.wrapper.prunable_layers(wrapped)] == ["transformer_layer_0"]
    np.testing.assert_allclose(np.asarray(wrapped(feed)), np.asarray(gpt2(feed)), atol=1e-6)
    plain = tfprune.surgery.copy_model(gpt2)  # the same cloning, weights set after the call
    np.testing.assert_allclose(np.asarray(plain(feed)), np.asarray(gpt2(feed)), atol=1e-6)
    groups = tfprune.graph.channel_groups(gpt2)
    assert [(g.producers, g.channels, g.prunable) for g in groups] == [
        (["transformer_layer_0"], 2, True),  # heads (shrink keeps their size: hub_sized)
        (["transformer_layer_0"], 16, True),
    ]


def test_model_with_nothing_to_wrap_names_the_layers_left_dense():
    tokens = keras.Input((None,), dtype="int32", name="token_ids")
    embedding = keras_hub.layers.ReversibleEmbedding(50, 8, name="tok")
    model = keras.Model(tokens, embedding(tokens), name="only_embedding")
    with (
        pytest.warns(UserWarning, match=r"tok \(ReversibleEmbedding\)"),
        pytest.raises(ValueError) as err,
    ):
        tfprune.wrap(model, 0.5)
    assert str(err.value).startswith(
        "tfprune.wrap found no layer to prune in model 'only_embedding' (left dense: "
        "tok (ReversibleEmbedding); "
    )
    assert "register the block's type with tfprune.layers.register" in str(err.value)


def test_layer_whose_config_does_not_round_trip_is_named():
    vit = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    with pytest.raises(TypeError) as err, pytest.warns(UserWarning, match="vit_encoder"):
        tfprune.wrap(vit, 0.5)
    assert str(err.value).startswith(
        "Layer 'vit_patching_and_embedding' (ViTPatchingAndEmbedding) cannot be rebuilt from "
        "its own config, so tfprune cannot clone the model"
    )


@pytest.mark.parametrize(
    "run",
    [
        tfprune.graph.channel_groups,
        lambda m: tfprune.prune_channels(m, 0.5),
        lambda m: tfprune.wrap(m, 0.5),
        tfprune.heads.attention_heads,
        lambda m: tfprune.prune_heads(m, 0.5),
    ],
    ids=["channel_groups", "prune_channels", "wrap", "attention_heads", "prune_heads"],
)
def test_layer_whose_get_config_fails_is_named(run):
    # keras-hub 0.32's LlamaTransformerDecoder.get_config reads an attribute it never sets.
    llama = keras_hub.models.LlamaBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
    )
    with pytest.raises(TypeError) as err:
        run(llama)
    message = str(err.value)
    assert message.startswith(
        "Layer 'transformer_layer_0' (LlamaTransformerDecoder) cannot serialize its config "
        "(AttributeError: "
    )
    assert message.endswith("for keras-hub layers, report it upstream).")


class _Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.d = L.Dense(2)

    def call(self, x):
        return self.d(x)


def test_subclassed_model_called_symbolically_is_still_refused():
    sub = _Sub()
    sub(keras.Input((3,)))
    with pytest.raises(TypeError, match="is a subclassed model"):
        tfprune.graph.channel_groups(sub)


def test_gemma_internal_norm_is_known_by_its_bare_name():
    gemma = keras_hub.models.GemmaBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        head_dim=4,
    )
    norm = gemma.get_layer("final_normalization")
    assert keras.saving.get_registered_name(type(norm)) == "RMSNormalization"
    fresh = type(norm).from_config({**norm.get_config(), "name": "head_norm"})
    x = L.Dense(8, name="pre")(gemma.output)
    model = keras.Model(gemma.input, L.Dense(2, name="o")(fresh(x)))
    assert _reason(model, "pre") == (
        "RMSNormalization 'head_norm' computes statistics across channels, so removing "
        "channels would change its output; pass `through_norms=True` to prune the hidden "
        "width through it anyway (not exact: fine-tune or distil afterwards)"
    )


def test_efficientnet_backbone_whose_blocks_create_weights_in_call_wraps_and_strips():
    # On main: ValueError from set_weights on 'block1a_' (its build() creates no weights).
    net = keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[8, 8],
        stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 2],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.25],
        stackwise_strides=[1, 2],
        stackwise_block_types=["fused", "unfused"],
        stackwise_width_coefficients=[1.0, 1.0],
        stackwise_depth_coefficients=[1.0, 1.0],
        input_shape=(8, 8, 3),
        num_features=16,
    )
    data = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype("float32")
    with pytest.warns(UserWarning, match=r"block1a_ \(FusedMBConvBlock\)"):
        wrapped = tfprune.wrap(net, 0.5)
    assert [type(layer).__name__ for layer in wrapped.layers].count("Prunable") == 2
    plain = tfprune.strip(wrapped)
    np.testing.assert_allclose(np.asarray(plain(data)), np.asarray(net(data)), atol=1e-6)
    # Its blocks are subclassed layers: the channels between them are kept, with a reason.
    groups = tfprune.graph.channel_groups(net)
    assert [(g.producers, g.reason) for g in groups] == [
        (
            ["stem_conv"],
            "layer 'block1a_' (FusedMBConvBlock): tfprune.graph has no channel rule for its "
            "type FusedMBConvBlock; channels that reach it are kept",
        ),
        (["top_conv"], "its channels are a model output"),
    ]
