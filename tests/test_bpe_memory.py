"""encode_iterable keeps memory bounded: a multi-MB file is encoded under an address-space limit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from modulm_bpe import Tokenizer, train_bpe
from tests.bpe_support import corpus_slice, corpus_text

EOT = "<|endoftext|>"

# Runs in a fresh process: load the tokenizer, cap the address space at what is mapped now plus
# HEADROOM, then stream the file. Whole-text encoding of this input needs hundreds of MB.
CHILD = textwrap.dedent("""
    import json, resource, sys
    from modulm_bpe import Tokenizer

    directory, path, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tokenizer = Tokenizer.load(directory)
    tokenizer.encode("warm up the code paths <|endoftext|> once")
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, resource.RLIM_INFINITY))
    count = checksum = 0
    with open(path, encoding="utf-8") as handle:
        for token_id in tokenizer.encode_iterable(handle):
            count += 1
            checksum = (checksum * 31 + token_id) % 1000000007
    print(json.dumps({"count": count, "checksum": checksum}))
""")
HEADROOM = 16 << 20  # streaming needs < 8 MB here; whole-text encoding needs > 48 MB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and RLIMIT_AS (Linux)")
def test_encode_iterable_streams_a_multi_megabyte_file_in_bounded_memory(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_slice("tinystories_v2_train_head2M.txt", 100_000), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 400, [EOT], num_workers=1)
    tokenizer = Tokenizer(vocab, merges, [EOT])
    tokenizer.save(tmp_path / "tok")
    text = corpus_text("tinystories_v2_train_head2M.txt") * 3  # ~6 MB
    big = tmp_path / "big.txt"
    big.write_text(text, encoding="utf-8")

    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "tok"), str(big), str(HEADROOM)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    streamed = json.loads(result.stdout)

    ids = tokenizer.encode(text)
    checksum = 0
    for token_id in ids:
        checksum = (checksum * 31 + token_id) % 1000000007
    assert streamed == {"count": len(ids), "checksum": checksum}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and RLIMIT_AS (Linux)")
def test_the_limit_is_tight_enough_to_catch_whole_file_encoding(tmp_path):
    # The same cap makes a non-streaming encode of the same input fail, so the test above can fail.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_slice("tinystories_v2_train_head2M.txt", 100_000), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 400, [EOT], num_workers=1)
    Tokenizer(vocab, merges, [EOT]).save(tmp_path / "tok")
    big = tmp_path / "big.txt"
    big.write_text(corpus_text("tinystories_v2_train_head2M.txt") * 3, encoding="utf-8")
    greedy = CHILD.replace("tokenizer.encode_iterable(handle)", "tokenizer.encode(handle.read())")
    result = subprocess.run([sys.executable, "-c", greedy, str(tmp_path / "tok"), str(big), str(HEADROOM)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "MemoryError" in result.stderr
