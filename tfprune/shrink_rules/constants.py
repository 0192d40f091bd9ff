"""Shrink rules of the constants that removed channels carry, keyed by graph node kind.

A channel `tfprune.shrink` removes may still carry a constant into its consumers in the
pruned model: a BatchNormalization beta or moving mean that was not zeroed, or an
activation with `f(0) != 0` (sigmoid, softplus). `propagate` carries these constants
through the channel graph, one small rule per node kind (`tfprune.graph.KINDS`), and folds
them into the bias of each consumer (shrink then adds a bias where there was none). Where
the constant would not be uniform over space (a 'same'-padded convolution or ZeroPadding
sees zeros at the border, a transposed convolution overlaps), folding cannot be exact, so
the rule marks those channels to be kept instead: the shrunk model always equals the
pruned one.

A new node kind (`tfprune.graph.table.KINDS`) needs a method of `Constants` and an entry
in `RULES`.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfprune import graph as graph_lib
from tfprune import hub_hidden
from tfprune import layers as registry
from tfprune.graph._state import Graph, Node
from tfprune.shrink_rules.channels import kept
from tfprune.shrink_rules.ops import channel_range

__all__ = ["RULES", "Constants", "Plan", "propagate"]

_L = keras.layers


def _np(x: object) -> np.ndarray:
    """A tensor or variable as a NumPy array."""
    return keras.ops.convert_to_numpy(x)


@dataclasses.dataclass
class Plan:
    """What shrink does: the keep decision per channel id and the bias to fold per layer.

    Attributes:
        keep_id: Per channel id, whether it is kept.
        bias_delta: Per layer (`id(layer)`), what to add to its bias.
        force_keep: Channel ids that carry a constant folding cannot move.
    """

    keep_id: np.ndarray
    bias_delta: dict[int, np.ndarray]
    force_keep: set[int]


def _activation(layer: keras.Operation, x: np.ndarray) -> np.ndarray:
    """`layer.activation(x)` in float64 (`x` itself for a layer without an activation)."""
    fn = getattr(layer, "activation", None)
    if fn is None:
        return x
    x = np.asarray(x, np.float32)
    return _np(fn(keras.ops.convert_to_tensor(x))).astype(np.float64)


def _uniform_conv(layer: keras.layers.Layer) -> bool:
    """Whether a constant input gives a spatially uniform output (so it folds into bias)."""
    if type(layer) is _L.Dense:
        return True
    if "Transpose" in type(layer).__name__:
        return False
    size = getattr(layer, "kernel_size", (1,))
    return getattr(layer, "padding", "valid") == "valid" or all(k == 1 for k in size)


class Constants:
    """Propagates the constants that removed channels carry, one small rule per node kind.

    `vals[id(ids)]` holds, for each channel position of a tensor, the constant a removed
    channel carries there (0 for kept channels). A rule either passes constants on, folds
    them into a consumer's bias (`plan.bias_delta`), or, where the constant would not stay
    uniform over space, marks the channel to be kept (`plan.force_keep`).

    Each rule is a method `rule(node) -> None` for the nodes of its kind (a
    `tfprune.graph` node: the layer, its kind, its input and output channel ids), listed in
    `RULES`.

    Args:
        keep_id: Per channel id, whether shrink keeps it.
    """

    def __init__(self, keep_id: np.ndarray):
        self.plan = Plan(keep_id, {}, set())
        self.vals: dict[int, np.ndarray] = {}

    def removed(self, ids: np.ndarray) -> np.ndarray:
        """Per position of `ids`: whether it holds a channel that shrink removes.

        Args:
            ids: Channel ids of a tensor's positions.

        Returns:
            A boolean array of `ids`' shape.
        """
        return ~kept(ids, self.plan.keep_id)

    def val(self, ids: np.ndarray) -> np.ndarray:
        """The constants the positions of a tensor carry (zeros until a rule sets them).

        Args:
            ids: Channel ids of the tensor's positions (the array a node holds).

        Returns:
            One constant per position.
        """
        return self.vals.get(id(ids), np.zeros(ids.size))

    def set(self, ids: np.ndarray, values: np.ndarray | float) -> None:
        """Records the constants of a tensor: `values` where channels are removed, else 0.

        Args:
            ids: Channel ids of the tensor's positions.
            values: The value at every position (a scalar or one per position).
        """
        self.vals[id(ids)] = np.where(self.removed(ids), values, 0.0)

    def keep_hot(self, ids: np.ndarray, values: np.ndarray) -> bool:
        """Keeps removed channels that carry a nonzero constant.

        Args:
            ids: Channel ids of a tensor's positions.
            values: The constant at every position.

        Returns:
            Whether there were any.
        """
        hot = self.removed(ids) & (values != 0)
        self.plan.force_keep.update(ids[hot].tolist())
        return bool(hot.any())

    def fold(
        self,
        layer: keras.layers.Layer,
        ids: np.ndarray,
        values: np.ndarray,
        kernel: keras.Variable,
        in_axis: int,
    ) -> np.ndarray:
        """`sum_positions values[c] * kernel[..., c, o]` over removed input channels `c`.

        Where the layer's output would not be uniform over space (`_uniform_conv`), the
        channels carrying a nonzero constant are kept instead.

        Args:
            layer: The consuming layer.
            ids: Channel ids of its input positions.
            values: The constant at every input position.
            kernel: Its kernel.
            in_axis: The kernel's input-channel axis.

        Returns:
            The bias to add, one entry per output channel (empty when there is none).
        """
        hot = self.removed(ids) & (values != 0)
        if not hot.any():
            return np.zeros(0)
        if not _uniform_conv(layer):
            self.keep_hot(ids, values)
            return np.zeros(0)
        k = np.moveaxis(_np(kernel).astype(np.float64), in_axis, -2)
        k = k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=0)
        return np.where(hot, values, 0) @ k

    def _produce(self, node: Node, delta: np.ndarray) -> None:
        """Records a producer's bias delta and the constants its removed outputs carry."""
        layer = node.layer
        if delta.size:
            self.plan.bias_delta[id(layer)] = delta
        bias = _np(layer.bias).astype(np.float64) if layer.use_bias else 0.0
        self.set(node.output, _activation(layer, bias + (delta if delta.size else 0.0)))

    def source(self, node: Node) -> None:
        """Dense / Conv: removed inputs fold into the bias; removed outputs carry f(bias)."""
        layer = node.layer
        spec = next(s for s in registry.lookup(layer).weight_specs(layer) if s.in_axes)
        kernel = registry.resolve(layer, spec.path)
        ins = node.inputs[0]
        self._produce(node, self.fold(layer, ins, self.val(ins), kernel, spec.in_axes[0]))

    def separable(self, node: Node) -> None:
        """SeparableConv: through the depthwise half, then folded like `source`."""
        layer, ins = node.layer, node.inputs[0]
        dk = _np(layer.depthwise_kernel).astype(np.float64)
        dk = dk.reshape(-1, dk.shape[-2] * dk.shape[-1]).sum(axis=0)
        mid = np.repeat(self.val(ins), layer.depth_multiplier) * dk
        mid_ids = np.repeat(ins, layer.depth_multiplier)
        self._produce(node, self.fold(layer, mid_ids, mid, layer.pointwise_kernel, -2))

    def depthwise(self, node: Node) -> None:
        """DepthwiseConv, and Conv with `groups == channels` (one input channel each)."""
        layer, out = node.layer, node.output
        v = np.repeat(self.val(node.inputs[0]), getattr(layer, "depth_multiplier", 1))
        if layer.padding != "valid":
            self.keep_hot(out, v)
        k = _np(layer.kernel).astype(np.float64)
        ksum = k.reshape(-1, k.shape[-2] * k.shape[-1]).sum(axis=0)
        bias = _np(layer.bias).astype(np.float64) if layer.use_bias else 0.0
        self.set(out, _activation(layer, bias + v * ksum))

    def norm(self, node: Node) -> None:
        """BatchNormalization: the constant, normalized with the moving statistics."""
        layer = node.layer
        mean = _np(layer.moving_mean).astype(np.float64)
        var = _np(layer.moving_variance).astype(np.float64)
        y = (self.val(node.inputs[0]) - mean) / np.sqrt(var + layer.epsilon)
        if layer.scale:
            y = y * _np(layer.gamma)
        if layer.center:
            y = y + _np(layer.beta)
        self.set(node.output, y)

    def _evaluate(self, node: Node, merge: bool) -> None:
        """Calls the layer on the constants (a per-channel function of them)."""
        args = [
            keras.ops.convert_to_tensor(self.val(i).reshape(1, -1).astype(np.float32))
            for i in node.inputs
        ]
        y = _np(node.layer(args if merge else args[0])).reshape(-1)
        self.set(node.output, y.astype(np.float64))

    def elementwise(self, node: Node) -> None:
        """A per-channel layer (activation, LayerScale): called on the constants."""
        self._evaluate(node, merge=False)

    def merge(self, node: Node) -> None:
        """Add, Multiply, ...: called on the constants of every input."""
        self._evaluate(node, merge=True)

    def op(self, node: Node) -> None:
        """A raw elementwise `keras.ops` call: run it on the constants (and its own)."""
        call = node.call

        def fill(a):
            if isinstance(a, graph_lib.Tensor):
                shape = (1,) * (len(call.shapes[a.k]) - 1) + (-1,)
                return self.val(call.ids[a.k]).reshape(shape).astype(np.float32)
            return a

        args = [fill(a) for a in call.args]
        kwargs = {k: fill(v) for k, v in call.kwargs.items()}
        y = _np(node.layer(*args, **kwargs)).astype(np.float64).reshape(-1)
        self.set(node.output, y)

    def passthrough(self, node: Node) -> None:
        """Pooling, cropping, reductions: every output carries the input's constants."""
        for out in node.outputs:
            self.vals[id(out)] = self.val(node.inputs[0])

    def strict(self, node: Node) -> None:
        """Matmul, einsum, sum: removed channels must carry exactly zero into them."""
        for ids in node.inputs:
            self.keep_hot(ids, self.val(ids))

    def split(self, node: Node) -> None:
        """`keras.ops.split` along the channels: each output carries its part."""
        v = self.val(node.inputs[0])
        ends = np.cumsum([out.size for out in node.outputs])[:-1]
        for out, part in zip(node.outputs, np.split(v, ends)):
            self.vals[id(out)] = part

    def pad(self, node: Node) -> None:
        """ZeroPadding: the border is zero, so a nonzero constant keeps its channel."""
        self.keep_hot(node.inputs[0], self.val(node.inputs[0]))
        self.passthrough(node)

    def concat(self, node: Node) -> None:
        """Concatenate: side by side along the channels, or the same constants along space."""
        v = [self.val(i) for i in node.inputs]
        if node.output.size == sum(x.size for x in v):  # along the channels
            self.vals[id(node.output)] = np.concatenate(v)
            return
        if any(not np.array_equal(v[0], x) for x in v[1:]):
            # Different constants side by side along space: not one constant per channel.
            for ids, x in zip(node.inputs, v):
                self.keep_hot(ids, x)
        self.vals[id(node.output)] = v[0]

    def flatten(self, node: Node) -> None:
        """Flatten and reshape: tiled (merged) or split into heads of `d` channels."""
        ins, out = node.inputs[0], node.output
        v = self.val(ins)
        if out.size >= v.size:
            self.vals[id(out)] = np.tile(v, out.size // max(v.size, 1))
            return
        rows = v.reshape(-1, out.size)
        if (rows != rows[0]).any():  # tied channels of different heads carry different constants
            self.keep_hot(ins, v)
        self.set(out, rows[0])

    def slice(self, node: Node) -> None:
        """`x[..., a:b]`: the constants of the range."""
        _, start, stop = channel_range(node.call)
        self.vals[id(node.output)] = self.val(node.inputs[0])[start:stop]

    def nothing(self, node: Node) -> None:
        """Model inputs and layers of unknown semantics: no removed channel reaches them.

        Lookups (Embedding, PositionEmbedding) too: a removed channel's column is zero.
        """

    def attention(self, node: Node) -> None:
        """Attention: removed inputs must carry zero; a removed output carries its bias."""
        self.strict(node)
        bias = registry.resolve(node.layer, "attention_output/bias")
        self.set(node.output, 0.0 if bias is None else _np(bias).astype(np.float64))

    def hidden_norm(self, node: Node) -> None:
        """A norm passing channels (`through_norms=True`, not exact): a removed one is beta."""
        beta = registry.resolve(node.layer, "beta")
        self.set(node.output, 0.0 if beta is None else _np(beta).astype(np.float64))

    def residual_block(self, node: Node) -> None:
        """A keras-hub block passing the hidden width: removed channels carry zero through.

        Its norms see what a removed channel carries in, and its biases add to every
        position: channels where either is nonzero are kept.
        """
        self.strict(node)
        self.keep_hot(node.output, hub_hidden.stream_biases(node.layer))


# Node kind (tfprune.graph.KINDS) -> constant rule.
RULES = {
    "source": Constants.source,
    "separable": Constants.separable,
    "depthwise": Constants.depthwise,
    "grouped": Constants.depthwise,
    "norm": Constants.norm,
    "elementwise": Constants.elementwise,
    "merge": Constants.merge,
    "spatial": Constants.passthrough,
    "mixed": Constants.passthrough,
    "pad": Constants.pad,
    "concat": Constants.concat,
    "flatten": Constants.flatten,
    "op": Constants.op,
    "reduce": Constants.passthrough,
    "strict": Constants.strict,
    "split": Constants.split,
    "slice": Constants.slice,
    "input": Constants.nothing,
    "lookup": Constants.nothing,
    "reversible": Constants.nothing,
    "attention": Constants.attention,
    "hidden_norm": Constants.hidden_norm,
    "residual_block": Constants.residual_block,
    "unknown": Constants.nothing,
}


def propagate(g: Graph, keep_id: np.ndarray) -> Plan:
    """Constants carried by removed channels, folded into consumers' biases.

    Args:
        g: The model's channel graph (`tfprune.graph.walk.analyse`).
        keep_id: Per channel id, whether shrink keeps it.

    Returns:
        The `Plan`: `keep_id`, the bias to add per layer (by `id(layer)`) and the channel
        ids that must be kept after all (`force_keep`; empty when `keep_id` is final).
    """
    constants = Constants(keep_id)
    for node in g.nodes:
        RULES[node.kind](constants, node)
    return constants.plan
