"""Optuna sweeps over an experiment's `tune:` space; every trial is a variant run of that experiment.

    bash run.sh tune exp042 [--trials N] [--timeout S] [--workers K] [--storage URL] [--study NAME]
                            [--input DIR] [--smoke] [--heartbeat S] [--no-rerun] [--write-child]
    bash run.sh tune exp042 [--storage URL] [--study NAME] --summary [--write-child]
The study lives in a storage (default: SQLite under the experiment's tune folder), so rerunning the same
command continues it, K local workers share it, and workers on other machines join it through
`--storage postgresql://...` (docs/tuning.md). At the end: the trials table (OOF only), trials.csv, importances,
two figures, then the chosen trial's test score and a fresh-seed rerun of it; its overrides become a child
experiment only with --write-child.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import yaml
from rich.console import Console
from rich.table import Table

from src import db
from src.errors import UserError, cli
from src.io import write_csv, write_json, write_text
from src.run import config as config_mod
from src.run.experiments import (DEFAULT_INPUT, ROOT, all_experiments, display_path, new_experiments_dir, outputs_of,
                                 resolve)

KINDS = ("int", "float", "categorical")
FRESH_SEED_OFFSET = 1000  # the winner's rerun uses seed + this, a seed no trial of the study used
HOST = socket.gethostname()
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RERUN_NOTE = "the chosen configuration again with a new seed on the same rows: removes seed luck, not selection bias"


# ---- the search space -------------------------------------------------------------------------------------

def parse_space(exp_dir: Path, tune, sets: list[str] = (), smoke: bool = False, ds=None) -> dict[str, dict]:
    """tune.space -> {key.path: {kind, low, high, log, step | choices}}; every problem is one UserError.

    Types come from the schema and bounds are checked by resolving the experiment with each bound set,
    so the ranges in src/run/config.py apply to a search space exactly as they apply to `--set`; with the
    dataset ds, each bound must also fit it (e.g. model.top_n at most its number of encoders).
    """
    if not tune.space:
        raise UserError(f"{exp_dir.name}/config.yaml: tune.space is empty; add e.g. "
                        "'tune: {space: {model.dropout: {float: [0.0, 0.5]}}}'")
    space = {}
    for path, spec in tune.space.items():
        where = f"tune.space.{path}"
        try:
            tp = config_mod.spec(path).type
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        kinds = [k for k in KINDS if k in spec]
        extra = sorted(set(spec) - set(KINDS) - {"log", "step"})
        if len(kinds) != 1 or extra:
            raise UserError(f"{where}: expected one of {{int: [low, high]}}, {{float: [low, high]}} or "
                            f"{{categorical: [a, b, ...]}} (optional log, step), got {spec!r}")
        kind = kinds[0]
        entry = (parse_choices(spec[kind], where) if kind == "categorical"
                 else parse_range(kind, spec, tp, where))
        for value in bound_values(entry):
            check_value(exp_dir, path, value, sets, smoke, ds, where)
        space[path] = entry
    return space


def is_number(v, kind: str) -> bool:
    allowed = (int,) if kind == "int" else (int, float)
    return isinstance(v, allowed) and not isinstance(v, bool) and math.isfinite(v)


def parse_choices(values, where: str) -> dict:
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: categorical needs a non-empty list of choices, got {values!r}")
    odd = [v for v in values if not (v is None or isinstance(v, (bool, int, float, str)))]
    if odd:  # Optuna stores a choice as one JSON scalar
        raise UserError(f"{where}: a choice must be a number, a string, true/false or null, got {odd[0]!r}")
    return {"kind": "categorical", "choices": values}


def parse_range(kind: str, spec: dict, tp, where: str) -> dict:
    values = spec[kind]
    if not isinstance(values, list) or len(values) != 2 or not all(is_number(v, kind) for v in values):
        what = "ints" if kind == "int" else "finite numbers"
        raise UserError(f"{where}: {kind} needs [low, high] as {what}, got {values!r}")
    if not config_mod.admits(tp, kind):
        raise UserError(f"{where}: a {kind} distribution does not fit the key's type ({config_mod.type_name(tp)})")
    low, high = (float(v) for v in values) if kind == "float" else values
    if low > high:
        raise UserError(f"{where}: low {low} is above high {high}")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if step is not None and not (is_number(step, kind) and step > 0):
        raise UserError(f"{where}: step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
    if log and low <= 0:
        raise UserError(f"{where}: log scale needs low > 0, got {low}")
    if log and step is not None:
        raise UserError(f"{where}: log and step cannot be combined")
    return {"kind": kind, "low": low, "high": high, "log": log, "step": step}


def bound_values(entry: dict) -> list:
    """The values a trial can reach at the edges: every choice, or low and the highest point on the step grid."""
    if entry["kind"] == "categorical":
        return list(entry["choices"])
    low, high, step = entry["low"], entry["high"], entry["step"]
    if step:
        high = low + (high - low) // step * step if entry["kind"] == "int" else round(
            low + math.floor((high - low) / step + 1e-9) * step, 12)
    return [low] if high == low else [low, high]


def check_value(exp_dir: Path, path: str, value, sets, smoke: bool, ds, where: str) -> None:
    """The experiment resolves with path=value (schema types and ranges) and, given ds, fits that dataset."""
    try:
        cfg = config_mod.load(exp_dir, [*sets, *overrides({path: value})], smoke)
    except UserError as err:
        raise UserError(f"{where}: value {value!r} is not accepted ({str(err).split(': ', 1)[-1]})") from None
    if ds is None:
        return
    from src.run import checks, pipeline
    try:
        pipeline.check_compatible(cfg, ds)
        checks.check_config_fits(cfg, ds)
    except UserError as err:
        raise UserError(f"{where}: value {value!r} does not fit dataset {ds.name} ({err})") from None


def grid_values(entry: dict, where: str) -> list:
    """Every value of one dimension for the grid sampler."""
    if entry["kind"] == "categorical":
        return list(entry["choices"])
    if entry["kind"] == "int":
        return list(range(entry["low"], entry["high"] + 1, entry["step"] or 1))
    if entry["step"]:
        return [float(v) for v in np.round(np.arange(entry["low"], entry["high"] + 1e-12, entry["step"]), 12)]
    raise UserError(f"{where}: the grid sampler needs a step for a float dimension")


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> dict:
    """One value per key path, drawn by the study's sampler."""
    params = {}
    for path, e in space.items():
        if e["kind"] == "categorical":
            params[path] = trial.suggest_categorical(path, e["choices"])
        elif e["kind"] == "int":
            params[path] = trial.suggest_int(path, e["low"], e["high"], step=e["step"] or 1, log=e["log"])
        else:
            params[path] = trial.suggest_float(path, e["low"], e["high"], step=e["step"], log=e["log"])
    return params


def overrides(params: dict) -> list[str]:
    """{key.path: value} -> ['key.path=value', ...] as `--set` takes them."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in sorted(params.items())]


def load_dataset(cfg, input_dir: Path | None):
    """The dataset every trial loads, read and validated once before the first trial (as pipeline.plan_run does)."""
    from src import data as data_mod
    from src.data import synth

    folder = input_dir or DEFAULT_INPUT
    if input_dir is None and not folder.exists():
        print(f"generating the default synthetic dataset in {folder}")
        synth.write(folder, seed=0)
    return data_mod.load(folder, cfg.data.encoders, cfg.data.allow_missing)


# ---- one trial ----------------------------------------------------------------------------------------------

def objective_value(metrics: dict, metric: str) -> float:
    """Mean over seeds of one OOF figure (each seed decoded on its own), e.g. metric 'oof.score'."""
    part, key = metric.split(".", 1)
    values = [s[part][key] for s in metrics.get("seeds", []) if part in s]
    return float(np.mean(values)) if values else float(metrics[part][key])


def run_trial(exp_dir: Path, input_dir: Path | None, sets: list[str], smoke: bool, report=None) -> dict:
    """Run the experiment as a variant with these overrides; returns its metrics.json and output folder.

    tune.* overrides are left out: they shape the study, not the run, so they must not change its variant.
    """
    from src.run.pipeline import run_variant

    argv = (["--input", str(input_dir)] if input_dir else []) + ["--quiet"] + (["--smoke"] if smoke else [])
    for s in sets:
        if not s.startswith("tune."):
            argv += ["--set", s]
    out = run_variant(exp_dir, argv, on_model=report)
    return {"out": out, "metrics": json.loads((out / "metrics.json").read_text())}


class TrialTakenOver(Exception):
    """Another worker failed this trial as stale (and retries it) while this worker still ran it."""


def make_objective(exp_dir: Path, args, tune, space: dict, storage, taken: list):
    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
        params = suggest(trial, space)

        def report(step: int, value: float) -> None:
            # A pruning signal only (see run_variant): the fold x seed models finished so far.
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {step + 1} models")

        try:
            result = run_trial(exp_dir, args.input, args.sets + overrides(params), args.smoke, report)
        except UserError as err:
            trial.set_user_attr("error", str(err))
            raise
        trial.set_user_attr("output", display_path(result["out"]))
        # Asked of the database itself: optuna's cache keeps this process's own trial as it last wrote it.
        if storage.get_trial(trial._trial_id).state != optuna.trial.TrialState.RUNNING:
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} is no longer running")
        return objective_value(result["metrics"], tune.metric)

    def objective(trial: optuna.Trial) -> float:
        try:
            return run(trial)
        except optuna.exceptions.UpdateFinishedTrialError:  # any write to the trial, or the check above
            taken.append(trial.number)
            raise TrialTakenOver(f"trial {trial.number}") from None
    return objective


def log_trial(study, trial) -> None:
    """One line per trial: its value, or its error (the whole message, no traceback)."""
    state = trial.state
    if state == optuna.trial.TrialState.COMPLETE:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        print(f"trial {trial.number}: {trial.value:.4f} ({shown})", flush=True)
    elif state == optuna.trial.TrialState.PRUNED:
        print(f"trial {trial.number}: pruned", flush=True)
    elif "error" in trial.user_attrs:
        print(f"trial {trial.number} failed: {trial.user_attrs['error']}", file=sys.stderr, flush=True)


# ---- the study ----------------------------------------------------------------------------------------------

def tune_dir(exp_dir: Path, dataset: str, study: str) -> Path:
    """Where a study's storage and summary live: beside the experiment's outputs, one folder per study."""
    return outputs_of(exp_dir) / f"{dataset}@tune" / study


def make_sampler(tune, space: dict, seed: int):
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler({p: grid_values(e, f"tune.space.{p}") for p, e in space.items()},
                                           seed=seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(tune):
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=0)


def sampler_seed(args) -> int:
    """--seed plus the local worker index; on a --storage that other machines may share, plus the process id,
    so workers started independently with the same command do not propose the same points."""
    seed = args.seed + args.worker_index + (os.getpid() * 1009 if args.shared else 0)
    return seed % 2**32


def study_identity(exp_dir: Path, dataset: str, args, tune, space: dict) -> dict:
    """What every worker of one study must agree on; stored in the study, checked when a worker joins."""
    identity = {"experiment": exp_dir.name, "dataset": dataset, "smoke": bool(args.smoke),
                "sets": [s for s in args.sets if not s.startswith("tune.")], "metric": tune.metric, "space": space}
    return json.loads(json.dumps(identity))  # as the storage gives it back


def open_study(args, tune, space: dict, identity: dict, storage):
    study = optuna.create_study(storage=storage, study_name=args.study, direction="maximize",
                                sampler=make_sampler(tune, space, sampler_seed(args)), pruner=make_pruner(tune),
                                load_if_exists=True)
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != identity:
        diff = [k for k in identity if stored.get(k) != identity[k]]
        theirs = "; ".join(f"{k}: {stored.get(k)!r}" for k in diff)
        raise UserError(f"study '{args.study}' in {db.shown_url(args.storage)} was started with other settings "
                        f"({theirs}); run its workers with the same command, or name another --study")
    return study


def finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def work(study, storage, exp_dir: Path, args, tune, space) -> None:
    """One worker: run trials until the study holds --trials finished ones (or --timeout, or the grid ends).

    A worker also stops after --trials failed trials of its own, so a space that keeps failing cannot loop.
    """
    failed, taken = [], []

    def stop_when_done(study, trial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            failed.append(trial.number)
        if finished(study) >= args.trials or len(failed) >= args.trials:
            study.stop()

    deadline = time.monotonic() + args.timeout if args.timeout else None
    objective = make_objective(exp_dir, args, tune, space, storage, taken)
    while finished(study) < args.trials and len(failed) < args.trials:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            study.optimize(objective, timeout=left, callbacks=[log_trial, stop_when_done], catch=(UserError,),
                           gc_after_trial=True)
            break  # stopped by a callback, timed out, or the grid is exhausted
        except Exception as err:
            lost = db.lost_in(err)
            if lost:
                raise lost from None
            if not taken:
                raise
            print(f"trial {taken.pop()} was marked failed by another worker while this one ran it (its heartbeats "
                  f"missed the database for over {args.heartbeat * db.GRACE_BEATS} s): result dropped, its retry "
                  "counts instead", file=sys.stderr, flush=True)
    if len(failed) >= args.trials:
        print(f"this worker stopped after {len(failed)} failed trials", file=sys.stderr)


def spawn_workers(args, k: int) -> int:
    """K worker processes against the same storage; returns the worst exit code."""
    cmd = [sys.executable, "-m", "src.tune", args.exp, "--worker", "--trials", str(args.trials),
           "--study", args.study, "--seed", str(args.seed), "--heartbeat", str(args.heartbeat)]
    cmd += ["--storage", args.storage] if args.shared else []
    cmd += (["--input", str(args.input)] if args.input else []) + (["--smoke"] if args.smoke else [])
    cmd += [a for s in args.sets for a in ("--set", s)]
    cmd += ["--timeout", str(args.timeout)] if args.timeout else []
    # Distinct sampler seeds (--worker-index) so workers do not propose the same point at once.
    procs = [subprocess.Popen(cmd + ["--worker-index", str(i)]) for i in range(k)]
    try:
        return max(p.wait() for p in procs)
    except (KeyboardInterrupt, Terminated) as stop:
        for p in procs:
            p.send_signal(signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM)
        for p in procs:
            p.wait()
        raise


class Terminated(BaseException):
    """SIGTERM: stop at once. The running trial stays RUNNING; a later worker fails it as stale and retries it."""


def on_sigterm(signum, frame):
    raise Terminated()


def stop_children() -> None:
    """Training's worker pool must not outlive this process (it would hold the caller's pipes open)."""
    for child in multiprocessing.active_children():
        child.terminate()


# ---- the summary --------------------------------------------------------------------------------------------

def best_table(study, n: int = 10) -> Table:
    """The best trials by seed-mean OOF; test scores stay out of view while choosing."""
    params = list(study.best_trial.params)
    table = Table(title=f"study {study.study_name}: best trials (seed-mean OOF, optimistic: chosen among many)")
    for col in ("trial", "OOF", *params, "worker", "variant"):
        table.add_column(col, justify="left" if col in ("worker", "variant") else "right", overflow="fold")
    done = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: -t.value)[:n]
    show = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    for t in done:
        table.add_row(str(t.number), f"{t.value:.4f}", *[show(t.params.get(p, "–")) for p in params],
                      t.user_attrs.get("worker", "–"), "@" + t.user_attrs.get("output", "@").rsplit("@", 1)[-1])
    return table


def write_figures(study, folder: Path) -> list[str]:
    """Optimisation history and parameter importances as PNGs; skipped (with the reason) when not computable."""
    from optuna.visualization import matplotlib as ovm

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, plot in (("optimization_history", ovm.plot_optimization_history),
                           ("param_importances", ovm.plot_param_importances)):
            try:
                ax = plot(study)
                fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
                path = folder / f"{name}.png"
                tmp = path.with_suffix(".tmp.png")
                fig.savefig(tmp, dpi=120, bbox_inches="tight")
                os.replace(tmp, path)
                written.append(path.name)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                written.append(f"{name} skipped ({err})")
    return written


def importances(study) -> dict:
    try:
        with warnings.catch_warnings():  # "too few trials": the summary says how many there were
            warnings.simplefilter("ignore")
            return {k: round(float(v), 6) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}  # fewer than two finished trials, or a single point in the space


def next_experiment_id() -> int:
    return max(int(p.name[3:6]) for p in all_experiments()) + 1


def write_child(exp_dir: Path, study, identity: dict, url: str) -> Path:
    """The best trial's overrides as a new experiment folder; built from the study alone (any machine can)."""
    best = study.best_trial
    name = study.user_attrs.get("child_experiment") if study.user_attrs.get("child_trial") == best.number else None
    if name and (new_experiments_dir() / name).is_dir():
        return new_experiments_dir() / name
    if not name or any(p.name[:6] == name[:6] for p in all_experiments()):
        slug = exp_dir.name.split("_", 1)[1] if "_" in exp_dir.name else exp_dir.name
        name = f"exp{next_experiment_id():03d}_{slug}_tuned"
    child = new_experiments_dir() / name
    # the study's own --set overrides (not its tune.* keys) plus the best parameters
    values = config_mod.parse_set(identity["sets"] + overrides(best.params))
    note = (f"best trial #{best.number} of Optuna study '{study.study_name}' ({db.shown_url(url)}, dataset "
            f"{identity['dataset']}, {finished(study)} finished trials) over {exp_dir.name[:6]}'s tune space; "
            "its OOF is the maximum over the trials, so judge it on fresh seeds")
    body = {"parent": exp_dir.name[:6], "note": note, **values}
    staged = child.with_name(child.name + ".partial")  # a complete folder or none: renamed when written
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    write_text(staged / "config.yaml", yaml.safe_dump(body, sort_keys=False, width=110))
    write_text(staged / "run.py", (exp_dir / "run.py").read_text())
    staged.rename(child)
    config_mod.load(child)  # the child resolves against the schema, or this is a bug worth failing loudly on
    study.set_user_attr("child_experiment", child.name)
    study.set_user_attr("child_trial", best.number)
    return child


def own_test_score(trial) -> float | None:
    """The chosen trial's test score, when its output folder is on this machine and the dataset has labels."""
    out = Path(trial.user_attrs.get("output", ""))
    path = (out if out.is_absolute() else ROOT / out) / "metrics.json"
    try:
        return json.loads(path.read_text())["test"]["score"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def summarise(exp_dir: Path, args, study, identity: dict, rerun: bool) -> dict:
    """Choose on OOF (table, trials.csv, importances, figures); then the winner's test score and seed rerun."""
    console = Console()
    folder = args.folder
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.trials_dataframe()
    write_csv(folder / "trials.csv", trials)
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    summary = {"study": study.study_name, "storage": db.shown_url(args.storage),
               "trials": {str(k): int(v) for k, v in states.items()}, "metric": f"seed mean of {identity['metric']}"}
    if not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        write_json(folder / "summary.json", summary)
        raise UserError(f"study '{study.study_name}': no trial finished ({summary['trials'] or 'no trials'}); "
                        "the failed trials' errors are above and in trials.csv")
    best = study.best_trial
    console.print(best_table(study))
    n_done = finished(study)
    summary |= {"best_trial": best.number, "best_params": best.params, "best_value_optimistic": best.value,
                "best_output": best.user_attrs.get("output"), "importances": importances(study)}
    summary["figures"] = write_figures(study, folder)
    if summary["importances"]:
        console.print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()))
    console.print(f"chosen: trial #{best.number}, seed-mean OOF {best.value:.4f} (the best of {n_done}: optimistic)")
    # Only now, after the choice: the chosen configuration on the test rows.
    test = own_test_score(best)
    if test is not None:
        summary["best_test_score"] = test
        console.print(f"chosen trial #{best.number} on the test rows: {test:.4f}")
    if rerun:
        seed = config_mod.load(exp_dir, args.sets, args.smoke).seed + FRESH_SEED_OFFSET
        fresh = run_trial(exp_dir, args.input, args.sets + overrides(best.params) + [f"seed={seed}"], args.smoke)
        summary["seed_rerun"] = {"seed": seed, "what": RERUN_NOTE, "output": display_path(fresh["out"]),
                                 "value": objective_value(fresh["metrics"], identity["metric"])}
        line = f"seed rerun (seed {seed}; {RERUN_NOTE}): OOF {summary['seed_rerun']['value']:.4f}"
        if "test" in fresh["metrics"]:
            summary["seed_rerun"]["test_score"] = fresh["metrics"]["test"]["score"]
            line += f", test {summary['seed_rerun']['test_score']:.4f}"
        console.print(line)
    if args.write_child:
        child = write_child(exp_dir, study, identity, args.storage)
        summary["child_experiment"] = child.name
        console.print(f"child experiment: {display_path(child)} (bash run.sh {child.name[:6]})")
    write_json(folder / "summary.json", summary)
    if n_done < args.trials:
        console.print(f"[yellow]warning: {n_done} of the {args.trials} requested trials finished; rerun the same "
                      "command to continue the study")
    console.print(f"study files: {display_path(folder)}")
    return summary


def summary_command(exp_dir: Path, args) -> None:
    """--summary: the study as the database holds it (no dataset, no training); the child with --write-child."""
    dataset = (args.input or DEFAULT_INPUT).name
    args.study = args.study or f"{exp_dir.name[:6]}-{dataset}" + ("-smoke" if args.smoke else "")
    if not args.storage:
        path = tune_dir(exp_dir, dataset, args.study) / "study.db"
        if not path.is_file():
            raise UserError(f"{display_path(path)}: no study here; give the study's --storage and --study")
        args.storage = f"sqlite:///{path}"
    storage = db.open_storage(args.storage, args.heartbeat)
    try:
        study = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        raise UserError(f"--study {args.study}: no such study in {db.shown_url(args.storage)}") from None
    identity = study.user_attrs.get("identity")
    if not identity:
        raise UserError(f"study '{args.study}' was not written by bash run.sh tune (no identity attribute)")
    if identity["experiment"] != exp_dir.name:
        raise UserError(f"study '{args.study}' tunes {identity['experiment']}, not {exp_dir.name}")
    if args.write_child and identity["smoke"]:
        raise UserError(smoke_child_error())
    args.folder = tune_dir(exp_dir, identity["dataset"], args.study)
    args.trials = args.trials or finished(study)
    summarise(exp_dir, args, study, identity, rerun=False)


def smoke_child_error() -> str:
    return ("--write-child: a --smoke study's trials ran on the smoke budget, so its best trial is no "
            "configuration to keep; run the study without --smoke")


def parse_args(argv):
    p = argparse.ArgumentParser(description="Optuna sweep over an experiment's tune: space.")
    p.add_argument("exp", help="experiment id, e.g. exp042")
    p.add_argument("--trials", type=int, default=None, help="finished trials the study should hold (default: tune.trials)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after S seconds")
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the storage")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the study folder)")
    p.add_argument("--study", default=None, help="study name (default: <experiment>-<dataset>[-smoke])")
    p.add_argument("--input", type=Path, default=None, help="dataset folder (default: input/synthetic)")
    p.add_argument("--smoke", action="store_true", help="each trial runs with the smoke budget")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override the experiment's config (tune.* keys too) for every trial")
    p.add_argument("--heartbeat", type=int, default=30, help="seconds between a running trial's heartbeats; a "
                   f"trial silent for {db.GRACE_BEATS} heartbeats is failed and retried once by another worker")
    p.add_argument("--no-rerun", action="store_true", help="skip the fresh-seed rerun of the chosen trial")
    p.add_argument("--write-child", action="store_true", help="write the best trial as a new experiment folder")
    p.add_argument("--summary", action="store_true", help="only summarise the study from its storage")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: must be >= 1")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be >= 1")
    if args.timeout is not None and not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise UserError(f"--timeout {args.timeout}: must be > 0")
    if args.heartbeat < 1:
        raise UserError(f"--heartbeat {args.heartbeat}: must be >= 1 (seconds)")
    args.shared = args.storage is not None
    return args


def run_study(exp_dir: Path, args) -> None:
    cfg = config_mod.load(exp_dir, args.sets, args.smoke)
    tune = cfg.tune
    if args.write_child and args.smoke:
        raise UserError(smoke_child_error())
    storage = db.open_storage(args.storage, args.heartbeat) if args.storage else None  # a bad URL fails first
    ds = load_dataset(cfg, args.input)
    space = parse_space(exp_dir, tune, args.sets, args.smoke, ds)  # every spec and data error before any trial
    args.trials = args.trials or tune.trials
    args.study = args.study or f"{exp_dir.name[:6]}-{ds.name}" + ("-smoke" if args.smoke else "")
    args.folder = tune_dir(exp_dir, ds.name, args.study)
    if storage is None:
        args.folder.mkdir(parents=True, exist_ok=True)
        args.storage = f"sqlite:///{args.folder / 'study.db'}"
        storage = db.open_storage(args.storage, args.heartbeat)
    identity = study_identity(exp_dir, ds.name, args, tune, space)
    study = open_study(args, tune, space, identity, storage)  # created once, before workers race to
    if args.worker:
        work(study, storage, exp_dir, args, tune, space)
        return
    interrupted = False
    try:
        if args.workers == 1:
            work(study, storage, exp_dir, args, tune, space)
        elif spawn_workers(args, args.workers) != 0:
            raise UserError(f"a tune worker failed; see its output above (study {args.study})")
    except KeyboardInterrupt:
        interrupted = True
        Console().print("interrupted: summarising the finished trials (rerun the same command to continue)")
    summarise(exp_dir, args, study, identity, rerun=not (args.no_rerun or interrupted))


@cli
def main(argv=None):
    args = parse_args(argv)
    exp_dir = resolve(args.exp)
    if args.storage:
        db.check_url(args.storage)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from log_trial instead
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if args.summary:
            summary_command(exp_dir, args)
        else:
            run_study(exp_dir, args)
    except db.DatabaseLost as err:
        raise UserError(str(err)) from None
    except Terminated:
        stop_children()
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:  # a spawned worker (the main process summarises instead)
        stop_children()
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
