"""The registered ``bpe`` tokenizer component: recipe parameters, training, files, misuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError
from modulm.kinds import Tokenizer as TokenizerProtocol
from modulm_bpe import BPETokenizer, Tokenizer
from tests.bpe_support import corpus_slice

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text(corpus_slice("tinystories_v2_train_head2M.txt", 100_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def component(corpus):
    return BPETokenizer(vocab_size=350, special_tokens=[EOT], num_workers=1).train([corpus])


def test_registered_with_its_recipe_parameters(registry):
    entry = registry.get("tokenizer", "bpe")
    assert entry.factory is BPETokenizer and entry.plugin == "bpe"
    params = {p.name: p for p in entry.schema.params}
    assert list(params) == ["vocab_size", "special_tokens", "path", "num_workers"]
    assert params["vocab_size"].default == 10000 and params["special_tokens"].default == [EOT]
    assert entry.schema.injected == ()
    assert entry.doc.startswith("Byte-level BPE")


def test_untrained_component_refuses_to_encode():
    untrained = BPETokenizer()
    assert not untrained.is_trained
    assert untrained.special_tokens == [EOT]
    for use in (lambda: untrained.encode("x"), lambda: untrained.decode([1]), lambda: untrained.vocab_size,
                lambda: untrained.save("/tmp/never")):
        with pytest.raises(ModulmError, match="not trained") as info:
            use()
        assert "\n" not in str(info.value)


def test_trained_component_keeps_the_tokenizer_contract(component):
    assert component.is_trained
    assert isinstance(component, TokenizerProtocol)
    assert component.vocab_size == 350 and component.special_tokens == [EOT]
    ids = component.encode(f"Once upon a time{EOT}")
    assert ids[-1] == 0 and component.decode(ids) == f"Once upon a time{EOT}"
    assert list(component.encode_iterable(["Once up", "on a time", EOT])) == ids
    assert component.token_bytes(ids[0]) == component.tokenizer.token_bytes(ids[0])


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=100))
def test_component_round_trip(component, text):
    assert component.decode(component.encode(text)) == text


def test_save_then_load_by_path_and_classmethod(component, tmp_path):
    component.save(tmp_path / "tok")
    by_path = BPETokenizer(path=str(tmp_path / "tok"))
    by_load = BPETokenizer.load(tmp_path / "tok")
    assert by_path == component and by_load == component
    assert by_path.fingerprint() == component.fingerprint() == Tokenizer.load(tmp_path / "tok").fingerprint()


def test_parallel_component_training_matches(corpus, component):
    parallel = BPETokenizer(vocab_size=350, special_tokens=[EOT], num_workers=2).train(corpus)
    assert parallel == component


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 200}, "too small"),
    ({"special_tokens": [EOT, EOT]}, "given twice"),
    ({"special_tokens": [""]}, "non-empty"),
    ({"path": "/nonexistent/tokenizer"}, "directory not found"),
])
def test_bad_parameters_are_one_line_errors(kwargs, message):
    with pytest.raises(ModulmError, match=message) as info:
        BPETokenizer(**kwargs)
    assert "\n" not in str(info.value)


def test_training_on_a_missing_file(tmp_path):
    with pytest.raises(ModulmError, match="input file not found"):
        BPETokenizer(vocab_size=300).train([tmp_path / "missing.txt"])
