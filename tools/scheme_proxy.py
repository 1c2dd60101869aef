"""OOF evidence for decoder.test_scheme (vote or mean) with no test label read.

    .venv/bin/python -m tools.scheme_proxy ARM [ARM ...] --input DIR [--input DIR ...]

The test rows are predicted by K fold models; `vote` decodes each with the thresholds fitted on outputs of its
own kind (one model's) and votes, `mean` decodes the K-model mean with thresholds fitted on one model's outputs.
The OOF rows have one fold model per seed, so the seeds stand in for the fold models: per seed, thresholds are
cross-fitted on that seed's OOF alone (fold k never fits its own thresholds). vote: each seed's rows decoded by
its own thresholds, then a vote over seeds (ties to the mean's decoding); mean: the seed-mean decoded with one
seed's thresholds, the score averaged over which seed lends them. Both are scored on the OOF labels only.
It mirrors the test situation except that seeds share their training rows where fold models do not.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from src import decode
from src.analysis.compare import load_arm, load_truth
from src.decode.metric import score
from src.errors import UserError, cli
from src.run import results


def by_fold(parts: dict, folds: np.ndarray, per_fold: list[dict]) -> np.ndarray:
    """Each fold's rows decoded with that fold's parameters."""
    pred = np.empty(len(folds), dtype=int)
    for params in per_fold:
        rows = folds == params["fold"]
        pred[rows] = decode.apply_decoder(decode.take(parts, rows), params)
    return pred


def proxy(arm, truth) -> dict:
    """{'vote': score, 'mean': score, 'seeds': S} for one arm's OOF rows (see the module's docstring)."""
    dc = arm.decoder
    seeds = arm.preds.oof
    if len(seeds) < 2:
        raise UserError(f"{arm.name}: one seed; the proxy needs several (train.seeds >= 2)")
    fits = [decode.cross_fit(p, truth.labels, truth.folds, dc.grid, dc.head_weights)[:2] for p in seeds]
    mean = results.mean_parts(seeds)
    mean_preds = [by_fold(mean, truth.folds, per_fold) for _, per_fold in fits]
    voted = decode.vote([pred for pred, _ in fits], mean_preds[0])
    return {"vote": score(voted, truth.labels)["score"],
            "mean": float(np.mean([score(p, truth.labels)["score"] for p in mean_preds])), "seeds": len(seeds)}


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="OOF proxy of the test decoding schemes (no test label read).")
    parser.add_argument("arms", nargs="+", help="experiment ids or variants (exp042, exp042@seeds5)")
    parser.add_argument("--input", type=Path, action="append", required=True, help="dataset folder (repeatable)")
    args = parser.parse_args(argv)
    print(f"{'arm':<28}{'dataset':<16}{'seeds':>6}{'vote':>9}{'mean':>9}{'mean-vote':>11}")
    diffs = []
    for folder in args.input:
        truth = load_truth(folder)
        for name in args.arms:
            res = proxy(load_arm(name, folder, truth), truth)
            diffs.append(res["mean"] - res["vote"])
            print(f"{name:<28}{folder.name:<16}{res['seeds']:>6}{res['vote']:>9.4f}{res['mean']:>9.4f}"
                  f"{diffs[-1]:>+11.4f}")
    print(f"mean - vote over {len(diffs)} runs: mean {np.mean(diffs):+.4f}, positive in {sum(d > 0 for d in diffs)}")


if __name__ == "__main__":
    main()
