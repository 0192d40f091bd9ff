"""Weight sharing as a flash lever of `tfprune.fit_budget`, traded against the arena.

With `fit_budget(..., sharing=tfprune.WeightSharing(bits=4))`, every model the budget
search measures is first clustered (each output channel of each prunable kernel to at most
`2**bits` shared values) and its int8 file LUT-compressed for TFLite Micro
(`tfprune.export.compress_tflite`): the flash counted is the compressed file's. TFLite
Micro's DECODE operator writes each decoded tensor into the arena just before the operator
that reads it, so the arena counted grows by the largest decoded tensor, unless the
application gives TFLite Micro separate decompression memory (`decompression_memory=True`:
the arena is then measured with that memory given, and the memory itself is
`tfprune.export.decompression_memory(file)`). Channels are still removed where sharing
alone does not meet the limits, and to pay for the arena the decoded tensors take.

The default clustering is Deep Compression's (Han et al. 2016): per output channel, centroids
initialized evenly spaced between the smallest and largest weight (linear beat density and
random initialization there), refined by k-means (`tfprune.clustering.kmeans`), each weight
replaced by its centroid, without fine-tuning; zeros (pruned weights) stay exactly zero.
Pass `cluster=` for a trained clustering, and `fine_tune=` to `fit_budget` to recover
accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np

from tfprune import clustering
from tfprune import layers as registry
from tfprune.export import tflm
from tfprune.export.lut import check_bits, compress_tflite, decompression_memory
from tfprune.export.micro import arena_estimate

__all__ = ["WeightSharing", "kmeans_share"]


def kmeans_share(model: keras.Model, bits: int) -> None:
    """Clusters each output channel of each prunable kernel to `2**bits` values, in place.

    Per output channel (the registry's output axes of the kernel, e.g. a Dense kernel's
    columns), the nonzero weights are clustered by `tfprune.clustering.kmeans` (Deep
    Compression's linear initialization, then k-means) and each takes its centroid; zeros
    (pruned weights) stay exactly zero, a cluster of their own. At most `2**bits` distinct
    values per channel, which int8 per-channel quantization can only merge. Nothing is
    trained: `tfprune.cluster` trains the centroids in `model.fit`.

    Args:
        model: A Keras model; its prunable kernels (`tfprune.layers`) are changed.
        bits: Index bits, 1 to 7.

    Raises:
        ValueError: If `bits` is not an integer from 1 to 7.
    """
    check_bits("bits", bits)
    for layer in registry.iter_layers(model):
        spec = registry.lookup(layer)
        if spec is None:
            continue
        for w in spec.prunable_specs(layer):
            var = registry.resolve(layer, w.path)
            kernel = keras.ops.convert_to_numpy(var)
            channels = clustering.rows(kernel, w, per_channel=True)
            shared = np.zeros_like(channels)
            for row, values in zip(shared, channels):
                table, index = clustering.kmeans(values, 2**bits)
                row[index >= 0] = table[index[index >= 0]]
            var.assign(clustering.unrows(shared, kernel.shape, w, True).astype(kernel.dtype))


@dataclasses.dataclass(frozen=True)
class WeightSharing:
    """Weight sharing for `tfprune.fit_budget`: clustered kernels, LUT-compressed file.

    Attributes:
        bits: At most `2**bits` shared values per output channel (1 to 7).
        cluster: `fn(model, bits)` that clusters a model's kernels in place; default
            `kmeans_share` (Deep Compression's linear initialization and k-means, not
            trained).
        decompression_memory: Whether the application gives TFLite Micro separate memory
            for the decoded tensors (`MicroInterpreter::SetDecompressionMemory`), so they
            do not count in the arena.
    """

    bits: int = 4
    cluster: Callable[[keras.Model, int], None] = kmeans_share
    decompression_memory: bool = False

    def __post_init__(self):
        check_bits("bits", self.bits)
        if not callable(self.cluster):
            raise TypeError(
                "Expected `cluster` to be a function (model, bits) that clusters the model in "
                f"place. Received: cluster of type {type(self.cluster).__name__}"
            )

    def shared(self, model: keras.Model) -> keras.Model:
        """A copy of `model` with its kernels clustered (`model` is not changed)."""
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        self.cluster(copy, self.bits)
        return copy

    def measure(self, file: bytes, use_tflm: bool) -> tuple[int, int, str]:
        """(flash, arena, arena source) of an int8 file once LUT-compressed.

        Args:
            file: The int8 .tflite file of the clustered model.
            use_tflm: Measure the arena in TFLite Micro (else `arena_estimate`).

        Returns:
            The compressed file's bytes, its arena (with the decoded tensors, or with
            decompression memory given when `decompression_memory`), and
            `"measured by TFLite Micro"` or `"estimate"`.
        """
        packed = compress_tflite(file).data
        memory = decompression_memory(packed) if self.decompression_memory else 0
        if use_tflm:
            run = tflm.run(packed, decompression_memory=memory, reference=file)
            return len(packed), run.arena, "measured by TFLite Micro"
        # The estimate plans decoded tensors like activations; with memory given, they
        # leave the arena as in the uncompressed file.
        return len(packed), arena_estimate(file if memory else packed).total, "estimate"
