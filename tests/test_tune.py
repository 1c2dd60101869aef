"""Optuna sweeps: spec errors before anything runs, shared storage across workers, pruning, resume, child experiment."""
from __future__ import annotations

import json
import sqlite3

import optuna
import pytest
import yaml

from conftest import run_cli

SMOKE_SPACE = "tune.space={model.dropout: {float: [0.0, 0.5]}}"


def tune(exp, input_dir, *args, check=True):
    return run_cli("src.tune", exp, "--input", input_dir, "--smoke", "--set", "train.workers=1", *args,
                   check=check)


@pytest.mark.parametrize("space,message", [
    ("{model.topn: {int: [1, 3]}}", "tune.space.model.topn: unknown key 'model.topn'"),
    ("{model.selection: {int: [1, 3]}}", "a int distribution does not fit the key's type"),
    ("{model.dropout: {int: [0, 1]}}", "a int distribution does not fit the key's type (float)"),
    ("{decoder.name: {categorical: [threshold, argmax]}}", "value 'argmax' is not accepted"),
    ("{model.dropout: {float: [0.5, 0.1]}}", "low 0.5 is above high 0.1"),
    ("{adapt.coral_weight: {float: [0, 10], log: true}}", "log scale needs low > 0"),
    ("{model.dropout: {uniform: [0, 1]}}", "expected one of {int: [low, high]}"),
    ("{}", "tune.space is empty"),
])
def test_bad_spec_is_one_line_before_anything_runs(shared_dataset, space, message):
    proc = tune("exp042", shared_dataset, "--set", f"tune.space={space}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--trials", "0"], "--trials 0: must be >= 1"),
    (["--workers", "0"], "--workers 0: must be >= 1"),
    (["--timeout", "-5"], "--timeout -5.0: must be > 0"),
    (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open"),
])
def test_bad_option_is_one_line(make_dataset, exp_root, args, message):
    data = make_dataset()
    proc = tune("exp042", data, *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (exp_root / "exp042_rank_topn_coral" / "output" / f"{data.name}@tune").exists()  # nothing written


def test_two_workers_share_a_study_then_resume_and_child_runs(make_dataset, exp_root):
    data = make_dataset()
    proc = tune("exp042", data, "--set", SMOKE_SPACE, "--trials", "4", "--workers", "2")
    folder = exp_root / "exp042_rank_topn_coral" / "output" / f"{data.name}@tune" / f"exp042-{data.name}-smoke"
    with sqlite3.connect(folder / "study.db") as db:
        rows = db.execute("select t.number, p.param_value from trials t join trial_params p using (trial_id) "
                          "where t.state = 'COMPLETE'").fetchall()
    assert len(rows) == 4 and len({v for _, v in rows}) == 4, rows
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trials"] == {"COMPLETE": 4} and summary["fresh_seed"]["seed"] == 1000
    assert (folder / "trials.csv").is_file() and (folder / "optimization_history.png").is_file()
    child = exp_root / summary["child_experiment"]
    body = yaml.safe_load((child / "config.yaml").read_text())
    assert body["parent"] == "exp042" and body["model"]["dropout"] == summary["best_params"]["model.dropout"]
    assert body["train"]["workers"] == 1 and "best trial" in body["note"]
    run_cli("src.main", child.name[:6], "--input", data, "--smoke", "--quiet")
    assert (child / "output" / f"{data.name}@smoke" / "metrics.json").is_file()

    first = {r[0]: r[1] for r in rows}
    tune("exp042", data, "--set", SMOKE_SPACE, "--trials", "5", "--no-confirm")
    with sqlite3.connect(folder / "study.db") as db:
        again = dict(db.execute("select t.number, p.param_value from trials t join trial_params p "
                                "using (trial_id) where t.state = 'COMPLETE'").fetchall())
    assert len(again) == 5 and {k: again[k] for k in first} == first
    assert json.loads((folder / "summary.json").read_text())["child_experiment"] == child.name


def test_a_bad_trial_is_pruned(make_dataset, exp_root):
    data = make_dataset()
    study_name = "prune"
    folder = exp_root / "exp042_rank_topn_coral" / "output" / f"{data.name}@tune" / study_name
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize")
    study.enqueue_trial({"train.lr": 0.01})
    study.enqueue_trial({"train.lr": 1e-7})  # untrained: worse than the first trial at every step
    tune("exp042", data, "--set", "tune.space={train.lr: {float: [1.0e-7, 0.01], log: true}}",
         "--set", "tune.startup_trials=1", "--study", study_name, "--trials", "2", "--no-confirm")
    states = [t.state for t in optuna.load_study(study_name=study_name, storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
