"""Layer registry: the one place that knows Keras layer types.

Each supported layer class has one declarative `LayerSpec` entry that says which of its
weights can be pruned, which axes of each weight are its input channels (the reduction axes)
and output channels, and how its multiply-accumulates (MACs) scale with the input or output.
Every other module asks the registry; none tests `isinstance` against layer types.

Examples:
    >>> import keras, tfprune
    >>> dense = keras.layers.Dense(4)
    >>> dense.build((None, 3))
    >>> [w.path for w in tfprune.layers.lookup(dense).weight_specs(dense)]
    ['kernel', 'bias']
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Sequence

import keras

__all__ = [
    "LayerSpec",
    "WeightSpec",
    "instances",
    "iter_layers",
    "lookup",
    "macs",
    "register",
    "resolve",
    "supported",
]


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """How one weight of a layer relates to channels.

    Args:
        path: Public attribute path of the weight on the layer, such as `"kernel"` or
            `"query_dense.kernel"`.
        in_axes: Axes that hold input channels (contracted in the layer's product). Empty
            when the weight has none (a depthwise kernel).
        out_axes: Axes that hold output channels, in order (their product is the layer's
            number of output channels for this weight).
        prunable: Whether weight-level pruning applies. Biases are `False`: they only
            follow channel masks.
        positions: How the weight's MACs per example scale: `"output"` (once per output
            position; dense layers and convolutions), `"input"` (once per input position;
            transposed convolutions), `"spatial"` (once per output position where the
            layer's output channels differ from the weight's, as for the depthwise half of a
            separable convolution) or `"none"` (lookups, biases).
        output: Whether `out_axes` are the layer's own output channels, so that a channel
            mask of the layer covers this weight (`False` for the depthwise half of a
            separable convolution and the query/key/value projections of attention).
    """

    path: str
    in_axes: tuple[int, ...]
    out_axes: tuple[int, ...]
    prunable: bool = True
    positions: str = "output"
    output: bool = True

    @property
    def name(self) -> str:
        """The weight's name inside a `Prunable` (the path with dots as underscores)."""
        return self.path.replace(".", "_")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Registry entry for one Keras layer class.

    Args:
        weights: Either a tuple of `WeightSpec`, or a function from the layer instance to
            that tuple (for layers whose axes depend on their configuration, such as
            `EinsumDense`).
        extra_macs: Optional function `(layer, input_shapes, output_shape) -> int` for MACs
            that no weight accounts for (attention score products).
        gates_outputs: Whether per-channel gates may scale the layer's pre-activation output
            instead of its weights: true when the layer computes `activation(f(x))` with
            `f` linear in each output channel's weights (bias included), the channels on
            the last axis of the output and `activation` an attribute of the layer. That
            costs batch x channels values per step instead of the whole kernel.
    """

    weights: tuple[WeightSpec, ...] | Callable[[keras.layers.Layer], tuple[WeightSpec, ...]]
    extra_macs: Callable[[keras.layers.Layer, list, tuple], int] | None = None
    gates_outputs: bool = False

    def weight_specs(self, layer: keras.layers.Layer) -> tuple[WeightSpec, ...]:
        """Returns the weight specs of `layer` that exist (a layer without bias has none)."""
        specs = self.weights(layer) if callable(self.weights) else self.weights
        return tuple(s for s in specs if resolve(layer, s.path) is not None)

    def prunable_specs(self, layer: keras.layers.Layer) -> tuple[WeightSpec, ...]:
        """Returns the specs of the weights that weight-level pruning applies to."""
        return tuple(s for s in self.weight_specs(layer) if s.prunable)


_REGISTRY: dict[type | str, LayerSpec] = {}

_BIAS = WeightSpec("bias", in_axes=(), out_axes=(0,), prunable=False, positions="none")


def register(layer_class: type | str, spec: LayerSpec) -> None:
    """Registers (or replaces) the entry for a Keras layer class.

    Use this to make tfprune prune a custom layer whose weights behave like one of the
    built-in layers.

    Args:
        layer_class: A subclass of `keras.layers.Layer`, or its Keras registered name
            (`keras.saving.get_registered_name`, e.g. `"keras_hub>TransformerEncoder"`),
            which describes a class without importing its package.
        spec: Its `LayerSpec`.

    Raises:
        TypeError: If `layer_class` is not a Keras layer class or a name, or `spec` is
            not a `LayerSpec`.
    """
    is_layer = isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)
    if not (is_layer or isinstance(layer_class, str)):
        raise TypeError(
            "Expected `layer_class` to be a subclass of keras.layers.Layer or a registered "
            f"name. Received: layer_class={layer_class!r}"
        )
    if not isinstance(spec, LayerSpec):
        raise TypeError(f"Expected `spec` to be a tfprune.layers.LayerSpec. Received: {spec!r}")
    _REGISTRY[layer_class] = spec


def lookup(layer: keras.layers.Layer) -> LayerSpec | None:
    """Returns the registry entry for the exact class of `layer`, or `None`.

    The class is looked up first, then its Keras registered name. Subclasses are not
    matched: a subclass may change what its weights mean, so it must be registered
    explicitly with `tfprune.layers.register`.

    Args:
        layer: A Keras layer instance.

    Returns:
        Its `LayerSpec`, or `None` when the class is not registered.
    """
    cls = type(layer)
    if cls in _REGISTRY:
        return _REGISTRY[cls]
    return _REGISTRY.get(keras.saving.get_registered_name(cls))


def supported() -> list[str]:
    """Names of the registered layer classes that have prunable weights, sorted."""
    return sorted(
        key.split(">")[-1] if isinstance(key, str) else key.__name__
        for key, spec in _REGISTRY.items()
        if spec.weights != ()
    )


def resolve(layer: keras.layers.Layer, path: str) -> keras.Variable | None:
    """Returns the variable at a public attribute path such as `"query_dense.kernel"`.

    A path with slashes (`"query/kernel"`) names the layer's variable whose `path` ends
    with it, for weights of sub-layers that are not public attributes
    (`GroupQueryAttention`'s projections).

    Args:
        layer: A Keras layer.
        path: Dot-separated public attribute path, or the end of a variable path.

    Returns:
        The variable, or `None` when the layer has no such weight (no bias, or not built).
    """
    if "/" in path:
        weights = getattr(layer, "weights", [])
        return next((w for w in weights if w.path.endswith("/" + path)), None)
    obj = layer
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, keras.Variable) else None


def instances(model: keras.layers.Layer, cls: type) -> list:
    """Every layer of `model` that is a `cls` (nested models included), in layer order.

    Args:
        model: A Keras model, or a single layer (returned alone if it is a `cls`).
        cls: The layer class, e.g. `tfprune.Prunable`.

    Returns:
        The layers.
    """
    if isinstance(model, cls):
        return [model]
    return [layer for layer in iter_layers(model) if isinstance(layer, cls)]


def iter_layers(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Yields every layer of `model`, depth first, entering nested models.

    Wrappers (including `tfprune.Prunable`) are yielded but not entered, so each weight is
    owned by exactly one yielded layer.

    Args:
        model: A Keras model or layer.

    Yields:
        The layers, in the order of `model.layers`, each once.
    """
    seen: set[int] = set()
    stack = list(reversed(getattr(model, "layers", [model])))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        if isinstance(layer, keras.Model):
            stack.extend(reversed(layer.layers))


# --- MACs ------------------------------------------------------------------------------


def _size(shape: Sequence[int | None]) -> int:
    return math.prod(int(d) for d in shape[1:])


def macs(layer: keras.layers.Layer, input_shapes: list, output_shape: tuple) -> int:
    """Multiply-accumulates per example of one call of a registered layer.

    Args:
        layer: A built, registered layer (not a wrapper).
        input_shapes: Shapes of the call's tensor inputs, batch axis first.
        output_shape: Shape of the output, batch axis first.

    Returns:
        MACs for one example; 0 for layers the registry does not know.
    """
    spec = lookup(layer)
    if spec is None:
        return 0
    total = 0
    for ws in spec.weight_specs(layer):
        w = resolve(layer, ws.path)
        n = math.prod(w.shape)
        if ws.positions == "output":
            total += n * _size(output_shape) // math.prod(w.shape[a] for a in ws.out_axes)
        elif ws.positions == "input":
            total += n * _size(input_shapes[0]) // math.prod(w.shape[a] for a in ws.in_axes)
        elif ws.positions == "spatial":
            channel_axis = 1 if getattr(layer, "data_format", None) == "channels_first" else -1
            total += n * _size(output_shape) // int(output_shape[channel_axis])
    if spec.extra_macs is not None:
        total += spec.extra_macs(layer, input_shapes, output_shape)
    return total


# --- entries ---------------------------------------------------------------------------

_CONV = (WeightSpec("kernel", in_axes=(-2,), out_axes=(-1,)), _BIAS)
_CONV_T = (WeightSpec("kernel", in_axes=(-1,), out_axes=(-2,), positions="input"), _BIAS)
_DEPTHWISE = (WeightSpec("kernel", in_axes=(), out_axes=(-2, -1)), _BIAS)
_SEPARABLE = (
    WeightSpec(
        "depthwise_kernel", in_axes=(), out_axes=(-2, -1), positions="spatial", output=False
    ),
    WeightSpec("pointwise_kernel", in_axes=(-2,), out_axes=(-1,)),
    _BIAS,
)


def _einsum_axes(equation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output axes of the kernel of an `EinsumDense` equation."""
    match = re.fullmatch(r"\s*([\w.]+)\s*,\s*(\w+)\s*->\s*([\w.]+)\s*", equation)
    if match is None:
        raise ValueError(f"Cannot parse EinsumDense equation. Received: equation={equation!r}")
    lhs, kernel, out = match.groups()
    in_axes = tuple(i for i, c in enumerate(kernel) if c in lhs and c not in out)
    out_axes = tuple(i for i, c in enumerate(kernel) if c in out and c not in lhs)
    return in_axes, out_axes


def _einsum_specs(
    layer: keras.layers.Layer, prefix: str = "", output: bool = True
) -> tuple[WeightSpec, ...]:
    in_axes, out_axes = _einsum_axes(layer.equation)
    kernel_letters = layer.equation.split(",")[1].split("->")[0].strip()
    out_letters = "".join(kernel_letters[a] for a in out_axes)
    # The bias follows the kernel's output channels only when it spans exactly those axes.
    bias_axes = tuple(range(len(out_letters))) if layer.bias_axes == out_letters else ()
    return (
        WeightSpec(prefix + "kernel", in_axes=in_axes, out_axes=out_axes, output=output),
        WeightSpec(
            prefix + "bias",
            in_axes=(),
            out_axes=bias_axes,
            prunable=False,
            positions="none",
            output=output and bool(bias_axes),
        ),
    )


_MHA_PROJECTIONS = ("query_dense", "key_dense", "value_dense", "output_dense")


def _mha_specs(layer: keras.layers.Layer) -> tuple[WeightSpec, ...]:
    specs: list[WeightSpec] = []
    for name in _MHA_PROJECTIONS:
        sub = getattr(layer, name)
        kernel, bias = _einsum_specs(sub, prefix=f"{name}.", output=name == "output_dense")
        # Output positions of each projection are only known to MultiHeadAttention itself,
        # so all of its MACs come from `_mha_macs`.
        specs += [dataclasses.replace(kernel, positions="none"), bias]
    return tuple(specs)


def _mha_macs(layer: keras.layers.Layer, input_shapes: list, output_shape: tuple) -> int:
    query = input_shapes[0]
    value = input_shapes[1] if len(input_shapes) > 1 else query
    key = input_shapes[2] if len(input_shapes) > 2 else value
    t_q = _size(query) // int(query[-1])
    t_k = _size(key) // int(key[-1])
    t_v = _size(value) // int(value[-1])
    proj = sum(
        math.prod(getattr(layer, name).kernel.shape) * t
        for name, t in zip(_MHA_PROJECTIONS, (t_q, t_k, t_v, t_q))
    )
    heads, key_dim = layer.num_heads, layer.key_dim
    value_dim = layer.value_dim or key_dim
    return proj + heads * t_q * t_k * (key_dim + value_dim)


_L = keras.layers
for _cls in (_L.Conv1D, _L.Conv2D, _L.Conv3D):
    register(_cls, LayerSpec(_CONV))
for _cls in (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose):
    register(_cls, LayerSpec(_CONV_T))
for _cls in (_L.DepthwiseConv1D, _L.DepthwiseConv2D):
    register(_cls, LayerSpec(_DEPTHWISE))
for _cls in (_L.SeparableConv1D, _L.SeparableConv2D):
    register(_cls, LayerSpec(_SEPARABLE))
register(
    _L.Dense,
    LayerSpec((WeightSpec("kernel", in_axes=(0,), out_axes=(1,)), _BIAS), gates_outputs=True),
)
register(_L.EinsumDense, LayerSpec(_einsum_specs))
register(
    _L.Embedding,
    LayerSpec((WeightSpec("embeddings", in_axes=(0,), out_axes=(1,), positions="none"),)),
)
register(_L.MultiHeadAttention, LayerSpec(_mha_specs, extra_macs=_mha_macs))
# keras-hub's subclass with a key/value cache has the same weights (by registered name, so
# keras-hub is not imported; its transformer blocks are in tfprune.hub_blocks).
register("keras_hub>CachedMultiHeadAttention", LayerSpec(_mha_specs, extra_macs=_mha_macs))
# Normalization layers carry weights but nothing to prune at weight level: the channel
# graph (tfprune.graph) slices them with their producers.
for _cls in (_L.BatchNormalization, _L.LayerNormalization, _L.GroupNormalization):
    register(_cls, LayerSpec(()))
