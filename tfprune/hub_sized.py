"""keras-hub's transformer blocks with an explicit head size.

keras-hub's blocks (BERT, RoBERTa, DistilBERT, GPT-2) compute their attention's head size
as `hidden_dim // num_heads` when they build, so a block rebuilt with fewer heads would get
bigger heads. `tfprune.shrink` rebuilds such a block with pruned heads as one of these
subclasses instead: the same block, whose config also holds `head_dim`, the head size of
its attention layers (keys and values). Everything else (call, masks, caches, config) is
the keras-hub block's.

Qwen's block (`HeadSizedQwenTransformerDecoder`) is the same idea one level down: its
attention layer computes `head_dim = hidden_dim // num_query_heads` in its own `build`, so
the block swaps it, as it is assigned, for a subclass of the same attention class that
builds as if the hidden width were `head_dim * num_query_heads` (keras-hub then derives the
right head size and softmax scale) and rebuilds the query, key, value and output
projections at the real hidden width. keras-hub does not export the block class, so the
subclass is made on first use from the block of a one-layer backbone.

This module imports keras-hub, so `import tfprune` does not import it; `tfprune.hub_blocks`
registers a stand-in under each class's registered name that imports it when Keras
deserializes one, so a saved shrunk model loads with `import tfprune` and
`keras.saving.load_model(path, safe_mode=True)` in a fresh process.
"""

from __future__ import annotations

import functools

import keras
import keras_hub

# `HeadSizedQwenTransformerDecoder` is made on first use (module `__getattr__`).
__all__ = ["HeadSizedTransformerDecoder", "HeadSizedTransformerEncoder"]

# The attributes the keras-hub blocks assign their attention layers to in `build`.
_ATTENTION_ATTRIBUTES = ("_self_attention_layer", "_cross_attention_layer")


def _check_head_dim(head_dim) -> None:
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(
            "Expected `head_dim` (the size of each attention head) to be a positive "
            f"integer. Received: head_dim={head_dim!r}"
        )


class _HeadSized:
    """Gives the attention layers a keras-hub block builds the head size `head_dim`.

    The block's `build` assigns an unbuilt `MultiHeadAttention` (or subclass) with
    `key_dim = hidden_dim // num_heads`; this swaps it, as it is assigned, for the same
    layer (from its config) with `key_dim = value_dim = head_dim`.
    """

    def __setattr__(self, name, value):
        if (
            name in _ATTENTION_ATTRIBUTES
            and isinstance(value, keras.layers.MultiHeadAttention)
            and not value.built
        ):
            config = {**value.get_config(), "key_dim": self.head_dim, "value_dim": self.head_dim}
            value = type(value).from_config(config)
        super().__setattr__(name, value)


@keras.saving.register_keras_serializable(package="tfprune")
class HeadSizedTransformerEncoder(_HeadSized, keras_hub.layers.TransformerEncoder):
    """keras-hub's `TransformerEncoder` whose attention heads have size `head_dim`.

    Args:
        intermediate_dim: Width of the MLP.
        num_heads: Number of attention heads.
        head_dim: Size of each head (keras-hub uses `hidden_dim // num_heads`).
        **kwargs: The other arguments of `keras_hub.layers.TransformerEncoder`.

    Raises:
        ValueError: If `head_dim` is not a positive integer.
    """

    def __init__(self, intermediate_dim: int, num_heads: int, head_dim: int, **kwargs):
        _check_head_dim(head_dim)
        super().__init__(intermediate_dim, num_heads, **kwargs)
        self.head_dim = head_dim

    def get_config(self) -> dict:
        return {**super().get_config(), "head_dim": self.head_dim}


@keras.saving.register_keras_serializable(package="tfprune")
class HeadSizedTransformerDecoder(_HeadSized, keras_hub.layers.TransformerDecoder):
    """keras-hub's `TransformerDecoder` whose attention heads have size `head_dim`.

    Args:
        intermediate_dim: Width of the MLP.
        num_heads: Number of attention heads (self and cross attention).
        head_dim: Size of each head (keras-hub uses `hidden_dim // num_heads`).
        **kwargs: The other arguments of `keras_hub.layers.TransformerDecoder`.

    Raises:
        ValueError: If `head_dim` is not a positive integer.
    """

    def __init__(self, intermediate_dim: int, num_heads: int, head_dim: int, **kwargs):
        _check_head_dim(head_dim)
        # keras-hub's decoder builds in `__init__` when its config holds its input shapes;
        # it must know `head_dim` first.
        shapes = (
            kwargs.pop("decoder_sequence_shape", None),
            kwargs.pop("encoder_sequence_shape", None),
        )
        super().__init__(intermediate_dim, num_heads, **kwargs)
        self.head_dim = head_dim
        if shapes[0]:
            self.build(*shapes)

    def get_config(self) -> dict:
        return {**super().get_config(), "head_dim": self.head_dim}


# The projections of Qwen's attention layer, in the order its `build` creates them.
_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")


class _HeadSizedAttention:
    """Builds a keras-hub grouped-query attention layer with heads of size `head_dim`.

    The base class's `build` runs on the input shape with its last dimension set to
    `head_dim * num_query_heads`, so it derives `head_dim` (and its softmax scale); the
    projections it creates there are left untracked and replaced by the same layers
    (from their configs) built at the real hidden width.
    """

    def __init__(self, *args, head_dim: int, **kwargs):
        _check_head_dim(head_dim)
        super().__init__(*args, **kwargs)
        self.head_dim = head_dim
        self._sizing = False

    def __setattr__(self, name, value):
        if name in _PROJECTIONS and getattr(self, "_sizing", False):
            # Built for the stand-in width below: kept out of the layer's tracking.
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def build(self, inputs_shape):
        hidden = inputs_shape[-1]
        self._sizing = True
        try:
            super().build((*inputs_shape[:-1], self.head_dim * self.num_query_heads))
        finally:
            self._sizing = False
        for name in _PROJECTIONS:
            stand_in = getattr(self, name)
            config = stand_in.get_config()
            if name == "_output_dense":
                config["output_shape"] = (None, hidden)
                shape = (None, None, self.num_query_heads, self.head_dim)
            else:
                shape = inputs_shape
            layer = type(stand_in).from_config(config)
            layer.build(shape)
            setattr(self, name, layer)

    def get_config(self) -> dict:
        return {**super().get_config(), "head_dim": self.head_dim}


@functools.cache
def _sized_attention(base: type) -> type:
    return type(f"HeadSized{base.__name__}", (_HeadSizedAttention, base), {})


class _HeadSizedGrouped:
    """A keras-hub grouped-query block whose config holds `head_dim`.

    Args:
        *args: The block's positional arguments.
        head_dim: Size of each attention head (keras-hub uses
            `hidden_dim // num_query_heads`).
        **kwargs: The block's other arguments.

    Raises:
        ValueError: If `head_dim` is not a positive integer.
    """

    def __init__(self, *args, head_dim: int, **kwargs):
        _check_head_dim(head_dim)
        super().__init__(*args, **kwargs)
        self.head_dim = head_dim

    def __setattr__(self, name, value):
        if (
            name == "_self_attention_layer"
            and isinstance(value, keras.layers.Layer)
            and not value.built
        ):
            config = {**value.get_config(), "head_dim": self.head_dim}
            value = _sized_attention(type(value)).from_config(config)
        super().__setattr__(name, value)

    def get_config(self) -> dict:
        return {**super().get_config(), "head_dim": self.head_dim}


@functools.cache
def _qwen_decoder() -> type:
    """`HeadSizedQwenTransformerDecoder`, made and registered on first use."""
    tiny = keras_hub.models.QwenBackbone(
        vocabulary_size=1,
        num_layers=1,
        num_query_heads=1,
        num_key_value_heads=1,
        hidden_dim=2,
        intermediate_dim=1,
        name="tfprune_qwen_probe",  # leaves Keras's automatic model names alone
    )
    base = type(tiny.get_layer("transformer_layer_0"))
    cls = type(
        "HeadSizedQwenTransformerDecoder",
        (_HeadSizedGrouped, base),
        {"__module__": __name__, "__doc__": _doc("Qwen's", base)},
    )
    return keras.saving.register_keras_serializable(package="tfprune")(cls)


def _doc(model: str, base: type) -> str:
    return (
        f"{model} `{base.__name__}` whose attention heads have size `head_dim`.\n\n"
        + (_HeadSizedGrouped.__doc__.split("\n\n", 1)[1])
    )


def __getattr__(name: str):
    if name == "HeadSizedQwenTransformerDecoder":
        return _qwen_decoder()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
