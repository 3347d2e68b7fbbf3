"""The one checkpoint reader: every bad file is one line naming it, in every command that reads one."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modulm.checkpoint import check_model_state, read_checkpoint
from modulm.errors import ModulmError
from tests.runkit import cli, one_error_line, snapshot, tiny_recipe, write_recipe


class Unsafe:
    """A class a weights_only load refuses to import."""


def _good(path: Path) -> Path:
    torch.save({"format": 1, "model": {"w": torch.zeros(3)}, "iteration": 2}, path)
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)."""
    good = _good(tmp_path / "good.pt").read_bytes()
    files = {
        "missing": (tmp_path / "missing.pt", "checkpoint not found"),
        "empty": (tmp_path / "empty.pt", "empty file (0 bytes)"),
        "truncated": (tmp_path / "truncated.pt", "truncated or damaged"),
        "text": (tmp_path / "notes.pt", "a text file, not a checkpoint"),
        "directory": (tmp_path / "adir.pt", "is a directory"),
        "bare state dict": (tmp_path / "weights.pt", "not a modulm checkpoint: it holds a bare state dict"),
        "a tensor": (tmp_path / "tensor.pt", "not a modulm checkpoint: it holds a Tensor"),
        "unsafe pickle": (tmp_path / "unsafe.pt", "refused as unsafe"),
        "plain pickle": (tmp_path / "plain.pt", "refused as unsafe"),
        "binary junk": (tmp_path / "junk.pt", "not a torch checkpoint (unknown binary format)"),
        "zip not torch": (tmp_path / "archive.pt", "a zip archive but not a torch checkpoint"),
    }
    files["empty"][0].write_bytes(b"")
    files["truncated"][0].write_bytes(good[: len(good) // 2])
    files["text"][0].write_text("[data]\ncomponent = 'memmap'\n")
    files["directory"][0].mkdir()
    torch.save({"w": torch.zeros(2), "b": torch.ones(1)}, files["bare state dict"][0])
    torch.save(torch.zeros(2), files["a tensor"][0])
    torch.save({"model": {}, "iteration": 0, "evil": Unsafe()}, files["unsafe pickle"][0])
    files["plain pickle"][0].write_bytes(pickle.dumps({"model": {}, "iteration": 0}))
    files["binary junk"][0].write_bytes(bytes(range(256)) * 4)
    import zipfile
    with zipfile.ZipFile(files["zip not torch"][0], "w") as archive:
        archive.writestr("readme.txt", "hello")
    return files


def test_each_kind_of_bad_file_is_one_line_naming_the_file(tmp_path):
    for name, (path, expected) in _bad_files(tmp_path).items():
        with pytest.raises(ModulmError) as caught:
            read_checkpoint(path)
        message = str(caught.value)
        assert "\n" not in message, name
        assert message.startswith(str(path)), (name, message)
        assert expected in message, (name, message)
        assert "weights_only" not in message, (name, message)  # never suggest weights_only=False


def test_unsafe_names_what_it_would_import(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": {}, "iteration": 0, "evil": Unsafe()}, path)
    with pytest.raises(ModulmError, match=r"refused as unsafe: .*Unsafe"):
        read_checkpoint(path)


def test_a_good_file_and_a_stream_read(tmp_path):
    path = _good(tmp_path / "good.pt")
    assert read_checkpoint(path)["iteration"] == 2
    with path.open("rb") as fh:
        assert read_checkpoint(fh)["iteration"] == 2
    assert read_checkpoint(path, mmap=True)["model"]["w"].shape == (3,)


def test_a_newer_format_asks_for_an_upgrade(tmp_path):
    torch.save({"format": 99, "model": {}, "iteration": 0}, tmp_path / "new.pt")
    with pytest.raises(ModulmError, match="newer modulm"):
        read_checkpoint(tmp_path / "new.pt")


def test_different_shapes_name_the_first_differing_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check_model_state(state, model, "ok.pt")  # the same shapes pass
    state["0.weight"] = torch.zeros(5, 4)
    state["extra"] = torch.zeros(1)
    del state["1.bias"]
    with pytest.raises(ModulmError) as caught:
        check_model_state(state, model, "other.pt")
    message = str(caught.value)
    assert message.startswith("other.pt: the checkpoint is of a different model")
    assert "0.weight is (5, 4) in the checkpoint, (3, 4) in this model" in message
    assert "missing 1.bias" in message and "unexpected extra" in message


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished tiny run: (root, run directory)."""
    from modulm.assemble import assemble
    from modulm.trainer import Trainer

    root = tmp_path_factory.mktemp("reader")
    Trainer(assemble(tiny_recipe(root))).run()
    return root, root / "run"


@pytest.mark.parametrize("command", ["generate", "export", "info", "run --resume"])
def test_every_command_that_reads_a_checkpoint_says_the_same_one_line(tmp_path, capsys, trained_run, command):
    root, _ = trained_run
    recipe = write_recipe(tmp_path, tiny_recipe(root, checkpointing={"checkpoint_dir": str(tmp_path / "new")}))
    for name, (path, expected) in _bad_files(tmp_path).items():
        if command == "generate":
            args = ["generate", path, "--max-tokens", "1"]
        elif command == "export":
            args = ["export", path, tmp_path / "out", "--format", "safetensors"]
        elif command == "info":
            if path.suffix != ".pt":
                continue
            args = ["info", path]
        else:
            args = ["run", recipe, "--resume", path]
        before = snapshot(tmp_path)
        code, _, err = cli(capsys, *args)
        assert code == 2, (name, err)
        if name in ("missing", "directory") and command == "run --resume":
            one_error_line(err, str(path))
        else:
            one_error_line(err, str(path), expected)
        assert snapshot(tmp_path) == before, name  # nothing written: no export dir, no run dir


def test_generate_refuses_a_checkpoint_whose_tensors_do_not_match_its_recipe(tmp_path, capsys, trained_run):
    _, run = trained_run
    state = read_checkpoint(run / "final_checkpoint.pt")
    state["model"]["token_embeddings.weight"] = torch.zeros(64, 48)
    torch.save(state, tmp_path / "edited.pt")
    code, _, err = cli(capsys, "generate", tmp_path / "edited.pt", "--tokenizer", tmp_path)
    assert code == 2
    one_error_line(err, "edited.pt: the checkpoint is of a different model",
                   "token_embeddings.weight is (64, 48) in the checkpoint, (64, 32) in this model")


def test_info_reports_a_checkpoint_through_the_reader(capsys, trained_run):
    _, run = trained_run
    code, out, err = cli(capsys, "info", run / "final_checkpoint.pt")
    assert code == 0, err
    assert "vocab_size 64" in out


@given(cut=st.integers(min_value=0, max_value=10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_damage_to_a_checkpoint_is_a_one_line_error_or_a_load(tmp_path_factory, cut, flips):
    """Cut short anywhere and with bytes flipped anywhere, a checkpoint either still loads or gives
    one line naming the file: never another exception, never a traceback."""
    root = tmp_path_factory.mktemp("damage")
    good = root / "good.pt"
    torch.save({"format": 1, "model": {"w": torch.arange(64.0)}, "iteration": 5, "meta": {"loss": 1.0}}, good)
    data = bytearray(good.read_bytes())
    data = data[: cut % (len(data) + 1)]
    for where, xor in flips:
        if data:
            data[where % len(data)] ^= xor
    damaged = root / "damaged.pt"
    damaged.write_bytes(bytes(data))
    for mmap in (False, True):
        try:
            state = read_checkpoint(damaged, mmap=mmap)
        except ModulmError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(damaged))
        else:
            assert isinstance(state, dict) and "model" in state
