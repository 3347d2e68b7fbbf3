"""``modulm plot``: loss curves read from metrics.jsonl, drawn one colour per run, written as an image."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import modulm
from modulm.cli import main
from modulm.errors import ModulmError
from modulm.plot import plot_runs, read_curves, run_names

pytest.importorskip("matplotlib")

losses = st.floats(0.01, 20.0)


def write_run(directory, train, val, tokens_per_step=10, seconds_per_step=0.5):
    """A run directory whose metrics.jsonl holds ``train`` and ``val`` ({step: loss}) events."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, curve in (("train", train), ("eval", val)):
        for step, loss in curve.items():
            row = {"event": kind, "step": step, "tokens": step * tokens_per_step, "elapsed": step * seconds_per_step}
            row["loss" if kind == "train" else "val_loss"] = loss
            rows.append(row)
    rows.sort(key=lambda r: r["step"])
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def lines_by_label(figure):
    (axes,) = figure.axes
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train=st.dictionaries(st.integers(0, 500), losses, min_size=1, max_size=20),
       val=st.dictionaries(st.integers(0, 500), losses, max_size=5),
       x=st.sampled_from(["steps", "time", "tokens"]))
def test_figure_has_one_line_per_curve_with_the_logged_points(tmp_path_factory, train, val, x):
    run = write_run(tmp_path_factory.mktemp("run"), train, val)
    figure = plot_runs([run], x=x)
    lines = lines_by_label(figure)
    assert len(lines) == 1 + bool(val)
    scale = {"steps": 1, "time": 0.5, "tokens": 10}[x]
    assert lines[f"{run.name} train"] == ([s * scale for s in sorted(train)], [train[s] for s in sorted(train)])
    if val:
        assert lines[f"{run.name} val"] == ([s * scale for s in sorted(val)], [val[s] for s in sorted(val)])


def test_two_runs_four_lines_and_a_png(tmp_path):
    a = write_run(tmp_path / "base", {0: 5.5, 10: 4.0, 20: 3.0}, {10: 4.2, 20: 3.4})
    b = write_run(tmp_path / "no_rope", {0: 5.5, 10: 4.5, 20: 3.8}, {10: 4.7, 20: 4.0})
    figure = plot_runs([a, b], log=True)
    lines = lines_by_label(figure)
    assert sorted(lines) == ["base train", "base val", "no_rope train", "no_rope val"]
    assert figure.axes[0].get_yscale() == "log"
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert sorted(legend) == sorted(lines)
    colours = {label: line.get_color() for line in figure.axes[0].get_lines() for label in [line.get_label()]}
    assert colours["base train"] == colours["base val"] != colours["no_rope train"]

    out = tmp_path / "ablation.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--log", "--x", "tokens"]) == 0
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    pixels = imread(out)
    assert pixels.ndim == 3 and pixels.std() > 0  # not a blank image


def test_a_resumed_run_keeps_the_latest_value_of_a_repeated_step(tmp_path):
    run = write_run(tmp_path / "r", {0: 5.0, 1: 4.0, 2: 3.0}, {})
    with (run / "metrics.jsonl").open("a") as fh:  # resumed from step 1: step 2 logged again
        fh.write(json.dumps({"event": "train", "step": 2, "loss": 2.5, "tokens": 20, "elapsed": 1.0}) + "\n")
        fh.write(json.dumps({"event": "train", "step": 3, "loss": float("nan"), "tokens": 30, "elapsed": 1.5}) + "\n")
    assert read_curves(run).train == {0: 5.0, 1: 4.0, 2: 2.5}


def test_same_named_runs_are_told_apart_by_path(tmp_path):
    runs = [write_run(tmp_path / p / "run", {0: 1.0}, {}) for p in ("x", "y")]
    assert run_names(runs) == [str(r) for r in runs]
    assert run_names([tmp_path / "x" / "run", write_run(tmp_path / "other", {0: 1.0}, {})]) == ["run", "other"]


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "p.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    run = write_run(tmp_path / "r", {0: 1.0}, {})
    assert main(["plot", str(run), "--out", str(tmp_path / "missing" / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text("{not json\n")
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 2
    assert "metrics.jsonl:1: not a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["plot", "compare"])
@pytest.mark.parametrize("out,message", [("p.xyz", "the suffix names the image format; choose one of"),
                                         ("p", "the suffix names the image format"),
                                         ("folder", "is a directory; give an image file")])
def test_an_image_path_matplotlib_cannot_write_is_refused_before_any_output(tmp_path, capsys, command, out, message):
    run = write_run(tmp_path / "r", {0: 1.0}, {0: 1.5})
    (tmp_path / "folder").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    option = "--out" if command == "plot" else "--plot"
    assert main([command, str(run), option, str(tmp_path / out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"modulm: error: {option} ") and message in lines[0]
    assert captured.out == ""  # compare prints no table before refusing
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_last_line_cut_short_is_skipped_and_a_line_that_is_not_an_object_is_an_error(tmp_path, capsys):
    run = write_run(tmp_path / "r", {0: 3.0, 1: 2.0}, {1: 2.5})
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"event": "train", "step": 2, "lo')  # a run killed mid-write
    assert read_curves(run).train == {0: 3.0, 1: 2.0} and read_curves(run).val == {1: 2.5}
    for junk in ("[1, 2]", '"train"', "{cut"):
        lines = (run / "metrics.jsonl").read_text().splitlines()[:3]
        (run / "metrics.jsonl").write_text("\n".join(lines[:1] + [junk] + lines[1:]) + "\n")
        assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 2
        assert capsys.readouterr().err.strip() == f"modulm: error: {run / 'metrics.jsonl'}:2: not a JSON object"
    (run / "metrics.jsonl").write_bytes(b'{"event": "train", "step": 0, "loss": 1.0}\n\xff\n')
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 2
    assert "metrics.jsonl: not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_a_step_that_is_not_a_number_is_dropped(tmp_path):
    run = write_run(tmp_path / "r", {0: 3.0}, {})
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "train", "step": "two", "loss": 2.0, "tokens": 20, "elapsed": 1.0}) + "\n")
    assert read_curves(run).train == {0: 3.0}


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    run = write_run(tmp_path / "r", {0: 1.0}, {})
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ModulmError, match=r"pip install 'modulm\[plot\]'"):
        plot_runs([run])


def test_plot_of_two_real_runs(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.integers(0, 64, 5_000, dtype=np.uint16))
    np.save(tmp_path / "val.npy", rng.integers(0, 64, 1_000, dtype=np.uint16))
    runs = []
    for name, lr in (("lr-small", 1e-3), ("lr-large", 1e-2)):
        recipe = {
            "data": {"component": "memmap", "train": str(tmp_path / "train.npy"), "val": str(tmp_path / "val.npy"),
                     "vocab_size": 64},
            "model": {"context_length": 8, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32},
            "optimizer": {"lr": lr},
            "training": {"batch_size": 4, "max_iterations": 6},
            "checkpointing": {"checkpoint_dir": str(tmp_path / name)},
            "logging": {"log_interval": 2, "eval_interval": 3},
            "system": {"device": "cpu"},
        }
        modulm.Trainer(modulm.assemble(recipe)).run()
        runs.append(tmp_path / name)
    out = tmp_path / "runs.png"
    assert main(["plot", *map(str, runs), "--out", str(out), "--x", "time"]) == 0
    assert out.stat().st_size > 1000
    lines = lines_by_label(plot_runs(runs, x="time"))
    assert sorted(lines) == ["lr-large train", "lr-large val", "lr-small train", "lr-small val"]
    assert lines["lr-small train"][0] == sorted(lines["lr-small train"][0])  # elapsed grows
