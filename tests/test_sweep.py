"""Sweeps of tiny runs end to end: results, kill and resume, divergence, compare, plot, --jobs, Optuna."""

import csv
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modulm.cli import main
from modulm.sweep.results import collect, figure
from modulm.sweep.runner import Runner
from modulm.sweep.spec import Point, load_sweep
from tests.test_trainer import metrics, tiny_recipe, write_toml

# a/b/long/boom: two short runs, one long enough to be stopped mid-way, one that diverges
VARIANTS = """
[[variant]]
label = "a"
overrides = { "optimizer.lr" = 1e-3 }
[[variant]]
label = "b"
overrides = { "optimizer.lr" = 3e-3 }
[[variant]]
label = "long"
overrides = { "optimizer.lr" = 2e-3, "training.max_iterations" = 150, "checkpointing.checkpoint_interval" = 10 }
[[variant]]
label = "boom"
overrides = { "optimizer.lr" = 1e30, "training.grad_clip" = 0.0 }
"""


def make_sweep(tmp_path: Path, body: str, name: str = "s") -> Path:
    recipe = tiny_recipe(tmp_path)
    recipe["loggers"] = ["file", "jsonl"]
    write_toml(tmp_path, recipe)
    path = tmp_path / f"{name}.toml"
    path.write_text(f'base = "r.toml"\nname = "{name}"\n' + body)
    return path


def sweep_cli(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "modulm", "sweep", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout: float = 900) -> tuple[int, str, str]:
    """Wait for a sweep; kill it (and leave no orphan) if it outlives ``timeout``."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def fingerprint(run_dir: Path) -> dict:
    files = [run_dir / "final_checkpoint.pt", run_dir / "metrics.jsonl"]
    return {f.name: (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files}


def training(run_dir: Path) -> bool:
    try:
        return bool(metrics(run_dir))
    except (OSError, ValueError):  # not there yet, or a line half written
        return False


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The 4-point sweep, stopped by SIGTERM while "long" trains, then the same command again."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = make_sweep(tmp, VARIANTS)
    sweep_dir = tmp / "runs" / "sweeps" / "s"
    first = sweep_cli(str(path), cwd=tmp)
    deadline = time.time() + 600  # generous: on a loaded shared machine a tiny run can take a minute
    while time.time() < deadline and not training(sweep_dir / "long") and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    first_result = finish(first)
    before = {label: fingerprint(sweep_dir / label) for label in ("a", "b")}
    second_result = finish(sweep_cli(str(path), cwd=tmp))
    return {"dir": sweep_dir, "first": first_result, "second": second_result,
            "before": before, "path": path, "tmp": tmp}


def test_killed_sweep_saves_and_rerun_finishes_only_the_missing_points(killed_and_resumed):
    sweep_dir = killed_and_resumed["dir"]
    code, out, err = killed_and_resumed["first"]
    assert code == 143, err
    assert "received SIGTERM" in out and "[3/4] long: interrupted at step" in out
    assert "boom" not in out  # nothing starts after the stop
    code, out, err = killed_and_resumed["second"]
    assert code == 0, err
    assert "(2 done)" in out and "a: started" not in out and "b: started" not in out
    assert "long: resuming from checkpoint_" in out and "[3/4] long: finished" in out
    for label, prints in killed_and_resumed["before"].items():
        assert fingerprint(sweep_dir / label) == prints  # not retrained, not rewritten
    assert metrics(sweep_dir / "long")[-1]["step"] == 149


def test_diverging_point_is_marked_and_the_sweep_goes_on(killed_and_resumed):
    sweep_dir = killed_and_resumed["dir"]
    out = killed_and_resumed["second"][1]
    assert "[4/4] boom: diverged at step" in out and "1 diverged" in out
    state = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    assert state["boom"]["status"] == "diverged" and state["boom"]["step"] >= 1
    assert "loss became" in state["boom"]["message"]
    assert [state[k]["status"] for k in ("a", "b", "long")] == ["finished"] * 3


def test_results_and_compare_agree_with_each_runs_metrics(killed_and_resumed, capsys):
    sweep_dir = killed_and_resumed["dir"]
    results = list(csv.DictReader((sweep_dir / "results.csv").open()))
    assert [r["run"] for r in results] == ["a", "b", "long", "boom"]
    assert "| run | lr | max_iterations | checkpoint_interval | grad_clip | params |" in (sweep_dir / "results.md").read_text()
    assert main(["compare", str(sweep_dir), "--format", "csv", "--sort", "final_val_loss"]) == 0
    rows = {r["run"]: r for r in csv.DictReader(capsys.readouterr().out.splitlines())}
    for label in ("a", "b", "long"):
        evals, train = metrics(sweep_dir / label, "eval"), metrics(sweep_dir / label, "train")
        row = rows[label]
        assert float(row["final_val_loss"]) == evals[-1]["val_loss"]
        assert float(row["best_val_loss"]) == min(e["val_loss"] for e in evals)
        assert int(row["tokens"]) == train[-1]["tokens"] and row["status"] == "finished"
        assert float(row["train_s"]) == pytest.approx(train[-1]["elapsed"], abs=0.01)
        assert int(row["params"]) == 24736
    assert rows["boom"]["status"].startswith("diverged@") and rows["boom"]["final_val_loss"] == ""
    assert main(["compare", str(sweep_dir), "--format", "json", "--sort", "final_val_loss"]) == 0
    listed = json.loads(capsys.readouterr().out)
    losses = [r["final_val_loss"] for r in listed if r["final_val_loss"] is not None]
    assert losses == sorted(losses) and listed[-1]["run"] == "boom"


def test_plot_draws_one_validation_curve_per_run(killed_and_resumed, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    rows, differing = collect([killed_and_resumed["dir"]])
    lines = figure(rows, differing).axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == ["a", "b", "long"]  # boom never evaluated
    assert len(lines[2].get_xdata()) == len(metrics(killed_and_resumed["dir"] / "long", "eval"))
    out = tmp_path / "val.png"
    assert main(["compare", str(killed_and_resumed["dir"]), "--plot", str(out), "--x", "tokens", "--logx"]) == 0
    image = imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_jobs_2_gives_the_same_losses_as_jobs_1(killed_and_resumed):
    tmp = killed_and_resumed["tmp"]
    path = tmp / "pair.toml"
    path.write_text('base = "r.toml"\nname = "s"\n' + VARIANTS.split("[[variant]]\nlabel = \"long\"")[0])
    assert main(["sweep", str(path), "--jobs", "2", "--out", str(tmp / "jobs2")]) == 0
    for label in ("a", "b"):
        one = metrics(killed_and_resumed["dir"] / label, "eval")[-1]["val_loss"]
        two = metrics(tmp / "jobs2" / "s" / label, "eval")[-1]["val_loss"]
        assert math.isclose(one, two, rel_tol=1e-5), (label, one, two)


def test_a_pruned_point_stops_with_a_checkpoint_and_is_recorded(tmp_path):
    path = make_sweep(tmp_path, '[[variant]]\nlabel = "p"\noverrides = { "training.max_iterations" = 1000 }\n')
    runner = Runner(load_sweep(path), tmp_path / "out", out=io.StringIO())
    seen = []
    outcome = runner.run(runner.spec.points, monitors={"p": lambda step, loss: seen.append(step) or step >= 8})["p"]
    assert outcome["status"] == "pruned" and seen[:2] == [4, 8] and outcome["step"] >= 8
    assert list((tmp_path / "out" / "p").glob("checkpoint_*.pt"))
    assert runner.run(runner.spec.points) == {}  # a pruned point is done


def test_optuna_search_runs_and_resumes(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    search = '[search]\nsampler = "random"\ntrials = {n}\npruner = "none"\n[search.space]\n' \
             '"optimizer.lr" = {{ log_uniform = [1e-3, 1e-2] }}\n"model.d_ff" = {{ choice = [32, 64] }}\n'
    path = make_sweep(tmp_path, search.format(n=2))
    out = tmp_path / "sw"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    firsts = {p.name: fingerprint(p) for p in sorted((out / "s").glob("trial=*"))}
    assert sorted(firsts) == ["trial=0", "trial=1"]
    path.write_text(path.read_text().replace("trials = 2", "trials = 3"))
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[3/3] trial=2: finished" in printed and "trial=0: started" not in printed.split("trials")[-1]
    assert {name: fingerprint(out / "s" / name) for name in firsts} == firsts
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 's' / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and all(1e-3 <= t.params["optimizer.lr"] <= 1e-2 for t in complete)
    for trial in complete:
        assert trial.value == metrics(out / "s" / f"trial={trial.number}", "eval")[-1]["val_loss"]
    assert "best: trial=" in printed
