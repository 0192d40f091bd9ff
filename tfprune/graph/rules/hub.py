"""Channel rules of keras-hub layers, keyed by registered name (keras-hub is not imported).

RMSNormalization and PositionEmbedding have rules in `hidden.py` (the hidden width of a
transformer). Transformer blocks, attention and embedding layers hold several weights whose
channels are tied in ways the graph does not see from outside (heads, residual streams,
tied embeddings), so their rules freeze the channels that reach them with a reason that
says so; a model that prunes inside them registers a rule of its own with
`tfprune.graph.register`.
"""

from __future__ import annotations

from tfprune.graph._state import Call, Graph
from tfprune.graph.table import register

_BLOCKS = (
    "GemmaDecoderBlock",
    "ViTEncoder",
    "ViTPatchingAndEmbedding",
    "TransformerEncoder",
    "TransformerDecoder",
    "CachedMultiHeadAttention",
    "ReversibleEmbedding",
    "RotaryEmbedding",
    "TokenAndPositionEmbedding",
    "FNetEncoder",
)


def opaque_block(g: Graph, call: Call) -> str:
    """A keras-hub block: its inner weights tie channels the graph cannot see."""
    return (
        "it is a keras-hub block whose inner weights (attention heads, residual stream, "
        "embeddings) tie its channels in ways tfprune.graph does not model; register a rule "
        "with tfprune.graph.register to prune through it"
    )


# keras-hub registers its public layers as "keras_hub>Name"; the layers inside its models
# (GemmaDecoderBlock) carry their bare class name.
for _name in _BLOCKS:
    for _key in (f"keras_hub>{_name}", _name):
        register(_key, opaque_block, "unknown")
