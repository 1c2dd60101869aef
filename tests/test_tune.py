"""Optuna sweeps on SQLite: spec, data and option errors before any trial, one-line trial errors, shared storage
across workers, pruning, resume, the summary's order (choose on OOF, then test), and the child experiment."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml

from conftest import ROOT, run_cli

SMOKE_SPACE = "tune.space={model.dropout: {float: [0.0, 0.5]}}"
EXP = "exp042_rank_topn_coral"


def tune(exp, input_dir, *args, check=True):
    return run_cli("src.tune", exp, "--input", input_dir, "--smoke", "--set", "train.workers=1", *args,
                   check=check)


def tune_folder(exp_root, data, study):
    return exp_root / EXP / "output" / f"{data.name}@tune" / study


def one_line_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def created_study(exp_root, data, name, *enqueued):
    """A study made before tune runs, so that a test can queue exact parameter sets (out of range too)."""
    folder = tune_folder(exp_root, data, name)
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    for params in enqueued:
        study.enqueue_trial(params, skip_if_exists=False)
    return storage


@pytest.mark.parametrize("space,message", [
    ("{model.topn: {int: [1, 3]}}", "tune.space.model.topn: unknown key 'model.topn'"),
    ("{model.selection: {int: [1, 3]}}", "a int distribution does not fit the key's type"),
    ("{model.dropout: {int: [0, 1]}}", "a int distribution does not fit the key's type (float)"),
    ("{decoder.name: {categorical: [threshold, argmax]}}", "value 'argmax' is not accepted"),
    ("{model.dropout: {float: [0.5, 0.1]}}", "low 0.5 is above high 0.1"),
    ("{adapt.coral_weight: {float: [0, 10], log: true}}", "log scale needs low > 0"),
    ("{model.dropout: {uniform: [0, 1]}}", "expected one of {int: [low, high]}"),
    ("{}", "tune.space is empty"),
    ("{model.dropout: {float: [0.0, 0.5], step: abc}}", "step must be a positive number, got 'abc'"),
    ("{model.dropout: {float: [0.0, 0.5], step: 0}}", "step must be a positive number, got 0"),
    ("{model.top_n: {int: [1, 5], step: -1}}", "step must be a positive integer, got -1"),
    ("{model.top_n: {int: [1, 5], step: 0.5}}", "step must be a positive integer, got 0.5"),
    ("{adapt.coral_weight: {float: [1, .inf]}}", "float needs [low, high] as finite numbers, got [1, inf]"),
    ("{model.dropout: {float: [.nan, 1]}}", "float needs [low, high] as finite numbers, got [nan, 1]"),
    ("{model.dropout: {float: [0.0, 0.5], log: abc}}", "log must be true or false, got 'abc'"),
    ("{model.dropout: 0.3}", "tune.space.model.dropout: expected dict, got 0.3"),
    ("{decoder.name: {categorical: [[threshold]]}}", "a choice must be a number, a string, true/false or null"),
    # the reported hang: 7 encoders, n up to 9; now refused before any trial runs
    ("{model.dropout: {float: [0.0, 0.5]}, model.top_n: {int: [1, 9]}}",
     "tune.space.model.top_n: value 9 does not fit dataset tiny_"),
])
def test_bad_spec_is_one_line_before_anything_runs(shared_dataset, exp_root, space, message):
    started = time.monotonic()
    proc = tune("exp042", shared_dataset, "--set", f"tune.space={space}", check=False)
    assert message in one_line_error(proc)
    assert time.monotonic() - started < 60  # a failed check costs a config load and a dataset load
    assert not (exp_root / EXP / "output" / f"{shared_dataset.name}@tune").exists()


@pytest.mark.parametrize("args,message", [
    (["--trials", "0"], "--trials 0: must be >= 1"),
    (["--workers", "0"], "--workers 0: must be >= 1"),
    (["--timeout", "-5"], "--timeout -5.0: must be > 0"),
    (["--heartbeat", "0"], "--heartbeat 0: must be >= 1"),
    (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open"),
    (["--storage", "not a url"], "--storage not a url: not a database URL"),
    (["--storage", "sqlite:///:memory:"], "an in-memory database lives and dies with one process"),
    (["--storage", "sqlite://"], "an in-memory database lives and dies with one process"),
    (["--write-child"], "--write-child: a --smoke study's trials ran on the smoke budget"),
])
def test_bad_option_is_one_line(make_dataset, exp_root, args, message):
    data = make_dataset()
    proc = tune("exp042", data, *args, check=False)
    assert message in one_line_error(proc)
    assert not (exp_root / EXP / "output" / f"{data.name}@tune").exists()  # nothing written


def test_missing_input_folder_is_one_line_before_any_trial(tmp_path, exp_root):
    proc = tune("exp042", tmp_path / "nosuch", check=False)
    assert f"{tmp_path / 'nosuch'}: dataset folder not found" in one_line_error(proc)
    assert not (exp_root / EXP / "output" / "nosuch@tune").exists()


def test_nan_in_a_feature_file_is_one_line_before_any_trial(make_dataset, exp_root):
    data = make_dataset()
    path = data / "features" / "wavlm.npz"
    z = dict(np.load(path))
    z["X"] = z["X"].astype(np.float32)
    z["X"][3, 1] = np.nan
    np.savez(path, **z)
    err = one_line_error(tune("exp042", data, "--set", SMOKE_SPACE, check=False))
    assert "wavlm" in err and "nan" in err.lower()
    assert not (exp_root / EXP / "output" / f"{data.name}@tune").exists()


def test_a_trial_user_error_is_one_line_and_the_study_goes_on(make_dataset, exp_root):
    data = make_dataset()
    # Out of the space's range, so only an enqueued trial can reach the dataset check inside the run.
    created_study(exp_root, data, "bad-trial", {"model.top_n": 99})
    started = time.monotonic()
    proc = tune("exp042", data, "--set", "tune.space={model.top_n: {int: [1, 3]}}", "--study", "bad-trial",
                "--trials", "2", "--no-rerun")
    lines = [ln for ln in proc.stderr.splitlines() if "top_n: 99" in ln]
    assert lines == ["trial 0 failed: model.top_n: 99 is more than the 7 encoders loaded "
                     "(clip, hubert, imagebind, openface, videomae, videoswintransformer, wavlm)"], proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((tune_folder(exp_root, data, "bad-trial") / "summary.json").read_text())
    assert summary["trials"] == {"COMPLETE": 2, "FAIL": 1}
    assert time.monotonic() - started < 120


def test_a_study_with_no_finished_trial_exits_non_zero(make_dataset, exp_root):
    data = make_dataset()
    created_study(exp_root, data, "all-fail", {"model.top_n": 99})
    proc = tune("exp042", data, "--set", "tune.space={model.top_n: {int: [1, 3]}}", "--study", "all-fail",
                "--trials", "1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: study 'all-fail': no trial finished ({'FAIL': 1})")
    assert "Traceback" not in proc.stderr


def test_two_workers_share_a_study_then_resume(make_dataset, exp_root):
    data = make_dataset()
    no_pruning = ["--set", SMOKE_SPACE, "--set", "tune.pruner=none"]  # every finished trial is COMPLETE
    tune("exp042", data, *no_pruning, "--trials", "4", "--workers", "2", "--no-rerun")
    folder = tune_folder(exp_root, data, f"exp042-{data.name}-smoke")
    query = ("select t.number, p.param_value from trials t join trial_params p using (trial_id) "
             "where t.state = 'COMPLETE'")
    with sqlite3.connect(folder / "study.db") as db:
        rows = db.execute(query).fetchall()
    # two workers may both start the last trial, so one more than asked can finish; no point runs twice
    assert len(rows) in (4, 5) and len({v for _, v in rows}) == len(rows), rows
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["trials"] == {"COMPLETE": len(rows)}
    assert (folder / "trials.csv").is_file() and (folder / "optimization_history.png").is_file()
    assert "child_experiment" not in summary and not list(exp_root.glob("exp0*_tuned"))  # only when asked

    first = dict(rows)
    tune("exp042", data, *no_pruning, "--trials", str(len(rows) + 1), "--no-rerun")
    with sqlite3.connect(folder / "study.db") as db:
        again = dict(db.execute(query).fetchall())
    assert len(again) == len(rows) + 1 and {k: again[k] for k in first} == first


def test_a_worker_with_other_settings_cannot_join(make_dataset, exp_root):
    data = make_dataset()
    tune("exp042", data, "--set", SMOKE_SPACE, "--study", "fixed", "--trials", "1", "--no-rerun")
    proc = tune("exp042", data, "--set", SMOKE_SPACE, "--set", "model.top_n=2", "--study", "fixed", "--trials", "2",
                check=False)
    assert "study 'fixed' in sqlite:///" in one_line_error(proc) and "was started with other settings (sets:" in proc.stderr


def test_the_summary_chooses_on_oof_then_shows_test_and_writes_the_child_when_asked(make_dataset, exp_root):
    data = make_dataset()
    budget = ["--set", "train.epochs=2", "--set", "train.seeds=1", "--set", "train.workers=1"]
    proc = run_cli("src.tune", "exp042", "--input", data, *budget, "--set", SMOKE_SPACE, "--trials", "2",
                   "--write-child", "--study", "kept")
    out = proc.stdout
    table_end = out.index("chosen: trial #")
    assert "test" not in out[:table_end].lower()  # OOF only while choosing
    assert out.index("on the test rows:") > table_end and out.index("seed rerun (seed 1000;") > table_end
    summary = json.loads((tune_folder(exp_root, data, "kept") / "summary.json").read_text())
    assert {"best_test_score", "seed_rerun"} <= summary.keys() and "test_score" in summary["seed_rerun"]
    assert summary["seed_rerun"]["seed"] == 1000 and "removes seed luck, not selection bias" in summary["seed_rerun"]["what"]
    trials = (tune_folder(exp_root, data, "kept") / "trials.csv").read_text()
    assert "test" not in trials.splitlines()[0]
    child = exp_root / summary["child_experiment"]
    body = yaml.safe_load((child / "config.yaml").read_text())
    assert body["parent"] == "exp042" and body["model"]["dropout"] == summary["best_params"]["model.dropout"]
    assert body["train"] == {"epochs": 2, "seeds": 1, "workers": 1}
    assert "study 'kept' (sqlite:///" in body["note"] and f"dataset {data.name}" in body["note"]
    run_cli("src.main", child.name[:6], "--input", data, "--smoke", "--quiet")
    assert (child / "output" / f"{data.name}@smoke" / "metrics.json").is_file()
    # --summary reads the storage only: same child, no training
    again = run_cli("src.tune", "exp042", "--input", data, "--study", "kept", "--summary", "--write-child")
    assert "seed rerun" not in again.stdout
    assert json.loads((tune_folder(exp_root, data, "kept") / "summary.json").read_text())["child_experiment"] \
        == child.name


def test_a_bad_trial_is_pruned(make_dataset, exp_root):
    data = make_dataset()
    storage = created_study(exp_root, data, "prune", {"train.lr": 0.01}, {"train.lr": 1e-7})  # 1e-7: untrained
    tune("exp042", data, "--set", "tune.space={train.lr: {float: [1.0e-7, 0.01], log: true}}",
         "--set", "tune.startup_trials=1", "--study", "prune", "--trials", "2", "--no-rerun")
    states = [t.state for t in optuna.load_study(study_name="prune", storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_sigterm_mid_trial_ends_the_study_and_its_worker_pool(make_dataset, exp_root):
    """A timeout's SIGTERM must end the study at once, training's worker pool included (no orphans left)."""
    data = make_dataset()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "src.tune", "exp042", "--input", str(data), "--smoke", "--set", SMOKE_SPACE,
           "--set", "train.workers=2", "--set", "train.epochs=200", "--trials", "3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while len(children_of(proc.pid)) < 2 and time.monotonic() < deadline:  # the pool's two processes
        time.sleep(0.5)
    pool = children_of(proc.pid)
    assert len(pool) >= 2, "the trial never started its worker pool"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)  # returns only when every holder of the pipes has gone
    assert proc.returncode == 128 + signal.SIGTERM
    time.sleep(0.5)
    assert not [p for p in pool if os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read()]


def test_a_trial_failed_by_another_worker_is_dropped_not_duplicated(make_dataset, exp_root):
    """A worker whose trial another worker declared dead (heartbeat silent too long) drops its own result."""
    data = make_dataset()
    storage = created_study(exp_root, data, "taken")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "src.tune", "exp042", "--input", str(data), "--smoke", "--set", SMOKE_SPACE,
           "--set", "train.workers=1", "--study", "taken", "--trials", "1", "--no-rerun"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rdb = optuna.storages.RDBStorage(storage)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        running = [t for t in optuna.load_study(study_name="taken", storage=rdb).trials
                   if t.state == optuna.trial.TrialState.RUNNING and "worker" in t.user_attrs]
        if running:
            break
        time.sleep(0.1)
    assert running, "the trial never started"
    rdb.set_trial_state_values(running[0]._trial_id, optuna.trial.TrialState.FAIL)  # as a stale-trial check does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "trial 0 was marked failed by another worker while this one ran it" in err and "Traceback" not in err
    states = [t.state.name for t in optuna.load_study(study_name="taken", storage=storage).trials]
    assert states == ["FAIL", "COMPLETE"]


def test_a_trial_left_running_without_any_heartbeat_is_failed_and_retried(make_dataset, exp_root):
    """A worker that lost the database right after creating its trial left no heartbeat: Optuna alone would
    keep that trial RUNNING for ever; the next worker fails it after the grace period and retries it."""
    data = make_dataset()
    storage = created_study(exp_root, data, "orphan")
    orphan = optuna.load_study(study_name="orphan", storage=storage).ask()  # RUNNING, never told, never beating
    time.sleep(4 * 1 + 0.5)  # 4 heartbeats of 1 s
    tune("exp042", data, "--set", SMOKE_SPACE, "--study", "orphan", "--trials", "1", "--heartbeat", "1",
         "--no-rerun")
    trials = optuna.load_study(study_name="orphan", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].system_attrs["failed_trial"] == orphan.number
