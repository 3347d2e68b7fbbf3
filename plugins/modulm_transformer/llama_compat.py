"""What a Hugging Face ``LlamaForCausalLM`` cannot express of the modern transformer options.

Llama's config has no field for logit soft-capping or for a norm on queries and keys, and its RMSNorm
always has a gain; a model using any of these cannot be exported as Llama. (The zero-out init and the
Muon optimizer change only how training starts and moves, so such a model exports as usual.)
"""

from __future__ import annotations

from typing import Any, Mapping


def _component(spec: Any) -> str:
    return spec.get("component", "") if isinstance(spec, Mapping) else str(spec)


def llama_incompatibilities(model_recipe: Mapping[str, Any]) -> list[str]:
    """One phrase per option of this resolved ``[model]`` table that Llama has no field for."""
    problems = []
    cap = model_recipe.get("logit_softcap", 0.0) or 0.0
    if cap:
        problems.append(f"model.logit_softcap = {cap} (Llama has no logit soft-capping)")
    attention = model_recipe.get("attention", {})
    qk_norm = attention.get("qk_norm", "none") if isinstance(attention, Mapping) else "none"
    if _component(qk_norm) != "none":
        problems.append(f"model.attention.qk_norm = {_component(qk_norm)!r} (Llama has no QK-norm)")
    norm = model_recipe.get("norm", {})
    if isinstance(norm, Mapping) and norm.get("gain", True) is False:
        problems.append("model.norm.gain = false (Llama's RMSNorm always has a gain)")
    return problems
