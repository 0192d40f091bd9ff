"""A per-layer latency lookup table, measured once on this machine and cached (NetAdapt).

NetAdapt (Yang et al., 2018) predicts a network's latency on a target as the sum of its
layers' latencies, each measured once in isolation and stored in a table, so that a search
over many widths does not time every candidate network. `LatencyTable` does this for LiteRT
on this machine: each layer with MACs (conv, depthwise, dense, ...) is rebuilt alone with its
exact configuration and input shape, converted to int8, and timed in the LiteRT interpreter;
the result is cached in a JSON file keyed by the layer's configuration and input shape.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile

import keras
import numpy as np

from tfprune import layers as registry
from tfprune.export._io import write_bytes

__all__ = ["LatencyTable"]

_IGNORED_CONFIG = {"name", "trainable", "dtype"}


def _default_path(threads: int) -> str:
    root = os.environ.get("TFPRUNE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfprune"
    )
    host = "".join(c if c.isalnum() else "_" for c in platform.node() or "host")
    return os.path.join(root, f"latency-litert-{host}-{threads}t.json")


class LatencyTable:
    """Per-layer LiteRT int8 latencies on this machine, measured once and cached on disk.

    Args:
        path: JSON cache file (default: `$TFPRUNE_CACHE` or `~/.cache/tfprune`, named after
            the host and thread count). Created on the first measurement.
        threads: LiteRT interpreter threads.
        runs: Timed invocations per layer (the median is stored).

    Example:

    ```python
    table = tfprune.latency_table.LatencyTable()
    seconds = table.predict(model)   # sum of the layers' measured latencies
    ```
    """

    def __init__(self, path: str | os.PathLike | None = None, threads: int = 1, runs: int = 30):
        self.path = os.fspath(path) if path is not None else _default_path(threads)
        self.threads = threads
        self.runs = runs
        self.measured = 0  # layers timed by this instance (the rest came from the cache)
        self._entries: dict[str, float] = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self._entries = json.load(f)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(layer: keras.layers.Layer, input_shape: tuple) -> str:
        """The table key of a layer: class, configuration (without its name) and input shape."""
        config = {k: v for k, v in layer.get_config().items() if k not in _IGNORED_CONFIG}
        return json.dumps(
            {"class": type(layer).__name__, "config": config, "input": list(input_shape[1:])},
            sort_keys=True,
            default=str,
        )

    def layer(self, layer: keras.layers.Layer, input_shape: tuple) -> float:
        """Seconds one int8 `invoke()` of the layer alone takes (measured once, then cached).

        Args:
            layer: A built Keras layer with weights.
            input_shape: Its input shape, batch axis first.

        Returns:
            The median latency in seconds.
        """
        key = self.key(layer, input_shape)
        if key not in self._entries:
            self._entries[key] = self._time(layer, tuple(input_shape[1:]))
            self.measured += 1
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            write_bytes(self.path, json.dumps(self._entries, indent=0).encode())
        return self._entries[key]

    def _time(self, layer: keras.layers.Layer, shape: tuple) -> float:
        from tfprune import export

        config = {**layer.get_config(), "name": "probe"}
        inputs = keras.Input(shape)
        probe = keras.Model(inputs, type(layer).from_config(config)(inputs))
        x = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="tfprune-lut-") as tmp:
            path = os.path.join(tmp, "layer.tflite")
            export.tflite(probe, path, quantize="int8", representative_data=x, shrink=False)
            return export.latency(path, threads=self.threads, runs=self.runs, warmup=5).median

    def predict(self, model: keras.Model) -> float:
        """Predicted seconds per `invoke()` of the model's int8 file: its layers' sum.

        Counts every layer with MACs (convolutions, depthwise, dense, ...); layers without
        weights (pooling, Add, activations) and BatchNormalization (folded into the
        convolution by the converter) are not counted.

        Args:
            model: A built functional or Sequential model (shrunk: widths as they run).

        Returns:
            Seconds.
        """
        total = 0.0
        for layer in registry.iter_layers(model):
            if isinstance(layer, keras.Model) or not layer.weights:
                continue
            in_shape = tuple(layer.input.shape)
            out_shape = tuple(layer.output.shape)
            if registry.macs(layer, [in_shape], out_shape) > 0:
                total += self.layer(layer, in_shape)
        return total
