"""The exporter and the tokenizer of the acme test plugin."""

import json
from pathlib import Path


class NpzExporter:
    """The transformer's weights as one numpy archive (weights.npz) and its vocabulary size."""

    models = ("transformer",)

    def problems(self, model_table):
        return [] if model_table.get("num_layers", 0) >= 1 else ["acme-npz needs at least one layer"]

    def export(self, source, out_dir):
        import numpy as np

        arrays = {name.replace(".", "__"): t.detach().cpu().float().numpy() for name, t in source.weights.items()}
        np.savez(Path(out_dir) / "weights.npz", **arrays)
        (Path(out_dir) / "acme.json").write_text(json.dumps({"vocab_size": source.vocab_size}), encoding="utf-8")
        return ["weights.npz", "acme.json"]


class ByteTokenizer:
    """One token per UTF-8 byte (vocab_size 256), no special tokens."""

    vocab_size = 256
    special_tokens: list = []

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")

    def encode_iterable(self, lines):
        for line in lines:
            yield from self.encode(line)

    def save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "acme-bytes.json").write_text('{"kind": "acme-bytes"}', encoding="utf-8")

    @classmethod
    def load(cls, directory):
        from modulm.errors import ModulmError

        if not (Path(directory) / "acme-bytes.json").is_file():
            raise ModulmError(f"{directory}: not an acme-bytes tokenizer (no acme-bytes.json)")
        return cls()
