"""Pruning on every Keras backend, compared with TensorFlow.

Marked `backend`: the README's test command runs these under `KERAS_BACKEND=jax` and
`KERAS_BACKEND=torch` as well (`python -m pytest -m backend`). Comparisons with TensorFlow
run the same scenario in a TensorFlow-backend subprocess (`tests/backend_scenarios.py`).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pathlib
import subprocess
import sys

import backend_scenarios as scenarios
import keras
import numpy as np
import pytest

import tfprune
import tfprune.cli
from tfprune.backends import MASK_IN_CALL, sync_state

pytestmark = pytest.mark.backend

BACKEND = keras.backend.backend()
ROOT = pathlib.Path(__file__).resolve().parent.parent
not_tensorflow = pytest.mark.skipif(
    BACKEND == "tensorflow", reason="compares another backend with TensorFlow"
)


def _run_tensorflow(args: list[str]) -> None:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def tensorflow_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "tensorflow.npz"
    _run_tensorflow([str(ROOT / "tests" / "backend_scenarios.py"), str(path)])
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@not_tensorflow
@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_training_gives_what_tensorflow_gives(name, tensorflow_reference):
    ours = scenarios.run(name)
    prefix = f"{name}/"
    theirs = {k[len(prefix) :]: v for k, v in tensorflow_reference.items() if k.startswith(prefix)}
    assert sorted(ours) == sorted(theirs)
    for key, value in ours.items():
        if value.dtype == bool or value.dtype.kind in "iu":  # masks, steps: exactly
            np.testing.assert_array_equal(value, theirs[key], err_msg=key)
        else:
            np.testing.assert_allclose(value, theirs[key], rtol=1e-4, atol=2e-5, err_msg=key)


def test_gradients_equal_the_closed_form_of_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
    kernel, bias = model.get_layer("d").weights
    w, b = keras.ops.convert_to_numpy(kernel), keras.ops.convert_to_numpy(bias)
    grads = tfprune.backends.gradients(model, keras.losses.mean_squared_error, x, y)
    r = x @ w + b - y  # loss = mean over examples and outputs of r ** 2
    assert sorted(grads) == sorted([kernel.path, bias.path])
    np.testing.assert_allclose(grads[kernel.path], 2 * x.T @ r / r.size, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[bias.path], 2 * r.sum(0) / r.size, rtol=1e-5, atol=1e-6)


def _masked_copy(model: keras.Model, plain: keras.Model) -> None:
    """Loads `plain` (the stripped architecture) with `model`'s weights, masks applied."""
    wrapped = {layer.name: layer for layer in tfprune.controller.prunable_layers(model)}
    for layer in plain.layers:
        if layer.name in wrapped:
            layer.set_weights(wrapped[layer.name].masked_weights())
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())


class _CheckEveryStep(keras.callbacks.Callback):
    """After every step: the model computes with its pruned weights at zero."""

    def __init__(self, plain: keras.Model, probe: np.ndarray):
        super().__init__()
        self.plain, self.probe, self.checked = plain, probe, []

    def on_train_batch_end(self, batch, logs=None):
        sync_state(self.model)
        pruned = 0
        for layer in tfprune.controller.prunable_layers(self.model):
            (target,) = layer.targets
            keep = keras.ops.convert_to_numpy(target.mask)
            kernel = keras.ops.convert_to_numpy(target.variable)
            pruned += int((~keep).sum())
            if not MASK_IN_CALL:  # the constraint keeps the variables themselves at zero
                assert np.all(kernel[~keep] == 0), layer.name
        _masked_copy(self.model, self.plain)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(self.model(self.probe, training=False)),
            keras.ops.convert_to_numpy(self.plain(self.probe)),
            rtol=0,
            atol=1e-6,
        )
        self.checked.append(pruned)


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.Adam(3e-2),
        lambda: keras.optimizers.AdamW(3e-2, weight_decay=0.5),
    ],
    ids=["adam", "adamw"],
)
def test_pruned_weights_are_zero_at_every_forward_pass(optimizer):
    x, y = scenarios.data()
    schedule = tfprune.schedules.PolynomialDecay(0.0, 0.75, 0, 4, frequency=1)
    model = tfprune.wrap(scenarios.cnn(), sparsity=schedule)
    check = _CheckEveryStep(tfprune.strip(model), x[:8])
    model.compile(optimizer=optimizer(), loss=scenarios.loss())
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks(), check],
    )
    layers = tfprune.controller.prunable_layers(model)
    final = sum(tfprune.allocation.count(0.75, int(np.prod(t.mask.shape))) for t in _targets(model))
    assert len(check.checked) == 8 and check.checked[-1] == final
    assert check.checked[0] < check.checked[3] < final  # the masks changed while training
    for layer in layers:  # after each epoch every backend's variables hold the zeros
        (target,) = layer.targets
        kernel = keras.ops.convert_to_numpy(target.variable)
        assert np.all(kernel[~keras.ops.convert_to_numpy(target.mask)] == 0)


def _targets(model):
    return [t for layer in tfprune.controller.prunable_layers(model) for t in layer.targets]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensorflow_loop(model, optimizer, x, y, epochs, batch_size):
    """The custom loop of `examples/custom_training_loop.py`."""
    import tensorflow as tf

    controller = tfprune.PruningController(model)
    loss_fn = scenarios.loss()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    step = 0
    for _ in range(epochs):
        for i in range(0, len(x), batch_size):
            controller.update(step)
            train_step(x[i : i + batch_size], y[i : i + batch_size])
            step += 1
    controller.set_step(step)
    return step


def test_custom_training_loop_of_the_backend_guide_equals_fit():
    loops = {
        "tensorflow": lambda: _tensorflow_loop,
        "jax": lambda: _example("jax_training").train,
        "torch": lambda: _example("torch_training").train,
    }
    train = loops[BACKEND]()
    x, y = scenarios.data()
    fitted = tfprune.wrap(scenarios.cnn(), sparsity=scenarios.schedule())
    fitted.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=scenarios.loss())
    fitted.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[tfprune.callbacks.UpdateMasks()],
    )
    looped = tfprune.wrap(scenarios.cnn(), sparsity=scenarios.schedule())
    assert train(looped, keras.optimizers.SGD(0.05, momentum=0.9), x, y, 2, 16) == 8
    assert tfprune.PruningController(looped).step == 8
    for a, b in zip(fitted.variables, looped.variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5, err_msg=a.path
        )
    assert tfprune.controller.sparsities(tfprune.controller.prunable_layers(looped)) == (
        tfprune.controller.sparsities(tfprune.controller.prunable_layers(fitted))
    )


def _events(folder: str) -> dict[str, list[tuple[int, float]]]:
    import tensorflow as tf

    out: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor)))
                )
    return out


def test_sparsity_logger_and_l0_gates(tmp_path):
    x, y = scenarios.data()
    gate = tfprune.gates.L0(lam=1.0, num_examples=len(x), seed=1)
    model = tfprune.wrap(
        scenarios.cnn(), sparsity=scenarios.schedule(), granularity="channel", gate=gate
    )
    start = [keras.ops.convert_to_numpy(g.log_alpha) for g in model.get_layer("c2").gate_layers]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=scenarios.loss())
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[
            tfprune.callbacks.UpdateMasks(),
            tfprune.callbacks.SparsityLogger(tmp_path, update_freq=2),
        ],
    )
    (end,) = [keras.ops.convert_to_numpy(g.log_alpha) for g in model.get_layer("c2").gate_layers]
    assert not np.allclose(start[0], end)  # the gates learned
    events = _events(str(tmp_path / "pruning"))
    sparsity = tfprune.PruningController(model).sparsities()
    assert [s for s, _ in events["sparsity/global"]] == [2, 4, 4]
    assert events["sparsity/global"][-1][1] == pytest.approx(sparsity["global"])
    assert events["sparsity/c2/channel"][-1][1] == pytest.approx(sparsity["c2/channel"])
    probe = x[:8]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(probe, training=False)),
        keras.ops.convert_to_numpy(tfprune.strip(model)(probe)),
        atol=1e-5,
    )


def _pruned_channels_model() -> keras.Model:
    model = tfprune.wrap(scenarios.cnn(), sparsity=None, granularity="channel", exclude=("out",))
    rng = np.random.default_rng(3)
    for layer in tfprune.controller.prunable_layers(model):
        (target,) = layer.targets
        keep = np.ones(target.mask.shape, bool)
        keep[rng.choice(keep.size, keep.size // 2, replace=False)] = False
        layer.set_mask(target.name, keep)
    return model


@not_tensorflow
def test_export_shrink_micro_and_cli_write_what_tensorflow_writes(tmp_path):
    x, y = scenarios.data()
    model = _pruned_channels_model()
    small = tfprune.shrink(model)
    assert small.count_params() < tfprune.strip(model).count_params()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )
    ours = tfprune.export.tflite(
        model,
        tmp_path / "ours.tflite",
        quantize="int8",
        representative_data=x,
        verify_data=(x, y),
    )
    assert ours.verification is not None and ours.verification.agreement >= 0.9
    model.save(tmp_path / "model.keras")
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)
    script = (
        "import sys, keras, numpy as np, tfprune\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "x = np.load(sys.argv[3])['x']\n"
        "tfprune.export.tflite(m, sys.argv[2], quantize='int8', representative_data=x)\n"
    )
    theirs = tmp_path / "tensorflow.tflite"
    _run_tensorflow(["-c", script, str(tmp_path / "model.keras"), str(theirs), str(data)])
    assert (tmp_path / "ours.tflite").read_bytes() == theirs.read_bytes()
    assert ours.size == theirs.stat().st_size

    micro = tfprune.export.micro(tmp_path / "ours.tflite", tmp_path / "firmware", "model")
    assert micro is not None and (tmp_path / "firmware" / "model.cc").exists()
    cli = tmp_path / "cli.tflite"
    argv = ["export", str(tmp_path / "model.keras"), "-o", str(cli)]
    argv += ["--calibration", str(data)]
    assert tfprune.cli.main(argv) == 0
    assert cli.read_bytes() == theirs.read_bytes()


@not_tensorflow
def test_conversion_errors_reach_the_caller_with_their_type(tmp_path):
    class Unregistered(keras.layers.Layer):  # the TensorFlow process cannot load it
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Unregistered()(inputs)))
    with pytest.raises(TypeError, match="Unregistered"):
        tfprune.export.tflite(model, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()
