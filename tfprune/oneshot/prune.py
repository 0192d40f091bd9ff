"""`tfprune.oneshot`: prune a trained model from calibration data, without training."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import keras
import numpy as np

from tfprune import granularity as granularity_lib
from tfprune import schedules as schedules_lib
from tfprune._hooks import recording
from tfprune.controller import PruningController
from tfprune.oneshot import solvers
from tfprune.oneshot.views import KernelView, views
from tfprune.surgery import LayerSelector, wrap
from tfprune.wrapper import Prunable, prunable_layers

__all__ = ["METHODS", "oneshot"]

METHODS = ("sparsegpt", "wanda", "magnitude")
_MAGNITUDE_SCOPES = ("layer", "global", "lamp")


def _check_args(method, granularity, scope, sparsity, block_size, damping, batch_size):
    if method not in METHODS:
        raise ValueError(f"Expected `method` to be one of {METHODS}. Received: method={method!r}")
    g = granularity_lib.get(granularity)
    if not isinstance(g, (granularity_lib.Weight, granularity_lib.NofM)):
        raise ValueError(
            "One-shot pruning chooses single weights, so `granularity` must be 'weight' or "
            f"an 'm:n' pattern such as '2:4'. Received: granularity={granularity!r}"
        )
    scopes = _MAGNITUDE_SCOPES if method == "magnitude" else ("layer",)
    if scope not in scopes:
        raise ValueError(
            f"Method {method!r} supports `scope` in {scopes}: SparseGPT and Wanda prune each "
            "layer to the target on its own; use method='magnitude' for global or LAMP "
            f"allocation. Received: scope={scope!r}"
        )
    if isinstance(g, granularity_lib.Weight):
        schedules_lib._check_sparsity("sparsity", sparsity)
    if not (isinstance(block_size, int) and block_size > 0):
        raise ValueError(f"Expected a positive integer `block_size`. Received: {block_size!r}")
    if isinstance(g, granularity_lib.NofM) and block_size % g.n:
        raise ValueError(
            f"`block_size` must be a multiple of n={g.n} for granularity {granularity!r}, so "
            f"no group of n columns straddles two blocks. Received: block_size={block_size}"
        )
    if not damping >= 0:
        raise ValueError(f"Expected a non-negative `damping`. Received: damping={damping!r}")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"Expected a positive integer `batch_size`. Received: {batch_size!r}")
    return g


def _batches(data, batch_size: int) -> list:
    """The model inputs of `data` as a list of NumPy batches (labels dropped)."""
    if data is None:
        raise ValueError(
            "SparseGPT and Wanda need calibration inputs. Pass `data` (an array, a "
            "tf.data.Dataset or a generator of batches, a few hundred examples). "
            "Received: data=None"
        )
    if isinstance(data, tuple):
        data = keras.utils.unpack_x_y_sample_weight(data)[0]
    if isinstance(data, (np.ndarray, dict, list)) or hasattr(data, "__array__"):
        arrays = keras.tree.map_structure(np.asarray, data)
        n = len(keras.tree.flatten(arrays)[0])
        out = [
            keras.tree.map_structure(lambda a, i=i: a[i : i + batch_size], arrays)
            for i in range(0, n, batch_size)
        ]
    elif hasattr(data, "__iter__"):
        out = [
            keras.tree.map_structure(
                keras.ops.convert_to_numpy, keras.utils.unpack_x_y_sample_weight(b)[0]
            )
            for b in data
        ]
    else:
        raise TypeError(
            "Expected `data` to be an array, a tf.data.Dataset or an iterable of batches. "
            f"Received: data of type {type(data).__name__}"
        )
    if not out:
        raise ValueError("`data` holds no calibration examples. Received: an empty `data`.")
    return out


def _prefix(model: keras.Model, layer: Prunable) -> keras.Model:
    """The model up to `layer`'s output (what runs `layer` and every layer before it)."""
    source = model.inputs[0] if len(model.inputs) == 1 else model.input
    return keras.Model(source, layer.output)


def _captures(
    prefix: keras.Model, owner: keras.layers.Layer, batches: list
) -> Iterator[list[np.ndarray]]:
    """The inputs of every call of `owner`, batch by batch, computed by the model as it is now.

    `prefix` runs the layers before the wrapped layer that holds `owner` (so they already
    carry the masks and updates of earlier steps) and that layer, while `owner`'s inputs are
    recorded. Only one batch's inputs of `owner` are held at a time.
    """
    calls: list[np.ndarray] = []
    for batch in batches:
        with recording([owner], lambda _, x: calls.append(keras.ops.convert_to_numpy(x))):
            prefix(batch, training=False)
        while calls:
            yield [calls.pop(0)]


def _kernels(
    layer: Prunable, prefix: keras.Model, batch
) -> tuple[list[tuple[str, keras.layers.Layer, KernelView]], list[str]]:
    """The kernels of `layer` to prune, in the order their owners run, and those left dense.

    The owner of the kernel at path `"a.b.kernel"` is the sublayer at `"a.b"` (the wrapped
    layer itself for `"kernel"`); its view comes from `tfprune.oneshot.views`. When some
    owners are sublayers, one batch through `prefix` with every owner recorded gives the
    order of their first calls (the wrapped layer alone runs, and keeps the views' order).

    Returns:
        `(mask name, owner, view)` triples, and the mask names without a view or whose
        owner does not run.
    """
    found, dense = [], []
    for target in layer.targets:
        owner_path, _, attr = target.spec.path.rpartition(".")
        owner = layer.layer
        for part in owner_path.split(".") if owner_path else ():
            owner = getattr(owner, part)
        matching = [view for view in views(owner) if view.path == attr]
        if matching:
            found.append((target.name, owner, matching[0]))
        else:
            dense.append(target.name)
    owners = list({id(owner): owner for _, owner, _ in found}.values())
    if all(owner is layer.layer for owner in owners):
        return found, dense
    first: dict[int, int] = {}
    with recording(owners, lambda i, _: first.setdefault(i, len(first))):
        prefix(batch, training=False)
    rank = {id(owner): first.get(i) for i, owner in enumerate(owners)}
    dense += [name for name, owner, _ in found if rank[id(owner)] is None]
    found = [k for k in found if rank[id(k[1])] is not None]
    return sorted(found, key=lambda k: rank[id(k[1])]), dense


def _input_statistic(
    view: KernelView, inputs: Iterator[list[np.ndarray]], full: bool
) -> np.ndarray:
    """Accumulates `X^T X` per group (`full`) or only its diagonal over all batches.

    Each batch's product is computed in the inputs' precision (float32 for float32 models)
    and summed in float64.
    """
    total = None
    for x in inputs:
        cols = view.columns(x)
        part = np.swapaxes(cols, 1, 2) @ cols if full else np.einsum("gnc,gnc->gc", cols, cols)
        total = part.astype(np.float64) if total is None else total + part
    return total


def _prune_kernel(layer, name, view, inputs, method, g, sparsity, block_size, damping) -> None:
    target = layer.target(name)
    kernel = keras.ops.convert_to_numpy(target.variable)
    w = view.to_matrix(kernel)
    n_of_m = (g.m, g.n) if isinstance(g, granularity_lib.NofM) else None
    stat = _input_statistic(view, inputs, full=method == "sparsegpt")
    if method == "sparsegpt":
        new, keep = solvers.sparsegpt(w, stat, sparsity, n_of_m, block_size, damping)
        target.variable.assign(view.from_matrix(new, kernel.shape).astype(kernel.dtype))
    else:
        keep = solvers.wanda_keep(w, stat, sparsity, n_of_m)
    layer.set_mask(target.name, view.from_matrix(keep, kernel.shape))


def oneshot(
    model: keras.Model,
    data=None,
    sparsity: float = 0.5,
    method: str = "sparsegpt",
    granularity: str = "weight",
    scope: str = "layer",
    layers: LayerSelector = None,
    exclude: LayerSelector = None,
    *,
    block_size: int = 128,
    damping: float = 0.01,
    batch_size: int = 32,
) -> keras.Model:
    """Prunes a trained model in one shot from a few hundred calibration examples.

    No gradient step is taken. The model is wrapped with `tfprune.wrap` (masks that change
    only when set explicitly), then each supported layer is pruned in model order, with its
    inputs computed by the model whose earlier layers are already pruned (so their error is
    seen, and compensated, by the layers after them). Per layer only `X^T X` of its inputs is
    kept (its diagonal for Wanda), never the activations of all layers.

    - `"sparsegpt"` (Frantar & Alistarh 2023): OBS weight updates that compensate the
      pruned weights, with a Cholesky-factored damped inverse Hessian and lazy blocks.
    - `"wanda"` (Sun et al. 2024): prunes the lowest `|w_ij| * ||x_j||_2` of each output
      row; no weight update.
    - `"magnitude"`: the lowest `|w|`, per layer, globally or with LAMP scores
      (Lee et al. 2021, `tfprune.allocation.lamp`); `data` is not needed.

    Each kernel is pruned on the inputs of the layer that owns it: the wrapped layer for
    `"kernel"`, the sublayer at `"a.b"` for a registry path `"a.b.kernel"` (the projections
    of a `MultiHeadAttention`, the Dense layers inside a block registered with
    `tfprune.layers.register`). A sub-model `keras.Model(model.inputs, layer.output)` runs
    the calibration batches while a temporary hook on the owner's `call` records its inputs
    (all of its calls; removed in `finally`). The kernels of one layer are pruned in the
    order their owners first run. Layers of nested models, owners without a matrix view
    (`tfprune.oneshot.views`) and sublayers that do not run are left dense with a warning
    listing them.

    Args:
        model: A trained Sequential or functional model.
        data: Calibration inputs: an array (or a structure of arrays), an `(x, y)` tuple,
            a `tf.data.Dataset` or an iterable of batches (`(x, y)` batches are fine).
        sparsity: Fraction of each kernel to prune (ignored for `"m:n"`).
        method: `"sparsegpt"`, `"wanda"` or `"magnitude"`.
        granularity: `"weight"` or an `"m:n"` pattern such as `"2:4"` (m zeros in every n
            consecutive input channels).
        scope: `"layer"`; for `"magnitude"` also `"global"` or `"lamp"`.
        layers: Names of the layers to prune, or a predicate; default: all supported.
        exclude: Names of layers to leave dense (e.g. the output layer), or a predicate.
        block_size: SparseGPT's lazy-update block, in columns.
        damping: SparseGPT's damping, a fraction of the Hessian's mean diagonal.
        batch_size: Batch size used to split array `data`.

    Returns:
        The wrapped model (`tfprune.Prunable` layers with masks set and, for SparseGPT,
        updated weights). Fine-tune it with `tfprune.callbacks.UpdateMasks()` (the masks
        stay fixed) or bake it with `tfprune.strip`.

    Raises:
        ValueError: For an unknown method, an unsupported granularity or scope, a sparsity
            outside [0, 1), missing or empty `data`.
        TypeError: For a single layer, a subclassed model or `data` of an unsupported type.

    Example:

    >>> import keras, numpy as np, tfprune
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> pruned = tfprune.oneshot(model, x, sparsity=0.5, method="wanda")
    >>> tfprune.controller.sparsities(tfprune.wrapper.prunable_layers(pruned))["global"]
    0.5
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "tfprune.oneshot prunes a Sequential or functional model (it captures each "
            "layer's inputs from the model's graph). Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    g = _check_args(method, granularity, scope, sparsity, block_size, damping, batch_size)
    wrapped = wrap(
        model, None, granularity=granularity, scope=scope, layers=layers, exclude=exclude
    )
    targets = prunable_layers(wrapped)
    if method == "magnitude":
        controller = PruningController(wrapped)
        if scope == "layer":
            for layer in targets:
                controller.prune_layer(layer, sparsity)
        else:
            controller.prune_global(targets, sparsity)
        return wrapped
    batches = _batches(data, batch_size)
    top_level = {id(layer) for layer in wrapped.layers}
    dense = []
    for layer in targets:
        kernels, missing = [], [t.name for t in layer.targets]
        if id(layer) in top_level:
            prefix = _prefix(wrapped, layer)
            kernels, missing = _kernels(layer, prefix, batches[0])
        for name, owner, view in kernels:
            inputs = _captures(prefix, owner, batches)
            _prune_kernel(layer, name, view, inputs, method, g, sparsity, block_size, damping)
        if missing:
            detail = f": {', '.join(missing)}" if kernels else ""
            dense.append(f"{layer.name} ({type(layer.layer).__name__}{detail})")
    if dense:
        warnings.warn(
            f"tfprune.oneshot ({method}) left these layers dense: {', '.join(dense)}. It "
            "prunes the kernels of Dense, EinsumDense, Conv1D/2D/3D, DepthwiseConv1D/2D and "
            "SeparableConv1D/2D layers, also as sublayers that run inside a registered layer "
            "of the top-level model (MultiHeadAttention, blocks registered with "
            "tfprune.layers.register); exclude the others with `exclude=[...]` to silence "
            "this warning.",
            stacklevel=2,
        )
    return wrapped
