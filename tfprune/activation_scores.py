"""Activation-based channel importance on calibration data (Minitron).

Muralidharan et al. 2024 ("Compact Language Models via Pruning and Knowledge Distillation")
score an MLP neuron by the mean magnitude of its activation on a small calibration set.
`activation_criterion(model, data)` measures, for every layer with a kernel, the mean
`|x|` of each input channel over the calibration batches (all positions), and returns a
channel criterion for `tfprune.prune_channels`: a channel's score is the mean activation
it feeds into the group's consumers (the MLP's down projection sees the gated product
`act(gate) * up` of a SwiGLU block, exactly the neuron's output). A hidden (embedding)
channel of a transformer, pruned with `through_norms=True`, is scored as Minitron does:
the mean `|y|` of the channel at the outputs of the LayerNormalization / RMSNormalization
layers of its group, summed over them.

```python
criterion = tfprune.activation_scores.activation_criterion(model, [x[:256]])
pruned = tfprune.prune_channels(model, ratio=0.5, criterion=criterion)
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras
import numpy as np

from tfprune import layers as registry
from tfprune.graph.rules import hidden

__all__ = ["activation_criterion", "input_activations", "norm_activations"]


def _mean_abs(model: keras.Model, tensors: list, data: Iterable) -> list[np.ndarray]:
    """Mean `|t|` of each channel (last axis) of symbolic tensors of a model, over data."""
    probe = keras.Model(model.input, tensors)
    sums = [np.zeros(int(t.shape[-1])) for t in tensors]
    counts = [0] * len(tensors)
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        outs = probe(x)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for k, out in enumerate(outs):
            a = np.abs(keras.ops.convert_to_numpy(out).astype(np.float64))
            rows = a.reshape(-1, a.shape[-1])
            sums[k] += rows.sum(axis=0)
            counts[k] += rows.shape[0]
    if not any(counts):
        raise ValueError("activation_criterion received empty `data`. Pass at least one batch.")
    return [s / max(n, 1) for s, n in zip(sums, counts)]


def norm_activations(model: keras.Model, data: Iterable) -> dict[str, np.ndarray]:
    """Mean `|y|` of each output channel of every LayerNormalization / RMSNormalization.

    Args:
        model: A built functional or Sequential model.
        data: Calibration batches (`x` or `(x, y)`).

    Returns:
        `{layer name: mean |output| per channel}` for the normalization layers that
        `through_norms=True` prunes through and that are called once (`{}` if none).

    Raises:
        ValueError: For empty `data`.
    """
    layers = _norm_layers(model)
    if not layers:
        return {}
    means = _mean_abs(model, [layer.output for layer in layers], data)
    return {layer.name: mean for layer, mean in zip(layers, means)}


def _norm_layers(model: keras.Model) -> list:
    return [
        layer
        for layer in registry.iter_layers(model)
        if hidden.is_norm(layer) and isinstance(getattr(layer, "output", None), keras.KerasTensor)
    ]


def _kernel_layers(model: keras.Model) -> list:
    return [
        layer
        for layer in registry.iter_layers(model)
        if registry.resolve(layer, "kernel") is not None
        and not isinstance(layer, keras.Model)
        and isinstance(getattr(layer, "input", None), keras.KerasTensor)
    ]


def input_activations(model: keras.Model, data: Iterable) -> dict[str, np.ndarray]:
    """Mean `|x|` of each input channel (last axis) of every single-input kernel layer.

    Args:
        model: A built functional or Sequential model.
        data: Calibration batches (`x` or `(x, y)`).

    Returns:
        `{layer name: mean |input| per channel}` for layers with a kernel that are called
        once on one input.

    Raises:
        ValueError: For empty `data`.
    """
    layers = _kernel_layers(model)
    means = _mean_abs(model, [layer.input for layer in layers], data)
    return {layer.name: mean for layer, mean in zip(layers, means)}


def activation_criterion(model: keras.Model, data: Iterable) -> Callable:
    """A `tfprune.prune_channels` criterion: mean activation each channel feeds consumers.

    Layers are matched by name, so the criterion works on the copy `prune_channels` makes.

    Args:
        model: The model that will be pruned.
        data: Calibration batches (`x` or `(x, y)`).

    Returns:
        `criterion(group, context) -> scores`, one score per channel of the group: for a
        group that passes through normalization layers (`through_norms=True`), the sum
        over them of the mean `|y|` of each channel at their outputs; for any other group,
        the sum over the group's consumers (its `"input"` slices whose layer input carries
        the channels on its last axis) of the mean `|x|` of each channel.

    Raises:
        ValueError: For empty `data`.
    """
    consumers, norm_layers = _kernel_layers(model), _norm_layers(model)
    tensors = [layer.input for layer in consumers] + [layer.output for layer in norm_layers]
    values = _mean_abs(model, tensors, data)  # one pass over `data`
    means = {layer.name: v for layer, v in zip(consumers, values)}
    norm_means = {layer.name: v for layer, v in zip(norm_layers, values[len(consumers) :])}

    def criterion(group, context=None) -> np.ndarray:
        scores = np.zeros(group.channels)
        norms = {m.layer.name: m for m in group.members if m.layer.name in norm_means}
        for name, m in norms.items():
            sel = m.index >= 0
            np.add.at(scores, m.index[sel], norm_means[name][sel])
        if norms:
            return scores
        for m in group.members:
            mean = means.get(m.layer.name)
            if m.role != "input" or mean is None or mean.size != m.index.size:
                continue
            sel = m.index >= 0
            np.add.at(scores, m.index[sel], mean[sel])
        return scores

    return criterion
