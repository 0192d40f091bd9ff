from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from conftest import compile_model, small_cnn, toy_data

import tfprune
from tfprune import gates


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_hard_concrete_formulas():
    la = np.array([-3.0, 0.0, 2.0], "float32")
    u = np.array([0.3, 0.5, 0.9], "float32")
    s = _sigmoid((np.log(u) - np.log(1 - u) + la) / (2 / 3))
    np.testing.assert_allclose(gates.hard_concrete(la, u), np.clip(s * 1.2 - 0.1, 0, 1), rtol=1e-5)
    det = np.clip(_sigmoid(la) * 1.2 - 0.1, 0, 1)
    np.testing.assert_allclose(gates.hard_concrete(la), det, rtol=1e-5)
    # sigmoid(-3) * 1.2 - 0.1 < 0: the deterministic gate is exactly closed.
    assert float(gates.hard_concrete(la)[0]) == 0.0


def test_l0_penalty_formula():
    la = np.array([-1.0, 0.5], "float32")
    want = sum(_sigmoid(a - (2 / 3) * math.log(0.1 / 1.1)) for a in la)
    assert float(gates.l0_penalty(la)) == pytest.approx(want, rel=1e-5)
    assert float(gates.L0Penalty(0.25)(la)) == pytest.approx(0.25 * want, rel=1e-5)


def _mlp(gate, granularity="channel"):
    inputs = keras.Input((5,))
    h = keras.layers.Dense(7, activation="relu", name="fc")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    return tfprune.wrap(model, sparsity=None, granularity=granularity, gate=gate, exclude=["out"])


def test_l0_gate_init_penalty_and_model_losses():
    model = _mlp(gates.L0(lam=2.0, num_examples=10, drop_rate=0.3, seed=1))
    fc = model.get_layer("fc")
    (gate,) = fc.gate_layers
    np.testing.assert_allclose(gate.log_alpha.numpy(), np.full(7, math.log(0.7 / 0.3)), rtol=1e-6)
    assert [w.name for w in fc.trainable_weights] == ["kernel", "bias", "log_alpha"]
    (loss,) = model.losses
    want = 2.0 / 10 * 7 * _sigmoid(math.log(0.7 / 0.3) - (2 / 3) * math.log(0.1 / 1.1))
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert model.get_layer("out").__class__ is keras.layers.Dense


def test_l0_training_samples_gates_in_range_and_inference_is_deterministic():
    model = _mlp(gates.L0(seed=3))
    fc = model.get_layer("fc")
    (gate,) = fc.gate_layers
    gate.log_alpha.assign(np.array([-4, -1, 0, 0.5, 1, 2, 6], "float32"))
    samples = np.stack([keras.ops.convert_to_numpy(gate.values(True)) for _ in range(200)])
    assert samples.min() == 0.0 and samples.max() == 1.0
    assert np.mean((samples > 0) & (samples < 1)) > 0  # the hard concrete is not binary
    x = np.random.default_rng(0).random((4, 5), dtype=np.float32)
    np.testing.assert_array_equal(model(x), model(x))
    assert not np.array_equal(model(x, training=True), model(x, training=True))
    # Inference equals the plain layer run on kernel * z and bias * z.
    z = keras.ops.convert_to_numpy(gates.hard_concrete(gate.log_alpha))
    k, b = fc.layer.kernel.numpy(), fc.layer.bias.numpy()
    out = model.get_layer("out")
    want = np.maximum(x @ (k * z) + b * z, 0) @ out.kernel.numpy() + out.bias.numpy()
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)
    assert fc.open_gates() == (6, 7)


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_gates_learn_in_fit_and_fold_at_strip(granularity):
    model = compile_model(_mlp(gates.L0(lam=1.0, num_examples=16, seed=0), granularity))
    fc = model.get_layer("fc")
    (gate,) = fc.gate_layers
    assert tuple(gate.log_alpha.shape) == ((7,) if granularity == "channel" else (5, 7))
    before = gate.log_alpha.numpy().copy()
    x = np.random.default_rng(1).random((16, 5), dtype=np.float32)
    y = np.arange(16) % 2
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)  # no UpdateMasks needed: no schedule
    assert np.all(gate.log_alpha.numpy() != before)
    values = np.linspace(-6, 6, int(np.prod(gate.log_alpha.shape)), dtype="float32")
    gate.log_alpha.assign(values.reshape(gate.log_alpha.shape))
    stripped = tfprune.strip(model)
    np.testing.assert_allclose(stripped(x), model(x), rtol=1e-5, atol=1e-6)
    z = keras.ops.convert_to_numpy(gates.hard_concrete(gate.log_alpha))
    kernel = stripped.get_layer("fc").kernel.numpy()
    assert np.count_nonzero(kernel) == np.count_nonzero(np.broadcast_to(z, (5, 7)))
    assert not any(type(lay).__module__.startswith("tfprune") for lay in stripped.layers)


def test_closed_channel_gates_are_removed_by_shrink_and_counted_by_summary():
    model = _mlp(gates.L0())
    fc = model.get_layer("fc")
    fc.gate_layers[0].log_alpha.assign(np.array([-9, -9, -9, 0, 1, 5, 9], "float32"))
    small = tfprune.shrink(model)
    assert small.get_layer("fc").units == 4
    x = np.random.default_rng(2).random((8, 5), dtype=np.float32)
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-6)
    lines = []
    stats = tfprune.summary(model, print_fn=lines.append)
    assert stats["fc"].gates == (4, 7) and stats.gates == (4, 7)
    assert "gates open" in lines[0] and "4/7" in lines[0]
    assert tfprune.summary(small, print_fn=None).gates is None


def test_scale_gates_carry_the_slimming_penalty_and_rank_channels():
    model = small_cnn()
    gated = tfprune.wrap(
        model,
        sparsity=None,
        granularity="channel",
        gate=gates.Scale(0.1),
        layers=["c2", "d1"],
    )
    assert sorted(float(v) for v in gated.losses) == pytest.approx([0.1 * 16, 0.1 * 32])
    x, _ = toy_data(8)
    np.testing.assert_array_equal(gated(x), model(x))  # scales start at 1
    scale = gated.get_layer("d1").gate_layers[0].scale
    scale.assign(np.r_[np.zeros(8), np.linspace(0.1, 2, 24)].astype("float32"))
    pruned = tfprune.prune_channels(gated, ratio=0.25, criterion="bn_scale", ignore=["c1", "c2"])
    kernel = pruned.get_layer("d1").kernel.numpy()
    assert np.flatnonzero(~kernel.any(axis=0)).tolist() == list(range(8))
    np.testing.assert_allclose(tfprune.strip(gated)(x), gated(x), rtol=1e-5, atol=1e-6)


def test_gated_model_saves_and_loads(tmp_path):
    model = _mlp(gates.L0(lam=0.5, num_examples=100, drop_rate=0.2, seed=4), "weight")
    gate = model.get_layer("fc").gate_layers[0]
    gate.log_alpha.assign(np.linspace(-3, 3, 35, dtype="float32").reshape(5, 7))
    path = tmp_path / "gated.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode, no custom_objects
    x = np.random.default_rng(3).random((4, 5), dtype=np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
    fc = loaded.get_layer("fc")
    np.testing.assert_array_equal(fc.gate_layers[0].log_alpha.numpy(), gate.log_alpha.numpy())
    assert fc.gate.get_config()["drop_rate"] == 0.2
    assert float(loaded.losses[0]) == pytest.approx(float(model.losses[0]), rel=1e-6)


def test_per_layer_gates_by_name():
    model = small_cnn()
    gated = tfprune.wrap(
        model,
        sparsity=None,
        granularity="channel",
        gate={"c1": gates.L0(lam=0.1), "d1": gates.L0(lam=0.3)},
    )
    assert gated.get_layer("c1").gate.lam == 0.1 and gated.get_layer("d1").gate.lam == 0.3
    assert gated.get_layer("c2").gate_layers == []
    with pytest.raises(
        ValueError, match=r"`gate` names layers that are not in the model: \['nope'\]"
    ):
        tfprune.wrap(model, sparsity=None, gate={"nope": gates.L0()})


def test_bad_gate_arguments():
    with pytest.raises(ValueError, match=r"Received: drop_rate=1\.5"):
        gates.L0(drop_rate=1.5)
    with pytest.raises(ValueError, match=r"Received: num_examples=0"):
        gates.L0(num_examples=0)
    with pytest.raises(ValueError, match=r"Received: lam=-1"):
        gates.L0(lam=-1)
    with pytest.raises(ValueError, match="Received: strength=-1"):
        gates.Scale(-1)
    dense = keras.layers.Dense(4)
    with pytest.raises(ValueError, match=r"needs granularity='channel' or 'weight'.*'2:4'"):
        tfprune.Prunable(dense, granularity="2:4", gate=gates.L0())
    with pytest.raises(TypeError, match=r"Received: gate=0\.5"):
        tfprune.Prunable(dense, gate=0.5)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_channel_gates_compute_the_layer_on_gated_weights(kind):
    # A Dense layer scales its pre-activation outputs (x (W g) + b g = (x W + b) g, cheaper
    # for batches smaller than the fan-in); other layers run on the gated kernel and bias.
    # Both must give the layer's output with weights W * g and bias b * g.
    rng = np.random.default_rng(0)
    if kind == "dense":
        inner = keras.layers.Dense(6, activation="relu", bias_initializer="random_normal")
        x = rng.normal(size=(4, 5)).astype("float32")
    else:
        inner = keras.layers.Conv2D(6, 3, activation="relu", bias_initializer="random_normal")
        x = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    layer = tfprune.Prunable(inner, granularity="channel", gate=gates.Scale(0.0))
    layer(x)
    assert layer._gates_units() == (kind == "dense")
    g = np.array([0.0, 0.5, 1.0, 2.0, -1.0, 3.0], "float32")
    layer.gate_layers[0].scale.assign(g)
    reference = inner.__class__.from_config({**inner.get_config(), "name": "reference"})
    reference.build(x.shape)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in inner.weights)
    reference.set_weights([kernel * g, bias * g])
    for training in (True, False):
        np.testing.assert_allclose(layer(x, training=training), reference(x), rtol=1e-5, atol=1e-6)
    assert inner.activation is keras.activations.relu  # restored after the call
