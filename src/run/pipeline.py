"""The one data path as stages, each ending in files; src/main.py runs them for `bash run.sh exp042`.

    plan_run     config, dataset, variant folder, fingerprint                 (nothing written or removed)
    train_folds  input -> folds -> model: runs/<fp>/folds/<sub>/fold<k>_seed<s>.npz and models/<sub>/*.pt
    gather       fold files -> per sub-run: Predictions (src/run/results.py)
    combine      -> honest OOF (decoded per fold on the other folds; nested choice among sub-runs) and test
    write_run    oof.csv, test.csv, decoded.csv, per_<group>/, the submission, then test scores, metrics.json

A variant owns its folder: finished folds are reused while the fingerprint (resolved config, training code,
input data) is unchanged; otherwise training starts fresh in runs/<new fp>/ and the previous results stay in
place until the new run has finished.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from src import data as data_mod
from src import decode
from src import device as device_mod
from src.data import synth
from src.decode import submission
from src.decode.metric import score, trim
from src.decode.scoring import score_test
from src.device import configure_torch, pick_device
from src.errors import UserError
from src.io import WriteError, atomic_write, write_csv, write_json, write_npz, write_text
from src.run import checks, fingerprint, results
from src.run import config as config_mod
from src.run.config import variant_name
from src.run.experiments import DEFAULT_INPUT, ROOT, display_path, output_dir, run_name, submissions_root
from src.run.subruns import SubRun, n_seeds, sub_runs
from src.runlog import Log
from src.train.trainer import fit_folds


def parse_args(argv):
    p = argparse.ArgumentParser(description="Run an experiment on a dataset folder.")
    p.add_argument("--input", type=Path, default=None, help="dataset folder (default: input/synthetic)")
    p.add_argument("--smoke", action="store_true", help="same pipeline, tiny budget (2 epochs, 1 seed); variant @smoke")
    p.add_argument("--force", action="store_true", help="retrain this variant's folds even if they are finished")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value; each distinct set of overrides is its own variant (@set-<hash>)")
    p.add_argument("--name", default=None, help="variant name instead of the automatic one (@NAME): letters, "
                   "digits and . _ + = -, starting with a letter or digit; an empty name is refused")
    p.add_argument("--quiet", action="store_true", help="no console output (log.txt still written)")
    return p.parse_args(argv)


def check_compatible(cfg, ds) -> None:
    """Config choices that cannot work together, caught before anything trains."""
    m = cfg.model
    if cfg.adapt.coral_weight > 0 and m.name != "fusion":
        raise UserError("adapt.coral_weight > 0 needs model.name: fusion (CORAL acts on the fused representation)")
    if cfg.data.allow_missing and m.name != "fusion" and any((~p).any() for p in ds.present.values()):
        raise UserError("data.allow_missing: clips are missing from some encoders and only model.name: fusion "
                        "can mask missing encoders")
    if m.name == "prior" and cfg.decoder.name != "nearest":
        raise UserError("model.name: prior predicts fixed labels; use decoder.name: nearest")
    if m.name == "fusion":
        config_mod.resolve_top_n(m.top_n, len(ds.encoders))
    if cfg.train.epoch_selection == "valid_fold_score" and cfg.train.early_stopping:
        raise UserError("train.epoch_selection: valid_fold_score needs every epoch; set train.early_stopping: false")
    if cfg.train.epoch_selection == "valid_fold_score" and cfg.decoder.name != "threshold":
        raise UserError("train.epoch_selection: valid_fold_score picks epochs by the decoded score; "
                        "use decoder.name: threshold")
    if len(ds.fold_ids) < 2:
        raise UserError(f"{ds.root / 'train_metadata.csv'}: needs at least 2 folds, found {ds.fold_ids}")


def git_commit() -> str:
    """The checkout's commit, for the record; the fingerprint's code hashes are what decide a resume."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- stage 0: what this run is -------------------------------------------------------------------------
@dataclass
class Plan:
    exp_dir: Path
    cfg: object
    ds: data_mod.Dataset
    variant: str | None
    out: Path            # the variant's folder: results of its last finished run
    record: dict         # fingerprint.compute(): config, code, data, fingerprint
    device: torch.device
    args: argparse.Namespace

    @property
    def run_dir(self) -> Path:
        """Fold cache and checkpoints of this fingerprint."""
        return self.out / "runs" / self.record["fingerprint"]

    @property
    def name(self) -> str:
        return run_name(self.exp_dir, self.variant)

    @property
    def precision(self) -> str:
        """The precision training runs at on this device (train.precision auto resolved)."""
        return self.record["config"]["derived"]["precision"]


def resolved_config(cfg, ds, exp_dir: Path, variant, device: torch.device) -> dict:
    """The config with derived values (folds, widths, seeds, the precision that runs on this device): what the
    fingerprint and config.resolved.yaml hold."""
    out = {k: v for k, v in config_mod.to_dict(cfg).items() if k != "tune"}  # a search space computes nothing
    out["derived"] = {
        "experiment": Path(exp_dir).name, "variant": variant, "dataset": ds.name, "input_dir": str(ds.root.resolve()),
        "n_folds": len(ds.fold_ids), "folds": ds.fold_ids, "n_train": ds.n_train, "n_test": len(ds.test_files),
        "encoders": ds.encoders, "widths": {e: int(ds.features[e].shape[1]) for e in ds.encoders},
        "fold_seeds": {f"seed{s}": [model_seed(cfg, s, k) for k in ds.fold_ids] for s in range(cfg.train.seeds)},
        "precision": device_mod.resolve_precision(cfg.train.precision, device),
    }
    if cfg.model.name == "fusion" and not cfg.model.sweep_top_n:
        out["derived"]["top_n"] = config_mod.resolve_top_n(cfg.model.top_n, len(ds.encoders))
    return out


def plan_run(exp_dir: Path, args) -> Plan:
    """Everything validated and loaded before any file is touched: a bad value fails here, not mid-run."""
    exp_dir = Path(exp_dir).resolve()
    cfg = config_mod.load(exp_dir, args.sets, args.smoke)
    variant = variant_name(args.smoke, args.sets, args.name)
    input_dir = args.input or DEFAULT_INPUT
    if args.input is None and not input_dir.exists():
        print(f"generating the default synthetic dataset in {input_dir}")
        synth.write(input_dir, seed=0)
    ds = data_mod.load(input_dir, cfg.data.encoders, cfg.data.allow_missing)
    check_compatible(cfg, ds)
    device = pick_device(cfg.train.device)
    record = fingerprint.compute(resolved_config(cfg, ds, exp_dir, variant, device), exp_dir, data_mod.input_files(ds))
    out = output_dir(exp_dir, ds.name, variant)
    checks.preflight(cfg, ds, [out, submissions_root() / ds.name])  # before anything trains
    return Plan(exp_dir, cfg, ds, variant, out, record, device, args)


def previous_record(out: Path) -> dict | None:
    """The fingerprint record of the variant's current results, else of its newest earlier attempt."""
    try:
        fp = yaml.safe_load((out / "config.resolved.yaml").read_text())["run"]["fingerprint"]
        return json.loads((out / "runs" / fp / "fingerprint.json").read_text())
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        pass
    found = sorted((out / "runs").glob("*/fingerprint.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


class Clock:
    """Run time summed over invocations of one fingerprint (runs/<fp>/runtime.json), saved after each fold."""

    def __init__(self, path: Path, reset: bool):
        self.path, self.started = path, time.time()
        old = {} if reset or not path.is_file() else json.loads(path.read_text())
        self.base, self.invocations = old.get("runtime_s", 0.0), old.get("invocations", 0) + 1

    def save(self) -> dict:
        rec = {"runtime_s": round(self.base + time.time() - self.started, 1), "invocations": self.invocations}
        write_json(self.path, rec)
        return rec


# ---- stage 1: input -> folds -> model -------------------------------------------------------------------
def fold_path(plan: Plan, sub: SubRun, k: int, s: int, kind: str = "folds") -> Path:
    name = f"fold{k}_seed{s}" + (".npz" if kind == "folds" else ".pt")
    return plan.run_dir / kind / sub.name / name


def fold_signal(plan: Plan, path: Path, k: int) -> float:
    """A finished fold model's pruning signal (tune): its validation rows decoded with nothing fitted (the
    nearest legal label to the probabilities, head weight 0.5) and scored on those rows only."""
    valid, _, _ = results.read_fold(path)
    prob = decode.probabilities(valid, 0.5 if "presence" in valid else None)
    return score(decode.nearest(prob), plan.ds.labels[plan.ds.split(k)[1]])["score"]


def model_seed(cfg, s: int, k: int) -> int:
    """The seed of fold k's model in seed index s (train.seeds)."""
    return cfg.seed + 100 * s + k


def draw_seed(cfg, s: int) -> int:
    """The random control's prediction draws of seed index s: one per seed, shared by its fold models."""
    return cfg.seed + 100 * s


def fold_job(ds, cfg, s: int, k: int) -> tuple:
    """(train_rows, valid_rows, seed, draw_seed) of fold k in seed index s: a job of trainer.fit_folds."""
    return (*ds.split(k), model_seed(cfg, s, k), draw_seed(cfg, s))


def train_folds(plan: Plan, log: Log, clock: Clock, on_model=None) -> None:
    """Train every sub-run x seed x fold whose file is missing (all of them with --force).

    on_model(step, value), when given, runs after each fold x seed model (trained or cached): value is the
    mean fold_signal of the models so far; it may raise to stop the run (a pruned tune trial).
    A sub-run with a missing file trains all its fold x seed models at once (trainer.fit_folds), so on_model
    sees them once they are done. The sub-run is the resume unit: it retrains whole, so a resumed run holds
    the floats of an uninterrupted one, and only the missing files are written.
    """
    cfg, ds = plan.cfg, plan.ds
    _, _, subs = sub_runs(cfg, ds.encoders)
    todo = [(sub, s, k) for sub in subs for s in range(n_seeds(cfg, sub)) for k in ds.fold_ids]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=log.console, transient=True) as progress:
        task = progress.add_task("folds x seeds", total=len(todo))
        signals = []
        for sub in subs:
            jobs = [(s, k) for s in range(n_seeds(cfg, sub)) for k in ds.fold_ids]
            missing = {(s, k) for s, k in jobs if plan.args.force or not fold_path(plan, sub, k, s).is_file()}
            batch, share = {}, 0.0
            if missing:
                t0 = time.time()
                batch = dict(zip(jobs, fit_folds(ds, sub.cfg, sub.encoders, [fold_job(ds, cfg, s, k) for s, k in jobs],
                                                 plan.device, sub.prior)))
                share = (time.time() - t0) / len(jobs)
                log(f"{sub.name or 'model'}: {len(jobs)} fold x seed models trained at once in {time.time() - t0:.1f}s")
            for s, k in jobs:
                path = fold_path(plan, sub, k, s)
                if (s, k) in missing:
                    save_fold(plan, sub, s, k, batch[(s, k)], share, log)
                    clock.save()
                progress.advance(task)
                if on_model is not None:
                    signals.append(fold_signal(plan, path, k))
                    on_model(len(signals) - 1, float(np.mean(signals)))


def save_fold(plan: Plan, sub: SubRun, s: int, k: int, result: tuple, seconds: float, log: Log) -> None:
    """Check one fold x seed model's predictions, then write its checkpoint and fold file and log its history.

    seconds: its share of its sub-run's training time."""
    valid, test, state, extras = result
    label = f"{sub.name or 'model'} fold {k} seed {s}"
    checks.check_predictions({**valid, **test},  # NaN must stop the run, not reach a submission
                             f"{label} ({', '.join(sub.encoders) or sub.prior})")
    ckpt = {key: extras[key] for key in ("mean", "std", "widths", "draw_seed", "n_rows", "prior_config")
            if key in extras} | ({"state_dict": state} if state is not None else {})
    atomic_write(fold_path(plan, sub, k, s, "models"), lambda p: torch.save(ckpt, p))
    meta = {"seconds": round(seconds, 1), "history": extras.get("history"), "fixed_encoders": extras.get("fixed_encoders")}
    results.write_fold(fold_path(plan, sub, k, s), valid, test, meta, extras.get("projections") if s == 0 else None)
    for e, loss in enumerate((extras.get("history") or {}).get("train_loss", []), start=1):
        inner = extras["history"].get("inner_loss", [])
        log(f"{label} epoch {e}: train loss {loss:.4f}"
            + (f", inner-split loss {inner[e - 1]:.4f}" if e <= len(inner) else ""), file_only=True)
    note = f" fixed encoders {extras['fixed_encoders']}" if "fixed_encoders" in extras else ""
    log(f"{label}: trained in the batch ({meta['seconds']:.1f}s per model){note}")


# ---- stage 2: fold files -> predictions per sub-run ----------------------------------------------------
def gather(plan: Plan, sub: SubRun) -> results.Predictions:
    ds = plan.ds
    return results.Predictions.read(plan.run_dir / "folds" / sub.name, n_seeds(plan.cfg, sub),
                                    {k: ds.split(k)[1] for k in ds.fold_ids}, ds.n_train)


def write_projections(plan: Plan, sub: SubRun) -> None:
    """OOF projected encoder embeddings of seed 0, [N_train, E, shared_dim] float16, for CKA analysis.

    Written when the model saves projections in its fold files (fusion); nothing otherwise.
    """
    proj = None
    for k in plan.ds.fold_ids:
        with np.load(fold_path(plan, sub, k, 0)) as z:
            if "projections" not in z.files:
                return
            block = z["projections"]
        if proj is None:
            proj = np.zeros((plan.ds.n_train,) + block.shape[1:], np.float16)
        proj[plan.ds.split(k)[1]] = block
    write_npz(plan.out / "projections.npz", projections=proj, encoders=np.array(plan.ds.encoders),
              filenames=plan.ds.train_files.astype(str))


# ---- stage 4: outputs -----------------------------------------------------------------------------------
def write_predictions(folder: Path, ds, res: results.Decoded) -> None:
    """oof.csv and test.csv (probabilities, parts, gates) and decoded.csv (every clip's decoded label)."""
    write_csv(folder / "oof.csv", data_mod.prediction_frame(ds.train_files, res.oof_prob, res.oof, ds.encoders,
                                                            ds.folds))
    write_csv(folder / "test.csv", data_mod.prediction_frame(ds.test_files, res.test_prob, res.test, ds.encoders))
    results.write_decoded(folder, ds.train_files, ds.folds, res.oof_pred, ds.test_files, res.test_pred)


def group_table(entries: dict, group: str) -> pd.DataFrame:
    """One row per sub-run (encoder, baseline or n): seed-averaged OOF/test figures and the spread over seeds."""
    rows = []
    for name, m in entries.items():
        row = {group.split("_", 1)[1]: name}
        for part in ("oof", "test"):
            if m.get(part):
                row.update({f"{part}_{k}": m[part][k] for k in ("acc_presence", "acc_salience", "score")})
        rows.append(row | m["seed_spread"])
    return pd.DataFrame(rows)


def scored(res: results.Decoded, ds) -> dict:
    """Scores of one decoded result: OOF, in-sample-threshold OOF, folds, per seed; test after the files exist."""
    seeds = [{"seed": i, "oof": trim(score(o, ds.labels))} for i, (o, _) in enumerate(res.seed_preds)]
    test = score_test(ds.root, ds.test_files, [res.test_pred] + [t for _, t in res.seed_preds])
    if test is not None:
        for s, t in zip(seeds, test[1:]):
            s["test"] = t
    return {"oof": trim(score(res.oof_pred, ds.labels)), "oof_thresholds_in_sample": trim(score(res.insample, ds.labels)),
            "folds": decode.fold_scores(res.oof_pred, ds.labels, ds.folds), "seeds": seeds,
            "test": test[0] if test is not None else None, "protocols": res.protocols}


def write_run(plan: Plan, final: results.Decoded, evaluated: dict, facts: dict, group, histories: dict,
              clock: Clock) -> results.RunRecord:
    """Predictions and the submission first, then (reading test labels only now) every score."""
    ds = plan.ds
    write_predictions(plan.out, ds, final)
    for name, res in evaluated.items():
        write_predictions(plan.out / group / name, ds, res)
    paths = submission.write(submissions_root() / ds.name, plan.name, ds.test_files, final.test_pred,
                             ds.test_files, ds.template_keys)
    sub_runs = {}
    for name, res in evaluated.items():
        m = scored(res, ds)
        sub_runs[name] = {"oof": m["oof"], "test": m["test"], "protocols": m["protocols"],
                          "seed_spread": results.seed_spread(m["seeds"])}
    if group is not None:
        write_csv(plan.out / f"{group}.csv", group_table(sub_runs, group))
    timing = clock.save()
    record = results.RunRecord(
        kind="experiment", decoder=final.decoder, **scored(final, ds), group=group, sub_runs=sub_runs,
        **facts, history=histories, runtime_s=timing["runtime_s"], invocations=timing["invocations"],
        smoke=plan.cfg.smoke, variant=plan.variant, precision=plan.precision, device=device_mod.describe(plan.device))
    record.write(plan.out)
    resolved = plan.record["config"] | {"run": {
        "fingerprint": plan.record["fingerprint"], "git_commit": git_commit(), "overrides": plan.args.sets,
        "smoke": plan.args.smoke, "variant": plan.variant, "device": str(plan.device), "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv), "submission": display_path(paths["json"])}}
    write_text(plan.out / "config.resolved.yaml", config_mod.dump(resolved))
    return record


def remove_stale(plan: Plan, log: Log) -> None:
    """After a finished run: the fold caches of this variant's other fingerprints go (the run replaces them)."""
    stale = [p for p in (plan.out / "runs").iterdir() if p.is_dir() and p != plan.run_dir]
    for path in stale:
        shutil.rmtree(path)
    if stale:
        log(f"removed the superseded fold caches of this variant: {', '.join(p.name for p in stale)}", file_only=True)


def show(log: Log, title: str, rec: results.RunRecord, in_sample: bool = False) -> None:
    table = Table(title=title)
    for col in ("rows", "n", "ACC_presence", "ACC_salience", "score"):
        table.add_column(col, justify="right" if col != "rows" else "left")
    fmt = lambda m: [str(m["n"]), f"{m['acc_presence']:.4f}", f"{m['acc_salience']:.4f}", f"{m['score']:.4f}"]
    for f in rec.folds:
        table.add_row(f"fold {f['fold']}", *fmt(f))
    table.add_row("[bold]OOF[/bold]", *fmt(rec.oof))
    if rec.test:
        table.add_row("[bold]test[/bold]", *fmt(rec.test))
    log.console.print(table)
    dec = rec.decoder
    if dec["name"] == "threshold":
        log(f"decoder: alpha {dec['alpha']}, beta {dec['beta']}, head weight {dec['head_weight']}"
            + (f", epoch {dec['epoch']}" if "epoch" in dec else "") + " (fitted on all OOF); test rows: "
            + ("each fold model decoded with its fold's thresholds, then a vote; " if dec["test_scheme"] == "vote"
               else "the fold-mean decoded with these; ")
            + ("OOF above fits each fold on its own rows (the organisers' optimistic protocol)" if in_sample
               else "OOF above uses per-fold refits on the other folds"))
    if rec.protocols:
        log(decode.describe_protocols(rec.protocols))
    if rec.chosen_per_fold:
        log(f"sub-run per fold, chosen on the other folds' OOF: {rec.chosen_per_fold}; for test: "
            f"{rec.choice_for_test} (its OOF {rec.oof_choice_in_sample['score']:.4f} is in-sample: "
            "the choice saw those rows)")
    for name, m in rec.sub_runs.items():
        log(f"  {rec.group} {name}: OOF score {m['oof']['score']:.4f}"
            + (f", test {m['test']['score']:.4f}" if m["test"] else ""))
        if m["protocols"]:
            log("    " + decode.describe_protocols(m["protocols"]).replace("\n", "\n    "))


# ---- the whole run -------------------------------------------------------------------------------------
def run_plan(plan: Plan, on_model=None) -> Path:
    cfg, ds, out = plan.cfg, plan.ds, plan.out
    previous = previous_record(out)
    resume = (plan.run_dir / "fingerprint.json").is_file() and not plan.args.force
    log = Log(out / "log.txt", quiet=plan.args.quiet)
    configure_torch(cfg.train.workers, plan.device)
    log(f"[bold]{plan.name}[/bold] on {ds.name}: {ds.n_train} train clips in {len(ds.fold_ids)} folds, "
        f"{len(ds.test_files)} test clips, encoders {', '.join(ds.encoders)}; device {plan.device}, precision "
        f"{plan.precision}{' (auto)' if cfg.train.precision == 'auto' else ''}; fingerprint {plan.record['fingerprint']}"
        + (" (resuming finished folds)" if resume else "") + (" [smoke]" if cfg.smoke else ""))
    log(f"device: {device_mod.describe(plan.device)}", file_only=True)
    warning = device_mod.precision_warning(cfg.train.precision, plan.device)
    if warning:
        log(f"[yellow]{warning}[/yellow]")
    if plan.args.force:
        log("--force: retraining every fold of this variant; its previous results stay until this run finishes")
    elif not resume and previous is not None:
        what = fingerprint.changes(previous, plan.record) or ["an earlier fold cache was incomplete"]
        log("starting fresh (previous results stay until this run finishes): " + "; ".join(what))
    if cfg.model.name == "fusion":
        log(config_mod.describe_top_n(cfg.model, len(ds.encoders)))
    if plan.device.type == "cuda":
        log("note: on CUDA some kernels are nondeterministic; the last digits of OOF files may vary")
    write_json(plan.run_dir / "fingerprint.json", plan.record)
    clock = Clock(plan.run_dir / "runtime.json", reset=plan.args.force)
    train_folds(plan, log, clock, on_model)

    group, rule, subs = sub_runs(cfg, ds.encoders)
    preds = {sub.name: gather(plan, sub) for sub in subs}
    if rule == "single":
        write_projections(plan, subs[0])
    final, evaluated, facts = results.combine(preds, rule, ds.labels, ds.folds, cfg.decoder)
    record = write_run(plan, final, evaluated, facts, group, {s.name or "model": preds[s.name].history for s in subs},
                       clock)
    remove_stale(plan, log)
    show(log, f"{plan.name} on {ds.name}", record, cfg.decoder.fit == "per_fold_in_sample")
    if record.resumes:
        log(f"run time {record.runtime_s} s over {record.invocations} invocations")
    log(f"wrote {display_path(out)} and {display_path(submissions_root() / ds.name / plan.name)}.json")
    return out


def execute(plan: Plan, on_model=None) -> Path:
    """run_plan, with a late write failure (disk filled, permissions changed) said as how to finish."""
    try:
        return run_plan(plan, on_model)
    except WriteError as err:
        raise checks.write_failed(err) from None


def run_variant(exp_dir, argv=None, on_model=None) -> Path:
    """One run from command-line arguments -> its output folder; errors raise (UserError) instead of exiting.

    For callers in this process (src/tune.py); on_model: see train_folds.
    """
    return execute(plan_run(Path(exp_dir), parse_args(argv)), on_model)
