"""The one data path: input -> folds -> model -> OOF -> decode -> submission. Every exp/*/run.py calls `run`.

    bash run.sh exp042 [--input DIR] [--smoke] [--force] [--set key.path=value ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from src import config as config_mod
from src import data as data_mod
from src import decode, submission, synth
from src.errors import UserError, cli
from src.experiments import DEFAULT_INPUT, ROOT, SUBMISSIONS, display_path
from src.io import atomic_write, write_csv, write_json, write_npz, write_text
from src.labels import EMOTIONS, SALIENCE
from src.metric import score
from src.score import read_label_file
from src.train import configure_torch, fit_fold, pick_device



class Log:
    """Console (rich) plus timestamped lines appended to log.txt."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self.console = Console(stderr=False, quiet=quiet, highlight=False)
        self.path = path

    def __call__(self, msg: str) -> None:
        self.console.print(msg)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {Text.from_markup(msg).plain}\n")


def parse_args(argv):
    p = argparse.ArgumentParser(description="Run an experiment on a dataset folder.")
    p.add_argument("--input", type=Path, default=None, help="dataset folder (default: input/synthetic)")
    p.add_argument("--smoke", action="store_true", help="same pipeline, tiny budget (2 epochs, 1 seed)")
    p.add_argument("--force", action="store_true", help="retrain from scratch even if folds are finished")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--quiet", action="store_true", help="no console output (log.txt still written)")
    return p.parse_args(argv)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
    if m.name == "fusion" and m.top_n != "all" and m.top_n < 1:
        raise UserError(f"model.top_n: {m.top_n} must be >= 1 or all")
    if len(ds.fold_ids) < 2:
        raise UserError(f"{ds.root / 'train_metadata.csv'}: needs at least 2 folds, found {ds.fold_ids}")


def sub_runs(cfg, ds) -> tuple[str | None, list[tuple[str, list[str], str | None, object]]]:
    """(group name, [(sub name, encoders, prior kind, config)]): what one experiment trains."""
    m = cfg.model
    if m.name == "prior":
        return "per_baseline", [(k, [], k, cfg) for k in m.priors]
    if m.name == "mlp" and m.inputs in ("per_encoder", "late_mean"):
        return "per_encoder", [(e, [e], None, cfg) for e in ds.encoders]
    if m.name == "fusion" and m.sweep_top_n:
        return "per_top_n", [(str(n), ds.encoders, None, replace(cfg, model=replace(m, top_n=n)))
                             for n in range(1, len(ds.encoders) + 1)]
    return None, [("", ds.encoders, None, cfg)]


class Runner:
    def __init__(self, exp_dir: Path, argv=None):
        self.started = time.time()
        self.args = parse_args(argv)
        self.exp_dir = Path(exp_dir).resolve()
        self.exp_name = self.exp_dir.name
        self.cfg = config_mod.load(self.exp_dir, self.args.sets, self.args.smoke)
        input_dir = self.args.input or DEFAULT_INPUT
        if self.args.input is None and not input_dir.exists():
            Console().print(f"generating the default synthetic dataset in {input_dir}")
            synth.write(input_dir, seed=0)
        self.ds = data_mod.load(input_dir, self.cfg.data.encoders, self.cfg.data.allow_missing)
        check_compatible(self.cfg, self.ds)
        self.out = self.exp_dir / "output" / self.ds.name
        self.device = pick_device(self.cfg.train.device)

    def resolved(self) -> dict:
        cfg = config_mod.to_dict(self.cfg)
        ds = self.ds
        cfg["derived"] = {
            "experiment": self.exp_name, "dataset": ds.name, "input_dir": str(ds.root.resolve()),
            "n_folds": len(ds.fold_ids), "folds": ds.fold_ids, "n_train": ds.n_train, "n_test": len(ds.test_files),
            "encoders": ds.encoders, "widths": {e: int(ds.features[e].shape[1]) for e in ds.encoders},
            "fold_seeds": {f"seed{s}": [self.cfg.seed + 100 * s + k for k in ds.fold_ids]
                           for s in range(self.cfg.train.seeds)},
        }
        return cfg

    def prepare_output(self) -> bool:
        """Resume when the resolved config is unchanged, otherwise start clean; returns True when resuming."""
        resolved = self.resolved()
        fingerprint = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]
        path = self.out / "config.resolved.yaml"
        old = yaml.safe_load(path.read_text()) if path.is_file() else None
        resume = bool(old) and old.get("run", {}).get("fingerprint") == fingerprint and not self.args.force
        if self.out.exists() and not resume:
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        resolved["run"] = {"fingerprint": fingerprint, "git_commit": git_commit(), "overrides": self.args.sets,
                           "smoke": self.args.smoke, "device": str(self.device), "command": " ".join(sys.argv)}
        write_text(path, config_mod.dump(resolved))
        return resume

    # ---- training ------------------------------------------------------------------------------------
    def train_sub(self, sub: str, encoders: list[str], prior, cfg, progress, task) -> list[tuple[dict, dict]]:
        """Every fold x seed of one sub-run (cached on disk) -> per seed (OOF parts [N_train], test parts)."""
        ds = self.ds
        cache = self.out / "folds" / sub
        per_seed = []
        for s in range(cfg.train.seeds if prior is None else 1):
            oof, test = {}, {}
            for k in ds.fold_ids:
                path = cache / f"fold{k}_seed{s}.npz"
                train_rows, valid_rows = ds.split(k)
                if not path.is_file():
                    t0 = time.time()
                    valid, tst, state, extras = fit_fold(ds, cfg, encoders, train_rows, valid_rows,
                                                         cfg.seed + 100 * s + k, self.device, prior,
                                                         draw_seed=cfg.seed + 100 * s)
                    if state is not None:
                        atomic_write(self.out / "models" / sub / f"fold{k}_seed{s}.pt",
                                     lambda p, st=state: torch.save(st, p))
                    arrays = {f"valid_{n}": v for n, v in valid.items()} | {f"test_{n}": v for n, v in tst.items()}
                    if "projections" in extras and s == 0:
                        arrays["valid_projections"] = extras["projections"]
                    write_npz(path, **arrays)
                    note = f" fixed encoders {extras['fixed_encoders']}" if "fixed_encoders" in extras else ""
                    self.log(f"{sub or 'model'} fold {k} seed {s}: trained in {time.time() - t0:.1f}s{note}")
                with np.load(path) as z:
                    for name in z.files:
                        kind, part = name.split("_", 1)
                        if kind == "valid" and part != "projections":
                            oof.setdefault(part, np.zeros((ds.n_train,) + z[name].shape[1:], np.float32))[valid_rows] = z[name]
                        elif kind == "test":
                            test.setdefault(part, []).append(z[name])
                progress.advance(task)
            per_seed.append((oof, {p: np.stack(v) for p, v in test.items()}))  # test parts [K folds, n_test, ...]
        return per_seed

    def collect_projections(self, subs) -> None:
        """OOF projected encoder embeddings of seed 0, [N_train, E, shared_dim] float16, for CKA analysis."""
        name = subs[0][0] if len(subs) == 1 else None
        if name is None or self.cfg.model.name != "fusion":
            return
        proj = None
        for k in self.ds.fold_ids:
            with np.load(self.out / "folds" / name / f"fold{k}_seed0.npz") as z:
                block = z["valid_projections"]
            if proj is None:
                proj = np.zeros((self.ds.n_train,) + block.shape[1:], np.float16)
            proj[self.ds.split(k)[1]] = block
        write_npz(self.out / "projections.npz", projections=proj, encoders=np.array(self.ds.encoders),
                  filenames=self.ds.train_files.astype(str))

    # ---- decoding and scoring ------------------------------------------------------------------------
    def decode(self, oof: dict, test: dict):
        """Honest OOF predictions, test predictions, decoder record, probabilities used."""
        ds, dc = self.ds, self.cfg.decoder
        if dc.name == "nearest":
            params = {"name": "nearest"}
            oof_pred, test_pred = nearest(oof["prob"]), nearest(test["prob"].mean(0))
            insample = oof_pred
        else:
            oof_pred, per_fold, params = decode.cross_fit(oof, ds.labels, ds.folds, dc.grid, dc.head_weights)
            params = {"name": "threshold", **params, "per_fold": per_fold, "test_scheme": dc.test_scheme}
            test_pred = decode.decode_test(test, params, per_fold, dc.test_scheme)
            insample = decode.apply_decoder(oof, params)
        weight, test = params.get("head_weight"), {p: v.mean(0) for p, v in test.items()}
        return oof_pred, test_pred, params, insample, decode.probabilities(oof, weight), decode.probabilities(test, weight)

    def evaluate(self, per_seed) -> dict:
        """Seed-averaged parts -> predictions, frames, metrics (without test scores)."""
        ds = self.ds
        oof = {p: np.mean([s[0][p] for s in per_seed], 0) for p in per_seed[0][0]}
        test = {p: np.mean([s[1][p] for s in per_seed], 0) for p in per_seed[0][1]}
        oof_pred, test_pred, params, insample, oof_prob, test_prob = self.decode(oof, test)
        test = {p: v.mean(0) for p, v in test.items()}  # mean over folds for test.csv
        seeds = []
        for i, (o, t) in enumerate(per_seed):
            s_oof, s_test, *_ = self.decode(o, t)
            seeds.append({"seed": i, "oof": trim(score(s_oof, ds.labels)), "_test_pred": s_test})
        metrics = {"oof": trim(score(oof_pred, ds.labels)),
                   "oof_thresholds_in_sample": trim(score(insample, ds.labels)),
                   "folds": decode.fold_scores(oof_pred, ds.labels, ds.folds),
                   "decoder": params, "seeds": seeds}
        return {"oof": oof, "test": test, "oof_pred": oof_pred, "test_pred": test_pred,
                "oof_prob": oof_prob, "test_prob": test_prob, "metrics": metrics}

    def frames(self, res: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        ds = self.ds
        oof = pd.DataFrame({"filename": ds.train_files, "fold": ds.folds})
        test = pd.DataFrame({"filename": ds.test_files})
        for frame, prob, parts in ((oof, res["oof_prob"], res["oof"]), (test, res["test_prob"], res["test"])):
            for j, e in enumerate(EMOTIONS):
                frame[f"prob_{e}"] = prob[:, j]
            for part in ("presence", "salience"):
                if part in parts:
                    for j, e in enumerate(EMOTIONS):
                        frame[f"{part}_{e}"] = parts[part][:, j]
            if "gate" in parts:
                for j, enc in enumerate(ds.encoders):
                    frame[f"gate_{enc}"] = parts["gate"][:, j]
        return oof, test

    def write_results(self, folder: Path, res: dict) -> None:
        oof, test = self.frames(res)
        write_csv(folder / "oof.csv", oof)
        write_csv(folder / "test.csv", test)

    def score_test(self, res: dict) -> None:
        """Read test_labels.csv (only now, after test.csv is written) and add test figures."""
        labels_path = self.ds.root / "test_labels.csv"
        if not labels_path.is_file():
            for s in res["metrics"]["seeds"]:
                s.pop("_test_pred", None)
            return
        truth = read_label_file(labels_path)
        keys = [data_mod.strip_extension(f) for f in self.ds.test_files]
        missing = [k for k in keys if k not in truth]
        if missing:
            raise UserError(f"{labels_path}: {len(missing)} test clips have no label (e.g. {missing[0]})")
        true = np.array([truth[k] for k in keys])
        res["metrics"]["test"] = trim(score(res["test_pred"], true))
        for s in res["metrics"]["seeds"]:
            s["test"] = trim(score(s.pop("_test_pred"), true))

    # ---- the whole run -------------------------------------------------------------------------------
    def run(self) -> Path:
        resume = self.prepare_output()
        self.log = Log(self.out / "log.txt", quiet=self.args.quiet)
        cfg, ds = self.cfg, self.ds
        configure_torch(cfg.train.num_threads, self.device)
        self.log(f"[bold]{self.exp_name}[/bold] on {ds.name}: {ds.n_train} train clips in {len(ds.fold_ids)} folds, "
                 f"{len(ds.test_files)} test clips, encoders {', '.join(ds.encoders)}; device {self.device}"
                 + (" (resuming finished folds)" if resume else "") + (" [smoke]" if cfg.smoke else ""))
        if self.device.type == "cuda":
            self.log("note: on CUDA some kernels are nondeterministic; the last digits of OOF files may vary")
        group, subs = sub_runs(cfg, ds)
        n_tasks = sum(len(ds.fold_ids) * (cfg.train.seeds if p is None else 1) for _, _, p, _ in subs)
        results = {}
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.log.console, transient=True) as progress:
            task = progress.add_task("folds x seeds", total=n_tasks)
            for name, encoders, prior, sub_cfg in subs:
                results[name] = self.train_sub(name, encoders, prior, sub_cfg, progress, task)
        self.collect_projections(subs)

        if group is None:
            final = self.evaluate(results[""])
        else:
            evaluated = {name: self.evaluate(per_seed) for name, per_seed in results.items()}
            for name, res in evaluated.items():
                self.write_results(self.out / group / name, res)
            if cfg.model.inputs == "late_mean" and cfg.model.name == "mlp":
                # late fusion: per seed, the mean of the per-encoder probabilities
                per_seed = [({"prob": np.mean([results[n][s][0]["prob"] for n in results], 0)},
                             {"prob": np.mean([results[n][s][1]["prob"] for n in results], 0)})
                            for s in range(cfg.train.seeds)]
                final = self.evaluate(per_seed)
            else:
                best = max(evaluated, key=lambda n: evaluated[n]["metrics"]["oof"]["score"])
                final = evaluated[best]
                final["metrics"]["best_" + group.split("_", 1)[1]] = best
            final["metrics"][group] = {}

        self.write_results(self.out, final)
        paths = submission.write(SUBMISSIONS / ds.name, self.exp_name, ds.test_files, final["test_pred"],
                                 ds.test_files, ds.template_keys)
        self.score_test(final)
        if group is not None:
            for name, res in evaluated.items():
                if res is not final:
                    self.score_test(res)
                final["metrics"][group][name] = {**{k: res["metrics"][k] for k in ("oof", "test") if k in res["metrics"]},
                                                 "seed_spread": seed_spread(res["metrics"]["seeds"])}
            write_csv(self.out / f"{group}.csv", group_table(final["metrics"][group], group))
        metrics = {**final["metrics"], "runtime_s": round(time.time() - self.started, 1), "smoke": cfg.smoke}
        write_json(self.out / "metrics.json", metrics)
        self.show(metrics, group)
        if cfg.model.name == "fusion":  # the analysis figures, regenerable later with src/report.py
            from src.report import write_report
            self.log(f"report: {write_report(self.exp_dir, self.ds.root)}")
        self.log(f"wrote {display_path(self.out)} and {display_path(paths['json'])}")
        return self.out

    def show(self, metrics: dict, group) -> None:
        table = Table(title=f"{self.exp_name} on {self.ds.name}")
        for col in ("rows", "n", "ACC_presence", "ACC_salience", "score"):
            table.add_column(col, justify="right" if col != "rows" else "left")
        fmt = lambda m: [str(m["n"]), f"{m['acc_presence']:.4f}", f"{m['acc_salience']:.4f}", f"{m['score']:.4f}"]
        for f in metrics["folds"]:
            table.add_row(f"fold {f['fold']}", *fmt(f))
        table.add_row("[bold]OOF[/bold]", *fmt(metrics["oof"]))
        if "test" in metrics:
            table.add_row("[bold]test[/bold]", *fmt(metrics["test"]))
        self.log.console.print(table)
        dec = metrics["decoder"]
        if dec["name"] == "threshold":
            self.log(f"decoder: alpha {dec['alpha']}, beta {dec['beta']}, head weight {dec['head_weight']} "
                     f"(fitted on all OOF); OOF above uses per-fold refits on the other folds; test rows: {dec['test_scheme']}")
        if group is not None and group in metrics:
            for name, m in metrics[group].items():
                self.log(f"  {group} {name}: OOF score {m['oof']['score']:.4f}"
                         + (f", test {m['test']['score']:.4f}" if "test" in m else ""))


def seed_spread(seeds: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each OOF (and test) figure."""
    out = {}
    for part in ("oof", "test"):
        if all(part in s for s in seeds):
            for key in ("acc_presence", "acc_salience", "score"):
                values = [s[part][key] for s in seeds]
                out[f"{part}_{key}_mean"], out[f"{part}_{key}_std"] = round(float(np.mean(values)), 6), round(float(np.std(values)), 6)
    return out


def group_table(entries: dict, group: str) -> pd.DataFrame:
    """One row per sub-run (encoder, baseline or n): seed-averaged OOF/test figures and the spread over seeds."""
    rows = []
    for name, m in entries.items():
        row = {group.split("_", 1)[1]: name}
        for part in ("oof", "test"):
            if part in m:
                row.update({f"{part}_{k}": m[part][k] for k in ("acc_presence", "acc_salience", "score")})
        rows.append(row | m["seed_spread"])
    return pd.DataFrame(rows)


def trim(m: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}


def nearest(prob: np.ndarray) -> np.ndarray:
    """The configuration whose salience vector is closest to each probability vector."""
    return np.argmin(((prob[:, None, :] - SALIENCE[None]) ** 2).sum(-1), 1)


@cli
def run(exp_dir, argv=None) -> Path:
    """Entry point of every exp/*/run.py."""
    return Runner(Path(exp_dir), argv).run()
