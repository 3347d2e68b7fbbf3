"""``[search]``: an Optuna study whose trials are sweep points run by the same :class:`Runner`.

Each trial is a point ``trial=N`` with its sampled values as overrides. Its objective is the final
held-out loss. While it trains, every periodic validation loss the child logs is reported to the
trial; when the pruner says so the child gets SIGTERM (it saves a checkpoint) and the trial is
recorded as pruned. A diverged or failed run is a failed trial. The study lives in SQLite
(``<sweep_dir>/optuna.db``): run the same command again and it continues, resuming a trial that was
stopped mid-way from its checkpoint.
"""

from __future__ import annotations

from typing import Any

from modulm.errors import ModulmError
from modulm.sweep.runner import Runner, final_eval
from modulm.sweep.spec import Dimension, trial_point

INSTALL_HINT = "[search] needs Optuna: pip install 'modulm[optuna]'"
STORAGE = "optuna.db"


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ModulmError(INSTALL_HINT) from None
    return optuna


def suggest(trial, dim: Dimension) -> Any:
    low, high = (dim.values + (None, None))[:2]
    if dim.kind == "log_uniform":
        return trial.suggest_float(dim.key, low, high, log=True)
    if dim.kind == "uniform":
        return trial.suggest_float(dim.key, low, high)
    if dim.kind == "int":
        return trial.suggest_int(dim.key, low, high)
    return trial.suggest_categorical(dim.key, list(dim.values))


def open_study(runner: Runner):
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    search = runner.spec.search
    sampler = (optuna.samplers.TPESampler(seed=search.seed) if search.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=search.seed))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3) if search.pruner == "median" else optuna.pruners.NopPruner()
    runner.sweep_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(study_name=runner.spec.name, storage=f"sqlite:///{runner.sweep_dir / STORAGE}",
                               sampler=sampler, pruner=pruner, direction="minimize", load_if_exists=True)


def run_search(runner: Runner) -> dict[str, dict]:
    """Run trials until the study holds ``trials`` ended ones (or a stop signal); return the outcomes."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    study = open_study(runner)
    search = runner.spec.search
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    outcomes: dict[str, dict] = {}
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # stopped mid-way last time
    queue = [(optuna.trial.Trial(study, frozen._trial_id), dict(frozen.params)) for frozen in stale]
    while runner.stop_signal is None:
        done = len(study.get_trials(deepcopy=False, states=ended))
        if queue:
            trial, params = queue.pop(0)
        elif done < search.trials:
            trial = study.ask()
            params = {key: suggest(trial, dim) for key, dim in search.space.items()}
        else:
            break
        point = trial_point(runner.spec, trial.number, params)

        def monitor(step: int, loss: float, trial=trial) -> bool:
            trial.report(loss, step)
            return trial.should_prune()

        result = runner.run([point], monitors={point.run_id: monitor}, total=search.trials, done_before=done)
        outcome = result.get(point.run_id) or runner.state.point(point.run_id)
        status = outcome.get("status")
        if status == "finished":
            evaluation = final_eval(runner.run_dir(point)) or {}
            study.tell(trial, evaluation.get("val_loss", float("nan")))
        elif status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif status in ("diverged", "failed"):
            study.tell(trial, state=TrialState.FAIL)
        else:  # interrupted: it stays RUNNING in the study and resumes next time
            break
        outcomes[point.run_id] = outcome
    return outcomes


def best_line(runner: Runner) -> str | None:
    study = open_study(runner)
    try:
        best = study.best_trial
    except ValueError:
        return None
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    return f"best: trial={best.number} val loss {best.value:.4f} ({params})"
