"""Shared by the modulm.testing kit tests: the built-in registry and small data."""

from pathlib import Path

import numpy as np

from modulm.testing.pytest_plugin import builtin_plugin_manager

REGISTRY = builtin_plugin_manager().registry
TINY_MODEL = {"context_length": 8, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32}
TEXT = ("Once upon a time there was a cat.<|endoftext|>The dog ran home! Héllo wörld 🙂<|endoftext|>\n") * 30


def write_tokens(directory: Path, vocab: int = 50) -> dict[str, str]:
    rng = np.random.default_rng(0)
    for split, size in (("train", 1500), ("val", 400)):
        np.save(directory / f"{split}.npy", rng.integers(0, vocab, size, dtype=np.uint16))
    return {"train": str(directory / "train.npy"), "val": str(directory / "val.npy")}
