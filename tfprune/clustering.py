"""`Clustered`: a Keras wrapper layer whose weights share 2^bits trained values (Deep Compression).

Weight sharing as in Han, Mao & Dally 2016 ("Deep Compression"): each weight of a tensor
(or of one output channel, `per_channel=True`) is assigned to one of `2**bits` clusters by
one-dimensional k-means, and the layer computes with its cluster's centroid instead of
its own value. The centroids are trainable; the assignments are fixed.

- Initialisation: linear. The centroids start evenly spaced between the smallest and the
  largest value, then Lloyd's iterations (at most `KMEANS_ITERATIONS`) refine them; a
  centroid left without members (after pruning, the linear grid puts some in the empty
  gap around zero) moves to the value farthest from its centroid. Deep
  Compression compared Forgy (random), density-based and linear initialisation and found
  linear best: the few large weights matter most, and only linear spacing gives them
  their own centroids (random and density-based ones crowd near zero, where most weights
  are).
- Training: the layer computes with `take(table, index)`, so the gradient of a centroid is
  the sum of its members' gradients (the gradient of a gather), exactly Deep Compression's
  centroid update. The layer's own copies of the clustered weights are not trained.
- Assignments are fixed after the k-means, as in Deep Compression: re-assigning a weight
  to its nearest centroid would change nothing, since each weight's value is its centroid.
- Sparsity is preserved: a weight that is exactly zero (pruned) reads a constant zero
  that is not trained, so it stays exactly zero, and its row's other weights share
  `2**bits - 1` centroids. A tensor (or channel) therefore holds at most `2**bits`
  distinct values, zero included, which is what a `bits`-bit lookup table stores.

`tfprune.strip` writes the shared values into the weights and removes the wrapper.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import keras
import numpy as np
from keras import ops

from tfprune import layers as registry
from tfprune.wrapper import call_substituted

__all__ = ["KMEANS_ITERATIONS", "Clustered", "SharedWeight", "kmeans", "rows", "unrows"]

KMEANS_ITERATIONS = 30
MIN_BITS, MAX_BITS = 1, 8


def rows(values: np.ndarray, spec: registry.WeightSpec, per_channel: bool) -> np.ndarray:
    """A weight as a 2-D array with one row per output channel (one row if not per channel).

    Args:
        values: The weight.
        spec: Its registry spec (`out_axes` are the channel axes).
        per_channel: One row per output channel, or a single row.

    Returns:
        Array of shape `(channels, weights per channel)`.
    """
    if not per_channel:
        return values.reshape(1, -1)
    out = [a % values.ndim for a in spec.out_axes]
    order = out + [a for a in range(values.ndim) if a not in out]
    channels = math.prod(values.shape[a] for a in out)
    return np.transpose(values, order).reshape(channels, -1)


def unrows(
    rows_: np.ndarray, shape: tuple[int, ...], spec: registry.WeightSpec, per_channel: bool
) -> np.ndarray:
    """The inverse of `rows`: back to the weight's `shape`."""
    if not per_channel:
        return rows_.reshape(shape)
    out = [a % len(shape) for a in spec.out_axes]
    order = out + [a for a in range(len(shape)) if a not in out]
    return np.transpose(rows_.reshape([shape[a] for a in order]), np.argsort(order))


def kmeans(values: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """One-dimensional k-means of the nonzero values of a row, linearly initialised.

    Exact zeros are not clustered: they keep the index -1 (a constant zero). When the row
    has any, the other values share `clusters - 1` centroids, so the row holds at most
    `clusters` distinct values, zero included.

    Args:
        values: 1-D array.
        clusters: Number of table entries (`2**bits`).

    Returns:
        `(table, index)`: `table` of `clusters` float32 centroids, ascending (unused
        entries are zero), and `index` (int32, like `values`) in `[-1, clusters)`.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    kept = values != 0
    index = np.full(values.shape, -1, np.int32)
    table = np.zeros(clusters, np.float32)
    v = values[kept]
    if v.size == 0:
        return table, index
    k = clusters - 1 if v.size < values.size else clusters
    centroids = np.linspace(v.min(), v.max(), k)
    assign = None
    for _ in range(KMEANS_ITERATIONS):
        new = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.bincount(assign, weights=v, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        # an empty cluster (a centroid in the gap that pruning leaves around zero) moves
        # to the value farthest from its own centroid, so that no table entry is wasted
        distance = np.abs(v - centroids[assign])
        for empty in np.flatnonzero(counts == 0):
            far = int(np.argmax(distance))
            centroids[empty], distance[far] = v[far], 0.0
        centroids = np.sort(centroids)
    else:
        assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, v)
    table[:k] = centroids
    index[kept] = assign
    return table, index


@dataclasses.dataclass
class SharedWeight:
    """One clustered weight of a `Clustered` layer.

    Attributes:
        spec: The weight's registry spec.
        variable: The wrapped layer's weight (not trained while clustered).
        centroids: Trainable table, `(rows, 2**bits)`: one row per output channel, or one.
        index: Non-trainable int32 of the weight's shape: the position of each weight's
            value in the flattened table, or `rows * 2**bits` for a constant zero.
    """

    spec: registry.WeightSpec
    variable: keras.Variable
    centroids: keras.Variable
    index: keras.Variable

    def values(self):
        """The shared weight as a tensor: `take(concat(centroids, [0]), index)`."""
        table = ops.reshape(self.centroids.value, (-1,))
        table = ops.concatenate([table, ops.zeros((1,), table.dtype)], axis=0)
        return ops.take(table, self.index.value)


@keras.saving.register_keras_serializable(package="tfprune")
class Clustered(keras.layers.Wrapper):
    """Wraps a Keras layer so that its weights share `2**bits` trained values.

    When built, each prunable weight of the wrapped layer (kernels, embeddings; not biases)
    is clustered by linearly initialised k-means, per output channel or per tensor; the
    layer then computes with each weight's centroid. The centroids are trained in
    `model.fit` (each one's gradient is the sum of its members' gradients), the
    assignments stay fixed, and exact zeros (pruned weights) stay exactly zero. Use
    `tfprune.cluster(model, bits=...)` to wrap a whole model and `tfprune.strip` to get a
    plain model with the shared values.

    Args:
        layer: The layer to wrap: a layer type in the registry (`tfprune.layers`), built
            with the weights to cluster.
        bits: Bits per index, 1 to 8: `2**bits` values per tensor or channel, zero
            included when the weight has zeros.
        per_channel: One table per output channel (`True`) or one per tensor.
        **kwargs: Base layer arguments (`name`, ...). The name defaults to the wrapped
            layer's.

    Raises:
        TypeError: If `layer` is not a Keras layer, or `bits` is not an integer.
        ValueError: If `bits` is out of range, or the layer's type has no weights that can
            be clustered.

    Examples:
        >>> import keras, numpy as np, tfprune
        >>> dense = keras.layers.Dense(8)
        >>> dense.build((None, 16))
        >>> shared = tfprune.Clustered(dense, bits=2)
        >>> y = shared(keras.ops.ones((1, 16)))
        >>> kernel = tfprune.strip(shared).kernel.numpy()
        >>> max(len(np.unique(kernel[:, j])) for j in range(8))
        4
    """

    def __init__(
        self, layer: keras.layers.Layer, bits: int = 4, per_channel: bool = True, **kwargs
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "tfprune.Clustered wraps a Keras layer. Received: "
                f"layer={layer!r} of type {type(layer).__name__}"
            )
        if isinstance(layer, Clustered):
            raise ValueError(
                f"Layer '{layer.name}' is already a tfprune.Clustered layer; clustering twice "
                "would stack two tables. Pass the layer that is not yet clustered."
            )
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
            raise TypeError(
                f"`bits` of layer '{layer.name}' must be an integer from {MIN_BITS} to "
                f"{MAX_BITS}. Received: bits={bits!r}"
            )
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ValueError(
                f"`bits` of layer '{layer.name}' must be from {MIN_BITS} to {MAX_BITS} "
                f"(2 to 256 shared values), e.g. bits=4. Received: bits={bits}"
            )
        spec = registry.lookup(layer)
        if spec is None or spec.weights == ():
            raise ValueError(
                f"Layer '{layer.name}' of type {type(layer).__name__} has no weights that "
                f"tfprune.Clustered can share. Supported: {', '.join(registry.supported())}."
            )
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.bits = int(bits)
        self.per_channel = bool(per_channel)
        self.shared: list[SharedWeight] = []
        self._call_takes_training = "training" in inspect.signature(layer.call).parameters

    @property
    def clusters(self) -> int:
        """Table entries per row: `2**bits`."""
        return 2**self.bits

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        for spec in registry.lookup(self.layer).prunable_specs(self.layer):
            variable = registry.resolve(self.layer, spec.path)
            value = keras.ops.convert_to_numpy(variable)
            tables, index = self._cluster(value, spec)
            centroids = self.add_weight(
                name=f"{spec.name}_centroids",
                shape=tables.shape,
                initializer=keras.initializers.Constant(tables),
                trainable=True,
                autocast=False,
            )
            index_variable = self.add_weight(
                name=f"{spec.name}_index",
                shape=value.shape,
                dtype="int32",
                initializer=keras.initializers.Constant(index),
                trainable=False,
                autocast=False,
            )
            variable.trainable = False  # the centroids are trained instead
            self.shared.append(SharedWeight(spec, variable, centroids, index_variable))
        self.built = True

    def _cluster(self, value: np.ndarray, spec: registry.WeightSpec):
        """k-means of each row: the tables `(rows, clusters)` and the flat index."""
        by_row = rows(value, spec, self.per_channel)
        tables = np.zeros((by_row.shape[0], self.clusters), np.float32)
        flat = np.empty(by_row.shape, np.int32)
        for r, row in enumerate(by_row):
            tables[r], local = kmeans(row, self.clusters)
            flat[r] = np.where(local < 0, tables.size, r * self.clusters + local)
        return tables, unrows(flat, value.shape, spec, self.per_channel)

    def call(self, inputs, *args, training=None, **kwargs):
        if self._call_takes_training and training is not None:
            kwargs["training"] = training
        substitutes = {id(s.variable): s.values() for s in self.shared}
        return call_substituted(self, substitutes, inputs, *args, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def shared_weights(self) -> list[np.ndarray]:
        """The wrapped layer's weights with the shared values written in.

        Returns:
            Arrays in `layer.get_weights()` order: what the layer computes with.
        """
        shared = {id(s.variable): keras.ops.convert_to_numpy(s.values()) for s in self.shared}
        return [
            shared.get(id(w), keras.ops.convert_to_numpy(w)).astype(w.dtype)
            for w in self.layer.weights
        ]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bits": self.bits, "per_channel": self.per_channel}
