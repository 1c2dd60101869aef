"""Benchmarks: `bash run.sh bench [--full-size] [--skip-runs]`. Prints figures; speed targets live here, not in tests.

(a) the vectorised threshold grid search against the organisers' per-clip loop on 2,456 clips;
(b) wall time of experiments on the default dataset (and, with --full-size, exp042 on real widths);
(c) the LightGBM ensemble of three members; (d) feature extraction throughput;
(e) with --prepare, `bash run.sh prepare` on a generated full-size copy of the organisers' download.
Runs train in their own output and submission roots under .cache/bench/, never in a user's exp/*/output/.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from src.decode import decode_thresholds, fit_thresholds, threshold_grid
from src.errors import cli
from src.experiments import ROOT, output_dir, resolve, variant_name

BENCH_ROOT = ROOT / ".cache" / "bench"  # git-ignored; BLEMORE_OUTPUT_ROOT / BLEMORE_SUBMISSIONS point here
from src.labels import CONFIGS



def loop_score(pred_dicts: list, true_dicts: list) -> float:
    """The organisers' per-sample scoring: Python sets and dicts, one clip at a time."""
    presence = salience = n_blend = 0
    for pred, true in zip(pred_dicts, true_dicts):
        presence += {e for e, _ in pred} == {e for e, _ in true}
        if len(true) == 2:
            n_blend += 1
            salience += len(pred) == 2 and dict(pred) == dict(true)
    return (presence / len(true_dicts) + (salience / n_blend if n_blend else 0.0)) / 2


def loop_decode(probs_row, alpha: float, beta: float, emotions) -> list:
    """One clip, as their decoder: top two, keep the second if >= alpha and neither neutral, 50/50 if close."""
    order = sorted(range(len(probs_row)), key=lambda j: -probs_row[j])
    a, b = order[0], order[1]
    if probs_row[b] >= alpha and "neu" not in (emotions[a], emotions[b]):
        if probs_row[a] - probs_row[b] <= beta:
            return [(emotions[a], 50), (emotions[b], 50)]
        return [(emotions[a], 70), (emotions[b], 30)]
    return [(emotions[a], 100)]


def fit_thresholds_loop(probs: np.ndarray, true: np.ndarray, points: int = 20):
    """Grid search re-decoding and re-scoring the whole set per grid point (the organisers' approach)."""
    from src.labels import EMOTIONS
    grid = threshold_grid(points)
    true_dicts = [list(CONFIGS[t]) for t in true]
    rows = probs.tolist()
    best = (-1.0, None, None)
    for alpha in grid:
        for beta in grid:
            s = loop_score([loop_decode(r, alpha, beta, EMOTIONS) for r in rows], true_dicts)
            if s > best[0]:
                best = (s, float(alpha), float(beta))
    return best[1], best[2], best[0]


def bench_grid_search(n: int = 2456, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 36, n)
    from src.labels import SALIENCE
    logits = 2.0 * SALIENCE[true] + rng.normal(0, 0.6, (n, 6))  # informative but noisy probabilities
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t0 = time.perf_counter()
    fast = fit_thresholds(probs, true)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = fit_thresholds_loop(probs, true)
    t_slow = time.perf_counter() - t0
    same = fast[:2] == slow[:2] and abs(fast[2] - slow[2]) < 1e-12
    return {"clips": n, "vectorised_s": round(t_fast, 4), "loop_s": round(t_slow, 2),
            "speedup": round(t_slow / t_fast, 1), "same_thresholds_and_score": bool(same),
            "alpha_beta_score": [round(v, 6) for v in fast]}


def bench_experiment(exp_id: str, *args: str) -> dict:
    """Wall time of a forced full run (subprocess, as a user runs it, in the benchmark's output root)."""
    import subprocess
    import sys
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "src.experiments", exp_id, "--force", "--quiet", *args],
                   cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    input_name = Path(args[args.index("--input") + 1]).name if "--input" in args else "synthetic"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    out = output_dir(resolve(exp_id), input_name, variant_name(False, sets))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"experiment": exp_id, "input": input_name, "wall_s": round(wall, 1),
            "oof_score": metrics["oof"]["score"], "test_score": metrics.get("test", {}).get("score")}


def bench_full_size(seeds: int) -> dict:
    """exp042 on the --full-size synthetic dataset (real aggregated widths), written to input/synthetic_full."""
    from src import synth
    full = ROOT / "input" / "synthetic_full"
    t0 = time.perf_counter()
    if not full.exists():
        synth.write(full, seed=0, full_size=True)
    generate_s = round(time.perf_counter() - t0, 1)
    res = bench_experiment("exp042", "--input", str(full), "--set", f"train.seeds={seeds}")
    return {**res, "seeds": seeds, "generate_s": generate_s}


def bench_prepare(seed: int = 0) -> dict:
    """`python -m src.prepare` on a full-size generated download (3,050 clips, six encoders, real widths), twice:
    the first run does everything, the second finds every encoder up to date."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from src import synth_download
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        t0 = time.perf_counter()
        download = synth_download.write(Path(tmp) / "download", seed=seed, full_size=True)
        generate_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in download.rglob("*") if p.is_file())
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "src.prepare", str(download), "--out", str(Path(tmp) / "out")],
                           cwd=ROOT, check=True, capture_output=True)
            walls.append(round(time.perf_counter() - t0, 1))
        shutil.rmtree(download)
    return {"prepare_full_size_s": walls[0], "rerun_up_to_date_s": walls[1], "clips": 3050,
            "encoders": len(synth_download.ENCODERS), "download_gb": round(size / 1e9, 2), "generate_s": round(generate_s, 1)}


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full-size", action="store_true", help="also time exp042 on the --full-size synthetic data")
    p.add_argument("--full-size-seeds", type=int, default=1, help="seeds for the full-size run (default 1)")
    p.add_argument("--skip-runs", action="store_true", help="only the grid-search benchmark")
    p.add_argument("--skip-extract", action="store_true", help="skip the feature-extraction benchmark")
    p.add_argument("--prepare", action="store_true", help="also time `prepare` on a generated full-size download")
    args = p.parse_args(argv)
    # every run below (subprocesses inherit this) and the ensemble read/write the benchmark's own roots
    os.environ.update({"BLEMORE_OUTPUT_ROOT": str(BENCH_ROOT / "exp"), "BLEMORE_SUBMISSIONS": str(BENCH_ROOT / "submissions")})
    results = {"grid_search": bench_grid_search()}
    print(json.dumps(results["grid_search"]), flush=True)
    if not args.skip_runs:
        for exp in ("exp010", "exp020", "exp042"):
            results[exp] = bench_experiment(exp)
            print(json.dumps(results[exp]), flush=True)
        from src.ensemble import run_benchmark as bench_ensemble
        results["ensemble_lgbm"] = bench_ensemble(("exp010", "exp020", "exp042"))
        print(json.dumps(results["ensemble_lgbm"]), flush=True)
    if args.full_size:
        results["exp042_full_size"] = bench_full_size(args.full_size_seeds)
        print(json.dumps(results["exp042_full_size"]), flush=True)
    if args.prepare:
        results["prepare"] = bench_prepare()
        print(json.dumps(results["prepare"]), flush=True)
    if not args.skip_extract:
        from src.bench_extract import run_benchmark as bench_extract
        results["extraction"] = bench_extract()
        print(json.dumps(results["extraction"]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
