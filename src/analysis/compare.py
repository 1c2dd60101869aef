"""Paired comparison of two arms trained at the same seeds: per-seed differences and a bootstrap over actors.

    bash run.sh compare exp040 exp043 [--input DIR] [--boot 2000]
An arm is an experiment id, optionally with a variant (exp040@smoke), or a sub-run of it as ID:NAME
(exp041:3 is n = 3 of the top-n sweep).
Each seed of each arm is decoded from its fold files by the pipeline's own rules (src/run/results.py), so the
per-seed difference B - A pairs models that shared batch order and initial weights. Test figures are scored only here, from predictions already written, and both test schemes are shown.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from src import data as data_mod
from src.data import read_label_file
from src.decode.metric import score
from src.errors import UserError, cli
from src.labels import IS_BLEND
from src.run import config as config_mod
from src.run import results
from src.run.experiments import DEFAULT_INPUT, output_dir, resolve_run

SCHEMES = ("vote", "mean")


@dataclass
class Arm:
    name: str
    seed: int
    preds: results.Predictions
    decoder: object    # the arm's decoder config


@dataclass
class Truth:
    labels: np.ndarray   # int [N_train]
    folds: np.ndarray    # int [N_train]
    actors: np.ndarray   # str [N_train]
    test: np.ndarray | None  # int [N_test], None without test_labels.csv


def load_truth(input_dir: Path) -> Truth:
    root = Path(input_dir)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found")
    ds = data_mod.load_labels(root)  # labels and folds only: no feature file is read
    test = None
    if (root / "test_labels.csv").is_file():
        truth = read_label_file(root / "test_labels.csv")
        keys = [data_mod.strip_extension(f) for f in ds.test_files]
        if any(k not in truth for k in keys):
            raise UserError(f"{root / 'test_labels.csv'}: some test clips have no label")
        test = np.array([truth[k] for k in keys])
    return Truth(ds.labels, ds.folds, ds.actors, test)


def load_arm(name: str, input_dir: Path, truth: Truth) -> Arm:
    """Every seed's OOF and per-fold test parts of one arm, from its run's fold files."""
    run, _, sub = name.partition(":")
    exp_dir, variant = resolve_run(run)
    out = output_dir(exp_dir, Path(input_dir).name, variant)
    config_path = out / "config.resolved.yaml"
    if not config_path.is_file():
        raise UserError(f"{run}: no outputs for dataset '{Path(input_dir).name}' (no {config_path})")
    resolved = yaml.safe_load(config_path.read_text())
    cfg = config_mod.from_resolved(resolved)
    folds_dir = out / "runs" / resolved["run"]["fingerprint"] / "folds" / sub
    fold_rows = {int(k): np.flatnonzero(truth.folds == k) for k in np.unique(truth.folds)}
    seeds = cfg.train.seeds
    missing = [p for s in range(seeds) for k in fold_rows if not (p := folds_dir / f"fold{k}_seed{s}.npz").is_file()]
    if missing:
        raise UserError(f"{name}: missing {missing[0]} (unfinished run, or not a sub-run name)")
    if cfg.decoder.name != "threshold":
        raise UserError(f"{name}: decoder '{cfg.decoder.name}' is not compared here (threshold decoders only)")
    return Arm(name, cfg.seed, results.Predictions.read(folds_dir, seeds, fold_rows, len(truth.labels)), cfg.decoder)


def evaluate(arm: Arm, oof: dict, test: dict, truth: Truth) -> dict:
    """Honest OOF predictions and scores; test scores under each scheme, and the predicted blend rates."""
    res = {}
    for scheme in SCHEMES:
        dec = results.decode_parts(oof, test, truth.labels, truth.folds, replace(arm.decoder, test_scheme=scheme))
        res.setdefault("oof_pred", dec.oof_pred)
        res.setdefault("oof", score(dec.oof_pred, truth.labels)["score"])
        res.setdefault("oof_blend_rate", float(IS_BLEND[dec.oof_pred].mean()))
        res[f"test_blend_rate_{scheme}"] = float(IS_BLEND[dec.test_pred].mean())
        if truth.test is not None:
            res[f"test_{scheme}"] = score(dec.test_pred, truth.test)["score"]
    return res


def actor_bootstrap(pred_a: np.ndarray, pred_b: np.ndarray, truth: Truth, n_boot: int, seed: int = 0) -> dict:
    """Paired bootstrap over actors of the OOF score difference B - A: observed, 95% interval, P(B <= A)."""
    actors = np.unique(truth.actors)
    rows_of = [np.flatnonzero(truth.actors == a) for a in actors]
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        rows = np.concatenate([rows_of[j] for j in rng.integers(0, len(actors), len(actors))])
        diffs[i] = score(pred_b[rows], truth.labels[rows])["score"] - score(pred_a[rows], truth.labels[rows])["score"]
    observed = score(pred_b, truth.labels)["score"] - score(pred_a, truth.labels)["score"]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(observed), "ci95": [float(low), float(high)], "p_b_not_better": float((diffs <= 0).mean()),
            "n_actors": len(actors), "n_boot": n_boot}


def compare(name_a: str, name_b: str, input_dir: Path, n_boot: int = 2000) -> dict:
    """Per-seed paired differences (B - A, mean and std over seeds) and the actor bootstrap of the seed-mean OOF."""
    truth = load_truth(input_dir)
    a, b = load_arm(name_a, input_dir, truth), load_arm(name_b, input_dir, truth)
    if (a.seed, len(a.preds.oof)) != (b.seed, len(b.preds.oof)):
        raise UserError(f"{name_a} (seed {a.seed}, {len(a.preds.oof)} seeds) and {name_b} (seed {b.seed}, "
                        f"{len(b.preds.oof)} seeds) are not paired: they need the same seed and number of seeds")
    per_seed = [(evaluate(a, oa, ta, truth), evaluate(b, ob, tb, truth))
                for oa, ta, ob, tb in zip(a.preds.oof, a.preds.test, b.preds.oof, b.preds.test)]
    keys = [k for k in per_seed[0][0] if k != "oof_pred"]
    paired = {k: np.array([rb[k] - ra[k] for ra, rb in per_seed]) for k in keys}
    seed_mean = {arm.name: evaluate(arm, *arm.preds.mean(), truth) for arm in (a, b)}
    return {
        "a": name_a, "b": name_b, "n_seeds": len(per_seed),
        "per_seed": {k: {"a": [ra[k] for ra, _ in per_seed], "b": [rb[k] for _, rb in per_seed],
                         "diff_mean": float(v.mean()), "diff_std": float(v.std())} for k, v in paired.items()},
        "seed_mean": {n: {k: v for k, v in r.items() if k != "oof_pred"} for n, r in seed_mean.items()},
        "bootstrap_oof": actor_bootstrap(seed_mean[name_a]["oof_pred"], seed_mean[name_b]["oof_pred"], truth, n_boot),
    }


def describe(res: dict) -> str:
    a, b, n = res["a"], res["b"], res["n_seeds"]
    lines = [f"{b} - {a}, paired per seed ({n} seeds; mean +- std of the per-seed differences):"]
    for k, v in res["per_seed"].items():
        lines.append(f"  {k:22s} {v['diff_mean']:+.4f} +- {v['diff_std']:.4f}   "
                     f"(A {np.mean(v['a']):.4f}, B {np.mean(v['b']):.4f})")
    bs = res["bootstrap_oof"]
    lines.append(f"seed-mean OOF: {b} - {a} = {bs['diff']:+.4f}, 95% actor bootstrap [{bs['ci95'][0]:+.4f}, "
                 f"{bs['ci95'][1]:+.4f}] ({bs['n_actors']} actors, {bs['n_boot']} resamples), "
                 f"P(B <= A) {bs['p_b_not_better']:.3f}")
    for name, r in res["seed_mean"].items():
        tests = ", ".join(f"test ({s}) {r[f'test_{s}']:.4f}" for s in SCHEMES if f"test_{s}" in r)
        lines.append(f"seed-mean {name}: OOF {r['oof']:.4f}" + (f", {tests}" if tests else "")
                     + f"; predicted blend rate OOF {r['oof_blend_rate']:.3f}, test vote "
                     f"{r['test_blend_rate_vote']:.3f}, test mean {r['test_blend_rate_mean']:.3f}")
    return "\n".join(lines)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="Paired comparison of two experiments trained at the same seeds.")
    p.add_argument("a", help="baseline arm: experiment id, or ID:SUBRUN (exp041:3)")
    p.add_argument("b", help="the arm compared with it")
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="dataset folder (default: input/synthetic)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples over actors")
    args = p.parse_args(argv)
    if args.boot < 1:
        raise UserError(f"--boot {args.boot}: must be >= 1")
    print(describe(compare(args.a, args.b, args.input, args.boot)))


if __name__ == "__main__":
    main()
