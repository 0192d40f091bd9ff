"""The example scripts whose code the guides in docs/guides include run and do what they say."""

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


def _widths(model):
    return {
        layer.name: getattr(layer, "filters", None) or layer.units
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
    }


def test_structured_pruning_halves_every_group_and_shrinks(capsys):
    models = _load("structured_pruning").main(["--quick"])
    assert _widths(models["dense"]) == {"conv1": 32, "conv2": 64, "fc": 64, "logits": 10}
    assert _widths(models["small"]) == {"conv1": 16, "conv2": 32, "fc": 32, "logits": 10}
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    small = tfprune.shrink(models["pruned"])  # before fine-tuning: the same function
    np.testing.assert_allclose(
        small.predict(x, verbose=0), models["pruned"].predict(x, verbose=0), rtol=1e-4, atol=1e-4
    )
    out = capsys.readouterr().out
    assert "small test accuracy" in out
    assert (EXAMPLES / "output/structured_pruning.txt").read_text() in out  # shown in the docs


def test_export_writes_a_verified_int8_file_and_micro_sources(tmp_path):
    out = _load("export_tflite").main(["--out", str(tmp_path), "--quick"])
    result = out["result"]
    assert (tmp_path / "model.tflite").read_bytes()[4:8] == b"TFL3"
    assert result.verification.agreement >= 0.95
    assert out["latency"].median > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.cc", "model.h", "model.tflite"]


@pytest.mark.slow
def test_lottery_ticket_keeps_the_imp_counts(tmp_path):
    out = _load("lottery_ticket").main(["--out", str(tmp_path), "--quick"])
    ticket = out["search"].ticket()
    kept = {k: int(m.sum()) for k, m in ticket.masks.items()}
    sizes = {k: m.size for k, m in ticket.masks.items()}
    rates = {k: 0.1 if k.startswith("logits") else 0.2 for k in sizes}
    assert kept == {k: round(n * (1 - rates[k]) ** 2) for k, n in sizes.items()}
    kernel = keras.ops.convert_to_numpy(out["model"].get_layer("fc1").layer.kernel)
    assert (kernel != 0).sum() <= kept[next(k for k in kept if k.startswith("fc1"))]


@pytest.mark.slow
def test_learned_sparsity_shrinks_to_the_same_function():
    out = _load("learned_sparsity").main(["--quick"])
    x = out["probe"]
    pairs = [("slim_pruned", "slim_small"), ("lasso", "lasso_small"), ("gated", "gated_small")]
    for big, small in pairs:
        np.testing.assert_allclose(
            out[small].predict(x, verbose=0), out[big].predict(x, verbose=0), rtol=1e-4, atol=1e-4
        )
    assert _widths(out["slim_small"])["conv1"] == 16
    assert out["slim"].get_layer("bn1").gamma_regularizer.strength == 1e-4
