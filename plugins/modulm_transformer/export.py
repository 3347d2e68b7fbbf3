"""The transformer's exporters: Hugging Face ``LlamaForCausalLM`` (``hf-llama``) and plain
safetensors (``safetensors``), and :func:`load_exported` to read either back.

``hf-llama`` writes ``config.json``, ``model.safetensors`` and the run's tokenizer files;
``safetensors`` writes ``model.safetensors`` (modulm's own tensor names) and the resolved recipe.

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
from modulm.export import ExportSource, model_name, prepare_out_dir, read_run_checkpoint
from modulm_transformer.llama_compat import llama_incompatibilities

__all__ = ["HFLlamaExporter", "SafetensorsExporter", "export_hf_llama", "export_safetensors", "load_exported",
           "llama_problems", "pairs_to_halves", "halves_to_pairs"]

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "recipe.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens.json")

# The only part choices Llama can express, and what each refused alternative is called.
LLAMA_PARTS = {"block": "prenorm", "attention": "mha", "ffn": "swiglu", "norm": "rmsnorm", "position": "rope"}


def require_safetensors():
    """The ``safetensors.torch`` module, or a ModulmError naming the pip extra."""
    try:
        import safetensors.torch
    except ImportError:
        raise ModulmError("export needs the safetensors package: pip install 'modulm[export]'") from None
    return safetensors.torch


def llama_problems(model_recipe: Mapping[str, Any]) -> list[str]:
    """Why this resolved ``[model]`` table cannot be a Llama model (empty when it can)."""
    if model_name(model_recipe) != "transformer":
        return [f"model {model_name(model_recipe)!r} is not the built-in transformer"]
    problems = []
    for part, wanted in LLAMA_PARTS.items():
        got = model_name(model_recipe.get(part, wanted))
        if got != wanted:
            problems.append(f"model.{part} = {got!r} (Llama needs {wanted!r})")
    if model_recipe["d_model"] % model_recipe["num_heads"]:
        problems.append("model.d_model is not divisible by model.num_heads")
    return problems + llama_incompatibilities(model_recipe)


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


def _first_special_id(out_dir: Path) -> int | None:
    """The id of the tokenizer's first special token (``<|endoftext|>``), if one was exported."""
    config_path, vocab_path = out_dir / "tokenizer_config.json", out_dir / "vocab.json"
    if not config_path.is_file() or not vocab_path.is_file():
        return None
    token = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token")
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    return vocab.get(token) if isinstance(token, str) and isinstance(vocab.get(token), int) else None


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


class HFLlamaExporter:
    """A Hugging Face ``LlamaForCausalLM`` directory: config.json, model.safetensors, tokenizer files."""

    models = ("transformer",)

    def problems(self, model_table: Mapping[str, Any]) -> list[str]:
        return llama_problems(model_table)

    def export(self, source: ExportSource, out_dir: Path) -> list[str]:
        st = require_safetensors()
        model_recipe = source.model_table
        tensors = to_llama_state_dict(source.weights, model_recipe)
        d_ff = int(source.weights["layers.0.ffn.w1.weight"].shape[0]) if model_recipe["num_layers"] else 0
        tokenizer_files = copy_tokenizer(source.tokenizer_dir, out_dir) if source.tokenizer_dir else []
        config = llama_config(model_recipe, source.vocab_size, d_ff)
        end_of_text = _first_special_id(out_dir)
        if end_of_text is not None:  # lets transformers' generate() stop at the end of a document
            config.update(bos_token_id=end_of_text, eos_token_id=end_of_text)
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        st.save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        return ["config.json", WEIGHTS_FILE, *tokenizer_files]


class SafetensorsExporter:
    """The weights under modulm's own names (model.safetensors) and the resolved recipe (recipe.json)."""

    models = ("transformer",)

    def problems(self, model_table: Mapping[str, Any]) -> list[str]:
        return []

    def export(self, source: ExportSource, out_dir: Path) -> list[str]:
        st = require_safetensors()
        tensors = {name: t.detach().cpu().contiguous().clone() for name, t in source.weights.items()}
        if source.model_table.get("tie_embeddings", False):
            tensors.pop("token_embeddings.weight", None)  # one storage: restored from lm_head on load
        st.save_file(tensors, str(out_dir / WEIGHTS_FILE),
                     metadata={"format": "pt", "vocab_size": str(source.vocab_size)})
        document = {"vocab_size": source.vocab_size, "recipe": source.recipe}
        (out_dir / RECIPE_FILE).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        return [WEIGHTS_FILE, RECIPE_FILE]


def _export_with(exporter, checkpoint: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None) -> list[str]:
    weights, recipe, vocab_size = read_run_checkpoint(checkpoint)
    require_safetensors()
    problems = exporter.problems(recipe["model"])
    if problems:
        raise ModulmError(f"{checkpoint}: cannot export: " + "; ".join(problems))
    source = ExportSource(Path(checkpoint), weights, recipe, vocab_size, Path(tokenizer_dir) if tokenizer_dir else None)
    return exporter.export(source, prepare_out_dir(out_dir))


def export_hf_llama(checkpoint: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> list[str]:
    """Write a ``LlamaForCausalLM`` directory for a run's checkpoint; return the files written.

    ``tokenizer_dir`` defaults to ``tokenizer/`` beside the checkpoint. Refuses (ModulmError) a
    model whose parts Llama cannot express. ``modulm export`` does the same through the registry.
    """
    return _export_with(HFLlamaExporter(), checkpoint, out_dir, tokenizer_dir or Path(checkpoint).parent / "tokenizer")


def export_safetensors(checkpoint: str | Path, out_dir: str | Path) -> list[str]:
    """Write the checkpoint's weights (modulm names) and its resolved recipe; return the files written."""
    return _export_with(SafetensorsExporter(), checkpoint, out_dir, None)
