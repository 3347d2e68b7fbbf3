"""modulm built-in plugin ``transformer``: the CS336 Transformer LM and each of its parts.

Every part is registered under its kind so a recipe can swap it (see docs/components.md); the
``hf-llama`` and ``safetensors`` exporters write a trained model for other tools. The classes
below are imported on first use, so loading the plugin does not import torch.
"""

from modulm import hookimpl
from modulm.lazy import lazy_attributes

_HOMES = {
    "CausalSelfAttention": "modulm_transformer.attention",
    "Embedding": "modulm_transformer.layers",
    "Identity": "modulm_transformer.norms",
    "KVCache": "modulm_transformer.cache",
    "Linear": "modulm_transformer.layers",
    "NoPositionalEmbedding": "modulm_transformer.position",
    "PostNormBlock": "modulm_transformer.blocks",
    "PreNormBlock": "modulm_transformer.blocks",
    "ReLU2FFN": "modulm_transformer.ffn",
    "RMSNorm": "modulm_transformer.norms",
    "RotaryPositionalEmbedding": "modulm_transformer.position",
    "SiLUFFN": "modulm_transformer.ffn",
    "SwiGLU": "modulm_transformer.ffn",
    "TransformerLM": "modulm_transformer.model",
    "transformer": "modulm_transformer.model",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_attributes(__name__, _HOMES)

_PARTS = "modulm_transformer.components:"


@hookimpl
def modulm_register_components(registry):
    registry.model("transformer", "modulm_transformer.model:transformer")
    registry.block("prenorm", _PARTS + "prenorm")
    registry.block("postnorm", _PARTS + "postnorm")
    registry.attention("mha", _PARTS + "mha")
    registry.ffn("swiglu", _PARTS + "swiglu")
    registry.ffn("silu", _PARTS + "silu_ffn")
    registry.ffn("relu2", _PARTS + "relu2")
    registry.norm("rmsnorm", _PARTS + "rmsnorm")
    registry.norm("none", _PARTS + "no_norm")
    registry.position("rope", _PARTS + "rope")
    registry.position("nope", _PARTS + "nope")
    registry.exporter("hf-llama", "modulm_transformer.export:HFLlamaExporter")
    registry.exporter("safetensors", "modulm_transformer.export:SafetensorsExporter")
