"""modulm built-in plugin ``transformer``: the CS336 Transformer LM and each of its parts.

Every part is registered under its kind so a recipe can swap it (see docs/components.md).
"""

from modulm import hookimpl
from modulm_transformer import components
from modulm_transformer.attention import CausalSelfAttention
from modulm_transformer.blocks import PostNormBlock, PreNormBlock
from modulm_transformer.cache import KVCache
from modulm_transformer.ffn import ReLU2FFN, SiLUFFN, SwiGLU
from modulm_transformer.layers import Embedding, Linear
from modulm_transformer.model import TransformerLM, transformer
from modulm_transformer.norms import Identity, RMSNorm
from modulm_transformer.position import NoPositionalEmbedding, RotaryPositionalEmbedding

__all__ = [
    "CausalSelfAttention", "Embedding", "Identity", "KVCache", "Linear", "NoPositionalEmbedding",
    "PostNormBlock", "PreNormBlock", "ReLU2FFN", "RMSNorm", "RotaryPositionalEmbedding", "SiLUFFN", "SwiGLU",
    "TransformerLM",
]


@hookimpl
def modulm_register_components(registry):
    registry.model("transformer", transformer)
    registry.block("prenorm", components.prenorm)
    registry.block("postnorm", components.postnorm)
    registry.attention("mha", components.mha)
    registry.ffn("swiglu", components.swiglu)
    registry.ffn("silu", components.silu)
    registry.ffn("relu2", components.relu2)
    registry.norm("rmsnorm", components.rmsnorm)
    registry.norm("none", components.no_norm)
    registry.position("rope", components.rope)
    registry.position("nope", components.nope)
