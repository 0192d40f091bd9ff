"""The examples run (quick mode) and do what they say."""

from __future__ import annotations

import importlib.util
import pathlib

import keras
import numpy as np

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
    assert "test accuracy" in capsys.readouterr().out


def test_custom_training_loop_reaches_80_percent():
    model = _load("custom_training_loop").main(["--quick"])
    controller = tfprune.PruningController(model)
    assert controller.step == 43  # 1,347 images / 32 per batch
    for layer in controller.layers:
        mask = keras.ops.convert_to_numpy(layer.targets[0].mask)
        assert (~mask).sum() == tfprune.allocation.count(0.8, mask.size)
        kernel = keras.ops.convert_to_numpy(layer.layer.kernel)
        assert np.all(kernel[~mask] == 0)
