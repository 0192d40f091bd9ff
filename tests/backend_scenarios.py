"""Training scenarios that must give the same numbers on TensorFlow, JAX and PyTorch.

`tests/test_backends.py` runs each scenario under the backend of the test process and
compares it with the same scenario run by this file in a TensorFlow-backend subprocess:

    KERAS_BACKEND=tensorflow python tests/backend_scenarios.py out.npz

Weights start from NumPy (Keras's random initializers differ per backend) and the data is
fixed, so the runs differ only by float rounding.
"""

from __future__ import annotations

import sys
import tempfile

import keras
import numpy as np

import tfprune

OUT = ("out",)


def cnn(groups: bool = False) -> keras.Model:
    """Conv-BN-ReLU-Conv-Flatten-Dense-Dense on 8x8x1 inputs, weights from NumPy."""
    kernel_reg = tfprune.regularizers.GroupLasso(3e-3) if groups else None
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="c1", use_bias=False, kernel_regularizer=kernel_reg)(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, name="c2", kernel_regularizer=kernel_reg)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="d1")(x)
    outputs = keras.layers.Dense(10, name="out")(x)
    model = keras.Model(inputs, outputs, name="cnn")
    rng = np.random.default_rng(0)
    for w in model.weights:
        if w.path.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, w.shape)
        else:
            value = rng.normal(0.0, 0.3, w.shape)
        w.assign(value.astype("float32"))
    return model


def data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n).astype("int32")


def schedule() -> tfprune.schedules.PolynomialDecay:
    return tfprune.schedules.PolynomialDecay(0.0, 0.75, 0, 6, frequency=2)


def loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(model, optimizer, callbacks, epochs=2, **compile_kwargs) -> keras.Model:
    x, y = data()
    model.compile(optimizer=optimizer, loss=loss(), **compile_kwargs)
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def _wrapped(**kwargs) -> keras.Model:
    return tfprune.wrap(cnn(), sparsity=schedule(), **kwargs)


def weight_adamw():
    """Unstructured, layer scope, AdamW with weight decay, two steps per execution (Keras
    runs one on PyTorch; the updates fall on execution boundaries, so results agree)."""
    model = _wrapped()
    optimizer = keras.optimizers.AdamW(3e-3, weight_decay=0.1)
    per_execution = 1 if keras.backend.backend() == "torch" else 2
    return _fit(
        model, optimizer, [tfprune.callbacks.UpdateMasks()], steps_per_execution=per_execution
    )


def global_sgd():
    """Unstructured, global scope, SGD with momentum."""
    model = _wrapped(scope="global", exclude=OUT)
    return _fit(model, keras.optimizers.SGD(0.05, momentum=0.9), [tfprune.callbacks.UpdateMasks()])


def two_four():
    """2:4 semi-structured masks."""
    model = _wrapped(granularity="2:4", exclude=("c1", "out"))
    return _fit(model, keras.optimizers.SGD(0.05), [tfprune.callbacks.UpdateMasks()])


def channels():
    """Channel pruning during training, by dependency group (BN and Flatten follow)."""
    model = _wrapped(granularity="channel", exclude=OUT)
    return _fit(model, keras.optimizers.Adam(3e-3), [tfprune.callbacks.UpdateMasks()])


def scale_gates_slimming():
    """Scale gates on the convolutions and network slimming on BatchNormalization."""
    base = tfprune.regularizers.slimming(cnn(), 1e-3)
    model = tfprune.wrap(
        base,
        sparsity=None,
        granularity="channel",
        gate=tfprune.gates.Scale(1e-3),
        layers=("c2", "d1"),
    )
    return _fit(model, keras.optimizers.SGD(0.03), [])


def group_lasso_proximal():
    """Group lasso with the proximal step after every batch (groups reach zero)."""
    model = tfprune.wrap(cnn(groups=True), sparsity=None)
    return _fit(model, keras.optimizers.SGD(0.1), [tfprune.regularizers.ProximalGroupLasso()])


def rewind():
    """`RewindPoint` at step 3, then rewound with the final masks."""
    point = tfprune.callbacks.RewindPoint(step=3)
    model = _fit(
        _wrapped(),
        keras.optimizers.SGD(0.05, momentum=0.9),
        [point, tfprune.callbacks.UpdateMasks()],
    )
    point.restore(model)
    return model


def lottery():
    """Two rounds of iterative magnitude pruning with late rewinding."""
    x, y = data()
    ticket = tfprune.lottery.find_ticket(
        cnn(),
        keras.optimizers.SGD(0.05),
        loss(),
        x,
        y,
        rounds=2,
        rate=0.5,
        rewind="step",
        rewind_step=2,
        verbose=0,
        epochs=1,
        batch_size=16,
        shuffle=False,
    )
    return ticket.apply(cnn())


def taylor_channels():
    """Channel pruning by first-order Taylor importance (each backend's own gradients)."""
    x, y = data()
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    return tfprune.prune_channels(
        cnn(), 0.5, criterion="taylor", data=batches, loss=loss(), ignore=["out"]
    )


def saved_and_loaded():
    """Trained, saved to `.keras`, loaded (safe mode) and trained one more epoch."""
    model = weight_adamw()
    with tempfile.TemporaryDirectory() as tmp:
        model.save(f"{tmp}/m.keras")
        loaded = keras.saving.load_model(f"{tmp}/m.keras", safe_mode=True)
    return _fit(loaded, keras.optimizers.SGD(0.01), [tfprune.callbacks.UpdateMasks()], epochs=1)


SCENARIOS = {
    f.__name__: f
    for f in (
        weight_adamw,
        global_sgd,
        two_four,
        channels,
        scale_gates_slimming,
        group_lasso_proximal,
        rewind,
        lottery,
        taylor_channels,
        saved_and_loaded,
    )
}


def state(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable of `model` (weights, masks, steps, gates) and its logits on the data."""
    out = {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.variables}
    out["logits"] = np.asarray(model.predict(data()[0], verbose=0))
    return out


def run(name: str) -> dict[str, np.ndarray]:
    """The state after scenario `name`, under the backend of this process."""
    keras.utils.set_random_seed(0)
    return state(SCENARIOS[name]())


if __name__ == "__main__":  # out.npz [scenario names...]
    names = sys.argv[2:] or list(SCENARIOS)
    arrays = {f"{name}/{k}": v for name in names for k, v in run(name).items()}
    np.savez(sys.argv[1], **arrays)
