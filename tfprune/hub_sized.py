"""keras-hub's `TransformerEncoder` and `TransformerDecoder` with an explicit head size.

keras-hub's blocks (BERT, RoBERTa, DistilBERT, GPT-2) compute their attention's head size
as `hidden_dim // num_heads` when they build, so a block rebuilt with fewer heads would get
bigger heads. `tfprune.shrink` rebuilds such a block with pruned heads as one of these
subclasses instead: the same block, whose config also holds `head_dim`, the head size of
its attention layers (keys and values). Everything else (call, masks, caches, config) is
the keras-hub block's.

This module imports keras-hub, so `import tfprune` does not import it; `tfprune.hub_blocks`
registers a stand-in under each class's registered name that imports it when Keras
deserializes one, so a saved shrunk model loads with `import tfprune` and
`keras.saving.load_model(path, safe_mode=True)` in a fresh process.
"""

from __future__ import annotations

import keras
import keras_hub

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
