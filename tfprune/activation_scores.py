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
layers of its group, summed over them (inside keras-hub transformer blocks too, whose
norms are recorded by temporary hooks on their calls).

```python
criterion = tfprune.activation_scores.activation_criterion(model, [x[:256]])
pruned = tfprune.prune_channels(model, ratio=0.5, criterion=criterion)
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras
import numpy as np

from tfprune import hub_hidden
from tfprune import layers as registry
from tfprune.call_hooks import recording
from tfprune.graph.rules import hidden

__all__ = ["activation_criterion", "input_activations", "norm_activations"]


def _mean_abs(
    model: keras.Model, tensors: list, data: Iterable, sublayers: list = ()
) -> list[np.ndarray]:
    """Mean `|t|` of each channel (last axis) over data, per tensor.

    The tensors are symbolic tensors of the model, then the outputs of `sublayers`
    called inside its layers (recorded by hooks while the model runs).
    """
    probe = keras.Model(model.input, tensors) if tensors else model
    sums = [np.zeros(int(t.shape[-1])) for t in tensors] + [0.0] * len(sublayers)
    counts = [0] * len(sums)

    def add(k: int, out) -> None:
        a = np.abs(keras.ops.convert_to_numpy(out).astype(np.float64))
        rows = a.reshape(-1, a.shape[-1])
        sums[k] = sums[k] + rows.sum(axis=0)
        counts[k] += rows.shape[0]

    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with recording(list(sublayers), lambda i, out: add(len(tensors) + i, out), outputs=True):
            outs = probe(x)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for k, out in enumerate(outs[: len(tensors)]):
            add(k, out)
    if not any(counts) and (tensors or sublayers):
        raise ValueError("activation_criterion received empty `data`. Pass at least one batch.")
    return [s / max(n, 1) for s, n in zip(sums, counts)]


def _block_norms(model: keras.Model) -> dict[tuple[str, str], keras.layers.Layer]:
    """`{(block name, norm attribute): norm layer}` of the keras-hub blocks of a model."""
    found = {}
    for layer in registry.iter_layers(model):
        for path in hub_hidden.norm_paths(layer):
            attr = path.rpartition(".")[0]
            found[(layer.name, attr)] = getattr(layer, attr)
    return found


def norm_activations(model: keras.Model, data: Iterable) -> dict[str, np.ndarray]:
    """Mean `|y|` of each output channel of every LayerNormalization / RMSNormalization.

    Args:
        model: A built functional or Sequential model.
        data: Calibration batches (`x` or `(x, y)`).

    Returns:
        `{layer name: mean |output| per channel}` for the normalization layers that
        `through_norms=True` prunes through and that are called once, and
        `{"block/norm": ...}` for the norms inside keras-hub transformer blocks
        (`{}` if none).

    Raises:
        ValueError: For empty `data`.
    """
    layers, block_norms = _norm_layers(model), _block_norms(model)
    if not layers and not block_norms:
        return {}
    means = _mean_abs(model, [layer.output for layer in layers], data, list(block_norms.values()))
    names = [layer.name for layer in layers] + [f"{b}/{a}" for b, a in block_norms]
    return dict(zip(names, means))


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
    block_norms = _block_norms(model)
    tensors = [layer.input for layer in consumers] + [layer.output for layer in norm_layers]
    values = _mean_abs(model, tensors, data, list(block_norms.values()))  # one pass
    means = {layer.name: v for layer, v in zip(consumers, values)}
    norm_means = {(layer.name, ""): v for layer, v in zip(norm_layers, values[len(consumers) :])}
    norm_means.update(zip(block_norms, values[len(tensors) :]))

    def criterion(group, context=None) -> np.ndarray:
        scores = np.zeros(group.channels)
        norms = {}
        for m in group.members:
            key = (m.layer.name, m.weight.rpartition(".")[0])
            if m.role == "norm" and key in norm_means:
                norms[key] = m
        for key, m in norms.items():
            sel = m.index >= 0
            np.add.at(scores, m.index[sel], norm_means[key][sel])
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
