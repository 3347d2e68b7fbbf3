"""Disk space for checkpoints, checked before a run writes anything (modulm.storage)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm import storage
from modulm.errors import ModulmError
from tests.runkit import cli, refused_before_writing, tiny_recipe, write_recipe


def test_free_bytes_is_read_from_the_nearest_existing_parent(tmp_path):
    free = storage.free_bytes(tmp_path / "not" / "yet" / "made")
    assert free is not None and abs(free - shutil.disk_usage(tmp_path).free) < 2**26


@given(interval=st.integers(0, 50), keep_last=st.integers(1, 10), max_iterations=st.integers(0, 500))
def test_periodic_checkpoints_are_at_most_keep_last_and_those_the_run_reaches(interval, keep_last, max_iterations):
    ckpt = SimpleNamespace(checkpoint_interval=interval, keep_last=keep_last)
    count = storage.kept_periodic(ckpt, max_iterations)
    assert count == (0 if interval == 0 else min(keep_last, max_iterations // interval))


def test_one_checkpoint_that_cannot_fit_is_refused_and_all_that_cannot_is_warned_of(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "free_bytes", lambda path: 100)
    with pytest.raises(ModulmError, match=r"checkpointing.checkpoint_dir: .* 100 bytes free, and one checkpoint of this "
                                          r"model takes 200 bytes"):
        storage.check_disk_space(tmp_path / "run", 200, periodic=3)
    warning, = storage.check_disk_space(tmp_path / "run", 40, periodic=1)  # 3 x 40 > 100
    assert "may keep 3 checkpoints of 40 bytes (120 bytes)" in warning and "keep_last" in warning
    only_best_and_final, = storage.check_disk_space(tmp_path / "run", 60, periodic=0)  # 2 x 60 > 100
    assert "may keep 2 checkpoints" in only_best_and_final and "keep_last" not in only_best_and_final
    assert storage.check_disk_space(tmp_path / "run", 30, periodic=1) == []  # 90 <= 100


def test_a_run_directorys_own_checkpoints_are_space_it_can_use_again(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_2.pt").write_bytes(b"x" * 150)
    (run / "checkpoint_4").mkdir()
    (run / "checkpoint_4" / "shard.distcp").write_bytes(b"x" * 50)
    (run / "training.log").write_bytes(b"x" * 1000)  # not a checkpoint: not counted
    monkeypatch.setattr(storage, "free_bytes", lambda path: 100)
    assert storage.check_disk_space(run, 300, periodic=0) != []  # 100 + 200 usable: one fits, two do not
    with pytest.raises(ModulmError):
        storage.check_disk_space(run, 301, periodic=0)


def test_modulm_run_refuses_a_disk_too_small_for_one_checkpoint_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(storage, "free_bytes", lambda path: 1000)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    refused_before_writing(capsys, tmp_path, ["run", path],
                           f"checkpointing.checkpoint_dir: {tmp_path / 'run'} is on a file system with 1000 bytes free",
                           "parameters and optimizer state")


def test_modulm_run_warns_of_a_disk_too_small_for_every_checkpoint_and_trains(tmp_path, capsys, monkeypatch):
    from modulm.plugins import load
    from modulm.preflight import meta_model
    from modulm.recipe import recipe_from_dict, validate
    from modulm.strategy import training_state_memory

    recipe = tiny_recipe(tmp_path)
    bound = validate(recipe_from_dict(recipe), load().registry)
    use = training_state_memory(meta_model(bound, 64), bound["optimizer"], False, 1)
    monkeypatch.setattr(storage, "free_bytes", lambda path: 2 * (use.parameters + use.optimizer))
    code, _, err = cli(capsys, "run", write_recipe(tmp_path, recipe))
    assert code == 0
    # checkpoint_interval 2 of 4 iterations, keep_last 3: two periodic, the best and the final
    assert any(line.startswith("modulm: warning: checkpointing.checkpoint_dir: the run may keep 4 checkpoints")
               for line in err), err


# -- the cache directory --------------------------------------------------------------------------

def test_an_unusable_cache_directory_falls_back_to_the_temporary_directory_once(tmp_path, monkeypatch, capsys):
    from modulm import fileio

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(fileio.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(fileio, "_CACHE_FALLBACKS_SAID", set())
    monkeypatch.setenv("MODULM_CACHE_DIR", str(blocker / "cache"))
    first, second = fileio.cache_dir(), fileio.cache_dir()
    assert first == second and first.parent == tmp_path / "tmp" and first.name.startswith("modulm-cache-")
    assert not (tmp_path / "tmp").exists()  # asking writes nothing: the first cache write makes it
    err = capsys.readouterr().err.splitlines()
    assert err == [f"modulm: warning: cannot use the cache directory {blocker / 'cache'} (Not a directory); "
                   f"caching in {first} instead (set MODULM_CACHE_DIR to choose)"]  # said once


def test_a_usable_cache_directory_is_used_and_not_made_until_written(tmp_path, monkeypatch, capsys):
    from modulm import fileio

    monkeypatch.setenv("MODULM_CACHE_DIR", str(tmp_path / "deep" / "cache"))
    assert fileio.cache_dir() == tmp_path / "deep" / "cache" and not (tmp_path / "deep").exists()
    monkeypatch.delenv("MODULM_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fileio.cache_dir() == tmp_path / "home" / ".cache" / "modulm"
    assert capsys.readouterr().err == ""
