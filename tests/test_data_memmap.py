"""The memmap source: opening and validating token files, the cached id check, the DataSource contract."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError
from modulm.kinds import DataSource
from modulm_data import MemmapSource, checks
from modulm_data.checks import check_file_for, check_ids, token_stats
from modulm_data.tokenfile import NpyWriter, open_token_file


def _npy(path, values, dtype=np.uint16):
    np.save(path, np.asarray(values, dtype=dtype))
    return path


# -- opening -----------------------------------------------------------------------------------
def test_open_npy_is_memory_mapped(tmp_path):
    path = _npy(tmp_path / "t.npy", range(10))
    array = open_token_file(path)
    assert isinstance(array, np.memmap) and array.dtype == np.uint16
    assert array.tolist() == list(range(10))


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32", "int64"])
def test_open_raw_bin_with_explicit_dtype(tmp_path, dtype):
    path = tmp_path / "t.bin"
    np.arange(7, dtype=dtype).tofile(path)
    array = open_token_file(path, dtype)
    assert isinstance(array, np.memmap) and array.tolist() == list(range(7))


@pytest.mark.parametrize(
    "make,dtype,message",
    [
        (lambda p: None, "auto", "token file not found"),
        (lambda p: p.write_bytes(b""), "auto", "token file is empty"),
        (lambda p: np.save(p, np.zeros(0, np.uint16)), "auto", r"empty \(0 tokens\)"),
        (lambda p: np.save(p, np.zeros((2, 3), np.uint16)), "auto", "must be 1-D"),
        (lambda p: np.save(p, np.zeros(4, np.float32)), "auto", "holds float32"),
        (lambda p: np.save(p, np.zeros(4, np.uint32)), "uint16", "dtype mismatch: the file holds uint32"),
        (lambda p: p.write_bytes(b"not an npy file at all"), "auto", "not a valid .npy file"),
        (lambda p: p.mkdir(), "auto", "is a directory"),
    ],
)
def test_bad_npy_files_give_one_line_errors(tmp_path, make, dtype, message):
    path = tmp_path / "t.npy"
    make(path)
    with pytest.raises(ModulmError, match=message) as info:
        open_token_file(path, dtype)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_raw_files_need_a_matching_dtype(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"\x01\x00\x02\x00\x03\x00")
    with pytest.raises(ModulmError, match="needs an explicit dtype"):
        open_token_file(path)
    with pytest.raises(ModulmError, match="not a multiple of the uint32 item size 4"):
        open_token_file(path, "uint32")
    with pytest.raises(ModulmError, match="unknown dtype 'float32'"):
        open_token_file(path, "float32")


@given(values=st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=300), dtype=st.sampled_from(["uint16", "uint32"]))
def test_npy_writer_round_trips_in_chunks(tmp_path_factory, values, dtype):
    path = tmp_path_factory.mktemp("w") / "out.npy"
    with NpyWriter(path, dtype) as writer:
        for start in range(0, len(values), 37):
            writer.write(values[start : start + 37])
    loaded = np.load(path)
    assert loaded.dtype == dtype and loaded.tolist() == values


def test_npy_writer_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with NpyWriter(tmp_path / "out.npy", "uint16") as writer:
            writer.write([1, 2, 3])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# -- the id check and its cache ----------------------------------------------------------------
@given(values=st.lists(st.integers(0, 999), min_size=1, max_size=200), vocab=st.integers(1, 1000))
def test_check_ids_names_the_first_bad_id_and_offset(tmp_path_factory, values, vocab):
    path = _npy(tmp_path_factory.mktemp("c") / "t.npy", values)
    bad = [i for i, v in enumerate(values) if v >= vocab]
    if not bad:
        assert check_ids(path, open_token_file(path), vocab).max_id == max(values)
        return
    expected = f"token id {values[bad[0]]} at offset {bad[0]} >= vocab_size {vocab}"
    with pytest.raises(ModulmError, match=expected):
        check_ids(path, open_token_file(path), vocab)


def test_check_ids_reads_in_chunks_and_reports_negative_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "CHUNK_TOKENS", 8)
    values = list(range(50))
    values[37] = -4
    path = _npy(tmp_path / "t.npy", values, np.int32)
    array = open_token_file(path)
    assert token_stats(path, array, use_cache=False) == checks.TokenStats(50, -4, 49)
    with pytest.raises(ModulmError, match="token id -4 at offset 37 is negative"):
        check_ids(path, array, 100)


def test_scan_result_is_cached_beside_the_file_by_size_and_mtime(tmp_path, monkeypatch):
    path = _npy(tmp_path / "t.npy", [1, 2, 3, 9])
    scans = []
    real = checks.iter_chunks
    monkeypatch.setattr(checks, "iter_chunks", lambda *a, **k: (scans.append(1), real(*a, **k))[1])
    assert check_ids(path, open_token_file(path), 10).max_id == 9
    assert check_file_for(path).exists() and len(scans) == 1
    assert json.loads(check_file_for(path).read_text())["stats"]["max_id"] == 9
    check_ids(path, open_token_file(path), 10)
    assert len(scans) == 1  # paid once
    _npy(path, [1, 2, 3, 12])  # same size, new content and mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(ModulmError, match="token id 12 at offset 3 >= vocab_size 10"):
        check_ids(path, open_token_file(path), 10)
    assert len(scans) >= 2


def test_unwritable_directory_still_checks(tmp_path, monkeypatch):
    path = _npy(tmp_path / "t.npy", [1, 2, 3])

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(checks, "write_json_atomic", refuse)
    assert check_ids(path, open_token_file(path), 4).length == 3
    assert not check_file_for(path).exists()


# -- the source --------------------------------------------------------------------------------
@pytest.fixture
def source(tmp_path):
    _npy(tmp_path / "train.npy", np.arange(200) % 50)
    _npy(tmp_path / "val.npy", np.arange(60) % 50)
    return MemmapSource(str(tmp_path / "train.npy"), 50, val=str(tmp_path / "val.npy"), seed=3)


def test_memmap_source_keeps_the_contract(source):
    assert isinstance(source, DataSource)
    assert source.splits == ("train", "val") and source.vocab_size == 50 and source.tokenizer is None
    assert len(source.tokens("val")) == 60 and source.bytes_per_token("train") is None
    for split in source.splits:
        inputs, targets = source.get_batch(split, 4, 16, "cpu")
        assert inputs.shape == (4, 16) and inputs.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert any("200 tokens" in line for line in source.describe())


def test_memmap_source_state_round_trip_reproduces_batches(source, tmp_path):
    source.get_batch("train", 2, 8, "cpu")
    saved = source.state_dict()
    expected = [source.get_batch("train", 2, 8, "cpu") for _ in range(3)]
    other = MemmapSource(str(tmp_path / "train.npy"), 50, val=str(tmp_path / "val.npy"), seed=99)
    other.load_state_dict(saved)
    for inputs, _ in expected:
        assert torch.equal(inputs, other.get_batch("train", 2, 8, "cpu")[0])


def test_evaluation_draws_do_not_shift_training_batches(source, tmp_path):
    twin = MemmapSource(str(tmp_path / "train.npy"), 50, val=str(tmp_path / "val.npy"), seed=3)
    source.get_batch("val", 8, 8, "cpu")
    assert torch.equal(source.get_batch("train", 4, 8, "cpu")[0], twin.get_batch("train", 4, 8, "cpu")[0])


def test_memmap_source_validates_before_training(source, tmp_path):
    source.validate(59)
    with pytest.raises(ModulmError, match=r"val split has 60 tokens, too few for context_length 60 \(needs at least 61\)"):
        source.validate(60)
    _npy(tmp_path / "bad_val.npy", [1, 2, 3, 77, 50])
    with pytest.raises(ModulmError, match="bad_val.npy: token id 77 at offset 3 >= vocab_size 60"):
        MemmapSource(str(tmp_path / "train.npy"), 60, val=str(tmp_path / "bad_val.npy"))
    with pytest.raises(ModulmError, match="missing.npy: token file not found"):
        MemmapSource(str(tmp_path / "missing.npy"), 50)
    with pytest.raises(ModulmError, match="no 'test' split"):
        source.tokens("test")
    with pytest.raises(ModulmError, match="sampler state"):
        MemmapSource(str(tmp_path / "train.npy"), 50).load_state_dict(source.state_dict())


def test_memmap_is_registered_and_builds_from_a_recipe_table(registry, tmp_path):
    from modulm.assemble import create

    path = _npy(tmp_path / "t.bin.npy", range(30))
    data = create(registry, "data", {"component": "memmap", "train": str(path), "vocab_size": 30}, seed=1, cache_dir=None)
    assert isinstance(data, MemmapSource) and data.splits == ("train",)
    assert registry.get("data", "memmap").plugin == "data"


# -- resident memory ---------------------------------------------------------------------------
RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    from modulm_data import MemmapSource

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    before = rss()
    source = MemmapSource(sys.argv[1], 50_000, seed=0)  # scans every id once
    source.validate(64)
    for _ in range(50):
        source.get_batch("train", 8, 64, "cpu")
    warm = rss()
    for _ in range(1000):
        source.get_batch("train", 8, 64, "cpu")
    print(before, warm, rss())
    """
)


def test_resident_memory_stays_flat_on_a_large_file(tmp_path):
    """A 96 MB token file: checking it and 1,050 batches (~1 MB of tokens) leave RSS flat."""
    path = tmp_path / "big.npy"
    rng = np.random.default_rng(0)
    with NpyWriter(path, np.uint16) as writer:
        for _ in range(12):
            writer.write(rng.integers(0, 50_000, size=4_000_000, dtype=np.int64))
    size = path.stat().st_size
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    before, warm, after = map(int, out.stdout.split())
    assert warm - before < size / 8, (before, warm, size)  # the file is never loaded
    assert after - warm < 2 * 2**20, (warm, after)  # and steps add nothing


def test_source_batches_are_get_batch_draws(source):
    from modulm_data import get_batch
    from modulm_data.memmap import split_seed

    generator = torch.Generator().manual_seed(split_seed(3, "train"))
    for _ in range(3):
        expected = get_batch(source.tokens("train"), 5, 9, "cpu", generator)
        got = source.get_batch("train", 5, 9, "cpu")
        assert all(torch.equal(a, b) for a, b in zip(expected, got))


# -- the same checks through `modulm run` ------------------------------------------------------
RUN_RECIPE = """
[data]
component = "memmap"
train = "tokens.npy"
vocab_size = 256

[model]
context_length = 16
d_model = 16
num_layers = 1
num_heads = 2
d_ff = 32

[training]
batch_size = 2
max_iterations = 2

[schedule]
warmup_iters = 1

[checkpointing]
checkpoint_dir = "run"
"""


@pytest.mark.parametrize(
    "make,overrides,message",
    [
        (None, [], "tokens.npy: token file not found"),
        (lambda p: p.write_bytes(b""), [], "tokens.npy: token file is empty"),
        (lambda p: _npy(p, range(10)), [], "train split has 10 tokens, too few for context_length 16 (needs at least 17)"),
        (lambda p: _npy(p, [5] * 40 + [256]), [], "token id 256 at offset 40 >= vocab_size 256"),
        (lambda p: _npy(p, range(40), np.int32), ['data.dtype="uint16"'], "dtype mismatch: the file holds int32"),
        (lambda p: np.arange(40, dtype=np.uint16).tofile(p), ['data.train="tokens.bin"'], "needs an explicit dtype"),
    ],
)
def test_bad_token_files_stop_a_run_before_it_starts(tmp_path, monkeypatch, capsys, make, overrides, message):
    """Exit 2 with one line; no run directory (only the id check's cache file may appear)."""
    from modulm.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODULM_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "recipe.toml").write_text(RUN_RECIPE)
    if make is not None:
        make(tmp_path / ("tokens.bin" if any("tokens.bin" in o for o in overrides) else "tokens.npy"))
    before = {p.name for p in tmp_path.iterdir()}
    code = main(["run", "recipe.toml", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    after = {p.name for p in tmp_path.iterdir() if not p.name.endswith(checks.CHECK_SUFFIX)}
    assert after == before
