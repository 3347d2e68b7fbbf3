"""Export a trained model to Hugging Face ``LlamaForCausalLM`` or to plain safetensors, and back.

``export_hf_llama(checkpoint, out_dir)`` writes ``config.json``, ``model.safetensors`` and the
run's tokenizer files; ``export_safetensors(checkpoint, out_dir)`` writes ``model.safetensors``
(modulm's own tensor names) and the resolved recipe; ``load_exported(directory, registry)``
rebuilds a modulm model from either.

modulm's RoPE rotates adjacent pairs ``(x[2i], x[2i+1])``; Llama's rotates the two halves
``(x[i], x[i + d/2])`` of each head. Permuting each head's rows of ``W_q`` and ``W_k`` by
``[0, 2, 4, ..., 1, 3, 5, ...]`` turns one into the other: queries and keys come out permuted the
same way, so every attention score — and so the whole model — is unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from modulm.errors import ModulmError

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "recipe.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens.json")
FORMATS = ("hf-llama", "safetensors")

# The only part choices Llama can express, and what each refused alternative is called.
LLAMA_PARTS = {"block": "prenorm", "attention": "mha", "ffn": "swiglu", "norm": "rmsnorm", "position": "rope"}


def require_safetensors():
    """The ``safetensors.torch`` module, or a ModulmError naming the pip extra."""
    try:
        import safetensors.torch
    except ImportError:
        raise ModulmError("export needs the safetensors package: pip install 'modulm[export]'") from None
    return safetensors.torch


def _component(spec: Any) -> str:
    return spec.get("component", "") if isinstance(spec, Mapping) else str(spec)


def read_run_checkpoint(checkpoint: str | Path) -> tuple[dict, dict, int]:
    """``(model state dict, resolved model recipe, vocab_size)`` from a checkpoint written by a run."""
    from modulm.checkpoint import read_checkpoint

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ModulmError(f"{checkpoint}: checkpoint not found")
    state = read_checkpoint(checkpoint)
    recipe = state.get("recipe") or {}
    vocab_size = (state.get("meta") or {}).get("vocab_size")
    if "model" not in recipe or vocab_size is None or "model" not in state:
        raise ModulmError(f"{checkpoint}: has no model, resolved recipe or vocab size; was it written by modulm run?")
    weights = {_strip_wrappers(k): v for k, v in state["model"].items()}
    return weights, recipe, int(vocab_size)


def _strip_wrappers(key: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def llama_problems(model_recipe: Mapping[str, Any]) -> list[str]:
    """Why this resolved ``[model]`` table cannot be a Llama model (empty when it can)."""
    if _component(model_recipe) != "transformer":
        return [f"model {_component(model_recipe)!r} is not the built-in transformer"]
    problems = []
    for part, wanted in LLAMA_PARTS.items():
        got = _component(model_recipe.get(part, wanted))
        if got != wanted:
            problems.append(f"model.{part} = {got!r} (Llama needs {wanted!r})")
    if model_recipe["d_model"] % model_recipe["num_heads"]:
        problems.append("model.d_model is not divisible by model.num_heads")
    return problems + _plugin_problems(model_recipe)


def _plugin_problems(model_recipe: Mapping[str, Any]) -> list[str]:
    """What the model's own plugin says Llama cannot express (its factory's ``llama_incompatibilities``)."""
    from modulm.plugins import load

    factory = load().registry.get("model", _component(model_recipe)).factory
    check = getattr(factory, "llama_incompatibilities", None)
    return list(check(model_recipe)) if check is not None else []


def llama_config(model_recipe: Mapping[str, Any], vocab_size: int, d_ff: int) -> dict[str, Any]:
    """The ``config.json`` of the ``LlamaForCausalLM`` equal to this resolved ``[model]`` table."""
    norm = model_recipe.get("norm", {})
    eps = norm.get("eps", 1e-5) if isinstance(norm, Mapping) else 1e-5
    d_model, num_heads = int(model_recipe["d_model"]), int(model_recipe["num_heads"])
    theta = float(model_recipe.get("rope_theta", 10000.0))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": d_model,
        "intermediate_size": d_ff,
        "num_hidden_layers": int(model_recipe["num_layers"]),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "head_dim": d_model // num_heads,
        "max_position_embeddings": int(model_recipe["context_length"]),
        "hidden_act": "silu",
        "rms_norm_eps": float(eps),
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": bool(model_recipe.get("tie_embeddings", False)),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def pairs_to_halves(weight, num_heads: int):
    """Reorder each head's output rows from adjacent-pair RoPE layout to Llama's half layout."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, in_features).transpose(1, 2).reshape(out_features, in_features)


def halves_to_pairs(weight, num_heads: int):
    """Inverse of :func:`pairs_to_halves`."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    return weight.reshape(num_heads, 2, head_dim // 2, in_features).transpose(1, 2).reshape(out_features, in_features)


def _llama_names(num_layers: int) -> dict[str, str]:
    """modulm tensor name -> Llama tensor name."""
    names = {"token_embeddings.weight": "model.embed_tokens.weight", "ln_final.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(num_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        names.update({
            ours + "attn.q_proj.weight": theirs + "self_attn.q_proj.weight",
            ours + "attn.k_proj.weight": theirs + "self_attn.k_proj.weight",
            ours + "attn.v_proj.weight": theirs + "self_attn.v_proj.weight",
            ours + "attn.output_proj.weight": theirs + "self_attn.o_proj.weight",
            ours + "ln1.weight": theirs + "input_layernorm.weight",
            ours + "ln2.weight": theirs + "post_attention_layernorm.weight",
            ours + "ffn.w1.weight": theirs + "mlp.gate_proj.weight",
            ours + "ffn.w3.weight": theirs + "mlp.up_proj.weight",
            ours + "ffn.w2.weight": theirs + "mlp.down_proj.weight",
        })
    return names


def to_llama_state_dict(weights: Mapping[str, Any], model_recipe: Mapping[str, Any]) -> dict[str, Any]:
    """modulm transformer weights renamed and RoPE-permuted for ``LlamaForCausalLM``.

    With tied embeddings only ``model.embed_tokens.weight`` is kept (Llama ties the head on load).
    """
    names = _llama_names(int(model_recipe["num_layers"]))
    missing = sorted(set(names) - set(weights))
    unexpected = sorted(set(weights) - set(names))
    if missing or unexpected:
        raise ModulmError(f"weights do not match the transformer layout: missing {missing[:3]}, unexpected {unexpected[:3]}")
    num_heads = int(model_recipe["num_heads"])
    out = {}
    for ours, theirs in names.items():
        tensor = weights[ours].detach().cpu()
        if ours.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            tensor = pairs_to_halves(tensor, num_heads)
        out[theirs] = tensor.contiguous().clone()
    if model_recipe.get("tie_embeddings", False):
        del out["lm_head.weight"]
    return out


def from_llama_state_dict(tensors: Mapping[str, Any], model_recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_llama_state_dict` (a tied head is restored from the embedding)."""
    num_heads = int(model_recipe["num_heads"])
    tensors = dict(tensors)
    if "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    weights = {}
    for ours, theirs in _llama_names(int(model_recipe["num_layers"])).items():
        if theirs not in tensors:
            raise ModulmError(f"{WEIGHTS_FILE}: missing tensor {theirs!r}")
        tensor = tensors[theirs]
        if ours.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            tensor = halves_to_pairs(tensor, num_heads)
        weights[ours] = tensor
    return weights


def _prepare_out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModulmError(f"{out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> list[str]:
    """Copy the GPT-2/HF-layout tokenizer files that exist; return the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)
            copied.append(name)
    if {"vocab.json", "merges.txt"} <= set(copied):
        specials = []
        if (tokenizer_dir / "special_tokens.json").is_file():
            loaded = json.loads((tokenizer_dir / "special_tokens.json").read_text(encoding="utf-8"))
            specials = loaded if isinstance(loaded, list) else list(loaded.get("special_tokens", []))
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                  "additional_special_tokens": [t for t in specials if isinstance(t, str)]}
        if specials and isinstance(specials[0], str):
            config.update(bos_token=specials[0], eos_token=specials[0], unk_token=specials[0])
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        copied.append("tokenizer_config.json")
    return copied


def export_hf_llama(checkpoint: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> list[str]:
    """Write a ``LlamaForCausalLM`` directory for a run's checkpoint; return the files written.

    Refuses (ModulmError) a model whose parts Llama cannot express.
    """
    st = require_safetensors()
    weights, recipe, vocab_size = read_run_checkpoint(checkpoint)
    model_recipe = recipe["model"]
    problems = llama_problems(model_recipe)
    if problems:
        raise ModulmError(f"{checkpoint}: cannot export to hf-llama: " + "; ".join(problems))
    tensors = to_llama_state_dict(weights, model_recipe)
    d_ff = int(weights["layers.0.ffn.w1.weight"].shape[0]) if model_recipe["num_layers"] else 0
    out_dir = _prepare_out_dir(out_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else Path(checkpoint).parent / "tokenizer"
    tokenizer_files = copy_tokenizer(tokenizer_dir, out_dir)
    config = llama_config(model_recipe, vocab_size, d_ff)
    end_of_text = _first_special_id(out_dir)
    if end_of_text is not None:  # lets transformers' generate() stop at the end of a document
        config.update(bos_token_id=end_of_text, eos_token_id=end_of_text)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    st.save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    return ["config.json", WEIGHTS_FILE, *tokenizer_files]


def _first_special_id(out_dir: Path) -> int | None:
    """The id of the tokenizer's first special token (``<|endoftext|>``), if one was exported."""
    config_path, vocab_path = out_dir / "tokenizer_config.json", out_dir / "vocab.json"
    if not config_path.is_file() or not vocab_path.is_file():
        return None
    token = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token")
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    return vocab.get(token) if isinstance(token, str) and isinstance(vocab.get(token), int) else None


def export_safetensors(checkpoint: str | Path, out_dir: str | Path) -> list[str]:
    """Write the checkpoint's weights (modulm names) and its resolved recipe; return the files written."""
    st = require_safetensors()
    weights, recipe, vocab_size = read_run_checkpoint(checkpoint)
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in weights.items()}
    if recipe["model"].get("tie_embeddings", False):
        tensors.pop("token_embeddings.weight", None)  # one storage: restored from lm_head on load
    out_dir = _prepare_out_dir(out_dir)
    st.save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt", "vocab_size": str(vocab_size)})
    document = {"vocab_size": vocab_size, "recipe": recipe}
    (out_dir / RECIPE_FILE).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return [WEIGHTS_FILE, RECIPE_FILE]


def model_recipe_from_llama_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved ``[model]`` table equal to a Llama ``config.json`` (multi-head attention only)."""
    heads = config["num_attention_heads"]
    if config.get("num_key_value_heads", heads) != heads or config.get("hidden_act", "silu") != "silu":
        raise ModulmError("config.json: only Llama models with num_key_value_heads == num_attention_heads and silu load")
    if config.get("head_dim", config["hidden_size"] // heads) * heads != config["hidden_size"]:
        raise ModulmError("config.json: head_dim * num_attention_heads must equal hidden_size")
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    return {
        "component": "transformer", "context_length": config["max_position_embeddings"],
        "d_model": config["hidden_size"], "num_layers": config["num_hidden_layers"], "num_heads": heads,
        "d_ff": config["intermediate_size"], "rope_theta": float(theta),
        "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
        "norm": {"component": "rmsnorm", "eps": float(config.get("rms_norm_eps", 1e-5))},
    }


def load_exported(directory: str | Path, registry):
    """A modulm model (eval mode) rebuilt from a directory written by either export format."""
    from modulm.assemble import builder

    st = require_safetensors()
    directory = Path(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModulmError(f"{directory}: no {WEIGHTS_FILE}; is it a modulm export?")
    tensors = st.load_file(str(weights_path))
    if (directory / RECIPE_FILE).is_file():
        document = json.loads((directory / RECIPE_FILE).read_text(encoding="utf-8"))
        model_recipe, vocab_size = document["recipe"]["model"], int(document["vocab_size"])
        if "token_embeddings.weight" not in tensors:
            tensors["token_embeddings.weight"] = tensors["lm_head.weight"]
    elif (directory / "config.json").is_file():
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        model_recipe, vocab_size = model_recipe_from_llama_config(config), int(config["vocab_size"])
        tensors = from_llama_state_dict(tensors, model_recipe)
    else:
        raise ModulmError(f"{directory}: neither {RECIPE_FILE} nor config.json found")
    model = builder(registry, "model", model_recipe, source=str(directory))(vocab_size=vocab_size)
    model.load_state_dict(tensors)
    return model.eval()
