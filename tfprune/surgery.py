"""Model surgery: insert pruning wrappers (`wrap`) and bake them out again (`strip`).

Both rebuild the model with `keras.models.clone_model` (nested models included) and copy
the weights, so the model passed in is never modified.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping

import keras

from tfprune import granularity as granularity_lib
from tfprune import hub_hidden
from tfprune import layers as registry
from tfprune.clustering import Clustered
from tfprune.gates import Gate
from tfprune.graph import walk as graph_lib
from tfprune.wrapper import Prunable, prunable_layers

__all__ = [
    "clone_layer",
    "clone_model",
    "copy_model",
    "from_config",
    "layer_selector",
    "strip",
    "wrap",
]

LayerSelector = Iterable[str] | Callable[[keras.layers.Layer], bool] | None


def from_config(
    layer: keras.layers.Layer, config: dict, cls: type | None = None
) -> keras.layers.Layer:
    """`type(layer).from_config(config)`, with an error naming the layer when it fails.

    Args:
        layer: The layer the config comes from.
        config: Its (possibly edited) config.
        cls: The class to rebuild it as (default: the layer's own).

    Returns:
        The new, unbuilt layer.

    Raises:
        TypeError: If the layer's class cannot rebuild itself from its config (a
            `get_config` that does not round-trip, as some keras-hub layers have).
    """
    try:
        return (cls or type(layer)).from_config(config)
    except Exception as err:
        rebuilt = hub_hidden.rebuild(layer, config)
        if rebuilt is not None:  # a keras-hub layer whose config does not round-trip
            return rebuilt
        raise TypeError(
            f"Layer '{layer.name}' ({type(layer).__name__}) cannot be rebuilt from its own "
            f"config, so tfprune cannot clone the model: {type(layer).__name__}.get_config() "
            f"does not round-trip through from_config ({type(err).__name__}: {err}). This "
            "is a limitation of the layer's class, not of tfprune: fix its get_config or "
            "from_config (for keras-hub layers, report it upstream)."
        ) from err


def clone_layer(
    layer: keras.Operation,
    weights: list | None = None,
    deferred: list | None = None,
    config: dict | None = None,
) -> keras.Operation:
    """A new layer with `layer`'s config, built like it, holding `weights` (default: its own).

    A raw `keras.ops` operation of a functional model holds no state and comes back as is.

    Args:
        layer: A Keras layer (not a model), or a raw operation.
        weights: Weights in `layer.get_weights()` order, or `None` to copy `layer`'s.
        deferred: Where a layer that cannot be built from its build config (some keras-hub
            blocks build from several inputs, or create their weights in their first call)
            is left unbuilt: `(new_layer, weights)` is appended, and the caller sets the
            weights once the model is rebuilt. `None` raises instead.
        config: The config to build from, or `None` for `layer.get_config()`.

    Returns:
        The new layer; it shares no variables with `layer`.

    Raises:
        TypeError: If the layer cannot be rebuilt from its config (or build config, when
            `deferred` is None).
    """
    if not isinstance(layer, keras.layers.Layer):
        return layer
    config = layer_config(layer) if config is None else config
    new = from_config(layer, config)
    if layer.built:
        values = layer.get_weights() if weights is None else weights
        try:
            new.build_from_config(layer.get_build_config())
            if len(new.weights) != len(values):
                # keras-hub's EfficientNet blocks create their weights in their first call.
                raise ValueError(f"it created {len(new.weights)} of its {len(values)} weights")
        except Exception as err:
            if deferred is None:
                raise TypeError(
                    f"Layer '{layer.name}' ({type(layer).__name__}) cannot be built from its "
                    f"build config ({type(err).__name__}: {err})."
                ) from err
            new = from_config(layer, config)
            deferred.append((new, values))
            return new
        new.set_weights(values)
    return new


def clone_model(model: keras.Model, clone: Callable) -> keras.Model:
    """`keras.models.clone_model` with `clone(layer, deferred)`; sets deferred weights.

    Args:
        model: A Sequential or functional model (nested models are cloned too).
        clone: `(layer, deferred) -> new layer`, e.g. built with `clone_layer(layer,
            deferred=deferred)`.

    Returns:
        The new model.
    """
    deferred: list = []
    new_model = keras.models.clone_model(
        model, clone_function=lambda layer: clone(layer, deferred), recursive=True
    )
    for layer, values in deferred:
        layer.set_weights(values)
    return new_model


def copy_model(model: keras.Model) -> keras.Model:
    """A copy of a model with its weights; weightless layers and raw ops are reused.

    A Lambda cannot be rebuilt from its config in safe mode, and a layer without weights
    has no state to copy.

    Args:
        model: A Sequential or functional model.

    Returns:
        The copy; it shares no variables with `model`.

    Raises:
        TypeError: If a layer with weights cannot be rebuilt from its config.
    """

    def clone(layer, deferred: list):
        if isinstance(layer, keras.layers.Layer) and layer.weights:
            return clone_layer(layer, deferred=deferred)
        return layer

    return clone_model(model, clone)


def _is_graph_model(model: keras.Model) -> bool:
    """Sequential or functional (or a subclass of it): a graph Keras can clone."""
    if isinstance(model, keras.Sequential):
        return True
    try:
        graph_lib.functional_view(model)
    except TypeError:
        return False
    return True


def check_rebuildable(model: keras.layers.Layer, fn: str) -> None:
    """Raises unless tfprune can rebuild `model` (a graph model whose config serializes).

    Args:
        model: The model `fn` was given.
        fn: The tfprune function, for the message.

    Raises:
        TypeError: If `model` is or holds a subclassed model.
    """
    for layer in [model, *registry.iter_layers(model)]:
        if isinstance(layer, keras.Model) and not _is_graph_model(layer):
            raise TypeError(
                f"tfprune.{fn} rebuilds Sequential and functional models, but "
                f"'{layer.name}' is a subclassed model ({type(layer).__name__}), whose layer "
                "graph Keras cannot see. Wrap its layers in its __init__ instead, e.g. "
                "`self.dense = tfprune.Prunable(keras.layers.Dense(10), sparsity=0.5)`, and "
                "train with tfprune.callbacks.UpdateMasks()."
            )


def layer_config(layer: keras.Operation) -> dict:
    """`layer.get_config()`, with an error naming the layer when it fails.

    Args:
        layer: A layer or raw operation.

    Returns:
        Its config.

    Raises:
        TypeError: If the layer's `get_config` raises (as some keras-hub layers do).
    """
    try:
        return layer.get_config()
    except Exception as err:
        raise TypeError(
            f"Layer '{layer.name}' ({type(layer).__name__}) cannot serialize its config "
            f"({type(err).__name__}: {err}), so tfprune cannot read or rebuild the model: "
            "Keras describes a model's graph with every layer's get_config(). This is a "
            "limitation of the layer's class, not of tfprune: fix its get_config (for "
            "keras-hub layers, report it upstream)."
        ) from err


def model_config(model: keras.Model) -> dict:
    """`model.get_config()`, with an error naming the layer whose `get_config` fails.

    Args:
        model: A Sequential or functional model.

    Returns:
        The model's config.

    Raises:
        TypeError: If a layer's `get_config` raises (see `layer_config`).
    """
    try:
        return model.get_config()
    except Exception:
        for layer in registry.iter_layers(model):
            layer_config(layer)  # raises, naming the layer
        raise


def layer_selector(arg: LayerSelector, name: str, known: set[str]) -> Callable | None:
    """`arg` (layer names or a predicate) as a predicate, checking that the names exist.

    Args:
        arg: A layer name, a list of names, a predicate `layer -> bool`, or `None`.
        name: The argument's name, for messages.
        known: The names of the model's layers.

    Returns:
        A predicate `layer -> bool`, or `None` when `arg` is `None`.

    Raises:
        TypeError: If `arg` is of another type.
        ValueError: If it names layers that are not in the model.
    """
    if arg is None:
        return None
    if callable(arg):
        return arg
    if isinstance(arg, str):
        arg = [arg]
    if not isinstance(arg, Iterable) or not all(isinstance(n, str) for n in arg):
        raise TypeError(
            f"Expected `{name}` to be a layer name, a list of layer names, or a predicate "
            f"`layer -> bool`, e.g. {name}=['dense_1']. Received: {name}={arg!r}"
        )
    names = list(arg)
    missing = sorted(set(names) - known)
    if missing:
        raise ValueError(
            f"`{name}` names layers that are not in the model: {missing}. "
            f"Layers in the model: {sorted(known)}"
        )
    chosen = set(names)
    return lambda layer: layer.name in chosen


def wrap(
    model: keras.layers.Layer,
    sparsity,
    granularity: str | tuple[int, int] = "weight",
    scope: str = "layer",
    criterion: str | Callable = "magnitude",
    layers: LayerSelector = None,
    exclude: LayerSelector = None,
    max_layer_sparsity: float | None = None,
    gate: Gate | Mapping[str, Gate] | None = None,
) -> keras.layers.Layer:
    """Wraps every supported layer of a model in `tfprune.Prunable`.

    The result is a new model (the input model is left as it is) with the same weights; it
    predicts exactly what the input model predicts until the first mask update.

    Args:
        model: A Sequential or functional model (nested models included), or one layer.
        sparsity: A float in [0, 1), a `tfprune.schedules` schedule (or a tfmot schedule),
            or `None` for masks that change only when set explicitly.
        granularity: `"weight"`, `"m:n"` (e.g. `"2:4"`), a `(rows, cols)` block, or
            `"channel"`.
        scope: `"layer"`, `"global"` or `"lamp"` (global ranking of LAMP scores).
        criterion: `"magnitude"` or a function `weights -> scores`.
        layers: Names of the layers to wrap, or a predicate `layer -> bool`; default: all
            supported layers.
        exclude: Names of layers to leave dense (e.g. the output layer), or a predicate.
        max_layer_sparsity: Ceiling on any one layer's sparsity under global scope.
        gate: A `tfprune.gates` gate to learn in every wrapped layer (each layer gets its
            own copy), a mapping from layer names to gates (per-layer settings such as the
            L0 `lam`; wrapped layers not named get none), or `None`.

    Returns:
        The wrapped model, or `Prunable(model)` when `model` is a single layer.

    Raises:
        TypeError: If `model` is not a Keras layer or model, or is a subclassed model.
        ValueError: If `model` is already wrapped, `layers`/`exclude`/`gate` name missing
            layers, `layers` names an unsupported layer, no layer is left to wrap, or an
            argument is out of range.
    """
    options = dict(
        sparsity=sparsity,
        granularity=granularity,
        scope=scope,
        criterion=criterion,
        max_layer_sparsity=max_layer_sparsity,
    )
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "tfprune.wrap expects a Keras model or layer. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    if not isinstance(model, keras.Model):
        return Prunable(model, gate=gate, **options)
    check_rebuildable(model, "wrap")
    all_layers = list(registry.iter_layers(model))
    wrapped = [layer.name for layer in all_layers if isinstance(layer, Prunable)]
    if wrapped:
        raise ValueError(
            f"Model '{model.name}' is already wrapped (tfprune.Prunable layers: {wrapped}). "
            "Wrapping twice would stack two masks; call tfprune.wrap on the original model, "
            "or tfprune.strip(model) first."
        )
    known = {layer.name for layer in all_layers}
    include = layer_selector(layers, "layers", known)
    skip = layer_selector(exclude, "exclude", known)
    gate_of = dict(gate) if isinstance(gate, Mapping) else None
    if gate_of is not None:
        layer_selector(gate_of, "gate", known)

    by_channel = isinstance(granularity_lib.get(granularity), granularity_lib.Channel)

    def prunable(layer: keras.layers.Layer) -> bool:
        spec = registry.lookup(layer)
        if by_channel and spec is not None and layer.built:
            # A layer whose weights hold no output channel of its own (a keras-hub block:
            # its output is the residual stream) has nothing to mask per channel.
            return any(s.output for s in spec.weight_specs(layer))
        return spec is not None and spec.weights != ()

    if include is not None:
        bad = [
            f"{x.name} ({type(x).__name__})"
            for x in all_layers
            if include(x) and not (prunable(x) or isinstance(x, keras.Model))
        ]
        if bad and not callable(layers):
            raise ValueError(
                f"`layers` names layers that tfprune cannot prune: {bad}. Supported types: "
                f"{', '.join(registry.supported())}."
            )
    unsupported = sorted(
        f"{x.name} ({type(x).__name__})"
        for x in all_layers
        if x.weights and registry.lookup(x) is None and not isinstance(x, keras.Model)
    )
    if unsupported:
        warnings.warn(
            "tfprune.wrap leaves these layers dense because their types are not in the "
            f"registry: {', '.join(unsupported)}. Register a type with "
            "tfprune.layers.register to prune it.",
            stacklevel=2,
        )

    def clone(layer: keras.layers.Layer, deferred: list) -> keras.layers.Layer:
        new = clone_layer(layer, deferred=deferred)
        if not isinstance(layer, keras.layers.Layer):
            return new
        chosen = prunable(layer) and (include is None or include(layer))
        if chosen and not (skip is not None and skip(layer)):
            layer_gate = gate if gate_of is None else gate_of.get(layer.name)
            return Prunable(new, gate=layer_gate, **options)
        return new

    wrapped = clone_model(model, clone)
    if not prunable_layers(wrapped):
        hidden = f"left dense: {', '.join(unsupported)}; " if unsupported else ""
        raise ValueError(
            f"tfprune.wrap found no layer to prune in model '{model.name}' ({hidden}no layer "
            "of a supported type is reachable after `layers`/`exclude`). Layers inside a "
            "custom block (keras-hub's TransformerEncoder, for example) are not reachable: "
            "register the block's type with tfprune.layers.register, or remove its channels "
            "and heads with tfprune.prune_channels and tfprune.prune_heads. Supported types: "
            f"{', '.join(registry.supported())}."
        )
    return wrapped


def _is_tfprune_object(value) -> bool:
    """True for the serialized form of a tfprune object (regularizer, constraint, ...)."""
    return isinstance(value, dict) and (
        str(value.get("registered_name", "")).startswith("tfprune>")
        or str(value.get("module", "")).split(".")[0] == "tfprune"
    )


def _without_tfprune(config):
    """`config` with every serialized tfprune object replaced by `None` (recursively)."""
    if isinstance(config, dict):
        return {
            k: None if _is_tfprune_object(v) else _without_tfprune(v) for k, v in config.items()
        }
    if isinstance(config, list):
        return [None if _is_tfprune_object(v) else _without_tfprune(v) for v in config]
    return config


def _plain(
    layer: keras.Operation, weights: list | None = None, deferred: list | None = None
) -> keras.Operation:
    """`clone_layer` without tfprune regularizers or constraints in the config."""
    if not isinstance(layer, keras.layers.Layer):
        return layer
    return clone_layer(layer, weights, deferred, config=_without_tfprune(layer_config(layer)))


def strip(model: keras.layers.Layer) -> keras.layers.Layer:
    """Removes every `tfprune.Prunable` wrapper, baking its masks into the weights.

    `tfprune.Clustered` wrappers are removed too, their shared values written into the
    weights.

    tfprune objects in the other layers' configs (e.g. a `tfprune.regularizers.Slimming`
    `gamma_regularizer`) are removed too, so the result loads with plain Keras
    (`keras.saving.load_model(path, safe_mode=True)`) in a process that never imports
    tfprune.

    Args:
        model: A Sequential or functional model (nested models included), or a single
            `Prunable` layer.

    Returns:
        A new plain Keras model (or layer) with no tfprune classes left, whose pruned weights
        are exactly zero and whose predictions equal the wrapped model's.

    Raises:
        TypeError: If `model` is not a Keras model or layer, or is a subclassed model.
    """
    if isinstance(model, Prunable):
        return _plain(model.layer, model.masked_weights())
    if isinstance(model, Clustered):
        return _plain(model.layer, model.shared_weights())
    if not isinstance(model, keras.Model):
        raise TypeError(
            "tfprune.strip expects a Keras model or a tfprune.Prunable layer. Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    check_rebuildable(model, "strip")

    def clone(layer: keras.layers.Layer, deferred: list) -> keras.layers.Layer:
        if isinstance(layer, Prunable):
            return _plain(layer.layer, layer.masked_weights(), deferred)
        if isinstance(layer, Clustered):
            return _plain(layer.layer, layer.shared_weights(), deferred)
        return _plain(layer, deferred=deferred)

    return clone_model(model, clone)
