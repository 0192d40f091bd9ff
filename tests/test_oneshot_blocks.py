"""One-shot pruning of kernels at nested paths: attention projections and registered blocks.

Each test computes the inputs of every sublayer by hand (calling the pruned sublayers one by
one and the attention in NumPy), prunes the original kernel from them (Wanda by hand,
SparseGPT with its solver) and asserts that `tfprune.oneshot` set the same masks: so the
inputs were captured at the right sublayer, over all batches, in the order the sublayers
run, each from the model with the sublayers before it already pruned.
"""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest

import tfprune
from tfprune import allocation
from tfprune import layers as registry
from tfprune.layers import LayerSpec, WeightSpec
from tfprune.oneshot import solvers

_PROJECTIONS = ("query", "key", "value")


def _attention_specs(prefix: str) -> list[WeightSpec]:
    """Kernels of a MultiHeadAttention at `prefix` (`(in, heads, dim)`, `(heads, dim, out)`)."""
    specs = [
        WeightSpec(f"{prefix}{p}_dense.kernel", (0,), (1, 2), output=False) for p in _PROJECTIONS
    ]
    return [*specs, WeightSpec(f"{prefix}output_dense.kernel", (0, 1), (2,), output=False)]


def _dense_specs(*paths: str) -> list[WeightSpec]:
    return [WeightSpec(f"{p}.kernel", (0,), (1,), output=False) for p in paths]


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x).astype(np.float64)


def _attention_inputs(mha, query, value, causal: bool = False) -> dict[str, np.ndarray]:
    """The inputs of the four projections of `mha` (its weights as they are now), by hand."""
    q, k, v = (
        _np(getattr(mha, f"{p}_dense")(t)) for p, t in zip(_PROJECTIONS, (query, value, value))
    )
    scores = np.einsum("bthd,bshd->bhts", q / np.sqrt(q.shape[-1]), k)
    if causal:
        t, s = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((t, s), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    z = np.einsum("bhts,bshd->bthd", probs, v).reshape(*q.shape[:2], -1)  # heads x dim
    return {
        "query_dense": _np(query),
        "key_dense": _np(value),
        "value_dense": _np(value),
        "output_dense": z,
    }


def _expected(method: str, kernel: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(kernel, keep)` of `kernel` (input axes first) pruned at 50 % on inputs `x`."""
    cols = x.shape[-1]
    x = x.reshape(-1, cols)
    w = kernel.reshape(cols, -1).T.astype(np.float64)  # (rows = outputs, cols = inputs)
    if method == "wanda":  # the lowest |w_ij| * ||x_j|| of every row
        score = np.abs(w) * np.sqrt((x**2).sum(axis=0))
        keep = np.ones(w.shape, bool)
        np.put_along_axis(
            keep, np.argsort(score, axis=1)[:, : allocation.count(0.5, cols)], False, 1
        )
        keep = keep.T.reshape(kernel.shape)
        return kernel * keep, keep
    new, keep = solvers.sparsegpt(w[None], (x.T @ x)[None], 0.5)
    return new[0].T.reshape(kernel.shape), keep[0].T.reshape(kernel.shape)


def _check(method, original, pruned, inputs: dict[str, np.ndarray]) -> None:
    """Asserts the masks (and SparseGPT kernels) of `pruned` at the kernel paths of `inputs`."""
    assert sorted(t.spec.path for t in pruned.targets) == sorted(f"{p}.kernel" for p in inputs)
    for path, x in inputs.items():
        kernel = _np(registry.resolve(original, f"{path}.kernel"))
        expected_kernel, keep = _expected(method, kernel, x)
        target = pruned.target(f"{path}.kernel".replace(".", "_"))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(target.mask), keep, err_msg=path)
        np.testing.assert_allclose(_np(target.variable), expected_kernel, atol=1e-4, err_msg=path)
    for path in inputs:  # every recording hook was removed
        owner = pruned.layer
        for part in path.split("."):
            owner = getattr(owner, part)
        assert "call" not in vars(owner)


# --- a custom block --------------------------------------------------------------------


class Block(keras.layers.Layer):
    """Pre-norm attention and MLP in one layer: `x + mha(n(x)), then y + down(up(y))`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.LayerNormalization()
        self.attention = keras.layers.MultiHeadAttention(2, 4)
        self.up = keras.layers.Dense(16, activation="relu")
        self.down = keras.layers.Dense(8)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.up.build(input_shape)
        self.down.build((*input_shape[:-1], 16))

    def call(self, x):
        h = self.norm(x)
        y = x + self.attention(h, h)
        return y + self.down(self.up(y))


@pytest.fixture
def block_spec(monkeypatch):
    """Registers `Block` for one test (the registry is global: other tests list it)."""
    # Listed against the order they run (down first): the capture must follow the calls.
    spec = LayerSpec(tuple(_dense_specs("down", "up") + _attention_specs("attention.")[::-1]))
    monkeypatch.setitem(registry._REGISTRY, Block, spec)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_kernels_of_a_custom_block_are_pruned_on_their_sublayers_inputs(block_spec, method):
    inputs = keras.Input((6, 8))
    block = Block(name="block")
    outputs = keras.layers.Dense(4, name="d")(keras.layers.Flatten()(block(inputs)))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(24, 6, 8)).astype("float32")
    pruned_model = tfprune.oneshot(model, x, method=method, exclude=["d"], batch_size=8)
    pruned = pruned_model.get_layer("block")
    inner = pruned.layer
    h = inner.norm(x)
    mha = {f"attention.{k}": v for k, v in _attention_inputs(inner.attention, h, h).items()}
    y = x + inner.attention(h, h)
    _check(method, block, pruned, {**mha, "up": _np(y), "down": _np(inner.up(y))})
    sp = tfprune.controller.sparsities(tfprune.wrapper.prunable_layers(pruned_model))
    assert sp["global"] == 0.5


def test_attention_called_with_a_mask_has_all_four_projections_pruned():
    tokens = keras.Input((6, 8))
    mask = keras.Input((6, 6), dtype="bool")
    mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
    outputs = keras.layers.Dense(4, name="d")(
        keras.layers.Flatten()(mha(tokens, tokens, attention_mask=mask))
    )
    model = keras.Model([tokens, mask], outputs)
    x = np.random.default_rng(1).normal(size=(20, 6, 8)).astype("float32")
    causal = np.broadcast_to(np.tril(np.ones((6, 6), bool)), (20, 6, 6))
    pruned = tfprune.oneshot(model, [x, causal], method="wanda", exclude=["d"]).get_layer("mha")
    _check("wanda", mha, pruned, _attention_inputs(pruned.layer, x, x, causal=True))


# --- keras-hub blocks ------------------------------------------------------------------

_ENCODER = ["_feedforward_intermediate_dense", "_feedforward_output_dense"]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_keras_hub_encoder_and_decoder_are_pruned_on_their_sublayers_inputs(method):
    # tfprune.hub_blocks registers both blocks, their kernels listed by attribute path.
    source, target = keras.Input((6, 8)), keras.Input((5, 8))
    encoder = keras_hub.layers.TransformerEncoder(16, 2, name="encoder")
    decoder = keras_hub.layers.TransformerDecoder(16, 2, name="decoder")
    y = decoder(target, encoder(source))
    model = keras.Model(
        [source, target], keras.layers.Dense(4, name="d")(keras.layers.Flatten()(y))
    )
    rng = np.random.default_rng(2)
    for w in model.weights:  # layer norms that are not the identity
        if w.path.endswith(("gamma", "beta")):
            w.assign(rng.uniform(0.5, 1.5, w.shape) - (w.path.endswith("beta")))
    data = [
        rng.normal(size=(20, 6, 8)).astype("float32"),
        rng.normal(size=(20, 5, 8)).astype("float32"),
    ]
    pruned_model = tfprune.oneshot(model, data, method=method, exclude=["d"], batch_size=8)

    # Encoder (post-norm): x1 = LN(x + attention(x, x)), out = LN(x1 + ffn(x1)).
    enc = pruned_model.get_layer("encoder").layer
    x = data[0]
    attention = _attention_inputs(enc._self_attention_layer, x, x)
    x1 = enc._self_attention_layer_norm(x + enc._self_attention_layer(x, x))
    hidden = enc._feedforward_intermediate_dense(x1)
    encoded = enc._feedforward_layer_norm(x1 + enc._feedforward_output_dense(hidden))
    inputs = {f"_self_attention_layer.{k}": v for k, v in attention.items()}
    inputs |= dict(zip(_ENCODER, (_np(x1), _np(hidden))))
    _check(method, encoder, pruned_model.get_layer("encoder"), inputs)

    # Decoder: causal self-attention, cross-attention on the encoder output, then the MLP.
    dec = pruned_model.get_layer("decoder").layer
    t = data[1]
    attention = _attention_inputs(dec._self_attention_layer, t, t, causal=True)
    causal = np.tril(np.ones((5, 5), bool))
    t1 = dec._self_attention_layer_norm(t + dec._self_attention_layer(t, t, attention_mask=causal))
    cross = _attention_inputs(dec._cross_attention_layer, t1, encoded)
    t2 = dec._cross_attention_layer_norm(t1 + dec._cross_attention_layer(t1, encoded))
    hidden = dec._feedforward_intermediate_dense(t2)
    inputs = {f"_self_attention_layer.{k}": v for k, v in attention.items()}
    inputs |= {f"_cross_attention_layer.{k}": v for k, v in cross.items()}
    inputs |= dict(zip(_ENCODER, (_np(t2), _np(hidden))))
    _check(method, decoder, pruned_model.get_layer("decoder"), inputs)


def test_recording_hooks_are_removed_when_the_model_fails():
    from tfprune._hooks import recording

    dense = keras.layers.Dense(2)
    x = np.ones((3, 4), np.float32)
    seen = []
    record = recording([dense], lambda i, t: seen.append((i, t.shape)))
    with pytest.raises(RuntimeError, match="stop"), record:
        dense(x)
        raise RuntimeError("stop")
    assert seen == [(0, (3, 4))]
    assert "call" not in vars(dense)
    dense(x)
    assert len(seen) == 1


def test_keras_hub_gpt2_backbone_prunes_every_block_kernel_in_one_shot():
    keras.utils.set_random_seed(0)
    gpt2 = keras_hub.models.GPT2Backbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    rng = np.random.default_rng(0)
    feed = {"token_ids": rng.integers(0, 50, (32, 8)), "padding_mask": np.ones((32, 8), "int32")}
    plain = tfprune.strip(tfprune.oneshot(gpt2, feed, sparsity=0.5, method="wanda"))
    kernels = {
        v.path: keras.ops.convert_to_numpy(v)
        for layer in plain.layers
        if layer.name.startswith("transformer_layer")
        for v in layer.weights
        if v.path.endswith("kernel")
    }
    # q, k, v, attention output and both MLP kernels of each of the two blocks.
    assert len(kernels) == 12
    for path, kernel in kernels.items():
        assert (kernel == 0).sum() == kernel.size // 2, path
