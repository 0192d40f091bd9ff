"""`Prunable`: a Keras wrapper layer that holds pruning masks for the layer it wraps."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from tfprune import criteria as criteria_lib
from tfprune import gates as gates_lib
from tfprune import granularity as granularity_lib
from tfprune import layers as registry
from tfprune import schedules as schedules_lib
from tfprune.backends import MASK_IN_CALL
from tfprune.regularizers import ZERO_THRESHOLD

__all__ = ["Prunable", "PruneTarget", "prunable_layers"]

SCOPES = ("layer", "global", "lamp")


@dataclasses.dataclass
class PruneTarget:
    """One mask of a `Prunable` and the weights it covers.

    Attributes:
        name: Mask name (`"kernel"`, `"query_dense_kernel"`, `"channel"`).
        mask: Boolean mask variable (`True` = kept).
        threshold: Scalar variable: the highest score pruned at the last update.
        weights: `(spec, variable)` pairs the mask applies to; the first is scored.
        gate: The `tfprune.gates.Gate` multiplied into these weights, or `None`.
    """

    name: str
    mask: keras.Variable
    threshold: keras.Variable
    weights: list[tuple[registry.WeightSpec, keras.Variable]]
    gate: gates_lib.Gate | None = None

    @property
    def spec(self) -> registry.WeightSpec:
        """Spec of the scored weight."""
        return self.weights[0][0]

    @property
    def variable(self) -> keras.Variable:
        """The scored weight."""
        return self.weights[0][1]


class _MaskConstraint:
    """Variable constraint that keeps masked weights at exactly zero after each update.

    Keras optimizers apply `variable.constraint` after every step, so momentum and weight
    decay cannot move a masked weight away from zero. Any constraint the layer already had
    is applied first.
    """

    def __init__(self, expand: Callable[[], Any], base: Callable | None):
        self.expand, self.base = expand, base

    def __call__(self, w):
        if self.base is not None:
            w = self.base(w)
        return ops.where(self.expand(), w, ops.cast(0, w.dtype))


def _broadcast_view(mask_shape: tuple[int, ...], spec: registry.WeightSpec, shape) -> list[int]:
    """Shape that broadcasts a mask of `mask_shape` against a weight of `shape`."""
    if tuple(mask_shape) == tuple(shape):
        return list(shape)
    out = tuple(a % len(shape) for a in spec.out_axes)
    return [shape[a] if a in out else 1 for a in range(len(shape))]


@keras.saving.register_keras_serializable(package="tfprune")
class Prunable(keras.layers.Wrapper):
    """Wraps a Keras layer so that its weights can be pruned with masks.

    The mask is each pruned weight's constraint: `set_mask` zeroes the pruned weights, and
    Keras optimizers apply the constraint right after every update, so pruned weights are
    exactly zero at every forward pass under momentum, Adam or AdamW weight decay, and the
    wrapped layer runs at the speed of the plain layer (no masking op in the forward or
    backward pass). Pruned weights still receive their dense gradient, which the optimizer
    applies and the constraint undoes in the same step; criteria that regrow weights can use
    it. Masks are boolean (one byte per weight), non-trainable variables saved with the
    model, together with the pruning step and the last threshold. They are changed by a
    `tfprune.PruningController`, which `tfprune.callbacks.UpdateMasks` drives in `model.fit`.
    On the JAX backend, whose stateless optimizers cannot see the masks, the layer computes
    with `where(mask, weight, 0)` instead and the masks travel in the state of
    `stateless_call` (see `tfprune.backends`); the results are the same.

    With a `gate` (`tfprune.gates.L0` or `tfprune.gates.Scale`), the wrapped layer runs on
    `weight * gate` instead: one learnable gate per output channel (`granularity="channel"`)
    or per weight (`granularity="weight"`), sampled in training and deterministic at
    inference, with the gate's penalty in `model.losses`. A `Dense` layer with one gate
    per unit multiplies its pre-activation output by the gates instead (the same result:
    `x (W g) + b g = (x W + b) g`, with batch x units values touched per step instead of the
    kernel). `tfprune.strip` folds the gates into the weights.

    Args:
        layer: The layer to wrap: any layer in the registry (`tfprune.layers`).
        sparsity: A float in [0, 1), a schedule from `tfprune.schedules` (or a
            tensorflow-model-optimization schedule), or `None` for masks that change only
            when set explicitly.
        granularity: `"weight"`, `"m:n"` such as `"2:4"` (m zeros in every n weights along
            the input channels), a `(rows, cols)` block shape, or `"channel"`.
        scope: `"layer"` (this layer reaches the target on its own), `"global"` (one
            ranking across every global-scope `Prunable` of the model) or `"lamp"` (one
            ranking of LAMP scores, `tfprune.allocation.lamp`, across the lamp-scope ones).
        criterion: Importance criterion: `"magnitude"` or a function `weights -> scores`.
        max_layer_sparsity: Ceiling on this layer's sparsity under global scope.
        gate: A `tfprune.gates.Gate` (`L0(...)`, `Scale(...)`) to learn, or `None`. It is a
            template: each mask gets its own copy, of the mask's shape. Needs granularity
            `"channel"` or `"weight"`.
        **kwargs: Base layer arguments (`name`, ...). The name defaults to the wrapped
            layer's.

    Raises:
        TypeError: If `layer` is not a Keras layer or `gate` is not a gate.
        ValueError: If `layer` is already a `Prunable`, its type is not supported, an
            argument is out of range, or a gate is combined with a granularity other than
            `"channel"` or `"weight"`.

    Examples:
        >>> import keras, tfprune
        >>> dense = tfprune.Prunable(keras.layers.Dense(8), sparsity=0.5)
        >>> y = dense(keras.ops.ones((2, 4)))
        >>> [t.name for t in dense.targets]
        ['kernel']
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        sparsity: float | schedules_lib.PruningSchedule | Callable | None = None,
        granularity: str | tuple[int, int] = "weight",
        scope: str = "layer",
        criterion: str | Callable = "magnitude",
        max_layer_sparsity: float | None = None,
        gate: gates_lib.Gate | dict | None = None,
        **kwargs,
    ):
        if isinstance(layer, Prunable):
            raise ValueError(
                f"Layer '{layer.name}' is already wrapped in tfprune.Prunable; wrapping twice "
                "would stack two masks. Pass the model or layer that is not yet wrapped."
            )
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "tfprune.Prunable wraps a Keras layer. Received: "
                f"layer={layer!r} of type {type(layer).__name__}"
            )
        spec = registry.lookup(layer)
        if spec is None or spec.weights == ():
            raise ValueError(
                f"Layer '{layer.name}' of type {type(layer).__name__} is not supported by "
                f"tfprune.Prunable. Supported: {', '.join(registry.supported())}. Register "
                "a custom layer with tfprune.layers.register(cls, LayerSpec(...))."
            )
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.schedule = schedules_lib.get(sparsity)
        self.granularity = granularity_lib.get(granularity)
        if scope not in SCOPES:
            raise ValueError(f"Expected `scope` to be one of {SCOPES}. Received: scope={scope!r}")
        if scope != "layer" and not self.granularity.supports_global:
            raise ValueError(
                f"Granularity {granularity!r} fixes the sparsity of every group, so it cannot "
                "be ranked globally. Use scope='layer'."
            )
        if scope == "lamp" and isinstance(self.granularity, granularity_lib.Channel):
            raise ValueError(
                "Channel groups are ranked by `tfprune.graph` with scope 'layer' or 'global'; "
                "LAMP ranks weights or blocks. Received: scope='lamp', granularity='channel'"
            )
        self.scope = scope
        self.criterion = criteria_lib.get(criterion)
        if max_layer_sparsity is not None:
            schedules_lib._check_sparsity("max_layer_sparsity", max_layer_sparsity)
        self.max_layer_sparsity = max_layer_sparsity
        self.gate = self._check_gate(gate)
        self.gate_layers: list[gates_lib.Gate] = []
        self.targets: list[PruneTarget] = []
        self.step = self.add_weight(
            name="prune_step", shape=(), dtype="int64", initializer="zeros", trainable=False
        )
        self._controller = None  # weak reference to the PruningController driving it
        self._call_takes_training = "training" in inspect.signature(layer.call).parameters

    def _check_gate(self, gate) -> gates_lib.Gate | None:
        if isinstance(gate, dict):
            gate = keras.saving.deserialize_keras_object(gate)
        if gate is None:
            return None
        if not isinstance(gate, gates_lib.Gate):
            raise TypeError(
                f"`gate` of layer '{self.name}' must be a tfprune.gates.Gate such as "
                f"tfprune.gates.L0(...) or None. Received: gate={gate!r}"
            )
        if not isinstance(self.granularity, (granularity_lib.Weight, granularity_lib.Channel)):
            raise ValueError(
                f"Gates are learned per channel or per weight, so layer '{self.name}' needs "
                "granularity='channel' or 'weight' for its gate. Received: "
                f"granularity={self.granularity.get_config()!r}"
            )
        return gate

    # --- building ----------------------------------------------------------------------

    def build(self, input_shape=None):
        if not self.layer.built:
            try:
                self.layer.build(input_shape)
            except TypeError as e:
                raise ValueError(
                    f"tfprune.Prunable could not build layer '{self.layer.name}' from a "
                    f"single input shape ({e}). Build it before wrapping, e.g. "
                    "`layer.build(query_shape, value_shape)`, or use tfprune.wrap(model)."
                ) from e
        spec = registry.lookup(self.layer)
        where = f"layer '{self.layer.name}'"
        specs = spec.weight_specs(self.layer)
        if isinstance(self.granularity, granularity_lib.Channel):
            groups = [("channel", [s for s in specs if s.output])]
        else:
            groups = [(s.name, [s]) for s in specs if s.prunable]
        if not any(g for _, g in groups):
            raise ValueError(
                f"Layer '{self.layer.name}' has no weights that granularity "
                f"{self.granularity.get_config()!r} can prune."
            )
        for name, group in groups:
            main = registry.resolve(self.layer, group[0].path)
            self.granularity.check(tuple(main.shape), group[0], where)
            mask_shape = self.granularity.mask_shape(tuple(main.shape), group[0])
            mask = self.add_weight(
                name=f"{name}_mask",
                shape=mask_shape,
                dtype="bool",
                initializer="ones",
                trainable=False,
                autocast=False,
            )
            threshold = self.add_weight(
                name=f"{name}_threshold", shape=(), initializer="zeros", trainable=False
            )
            weights = [(s, registry.resolve(self.layer, s.path)) for s in group]
            gate = None
            if self.gate is not None:
                config = {**self.gate.get_config(), "name": f"{name}_gate"}
                gate = self.gate.__class__.from_config(config)
                gate.build(mask_shape)
                self.gate_layers.append(gate)
            self.targets.append(PruneTarget(name, mask, threshold, weights, gate))
            if not MASK_IN_CALL:
                for s, w in weights:
                    w.constraint = _MaskConstraint(self._expander(mask, s, w.shape), w.constraint)
        self.built = True

    def _expander(self, mask: keras.Variable, spec: registry.WeightSpec, shape):
        """A function returning `mask` as a tensor that broadcasts against the weight."""
        return lambda: self._expand(mask.value, spec, shape)

    def _substitute(self, target: PruneTarget, spec, w, training):
        """What the layer computes with in place of weight `w`: `w * gate`, masked on JAX."""
        value = w.value
        if target.gate is not None:
            gates = ops.cast(target.gate.values(bool(training)), value.dtype)
            value = value * self._expand(gates, spec, w.shape)
        if MASK_IN_CALL:
            value = ops.where(self._expand(target.mask.value, spec, w.shape), value, 0)
        return value

    @staticmethod
    def _expand(values, spec: registry.WeightSpec, shape):
        """`values` of a mask's shape as a tensor that broadcasts against the weight."""
        if tuple(values.shape) == tuple(shape):
            return values
        return ops.reshape(values, _broadcast_view(tuple(values.shape), spec, tuple(shape)))

    # --- forward -----------------------------------------------------------------------

    def call(self, inputs, *args, training=None, **kwargs):
        if training and self.schedule is not None and self._controller is None:
            raise RuntimeError(
                f"Layer '{self.name}' is a tfprune.Prunable being trained without a pruning "
                "controller, so its masks would never update. Add the callback: "
                "model.fit(..., callbacks=[tfprune.callbacks.UpdateMasks()]), or in a custom "
                "training loop create tfprune.PruningController(model) and call "
                "controller.update(step) each step."
            )
        if self._call_takes_training and training is not None:
            kwargs["training"] = training
        if not self.gate_layers and not MASK_IN_CALL:
            return self.layer(inputs, *args, **kwargs)
        if self._gates_units():
            (target,) = self.targets
            factor = 1.0 if target.gate is None else target.gate.values(bool(training))
            if MASK_IN_CALL:
                factor = factor * ops.cast(target.mask.value, "float32")
            return self._call_gating_units(factor, inputs, *args, **kwargs)
        substitutes = {
            id(w): self._substitute(t, spec, w, training)
            for t in self.targets
            for spec, w in t.weights
        }
        return call_substituted(self, substitutes, inputs, *args, **kwargs)

    def _flush_step(self) -> None:
        """Has the controller driving this layer write the pruning step it deferred."""
        controller = self._controller() if self._controller is not None else None
        if controller is not None:
            controller.flush()

    def save_own_variables(self, store):
        self._flush_step()  # the controller writes the step lazily; saving needs it now
        if MASK_IN_CALL:
            self.zero_pruned()  # so the file computes the same on every backend
        super().save_own_variables(store)

    def zero_pruned(self) -> None:
        """Sets the pruned weights to exactly zero.

        On TensorFlow and PyTorch they always are (the masks are the weights' constraints).
        On JAX the layer masks its weights in the forward pass, so pruned weights the
        optimizer moves (momentum from before they were pruned) compute as zero but hold
        other values; this writes the zeros (saving a model and
        `tfprune.callbacks.UpdateMasks` at the end of each epoch do it).
        """
        for target in self.targets:
            self.set_mask(target.name, keras.ops.convert_to_numpy(target.mask))

    def _gates_units(self) -> bool:
        """Whether the gates multiply the outputs instead of the weights.

        For a layer whose registry entry allows it (`LayerSpec.gates_outputs`, e.g.
        `Dense`: `x (W g) + b g = (x W + b) g`) with one gate per channel: scaling the
        pre-activation output touches batch x units values per step instead of the fan-in x
        units kernel, the cheaper of the two for batches smaller than the fan-in (on
        LeNet-300-100 it is most of the gates' step-time cost).
        """
        return (
            registry.lookup(self.layer).gates_outputs
            and isinstance(self.granularity, granularity_lib.Channel)
            and self.layer.activity_regularizer is None
            and self.layer.quantization_mode is None
        )

    def _call_gating_units(self, gates, inputs, *args, **kwargs):
        """The wrapped layer without its activation, times `gates` (one per unit), then
        activated."""
        activation = self.layer.activation
        self.layer.activation = None
        try:
            outputs = self.layer(inputs, *args, **kwargs)
        finally:
            self.layer.activation = activation
        outputs = outputs * ops.cast(gates, outputs.dtype)
        return outputs if activation is None else activation(outputs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    # --- masks -------------------------------------------------------------------------

    def set_mask(self, name: str, keep: np.ndarray, threshold: float | None = None) -> None:
        """Sets one mask and zeroes the weights it prunes.

        Args:
            name: Target name (see `targets`).
            keep: Boolean array of the mask's shape, `True` where weights are kept.
            threshold: Score of the highest pruned unit, for logging.

        Raises:
            KeyError: If there is no target of that name.
            ValueError: If `keep` has the wrong shape.
        """
        target = self.target(name)
        keep = np.asarray(keep, bool)
        if keep.shape != tuple(target.mask.shape):
            raise ValueError(
                f"Mask '{name}' of layer '{self.name}' has shape {tuple(target.mask.shape)}. "
                f"Received: keep.shape={keep.shape}"
            )
        target.mask.assign(keep)
        for spec, w in target.weights:
            full = np.broadcast_to(
                keep.reshape(_broadcast_view(keep.shape, spec, tuple(w.shape))), w.shape
            )
            w.assign(np.where(full, keras.ops.convert_to_numpy(w), 0).astype(w.dtype))
        if threshold is not None:
            target.threshold.assign(threshold)

    def target(self, name: str) -> PruneTarget:
        """Returns the target named `name`.

        Raises:
            KeyError: If there is none.
        """
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(
            f"Layer '{self.name}' has no mask '{name}'. It has: {[t.name for t in self.targets]}"
        )

    def masked_weights(self) -> list[np.ndarray]:
        """The wrapped layer's weights with masks (and inference gates) applied.

        Returns:
            Arrays in `layer.get_weights()` order: what the layer computes with at inference.
        """
        masked = {}
        for target in self.targets:
            keep = keras.ops.convert_to_numpy(target.mask)
            factor = keep if target.gate is None else keep * target.gate.inference_values()
            for spec, w in target.weights:
                view = _broadcast_view(keep.shape, spec, tuple(w.shape))
                full = np.broadcast_to(factor.reshape(view), w.shape)
                value = keras.ops.convert_to_numpy(w)
                masked[id(w)] = np.where(full != 0, value * full, 0).astype(w.dtype)
        return [masked.get(id(w), keras.ops.convert_to_numpy(w)) for w in self.layer.weights]

    def open_gates(self) -> tuple[int, int] | None:
        """`(open, total)` gates of this layer, open meaning an inference value that is not
        zero, or `None` for a layer without gates."""
        if not self.gate_layers:
            return None
        values = [g.inference_values() for g in self.gate_layers]
        return (
            sum(int(np.count_nonzero(np.abs(v) > ZERO_THRESHOLD)) for v in values),
            sum(v.size for v in values),
        )

    # --- config ------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        if self.schedule is not None and not isinstance(
            self.schedule, schedules_lib.PruningSchedule
        ):
            raise TypeError(
                f"Layer '{self.name}' uses a schedule of type {type(self.schedule).__name__}, "
                "which cannot be saved. Use a tfprune.schedules schedule (or a subclass of "
                "tfprune.schedules.PruningSchedule registered with "
                "keras.saving.register_keras_serializable)."
            )
        config = {
            "sparsity": keras.saving.serialize_keras_object(self.schedule),
            "granularity": self.granularity.get_config(),
            "scope": self.scope,
            "criterion": criteria_lib.serialize(self.criterion),
            "max_layer_sparsity": self.max_layer_sparsity,
            "gate": keras.saving.serialize_keras_object(self.gate),
        }
        return {**super().get_config(), **config}


def call_substituted(wrapper: keras.layers.Wrapper, substitutes: dict, inputs, *args, **kwargs):
    """Calls `wrapper.layer` with tensors in place of some of its variables.

    The layer reads `substitutes[id(variable)]` in place of those variables and the current
    values of its other variables (outer stateless scopes included); anything else it
    updates or adds as a loss inside the scope is applied after it (losses to `wrapper`).

    Args:
        wrapper: The wrapper whose inner layer is called.
        substitutes: Tensors keyed by the `id` of the variable they replace.
        inputs: The layer's inputs; `*args` and `**kwargs` are passed on.

    Returns:
        The layer's outputs.
    """
    variables = wrapper.layer.variables
    scope = keras.StatelessScope(
        state_mapping=[(v, substitutes.get(id(v), v.value)) for v in variables],
        collect_losses=True,
    )
    initial = {id(v): scope.get_current_value(v) for v in variables}
    with scope:
        outputs = wrapper.layer(inputs, *args, **kwargs)
    for v in variables:
        value = scope.get_current_value(v)
        if id(v) not in substitutes and value is not initial[id(v)]:
            v.assign(value)
    for loss in scope.losses:
        wrapper.add_loss(loss)
    return outputs


def prunable_layers(model: keras.layers.Layer) -> list[Prunable]:
    """Every `Prunable` layer in `model` (nested models included), in layer order.

    Args:
        model: A Keras model, or a single layer.

    Returns:
        The `Prunable` layers.
    """
    return registry.instances(model, Prunable)
