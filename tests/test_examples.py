"""The examples run (quick mode) and do what they say."""

from __future__ import annotations

import importlib.util
import pathlib

import keras
import numpy as np
import pytest

import tfprune

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_returns_a_plain_model_at_75_percent(capsys):
    final = _load("quickstart").main(["--quick"])
    assert all("tfprune" not in type(x).__module__ for x in tfprune.layers.iter_layers(final))
    kernel = keras.ops.convert_to_numpy(final.get_layer("conv2").kernel)
    assert (kernel == 0).sum() == tfprune.allocation.count(0.75, kernel.size)
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert (EXAMPLES / "output/quickstart.txt").read_text() in out  # shown in the docs


def test_custom_training_loop_reaches_80_percent():
    model = _load("custom_training_loop").main(["--quick"])
    controller = tfprune.PruningController(model)
    assert controller.step == 43  # 1,347 images / 32 per batch
    for layer in controller.layers:
        mask = keras.ops.convert_to_numpy(layer.targets[0].mask)
        assert (~mask).sum() == tfprune.allocation.count(0.8, mask.size)
        kernel = keras.ops.convert_to_numpy(layer.layer.kernel)
        assert np.all(kernel[~mask] == 0)


def test_migrate_from_tfmot_prunes_both_to_the_same_schedule(tmp_path, capsys):
    import tensorflow_model_optimization as tfmot
    import tf_keras

    result = _load("migrate_from_tfmot").main(["--quick"])
    assert isinstance(result["schedule"], tfmot.sparsity.keras.PolynomialDecay)
    tfmot_model, final = result["tfmot"], result["tfprune"]
    assert isinstance(tfmot_model, tf_keras.Model) and not isinstance(tfmot_model, keras.Model)
    assert isinstance(final, keras.Model)
    assert all("tfprune" not in type(x).__module__ for x in tfprune.layers.iter_layers(final))
    assert all("PruneLowMagnitude" not in type(x).__name__ for x in tfmot_model.layers)
    # 80 % of each hidden kernel; the two rounding rules agree on these sizes.
    expected = {"conv1": 115, "conv2": 3686, "fc": 26214, "logits": 0}
    for name, zeros in expected.items():
        n = tfmot_model.get_layer(name).kernel.shape.num_elements()
        if name != "logits":
            assert zeros == tfprune.allocation.count(0.8, n) == n - round(n * 0.2)
        for model in (tfmot_model, final):
            assert (np.asarray(model.get_layer(name).kernel) == 0).sum() == zeros
    assert result["accuracy"]["tfmot"] > 0.75
    assert result["accuracy"]["tfprune"] > 0.75
    assert "accuracy" in capsys.readouterr().out
    # tfmot (and tf_keras) in the process leave Keras 3 and tfprune working.
    final.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), final.predict(x, verbose=0))
    wrapped = tfprune.wrap(loaded, sparsity=0.5, exclude=["logits"])
    wrapped.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped.fit(x, np.arange(4), verbose=0, callbacks=[tfprune.callbacks.UpdateMasks()])
    fc = wrapped.get_layer("fc")
    mask = keras.ops.convert_to_numpy(fc.targets[0].mask)
    assert (~mask).sum() == tfprune.allocation.count(0.5, mask.size)
    assert np.all(keras.ops.convert_to_numpy(fc.layer.kernel)[~mask] == 0)


@pytest.mark.backend
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(name, marks=pytest.mark.skipif(keras.backend.backend() != name, reason=name))
        for name in ("jax", "torch")
    ],
)
def test_backend_example_prunes_to_80_percent_with_fit_and_with_its_loop(backend, capsys):
    results = _load(f"{backend}_training").main(["--quick"])
    assert sorted(results) == ["fit", "loop"]
    for model in results.values():
        controller = tfprune.PruningController(model)
        assert controller.step == 43  # 1,347 images / 32 per batch
        for layer in controller.layers:
            mask = keras.ops.convert_to_numpy(layer.targets[0].mask)
            assert (~mask).sum() == tfprune.allocation.count(0.8, mask.size)
            kernel = keras.ops.convert_to_numpy(layer.layer.kernel)
            assert np.all(kernel[~mask] == 0)
    assert capsys.readouterr().out.count("sparsity 0.") == 2


def test_prune_hub_backbone_halves_gemma_heads_and_mlp(capsys):
    backbone, _, small, diff = _load("prune_hub_backbone").main()
    block = small.get_layer("decoder_block_1").get_config()
    assert (block["num_query_heads"], block["num_key_value_heads"]) == (2, 1)
    assert block["intermediate_dim"] == 16
    # Per block: 2 query heads (query and output, 2 x 8 x 16 each) and 1 key/value group
    # (key and value, 8 x 16 each): 6 x 8 x 16; 8 MLP units x 16 in gate, up and down.
    assert small.count_params() == backbone.count_params() - 2 * (6 * 8 * 16 + 8 * 16 * 3)
    assert diff < 1e-5
    assert "heads: 2 query, 1 key/value" in capsys.readouterr().out


def test_prune_bert_heads_halves_the_heads_and_reloads(tmp_path, capsys):
    backbone, small, loaded, diff, reloaded = _load("prune_bert_heads").main(
        str(tmp_path / "bert.keras")
    )
    assert [small.get_layer(f"transformer_layer_{i}").num_heads for i in range(2)] == [2, 2]
    # Per block, 2 heads of size 4: query, key, value (16 x 8 + 8) and output rows (8 x 16).
    assert backbone.count_params() - small.count_params() == 2 * (3 * (16 * 8 + 8) + 8 * 16)
    assert diff < 2e-5
    assert reloaded == 0.0
    assert (
        type(loaded.get_layer("transformer_layer_1"))
        is tfprune.hub_sized.HeadSizedTransformerEncoder
    )
    assert "HeadSizedTransformerEncoder num_heads: 2 head_dim: 4" in capsys.readouterr().out
