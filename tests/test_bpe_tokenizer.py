"""The Tokenizer: GPT-2 parity with tiktoken, round trips, special tokens, streaming, files, errors."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError
from modulm_bpe import GPT2_PATTERN, Tokenizer, train_bpe
from modulm_bpe.files import bytes_to_unicode, read_merges, read_vocab
from tests.bpe_support import corpus_slice, gpt2_files

EOT = "<|endoftext|>"
DOUBLE = EOT + EOT

UNICODE_SAMPLES = [
    "", " ", "  ", "\n", "\n\n\n", " \t \n ", "a", "hello world", "Hello, world! It's 12:30.",
    "don't won't I'll you've we're she'd I'm 'S 'LL", "tab\tseparated\tvalues\r\nwindows",
    "naïve café résumé Ω≈ç√ ß", "日本語のテキスト、句読点。", "한국어 텍스트", "עברית ערבית العربية",
    "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷", "combining e\u0301 a\u0308", "nbsp\u00a0here and\u2003em space",
    "numbers 1234567890 ١٢٣ ⅷ", "   leading and trailing   ", "x" * 300, "\u0000\x01\x7f control",
    f"before{EOT}after", f"{EOT}", f"{EOT}{EOT} twice", f"a {EOT}\n{EOT} b",
]


# -- GPT-2 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    vocab_path, merges_path = gpt2_files(tmp_path_factory.mktemp("gpt2"))
    return Tokenizer.from_files(vocab_path, merges_path, special_tokens=[EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {token: token_id for token_id, token in gpt2.vocab.items() if token_id != 50256}
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


def test_gpt2_files_load_as_they_are(gpt2):
    assert gpt2.vocab_size == 50257
    assert len(gpt2.merges) == 50000
    assert gpt2.special_token_ids == {EOT: 50256}
    assert gpt2.token_bytes(50256) == EOT.encode()


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_gpt2_parity_on_samples(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("name", ["tinystories_v2_train_head2M.txt", "pydocs_3.11.txt", "tinyshakespeare.txt"])
def test_gpt2_parity_on_the_shipped_corpora(gpt2, tiktoken_gpt2, name):
    text = corpus_slice(name, 150_000)
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tinystories_v2_train_head2M.txt", "pydocs_3.11.txt", "tinyshakespeare.txt"])
def test_gpt2_parity_on_whole_corpora(gpt2, tiktoken_gpt2, name):
    from tests.bpe_support import corpus_text

    text = corpus_text(name)
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_gpt2_parity_on_arbitrary_text(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_save_writes_the_same_files(gpt2, tmp_path):
    gpt2.save(tmp_path)
    (tmp_path / "orig").mkdir()
    original_vocab, original_merges = gpt2_files(tmp_path / "orig")
    assert json.loads((tmp_path / "vocab.json").read_text("utf-8")) == json.loads(original_vocab.read_text("utf-8"))
    assert read_merges(tmp_path / "merges.txt") == read_merges(original_merges)
    assert Tokenizer.load(tmp_path) == gpt2


# -- the handout's encoding example --------------------------------------------------------------

def test_handout_encoding_example():
    vocab = {0: b" ", 1: b"a", 2: b"c", 3: b"e", 4: b"h", 5: b"t", 6: b"th", 7: b" c", 8: b" a", 9: b"the", 10: b" at"}
    others = [bytes([b]) for b in range(256) if bytes([b]) not in vocab.values()]
    vocab.update({11 + i: token for i, token in enumerate(others)})
    merges = [(b"t", b"h"), (b" ", b"c"), (b" ", b"a"), (b"th", b"e"), (b" a", b"t")]
    tokenizer = Tokenizer(vocab, merges)
    assert tokenizer.encode("the cat ate") == [9, 7, 1, 5, 10, 3]
    assert tokenizer.decode([9, 7, 1, 5, 10, 3]) == "the cat ate"


# -- a small trained tokenizer ----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text(corpus_slice("tinystories_v2_train_head2M.txt", 200_000), encoding="utf-8")
    vocab, merges = train_bpe(path, 600, [EOT, DOUBLE], num_workers=1)
    return Tokenizer(vocab, merges, [EOT, DOUBLE])


unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
with_specials = st.lists(unicode_text | st.sampled_from([EOT, DOUBLE, "<|endof", "text|>", " "]), max_size=8).map("".join)


@given(unicode_text)
def test_round_trip_without_special_tokens(trained, text):
    ids = trained.encode(text)
    assert all(0 <= i < trained.vocab_size for i in ids)
    assert trained.decode(ids) == text


@given(with_specials)
def test_round_trip_with_special_tokens(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_special_tokens_are_never_split_and_longest_wins(trained):
    eot, double = trained.special_token_ids[EOT], trained.special_token_ids[DOUBLE]
    ids = trained.encode(f"a{EOT}{EOT}{EOT}b")
    assert ids.count(double) == 1 and ids.count(eot) == 1
    assert ids.index(double) < ids.index(eot)
    assert trained.encode(EOT) == [eot]
    assert trained.encode("") == []


def test_a_tokenizer_without_special_tokens_splits_them_as_text(trained):
    plain = Tokenizer(trained.vocab, trained.merges)
    ids = plain.encode(EOT)
    assert len(ids) > 1 and plain.decode(ids) == EOT


def test_missing_special_tokens_are_appended(trained):
    tokenizer = Tokenizer(trained.vocab, trained.merges, [EOT, DOUBLE, "<pad>"])
    assert tokenizer.special_token_ids["<pad>"] == trained.vocab_size
    assert tokenizer.vocab_size == trained.vocab_size + 1
    assert tokenizer.encode("x<pad>")[-1] == trained.vocab_size


@given(with_specials, st.lists(st.integers(1, 9), min_size=1, max_size=10))
def test_encode_iterable_equals_encode(trained, text, sizes):
    pieces, i, k = [], 0, 0
    while i < len(text):
        pieces.append(text[i:i + sizes[k % len(sizes)]])
        i, k = i + sizes[k % len(sizes)], k + 1
    assert list(trained.encode_iterable(iter(pieces))) == trained.encode(text)


def test_encode_iterable_over_a_file_handle(trained):
    text = corpus_slice("tinystories_v2_train_head2M.txt", 300_000)
    stream = trained.encode_iterable(io.StringIO(text))
    assert next(stream) == trained.encode(text)[0]  # lazy: the first id comes before the rest
    assert [trained.encode(text)[0], *stream] == trained.encode(text)


def test_decode_replaces_invalid_utf8(trained):
    inverse = {token: token_id for token_id, token in trained.vocab.items()}
    first_half = inverse[b"\xe2"]
    assert trained.decode([first_half]) == "\ufffd"
    assert trained.decode([inverse[b"a"], first_half, inverse[b"b"]]) == "a\ufffdb"
    assert trained.decode([]) == ""


def test_decode_accepts_arrays(trained):
    numpy = pytest.importorskip("numpy")
    ids = trained.encode("Once upon a time")
    assert trained.decode(numpy.array(ids, dtype=numpy.uint16)) == "Once upon a time"


# -- files --------------------------------------------------------------------------------------

def test_save_and_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["merges.txt", "special_tokens.json", "vocab.json"]
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded == trained
    assert loaded.vocab == trained.vocab and loaded.merges == trained.merges
    assert loaded.special_tokens == [EOT, DOUBLE]
    assert loaded.fingerprint() == trained.fingerprint()
    text = f"Lily saw a dog.{EOT}Then"
    assert loaded.encode(text) == trained.encode(text)
    assert read_vocab(tmp_path / "tok" / "vocab.json") == trained.vocab


def test_fingerprint_depends_on_every_part(trained):
    fingerprints = {
        trained.fingerprint(),
        Tokenizer(trained.vocab, trained.merges, [EOT]).fingerprint(),
        Tokenizer(trained.vocab, trained.merges[:-1], [EOT, DOUBLE]).fingerprint(),
    }
    assert len(fingerprints) == 3
    again = Tokenizer(dict(reversed(list(trained.vocab.items()))), trained.merges, [EOT, DOUBLE])
    assert again.fingerprint() == trained.fingerprint()
    assert len(trained.fingerprint()) == 64


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord(" ")] == "\u0120" and table[ord("A")] == "A"


def test_merges_file_accepts_a_version_header_and_none(tmp_path):
    (tmp_path / "a.txt").write_text("#version: 0.2\nĠ t\nh e\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Ġ t\nh e", encoding="utf-8")
    assert read_merges(tmp_path / "a.txt") == read_merges(tmp_path / "b.txt") == [(b" ", b"t"), (b"h", b"e")]


# -- errors ---------------------------------------------------------------------------------------

def byte_vocab() -> dict[int, bytes]:
    return {b: bytes([b]) for b in range(256)}


@pytest.mark.parametrize("build, message", [
    (lambda: Tokenizer({0: b"a"}, []), "lacks 255 single byte"),
    (lambda: Tokenizer(byte_vocab(), [(b"a", b"b")]), "product is not in the vocabulary"),
    (lambda: Tokenizer({**byte_vocab(), 256: b"bc", 257: b"abc"}, [(b"a", b"bc")]), "before any merge makes it"),
    (lambda: Tokenizer({**byte_vocab(), 256: ""}, []), "expected non-empty bytes"),
    (lambda: Tokenizer(byte_vocab(), [], ["x", "x"]), "given twice"),
    (lambda: Tokenizer(byte_vocab(), [], [""]), "non-empty"),
    (lambda: Tokenizer(byte_vocab(), []).decode([256]), "256 is not in the vocabulary"),
    (lambda: Tokenizer(byte_vocab(), []).decode([-1]), "-1 is not in the vocabulary"),
    (lambda: Tokenizer(byte_vocab(), []).encode(b"bytes"), "expects a str"),
    (lambda: Tokenizer(byte_vocab(), []).encode("lone \ud800"), "surrogate"),
    (lambda: list(Tokenizer(byte_vocab(), []).encode_iterable([b"x"])), "str pieces"),
    (lambda: Tokenizer.load("/nonexistent/tokenizer"), "directory not found"),
    (lambda: Tokenizer.from_files("/nonexistent/v.json", "/nonexistent/m.txt"), "file not found"),
])
def test_misuse_is_a_one_line_error(build, message):
    with pytest.raises(ModulmError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


def test_malformed_files_are_named(tmp_path):
    (tmp_path / "vocab.json").write_text('{"a": 0, "a": 1}', encoding="utf-8")
    with pytest.raises(ModulmError, match="appears twice"):
        read_vocab(tmp_path / "vocab.json")
    (tmp_path / "vocab.json").write_text('{"a": "zero"}', encoding="utf-8")
    with pytest.raises(ModulmError, match="expected an integer"):
        read_vocab(tmp_path / "vocab.json")
    (tmp_path / "merges.txt").write_text("a b c\n", encoding="utf-8")
    with pytest.raises(ModulmError, match=r"merges.txt:1: expected two tokens"):
        read_merges(tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_text("a \u4e00\n", encoding="utf-8")
    with pytest.raises(ModulmError, match="bytes-to-unicode"):
        read_merges(tmp_path / "merges.txt")
