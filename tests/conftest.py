"""Shared fixtures: quiet TensorFlow, deterministic seeds, small models."""

from __future__ import annotations

import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def load_benchmark(name: str):
    """A module of benchmarks/ (`name` without `.py`), for tests of the benchmark scripts.

    benchmarks/ is on `sys.path` only while the module loads: it holds a `transformers.py`
    that must not shadow the package of that name.
    """
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", f"{BENCHMARKS}/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCHMARKS)
    return module


def small_cnn(name: str = "cnn") -> keras.Model:
    """Conv-BN-ReLU-Conv-Flatten-Dense-Dense on 8x8x1 inputs."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, name="c2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="d1")(x)
    outputs = keras.layers.Dense(10, name="out")(x)
    return keras.Model(inputs, outputs, name=name)


def toy_data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n).astype("int32")


def compile_model(model: keras.Model, optimizer=None, **kwargs) -> keras.Model:
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


@pytest.fixture(scope="session")
def digits_cnn():
    """A small CNN trained for a few seconds on `tfprune.data.digits()`; shared, don't modify.

    Returns `(model, (x_train, y_train), (x_test, y_test))`.
    """
    from tfprune import data

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = data.digits()
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = compile_model(
        keras.Model(inputs, outputs, name="digits_cnn"), keras.optimizers.Adam(3e-3)
    )
    model.fit(x_train, y_train, batch_size=32, epochs=12, verbose=0)
    return model, (x_train, y_train), (x_test, y_test)
