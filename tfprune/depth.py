"""Depth pruning: remove whole residual blocks, ranked by how little they change their input.

A residual block is an `Add` of an input `x` and a branch computed from `x` (a transformer
layer's attention or MLP half, a CNN identity block): `y = x + f(x)`. ShortGPT (Men et al.
2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect")
scores a block by its Block Influence, `1 - cos(x, y)` averaged over the positions of
calibration data, and removes the blocks that change their input least; Gromov et al. 2024
do the same with angular distances. `prune_blocks` computes these scores and rebuilds the
model with the chosen blocks replaced by identity (`y = x`), so their branches are gone.

Removing a block is not exact: the report says how much the model's output moved.

```python
small, report = tfprune.prune_blocks(model, n=2, data=[x[:256]])
print(report.removed, report.output_change)
```

A unit may also be several consecutive residual blocks (e.g. a transformer layer's
attention and MLP halves), scored from the input of the first to the output of the last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import keras
import numpy as np

from tfprune import surgery
from tfprune.wrapper import prunable_layers

__all__ = ["BlockReport", "block_scores", "prune_blocks", "residual_blocks"]


@dataclasses.dataclass
class BlockReport:
    """What `prune_blocks` removed and what it cost.

    Attributes:
        scores: Block Influence `1 - cos(input, output)` of every unit, keyed by the unit's
            `Add` layer names joined with `"+"`.
        removed: The units removed (same keys), least influential first.
        output_change: Mean over the calibration batches of
            `||f(x) - g(x)|| / ||f(x)||` (Frobenius norms over the batch) between the
            original model `f` and the pruned model `g`.
    """

    scores: dict[str, float]
    removed: list[str]
    output_change: float


def _refs(obj) -> list[tuple]:
    """`(layer, node, tensor)` histories of the KerasTensors in a node's serialized args."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return [tuple(obj["config"]["keras_history"])]
        return [t for v in obj.values() for t in _refs(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _refs(v)]
    return []


def _functional_config(model: keras.Model) -> dict:
    if not isinstance(model, keras.Model) or type(model).__name__ != "Functional":
        raise TypeError(
            "tfprune.prune_blocks expects a functional Keras model (its residual `Add` "
            f"layers must be visible). Received: model={model!r} of type "
            f"{type(model).__name__}"
        )
    return model.get_config()


def residual_blocks(model: keras.Model) -> dict[str, int]:
    """The identity-shaped residual `Add` layers of a functional model.

    An `Add` of two tensors of the same shape is a residual block when one of them (the
    skip input) is an ancestor of the other (the branch): `y = x + f(x)`. An `Add` whose
    shortcut has a projection (neither input an ancestor of the other) is not one.

    Args:
        model: A functional Keras model.

    Returns:
        `{Add layer name: position of its skip input (0 or 1)}`, in model order.

    Raises:
        TypeError: If `model` is not a functional model.
    """
    config = _functional_config(model)
    inbound: dict[tuple, list[tuple]] = {}
    adds = []
    for layer_config in config["layers"]:
        name = layer_config["name"]
        for n, node in enumerate(layer_config["inbound_nodes"]):
            refs = _refs([node.get("args", []), node.get("kwargs", {})])
            inbound[(name, n)] = refs
            if layer_config["class_name"] == "Add" and n == 0 and len(refs) == 2:
                adds.append((name, refs))

    def ancestor(a: tuple, b: tuple) -> bool:
        stack, seen = [b], set()
        while stack:
            ref = stack.pop()
            if ref == a:
                return True
            key = (ref[0], ref[1])
            if key in seen:
                continue
            seen.add(key)
            stack.extend(inbound.get(key, []))
        return False

    out = {}
    for name, (a, b) in adds:
        layer = model.get_layer(name)
        if sum(1 for key in inbound if key[0] == name) != 1:
            continue  # a shared Add: its calls cannot be told apart
        shapes = [tuple(t.shape) for t in layer.input]
        if shapes[0] != shapes[1]:
            continue
        if ancestor(a, b):
            out[name] = 0
        elif ancestor(b, a):
            out[name] = 1
    return out


def _fresh(model: keras.Model, call=None) -> keras.Model:
    """A copy whose every layer is new (weightless ones too), so each has one call.

    Layers reused across models (as `tfprune.surgery.copy_model` reuses `Add`) report the
    tensors of their first call in `layer.input`; a fresh copy makes them this model's.
    """
    return keras.models.clone_model(
        model, clone_function=surgery.clone_layer, call_function=call, recursive=True
    )


def _units(units, blocks: dict[str, int]) -> list[list[str]]:
    if units is None:
        return [[name] for name in blocks]
    out = []
    for unit in units:
        unit = [unit] if isinstance(unit, str) else list(unit)
        missing = [name for name in unit if name not in blocks]
        if not unit or missing:
            raise ValueError(
                f"Every unit must name residual `Add` layers of the model; {missing or unit} "
                f"are not. Residual blocks: {list(blocks)}. Received: units={units!r}"
            )
        out.append(unit)
    return out


def _endpoints(model: keras.Model, unit: list[str], blocks: dict[str, int]):
    """The unit's input (the first block's skip tensor) and output (the last block's)."""
    first = model.get_layer(unit[0])
    return first.input[blocks[unit[0]]], model.get_layer(unit[-1]).output


def _batches(data) -> list:
    return [b[0] if isinstance(b, (tuple, list)) else b for b in data]


def block_scores(
    model: keras.Model, data: Iterable, units: Sequence | None = None
) -> dict[str, float]:
    """Block Influence `1 - cos(input, output)` of each residual unit (ShortGPT).

    The cosine is taken along the last axis at every position (token, pixel) and averaged
    over positions and batches.

    Args:
        model: A functional Keras model.
        data: Calibration batches (`x` or `(x, y)`).
        units: Units to score: lists of residual `Add` layer names removed together
            (consecutive, in model order), or `None` for every residual block alone.

    Returns:
        `{"+".join(unit): score}`; lower scores mean the unit changes its input less.

    Raises:
        TypeError: If `model` is not functional.
        ValueError: For empty `data` or a unit that is not made of residual blocks.
    """
    model = _fresh(model)
    blocks = residual_blocks(model)
    chosen = _units(units, blocks)
    batches = _batches(data)
    if not batches:
        raise ValueError("tfprune.block_scores received empty `data`. Pass at least one batch.")
    tensors = [t for unit in chosen for t in _endpoints(model, unit, blocks)]
    probe = keras.Model(model.input, tensors)
    sums = np.zeros(len(chosen))
    count = 0
    for x in batches:
        outs = [keras.ops.convert_to_numpy(t).astype(np.float64) for t in probe(x)]
        for k in range(len(chosen)):
            a, b = outs[2 * k], outs[2 * k + 1]
            dot = (a * b).sum(-1)
            norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
            cos = np.where(norms > 0, dot / np.maximum(norms, 1e-30), 1.0)
            sums[k] += (1.0 - cos).sum()
        count += outs[0][..., 0].size
    return {"+".join(unit): float(s / count) for unit, s in zip(chosen, sums)}


def prune_blocks(
    model: keras.Model,
    n: int = 1,
    data: Iterable | None = None,
    units: Sequence | None = None,
) -> tuple[keras.Model, BlockReport]:
    """Removes the `n` residual units with the lowest Block Influence (ShortGPT).

    Each removed unit becomes identity: its `Add` layers return their skip input and the
    branches' layers are no longer part of the model.

    Args:
        model: A functional Keras model (wrapped models are stripped first).
        n: Number of units to remove (at most all of them).
        data: Calibration batches (`x` or `(x, y)`) for the scores and the report.
        units: Lists of residual `Add` layer names removed together (e.g. a transformer
            layer's attention and MLP halves), or `None` for every residual block alone.

    Returns:
        `(pruned model, BlockReport)`.

    Raises:
        TypeError: If `model` is not functional.
        ValueError: Without `data`, for `n` outside `[0, units]`, or a bad unit.
    """
    if prunable_layers(model):
        model = surgery.strip(model)
    if data is None:
        raise ValueError(
            "tfprune.prune_blocks needs calibration `data` (batches of inputs) to score the "
            "blocks. Received: data=None"
        )
    batches = _batches(data)
    scores = block_scores(model, batches, units)
    if not isinstance(n, int) or not 0 <= n <= len(scores):
        raise ValueError(
            f"Expected `n` to be an integer in [0, {len(scores)}] (the number of residual "
            f"units). Received: n={n!r}"
        )
    removed = sorted(scores, key=scores.get)[:n]
    blocks = residual_blocks(model)
    skip = {name: blocks[name] for key in removed for name in key.split("+")}

    def call(layer, *args, **kwargs):
        if layer.name in skip:
            return args[0][skip[layer.name]]
        return layer(*args, **kwargs)

    pruned = _fresh(model, call)
    change = []
    for x in batches:
        a = keras.ops.convert_to_numpy(model(x)).astype(np.float64)
        b = keras.ops.convert_to_numpy(pruned(x)).astype(np.float64)
        change.append(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
    return pruned, BlockReport(scores, removed, float(np.mean(change)))
