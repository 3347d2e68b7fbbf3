"""modulm.testing.check_exporter: passes the built-in exporters, catches broken ones."""

from __future__ import annotations

import pytest

from modulm.testing import check_exporter
from modulm_transformer.export import SafetensorsExporter

TINY = {"context_length": 8, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32}


@pytest.mark.parametrize("name", ["hf-llama", "safetensors"])
def test_the_builtin_exporters_pass_with_a_tiny_model(modulm_pm, name):
    pytest.importorskip("safetensors")
    check_exporter(name, model_config=TINY, registry=modulm_pm.registry)


class ListsAFileItDidNotWrite(SafetensorsExporter):
    def export(self, source, out_dir):
        return [*super().export(source, out_dir), "tokenizer.json"]


class WritesAFileItDoesNotList(SafetensorsExporter):
    def export(self, source, out_dir):
        (out_dir / "notes.txt").write_text("x")
        return super().export(source, out_dir)


class ModelsIsAString(SafetensorsExporter):
    models = "transformer"


class ProblemsIsAString(SafetensorsExporter):
    def problems(self, model_table):
        return "fine"


@pytest.mark.parametrize("broken, message", [
    (ListsAFileItDidNotWrite, "listed 'tokenizer.json' but wrote no such file"),
    (WritesAFileItDoesNotList, r"wrote files it did not return: \['notes.txt'\]"),
    (ModelsIsAString, "not a non-empty sequence of model component names"),
    (ProblemsIsAString, "not a list of strings"),
])
def test_broken_exporters_fail_naming_the_rule(modulm_pm, broken, message):
    pytest.importorskip("safetensors")
    with pytest.raises(AssertionError, match=message):
        check_exporter(broken, model_config=TINY, registry=modulm_pm.registry)
