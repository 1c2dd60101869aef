"""Predict without training: a finished run's fold checkpoints on a dataset folder's test clips.

    bash run.sh predict exp042[@variant] --input DIR [--trained-on DATASET]

Loads runs/<fingerprint>/models/ of the run (weights, standardisation statistics, generator state), averages
folds and seeds exactly as the run did, decodes with the decoder fitted at train time (metrics.json), and
writes <run>/predict/<DIR name>/test.csv and submissions/<DIR name>/<run>.predicted.csv|json|zip
(`<run>.from-<DATASET>.predicted` when the run was trained on another dataset).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml

from src import data as data_mod
from src import decode
from src.decode import submission
from src.device import configure_torch, pick_device
from src.errors import UserError, cli
from src.io import write_csv, write_json
from src.run import config as config_mod
from src.run import results
from src.run.experiments import (DEFAULT_INPUT, display_path, output_dir, outputs_of, resolve_run, run_name,
                                 submissions_root)
from src.run.subruns import n_seeds, sub_runs
from src.train.trainer import predict_checkpoint


def find_run(exp_dir: Path, variant, dataset: str, trained_on: str | None) -> Path:
    """The run's output folder: trained on `trained_on`, else on DIR's dataset, else the only one there is."""
    if trained_on:
        return output_dir(exp_dir, trained_on, variant)
    suffix = f"@{variant}" if variant else ""
    here = output_dir(exp_dir, dataset, variant)
    if (here / "config.resolved.yaml").is_file():
        return here
    found = [p for p in outputs_of(exp_dir).glob("*/config.resolved.yaml")
             if p.parent.name.endswith(suffix) and ("@" in p.parent.name) == bool(variant)]
    if len(found) == 1:
        return found[0].parent
    raise UserError(f"{run_name(exp_dir, variant)}: no finished run to predict with "
                    + (f"(trained on: {', '.join(p.parent.name for p in found)}; choose one with --trained-on)"
                       if found else f"(run: bash run.sh {exp_dir.name.split('_')[0]} first)"))


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint missing (the run is unfinished or from an older version); rerun it")
    return torch.load(path, map_location="cpu", weights_only=False)


def predict_run(out: Path, input_dir: Path) -> tuple[dict, np.ndarray, data_mod.Dataset, dict]:
    """(test parts, test predictions int [N_test], dataset, decoder record) of a finished run on DIR."""
    resolved_path = out / "config.resolved.yaml"
    if not resolved_path.is_file():
        raise UserError(f"{display_path(out)}: not a finished run (no config.resolved.yaml)")
    record = results.RunRecord.read(out)
    resolved = yaml.safe_load(resolved_path.read_text())
    cfg, derived = config_mod.from_resolved(resolved), resolved["derived"]
    if cfg.train.epoch_selection != "fixed":  # checkpoints hold the last epoch, not each fold's chosen one
        raise UserError(f"{display_path(out)}: train.epoch_selection: {cfg.train.epoch_selection} picked an epoch "
                        "per fold that the saved checkpoints do not hold; predict needs epoch_selection: fixed")
    ds = data_mod.load(input_dir, derived["encoders"], cfg.data.allow_missing)
    for enc, width in derived["widths"].items():
        if ds.features[enc].shape[1] != width:
            raise UserError(f"encoder '{enc}': width {ds.features[enc].shape[1]} in {input_dir}, "
                            f"{width} in the run {display_path(out)}")
    device = pick_device(cfg.train.device)
    configure_torch(cfg.train.workers, device)
    models = out / "runs" / resolved["run"]["fingerprint"] / "models"
    group, rule, subs = sub_runs(cfg, ds.encoders)
    if rule == "choose":
        subs = [s for s in subs if s.name == record.choice_for_test]
    rows = ds.test_rows
    per_sub = []
    for sub in subs:
        per_seed = [results.stack_parts([
            predict_checkpoint(load_checkpoint(models / sub.name / f"fold{k}_seed{s}.pt"), sub.cfg,
                               [ds.features[e][rows] for e in sub.encoders], [ds.present[e][rows] for e in sub.encoders],
                               len(rows), device) for k in derived["folds"]]) for s in range(n_seeds(cfg, sub))]
        per_sub.append(results.Predictions([{"prob": np.zeros(0)}] * len(per_seed), per_seed))  # test rows only
    combined = results.late_mean(per_sub) if rule == "mean" else per_sub[0]
    _, test_folds = combined.mean()  # [K folds, n, ...]
    return {p: v.mean(0) for p, v in test_folds.items()}, results.decode_saved(test_folds, record.decoder), ds, \
        record.decoder


@cli
def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description="Predict a dataset's test clips with a finished run's checkpoints.")
    p.add_argument("run", help="experiment id, optionally with a variant: exp042, exp042@smoke")
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="dataset folder (default: input/synthetic)")
    p.add_argument("--trained-on", default=None, help="dataset name the run was trained on (default: DIR's name)")
    args = p.parse_args(argv)
    exp_dir, variant = resolve_run(args.run)
    out = find_run(exp_dir, variant, args.input.name, args.trained_on)
    test, pred, ds, params = predict_run(out, args.input)
    weight = params.get("head_weight")
    prob = test["prob"] if params["name"] == "nearest" else decode.probabilities(test, weight)
    folder = out / "predict" / ds.name
    write_csv(folder / "test.csv", data_mod.prediction_frame(ds.test_files, prob, test, ds.encoders))
    trained_on = out.name.split("@")[0]
    name = run_name(exp_dir, variant) + ("" if trained_on == ds.name else f".from-{trained_on}") + ".predicted"
    paths = submission.write(submissions_root() / ds.name, name, ds.test_files, pred, ds.test_files, ds.template_keys)
    write_json(folder / "predict.json", {"run": display_path(out), "input_dir": str(ds.root.resolve()),
                                         "submission": display_path(paths["json"])})
    print(f"wrote {display_path(folder / 'test.csv')} and {display_path(paths['json'])}")
    return folder


if __name__ == "__main__":
    main()
