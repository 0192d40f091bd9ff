"""`cluster`: weight sharing for a whole model (Deep Compression's second stage).

Prune, then cluster, then quantize:

```python
pruned = tfprune.wrap(model, sparsity=0.9)
...  # fit with tfprune.callbacks.UpdateMasks()
shared = tfprune.cluster(pruned, bits=4)  # masks baked in: pruned weights stay 0
shared.compile(...)
shared.fit(x, y, epochs=1)  # trains the centroids; no callback needed
final = tfprune.strip(shared)  # at most 16 distinct values per output channel
tfprune.export.tflite(final, "model.tflite", quantize="int8", representative_data=x)
```
"""

from __future__ import annotations

import keras

from tfprune import layers as registry
from tfprune.clustering import Clustered
from tfprune.surgery import (
    LayerSelector,
    check_rebuildable,
    clone_layer,
    clone_model,
    layer_selector,
    strip,
)
from tfprune.wrapper import Prunable, prunable_layers

__all__ = ["cluster", "clustered_layers"]


def clustered_layers(model: keras.layers.Layer) -> list[Clustered]:
    """Every `tfprune.Clustered` layer in `model` (nested models included), in layer order.

    Args:
        model: A Keras model, or a single layer.

    Returns:
        The `Clustered` layers.
    """
    return registry.instances(model, Clustered)


def cluster(
    model: keras.layers.Layer,
    bits: int = 4,
    per_channel: bool = True,
    layers: LayerSelector = None,
    exclude: LayerSelector = None,
) -> keras.layers.Layer:
    """Wraps every supported layer of a model in `tfprune.Clustered` (weight sharing).

    A model with `tfprune.Prunable` layers is stripped first (`tfprune.strip`): its masks
    are baked in, and the pruned weights, now exact zeros, stay exactly zero while the
    centroids train. The result is a new model (the input is left as it is) whose kernels
    hold at most `2**bits` distinct values per output channel (`per_channel=True`) or per
    tensor, zero included; train it with `model.fit` (no callback is needed: the cluster
    assignments are fixed and only the centroids learn), then `tfprune.strip` it.

    Args:
        model: A Sequential or functional model (nested models included), or one layer.
        bits: Bits per index, 1 to 8 (Deep Compression used 5 for convolutions and 4 for
            dense layers; 2 to 6 are the usual range).
        per_channel: One table per output channel (what int8 per-channel quantization and
            the TFLite Micro lookup tables store) or one per tensor.
        layers: Names of the layers to cluster, or a predicate `layer -> bool`; default:
            every supported layer.
        exclude: Names of layers to leave as they are, or a predicate.

    Returns:
        The clustered model, or `Clustered(layer)` when `model` is a single layer.

    Raises:
        TypeError: If `model` is not a Keras layer or model, is a subclassed model, or
            `bits` is not an integer.
        ValueError: If `model` is already clustered, `layers`/`exclude` name missing
            layers, no layer is left to cluster, or `bits` is out of range.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "tfprune.cluster expects a Keras model or layer. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if isinstance(model, Prunable):
        model = strip(model)
    if not isinstance(model, keras.Model):
        return Clustered(model, bits=bits, per_channel=per_channel)
    check_rebuildable(model, "cluster")
    if clustered_layers(model):
        raise ValueError(
            f"Model '{model.name}' is already clustered (tfprune.Clustered layers: "
            f"{[x.name for x in clustered_layers(model)]}). Call tfprune.cluster on the "
            "model before clustering, or tfprune.strip(model) first."
        )
    if prunable_layers(model):
        model = strip(model)
    all_layers = list(registry.iter_layers(model))
    known = {layer.name for layer in all_layers}
    include = layer_selector(layers, "layers", known)
    skip = layer_selector(exclude, "exclude", known)

    def chosen(layer: keras.layers.Layer) -> bool:
        spec = registry.lookup(layer)
        return (
            spec is not None
            and bool(spec.prunable_specs(layer))
            and (include is None or include(layer))
            and not (skip is not None and skip(layer))
        )

    def clone(layer, deferred: list):
        new = clone_layer(layer, deferred=deferred)
        if isinstance(layer, keras.layers.Layer) and chosen(layer):
            return Clustered(new, bits=bits, per_channel=per_channel)
        return new

    if not any(chosen(layer) for layer in all_layers):
        raise ValueError(
            f"tfprune.cluster found no layer to cluster in model '{model.name}' after "
            f"`layers`/`exclude`. Supported types: {', '.join(registry.supported())}. "
            f"Received: layers={layers!r}, exclude={exclude!r}"
        )
    return clone_model(model, clone)
