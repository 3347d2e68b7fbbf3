"""``modulm data dummy|split|inspect``: results, and bad input (exit 2, one line, nothing written).

``modulm data prepare`` needs a trained tokenizer: its tests are in tests/test_data_bpe.py.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.cli import main
from modulm.errors import ModulmError
from modulm_data.tokenfile import storage_dtype
from modulm_data.tools import make_dummy, split_tokens


def run_cli(capsys, *argv):
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, folder, argv, message):
    """Exit 2, one line on stderr naming the problem, and the folder left exactly as it was."""
    before = sorted(p.name for p in folder.iterdir())
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modulm: error: ") and message in lines[0], err
    assert sorted(p.name for p in folder.iterdir()) == before


# -- dummy -------------------------------------------------------------------------------------
def test_dummy_writes_seeded_uniform_ids(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "dummy", "--output", tmp_path / "a.npy", "--size", 5000, "--vocab-size", 70, "--seed", 4)
    assert code == 0 and "5,000 random tokens" in out
    run_cli(capsys, "dummy", "--output", tmp_path / "b.npy", "--size", 5000, "--vocab-size", 70, "--seed", 4)
    run_cli(capsys, "dummy", "--output", tmp_path / "c.npy", "--size", 5000, "--vocab-size", 70, "--seed", 5)
    a, b, c = (np.load(tmp_path / f"{n}.npy") for n in "abc")
    assert a.dtype == np.uint16 and len(a) == 5000
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) == set(range(70))


def test_dummy_uses_uint32_for_large_vocabularies(tmp_path):
    assert np.load(make_dummy(tmp_path / "d.npy", 10, 70_000)).dtype == np.uint32


def test_dummy_ids_past_uint32_are_kept_whole(tmp_path):
    """A vocabulary past 2^32 ids is stored as int64, not wrapped modulo 2^32 in uint32."""
    ids = np.load(make_dummy(tmp_path / "d.npy", 200, 2**40))
    assert ids.dtype == np.int64 and ids.max() >= 2**32 and ids.min() >= 0 and ids.max() < 2**40


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--output", "{d}/x.npy", "--size", 0, "--vocab-size", 5], "--size must be >= 1"),
        (["--output", "{d}/x.npy", "--size", 10, "--vocab-size", 0], "--vocab-size must be >= 1"),
        (["--output", "{d}/x.npy", "--size", 10, "--vocab-size", 5, "--seed", -1], "--seed must be >= 0, got -1"),
        (["--output", "{d}/nowhere/x.npy", "--size", 10, "--vocab-size", 5], "does not exist"),
        (["--output", "{d}/x.bin", "--size", 10, "--vocab-size", 5], "must end in .npy"),
    ],
)
def test_dummy_bad_input(tmp_path, capsys, argv, message):
    argv = [str(a).format(d=tmp_path) for a in argv]
    assert_user_error(capsys, tmp_path, ["dummy", *argv], message)


# -- split -------------------------------------------------------------------------------------
@given(length=st.integers(2, 3000), fraction=st.floats(0.001, 0.999), dtype=st.sampled_from(["uint16", "uint32", "int64"]))
def test_split_concatenated_equals_the_input(tmp_path_factory, length, fraction, dtype):
    folder = tmp_path_factory.mktemp("split")
    data = np.random.default_rng(length).integers(0, 60_000, size=length).astype(dtype)
    np.save(folder / "in.npy", data)
    n_val = round(length * fraction)
    if not 1 <= n_val < length:
        with pytest.raises(ModulmError, match="cannot be split"):
            split_tokens(folder / "in.npy", folder / "a.npy", folder / "b.npy", fraction)
        return
    counts = split_tokens(folder / "in.npy", folder / "a.npy", folder / "b.npy", fraction)
    train, val = np.load(folder / "a.npy"), np.load(folder / "b.npy")
    assert train.dtype == val.dtype == data.dtype
    assert np.array_equal(np.concatenate([train, val]), data)
    assert (counts.train, counts.val) == (length - n_val, n_val)


def test_split_streams_through_a_memory_map(tmp_path, capsys, monkeypatch):
    import modulm_data.tools as tools

    monkeypatch.setattr(tools, "CHUNK_TOKENS", 7)  # many chunks, never the whole array at once
    np.save(tmp_path / "in.npy", np.arange(100, dtype=np.uint16))
    code, out, _ = run_cli(capsys, "split", "--input", tmp_path / "in.npy", "--train-output", tmp_path / "a.npy",
                           "--val-output", tmp_path / "b.npy", "--val-split", 0.25)
    assert code == 0 and "75 tokens" in out and "25 tokens" in out
    assert np.load(tmp_path / "b.npy").tolist() == list(range(75, 100))


@pytest.mark.parametrize(
    "input_values,argv,message",
    [
        (None, ["--val-split", 0.1], "in.npy: token file not found"),
        (range(10), ["--val-split", 0], "--val-split must be between 0 and 1"),
        (range(10), ["--val-split", 1.5], "--val-split must be between 0 and 1"),
        (range(1), ["--val-split", 0.5], "cannot be split"),
        ("garbage", ["--val-split", 0.1], "not a valid .npy file"),
    ],
)
def test_split_bad_input(tmp_path, capsys, input_values, argv, message):
    if input_values == "garbage":
        (tmp_path / "in.npy").write_bytes(b"garbage")
    elif input_values is not None:
        np.save(tmp_path / "in.npy", np.array(list(input_values), dtype=np.uint16))
    args = ["split", "--input", tmp_path / "in.npy", "--train-output", tmp_path / "a.npy", "--val-output", tmp_path / "b.npy"]
    assert_user_error(capsys, tmp_path, args + argv, message)


@pytest.mark.parametrize("output", ["--train-output", "--val-output"])
def test_split_refuses_to_overwrite_its_input(tmp_path, capsys, output):
    np.save(tmp_path / "in.npy", np.arange(10, dtype=np.uint16))
    before = (tmp_path / "in.npy").read_bytes()
    outputs = {"--train-output": tmp_path / "a.npy", "--val-output": tmp_path / "b.npy", output: tmp_path / "in.npy"}
    args = ["split", "--input", tmp_path / "in.npy", *[str(a) for pair in outputs.items() for a in pair]]
    assert_user_error(capsys, tmp_path, args, "in.npy: the output would overwrite the input file")
    assert (tmp_path / "in.npy").read_bytes() == before


def test_split_refuses_one_output_for_both(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.arange(10, dtype=np.uint16))
    args = ["split", "--input", tmp_path / "in.npy", "--train-output", tmp_path / "a.npy", "--val-output", tmp_path / "a.npy"]
    assert_user_error(capsys, tmp_path, args, "must be different files")


# -- inspect -----------------------------------------------------------------------------------
def test_inspect_reports_length_dtype_and_id_range(tmp_path, capsys):
    np.save(tmp_path / "t.npy", np.array([5, 3, 9, 3, 1], dtype=np.uint32))
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "t.npy", "--show", 3)
    assert code == 0
    assert "tokens:  5" in out and "uint32" in out and "min 1, max 9" in out and "first 3: [5, 3, 9]" in out


def test_inspect_reads_raw_files_with_a_dtype(tmp_path, capsys):
    np.arange(6, dtype=np.int32).tofile(tmp_path / "t.bin")
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "t.bin", "--dtype", "int32")
    assert code == 0 and "raw, int32" in out and "max 5" in out


@pytest.mark.parametrize(
    "make,argv,message",
    [
        (None, [], "t.npy: token file not found"),
        ("raw", [], "needs an explicit dtype"),
        ("npy", ["--tokenizer", "{d}/no-tokenizer"], "no-tokenizer: tokenizer directory not found"),
    ],
)
def test_inspect_bad_input(tmp_path, capsys, make, argv, message):
    target = tmp_path / ("t.bin" if make == "raw" else "t.npy")
    if make == "raw":
        np.arange(4, dtype=np.uint16).tofile(target)
    elif make == "npy":
        np.save(target, np.arange(4, dtype=np.uint16))
    argv = [str(a).format(d=tmp_path) for a in argv]
    assert_user_error(capsys, tmp_path, ["inspect", target, *argv], message)


@given(st.integers(min_value=1, max_value=2**50))
def test_auto_storage_dtype_is_the_smallest_that_holds_every_id(vocab_size):
    chosen = storage_dtype(vocab_size)
    candidates = [np.dtype(t) for t in (np.uint16, np.uint32, np.int64)]
    assert np.iinfo(chosen).max >= vocab_size - 1
    assert all(np.iinfo(t).max < vocab_size - 1 for t in candidates[: candidates.index(chosen)])


def test_storage_dtype_refuses_a_too_small_dtype():
    assert storage_dtype(65_536) == np.uint16 and storage_dtype(65_537) == np.uint32
    with pytest.raises(ModulmError, match="cannot hold token ids up to 65536"):
        storage_dtype(65_537, "uint16")


def test_data_without_an_action_prints_help(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "prepare" in out and "inspect" in out
