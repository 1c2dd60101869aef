"""Paired over seeds, per world: suite arms against a base arm (the same experiment at the same seeds).

    .venv/bin/python -m tools.suite_paired BASE ARM [ARM ...] [--experiment exp042_rank_topn_coral] [--markdown]

BASE and ARM are suite results (exp/suite/output/<name>.json, or just <name>). Seed s of an arm and seed s of the
base share their initial weights and batch order, so their per-seed OOF difference is paired. Per world: the mean
OOF difference over seeds, how many seeds improved, then the test difference (read after choosing on OOF).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from src.errors import UserError, cli
from src.run.experiments import ROOT
from src.suite import results_dir


def load(spec: str) -> dict:
    path = Path(spec) if spec.endswith(".json") else results_dir() / f"{spec}.json"
    if not path.is_file():
        raise UserError(f"{spec}: no suite results at {path}")
    return json.loads(path.read_text())


def seed_scores(run: dict) -> dict[str, np.ndarray]:
    """One suite row -> {'oof': per-seed scores, 'test': per-seed scores} from the run's metrics.json."""
    metrics = json.loads((ROOT / run["output"] / "metrics.json").read_text())
    return {part: np.array([s[part]["score"] if s.get(part) else np.nan for s in metrics["seeds"]])
            for part in ("oof", "test")}


def paired(base: dict, arm: dict, experiment: str) -> list[dict]:
    rows = []
    base_runs = {r["world"]: r for r in base["runs"] if r["experiment"] == experiment}
    for run in arm["runs"]:
        if run["experiment"] != experiment or run["world"] not in base_runs or run.get("error"):
            continue
        a, b = seed_scores(base_runs[run["world"]]), seed_scores(run)
        if len(a["oof"]) != len(b["oof"]):
            raise UserError(f"{run['world']}: {len(a['oof'])} seeds against {len(b['oof'])}; pair equal seed counts")
        d = b["oof"] - a["oof"]
        rows.append({"world": run["world"], "oof_diff": float(d.mean()), "seeds_better": int((d > 0).sum()),
                     "seeds": len(d), "test_diff": float(np.nanmean(b["test"] - a["test"]))})
    return rows


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Suite arms paired over seeds against a base arm, per world.")
    parser.add_argument("base")
    parser.add_argument("arms", nargs="+")
    parser.add_argument("--experiment", default="exp042_rank_topn_coral", help="the experiment row compared")
    parser.add_argument("--markdown", action="store_true", help="one table row per arm")
    args = parser.parse_args(argv)
    base = load(args.base)
    table = []
    for spec in args.arms:
        rows = paired(base, load(spec), args.experiment)
        if not rows:
            raise UserError(f"{spec}: no {args.experiment} run shares a world with {args.base}")
        table.append((spec, rows))
    if args.markdown:
        worlds = [r["world"] for r in table[0][1]]
        print("| arm | mean OOF diff | worlds better | " + " | ".join(worlds) + " | mean test diff |")
        print("|---|---:|---:|" + "---:|" * len(worlds) + "---:|")
        for spec, rows in table:
            cells = {r["world"]: f"{r['oof_diff']:+.4f} ({r['seeds_better']}/{r['seeds']})" for r in rows}
            print(f"| {spec} | {np.mean([r['oof_diff'] for r in rows]):+.4f} | "
                  f"{sum(r['oof_diff'] > 0 for r in rows)}/{len(rows)} | "
                  + " | ".join(cells.get(w, "-") for w in worlds)
                  + f" | {np.mean([r['test_diff'] for r in rows]):+.4f} |")
        return
    for spec, rows in table:
        cells = "  ".join(f"{r['world']} {r['oof_diff']:+.4f} ({r['seeds_better']}/{r['seeds']}) test {r['test_diff']:+.4f}"
                          for r in rows)
        print(f"{spec:<14} mean OOF {np.mean([r['oof_diff'] for r in rows]):+.4f}, "
              f"test {np.mean([r['test_diff'] for r in rows]):+.4f} | {cells}")

if __name__ == "__main__":
    main()
