"""Optuna sweeps over an experiment's `tune:` space; every trial is a variant run of that experiment.

    bash run.sh tune exp042 [--trials N] [--timeout S] [--workers K] [--storage URL] [--study NAME]
                            [--input DIR] [--smoke]
The study lives in a storage (default: SQLite under the experiment's tune folder), so rerunning the same
command continues it, K local workers share it, and workers on other machines join it through
`--storage postgresql://...`. At the end: the best trials, trials.csv, importances, two figures, and the best
trial's overrides as a new child experiment.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import optuna
import yaml
from rich.console import Console
from rich.table import Table

from src.errors import UserError, cli
from src.io import write_csv, write_json, write_text
from src.run import config as config_mod
from src.run.experiments import DEFAULT_INPUT, all_experiments, display_path, new_experiments_dir, outputs_of, resolve

KINDS = ("int", "float", "categorical")
FRESH_SEED_OFFSET = 1000  # the confirmation rerun uses seed + this, a seed no trial of the study used


# ---- the search space -------------------------------------------------------------------------------------

def parse_space(exp_dir: Path, tune, sets: list[str] = (), smoke: bool = False) -> dict[str, dict]:
    """tune.space -> {key.path: {kind, low, high, log, step | choices}}; every problem is one UserError.

    Types come from the schema and bounds are checked by resolving the experiment with each bound set,
    so the ranges in src/config.py apply to a search space exactly as they apply to `--set`.
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
        values = spec[kind]
        if kind == "categorical":
            if not isinstance(values, list) or not values:
                raise UserError(f"{where}: categorical needs a non-empty list of choices, got {values!r}")
            entry = {"kind": kind, "choices": values}
        else:
            allowed = (int,) if kind == "int" else (int, float)
            if (not isinstance(values, list) or len(values) != 2
                    or not all(isinstance(v, allowed) and not isinstance(v, bool) for v in values)):
                raise UserError(f"{where}: {kind} needs [low, high] as {kind}s, got {values!r}")
            if not config_mod.admits(tp, kind):
                raise UserError(f"{where}: a {kind} distribution does not fit the key's type "
                                f"({config_mod.type_name(tp)})")
            low, high = (float(v) for v in values) if kind == "float" else values
            if low > high:
                raise UserError(f"{where}: low {low} is above high {high}")
            log, step = bool(spec.get("log", False)), spec.get("step")
            if log and low <= 0:
                raise UserError(f"{where}: log scale needs low > 0, got {low}")
            if log and step is not None:
                raise UserError(f"{where}: log and step cannot be combined")
            entry = {"kind": kind, "low": low, "high": high, "log": log, "step": step}
        for value in grid_values(entry, where, required=False) or [entry.get("low"), entry.get("high")]:
            try:  # the schema's own type and range check, as for --set
                config_mod.load(exp_dir, [*sets, *overrides({path: value})], smoke)
            except UserError as err:
                raise UserError(f"{where}: value {value!r} is not accepted ({str(err).split(': ', 1)[-1]})") from None
        space[path] = entry
    return space


def grid_values(entry: dict, where: str, required: bool = True) -> list | None:
    """Every value of one dimension for the grid sampler; None (or an error) when it is continuous."""
    if entry["kind"] == "categorical":
        return list(entry["choices"])
    if entry["kind"] == "int":
        return list(range(entry["low"], entry["high"] + 1, entry["step"] or 1))
    if entry["step"]:
        return [float(v) for v in np.round(np.arange(entry["low"], entry["high"] + 1e-12, entry["step"]), 12)]
    if required:
        raise UserError(f"{where}: the grid sampler needs a step for a float dimension")
    return None


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


def make_objective(exp_dir: Path, args, tune, space: dict):
    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)

        def report(step: int, value: float) -> None:
            # A pruning signal only (see run_variant): the fold x seed models finished so far.
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {step + 1} models")

        result = run_trial(exp_dir, args.input, args.sets + overrides(params), args.smoke, report)
        trial.set_user_attr("output", display_path(result["out"]))
        if "test" in result["metrics"]:
            trial.set_user_attr("test_score", result["metrics"]["test"]["score"])
        return objective_value(result["metrics"], tune.metric)
    return objective


# ---- the study ----------------------------------------------------------------------------------------------

def tune_dir(exp_dir: Path, dataset: str, study: str) -> Path:
    """Where a study's storage and summary live: beside the experiment's outputs, one folder per study."""
    return outputs_of(exp_dir) / f"{dataset}@tune" / study


def storage_for(url: str) -> optuna.storages.BaseStorage:
    """RDB storage; SQLite waits for its lock instead of failing when several workers write at once."""
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        # Heartbeats let a later worker see that a killed worker's trial is dead and retry it once.
        with warnings.catch_warnings():  # heartbeats are marked experimental in optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=30, grace_period=120,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as err:  # noqa: BLE001 - optuna and sqlalchemy raise many kinds for a bad URL
        raise UserError(f"--storage {url}: cannot open ({type(err).__name__}: {str(err).splitlines()[0]})") from None


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


def open_study(args, tune, space):
    return optuna.create_study(storage=storage_for(args.storage), study_name=args.study, direction="maximize",
                               sampler=make_sampler(tune, space, args.seed), pruner=make_pruner(tune),
                               load_if_exists=True)


def finished(study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def work(exp_dir: Path, args, tune, space) -> None:
    """One worker: run trials until the study holds --trials finished ones (or --timeout, or the grid ends)."""
    study = open_study(args, tune, space)
    remaining = args.trials - finished(study)
    if remaining <= 0:
        return
    stop = optuna.study.MaxTrialsCallback(args.trials, states=(optuna.trial.TrialState.COMPLETE,
                                                               optuna.trial.TrialState.PRUNED))
    study.optimize(make_objective(exp_dir, args, tune, space), n_trials=remaining, timeout=args.timeout,
                   callbacks=[stop], catch=(UserError,), gc_after_trial=True)


def spawn_workers(args, k: int) -> int:
    """K worker processes against the same storage; returns the worst exit code."""
    cmd = [sys.executable, "-m", "src.tune", args.exp, "--worker", "--trials", str(args.trials),
           "--storage", args.storage, "--study", args.study, "--seed", str(args.seed)]
    cmd += (["--input", str(args.input)] if args.input else []) + (["--smoke"] if args.smoke else [])
    cmd += [a for s in args.sets for a in ("--set", s)]
    cmd += ["--timeout", str(args.timeout)] if args.timeout else []
    # Distinct sampler seeds (--worker-index) so workers do not propose the same point at once.
    procs = [subprocess.Popen(cmd + ["--worker-index", str(i)]) for i in range(k)]
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise


# ---- the summary --------------------------------------------------------------------------------------------

def best_table(study, n: int = 10) -> Table:
    table = Table(title=f"study {study.study_name}: best trials (seed-mean OOF, optimistic: chosen among many)")
    for col in ("trial", "value", "test", *[p for p in study.best_trial.params], "variant"):
        table.add_column(col, justify="left" if col == "variant" else "right", overflow="fold")
    done = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: -t.value)[:n]
    for t in done:
        test = t.user_attrs.get("test_score")
        show = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
        table.add_row(str(t.number), f"{t.value:.4f}", "–" if test is None else f"{test:.4f}",
                      *[show(t.params.get(p, "–")) for p in study.best_trial.params],
                      "@" + t.user_attrs.get("output", "@").rsplit("@", 1)[-1])
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
        return {k: round(float(v), 6) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}  # fewer than two finished trials, or a single point in the space


def next_experiment_id() -> int:
    return max(int(p.name[3:6]) for p in all_experiments()) + 1


def write_child(exp_dir: Path, study, dataset: str, n_trials: int, sets: list[str]) -> Path:
    """The best trial's overrides as a new experiment folder (next free id); reused when already written."""
    best = study.best_trial
    written = study.user_attrs.get("child_experiment")
    if written and (new_experiments_dir() / written).is_dir() and study.user_attrs.get("child_trial") == best.number:
        return new_experiments_dir() / written
    # the study's own --set overrides (not its tune.* keys) plus the best parameters
    values = config_mod.parse_set([s for s in sets if not s.startswith("tune.")] + overrides(best.params))
    slug = exp_dir.name.split("_", 1)[1] if "_" in exp_dir.name else exp_dir.name
    child = new_experiments_dir() / f"exp{next_experiment_id():03d}_{slug}_tuned"
    note = (f"best trial #{best.number} of Optuna study '{study.study_name}' on dataset {dataset} "
            f"({n_trials} finished trials; seed-mean OOF {best.value:.4f}, optimistic because chosen among them). "
            f"Written by bash run.sh tune {exp_dir.name[:6]}; see its summary.json for the fresh-seed rerun")
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


def summarise(exp_dir: Path, args, tune, dataset: str, confirm: bool = True) -> dict:
    """Table, trials.csv, importances, figures, child experiment and the fresh-seed rerun of the best trial."""
    console = Console()
    study = optuna.load_study(study_name=args.study, storage=storage_for(args.storage))
    folder = args.folder
    trials = study.trials_dataframe()
    write_csv(folder / "trials.csv", trials)
    states = trials["state"].value_counts().to_dict() if len(trials) else {}
    summary = {"study": args.study, "storage": args.storage, "trials": {str(k): int(v) for k, v in states.items()},
               "metric": f"seed mean of {tune.metric}"}
    if not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        console.print(f"study {args.study}: no finished trial yet ({summary['trials']})")
        write_json(folder / "summary.json", summary)
        return summary
    best = study.best_trial
    console.print(best_table(study))
    summary |= {"best_trial": best.number, "best_params": best.params, "best_value_optimistic": best.value,
                "best_output": best.user_attrs.get("output"), "importances": importances(study)}
    if "test_score" in best.user_attrs:
        summary["best_test_score"] = best.user_attrs["test_score"]
    summary["figures"] = write_figures(study, folder)
    child = write_child(exp_dir, study, dataset, finished(study), args.sets)
    summary["child_experiment"] = child.name
    if confirm:
        # The honest check: the chosen configuration with seeds the study never used.
        seed = config_mod.load(exp_dir, args.sets, args.smoke).seed + FRESH_SEED_OFFSET
        fresh = run_trial(exp_dir, args.input, args.sets + overrides(best.params) + [f"seed={seed}"], args.smoke)
        summary["fresh_seed"] = {"seed": seed, "output": display_path(fresh["out"]),
                                 "value": objective_value(fresh["metrics"], tune.metric)}
        if "test" in fresh["metrics"]:
            summary["fresh_seed"]["test_score"] = fresh["metrics"]["test"]["score"]
    write_json(folder / "summary.json", summary)
    if summary["importances"]:
        console.print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()))
    line = f"best trial #{best.number}: seed-mean OOF {best.value:.4f} (chosen among {finished(study)}, optimistic)"
    if "fresh_seed" in summary:
        line += f"; rerun with seed {summary['fresh_seed']['seed']}: {summary['fresh_seed']['value']:.4f}"
        if "test_score" in summary["fresh_seed"]:
            line += f", test {summary['fresh_seed']['test_score']:.4f}"
    console.print(line)
    console.print(f"child experiment: {display_path(child)} (bash run.sh {child.name[:6]}); "
                  f"study files: {display_path(folder)}")
    return summary


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
    p.add_argument("--no-confirm", action="store_true", help="skip the fresh-seed rerun of the best trial")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: must be >= 1")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be >= 1")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout}: must be > 0")
    return args


@cli
def main(argv=None):
    args = parse_args(argv)
    exp_dir = resolve(args.exp)
    cfg = config_mod.load(exp_dir, args.sets, args.smoke)
    tune = cfg.tune
    space = parse_space(exp_dir, tune, args.sets, args.smoke)  # every spec error before anything runs
    args.trials = args.trials or tune.trials
    dataset = (args.input or DEFAULT_INPUT).name
    args.study = args.study or f"{exp_dir.name[:6]}-{dataset}" + ("-smoke" if args.smoke else "")
    args.folder = tune_dir(exp_dir, dataset, args.study)
    if args.storage:
        storage_for(args.storage)  # a bad URL fails before the study folder is made
    args.folder.mkdir(parents=True, exist_ok=True)
    args.storage = args.storage or f"sqlite:///{args.folder / 'study.db'}"
    if args.worker:
        args.seed += args.worker_index
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        work(exp_dir, args, tune, space)
        return
    open_study(args, tune, space)  # create it once, before workers race to
    interrupted = False
    try:
        if args.workers == 1:
            work(exp_dir, args, tune, space)
        elif spawn_workers(args, args.workers) != 0:
            raise UserError(f"a tune worker failed; see its output above (study {args.study})")
    except KeyboardInterrupt:
        interrupted = True
        Console().print("interrupted: summarising the finished trials (rerun the same command to continue)")
    summarise(exp_dir, args, tune, dataset, confirm=not (args.no_confirm or interrupted))


if __name__ == "__main__":
    main()
