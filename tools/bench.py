"""Benchmarks: `bash run.sh bench [--full-size] [--skip-runs] [--runs EXP ...] [--as-avx2]`. Prints figures;
speed targets live here, not in tests.

First always: the device, the precision train.precision auto picks on it, float32 and bfloat16 matmul rates.
(a) the vectorised threshold grid search against the organisers' per-clip loop on 2,456 clips;
(b) wall time of experiments on the default dataset (and, with --full-size, exp042 on real widths);
(c) the LightGBM ensemble of three members; (d) feature extraction throughput;
(e) with --prepare, `bash run.sh prepare` on a generated full-size copy of the organisers' download.
`--profile EXP` instead: where one worker's training time goes, stage by stage (src/train/trainer.py's functions timed).
`--training [EXP ...]` instead: only matrix-product GFLOP/s on the fusion model's shapes (float32 and bfloat16),
then each EXP (default exp042) trained one model at a time and stacked, in float32 and bfloat16 (TRAINING_RUNS; bfloat16
only where native), with the achieved model FLOP/s.
`--as-avx2`: everything as on an AVX2-only CPU (AVX2_ENV), a proxy for such machines on one with more.
Runs train in their own output and submission roots under .cache/bench/, never in a user's exp/*/output/.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from src.decode import fit_thresholds, threshold_grid
from src.errors import cli
from src.run.config import variant_name
from src.run.experiments import ROOT, output_dir, resolve

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
    subprocess.run([sys.executable, "-m", "src.main", exp_id, "--force", "--quiet", *args],
                   cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    input_name = Path(args[args.index("--input") + 1]).name if "--input" in args else "synthetic"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    out = output_dir(resolve(exp_id), input_name, variant_name(False, sets))
    metrics = json.loads((out / "metrics.json").read_text())
    from src.run.results import seed_spread
    return {"experiment": exp_id, "input": input_name, "wall_s": round(wall, 1), "precision": metrics.get("precision"),
            "oof_score": metrics["oof"]["score"], "test_score": (metrics["test"] or {}).get("score")} \
        | {k: v for k, v in seed_spread(metrics["seeds"]).items() if k in ("oof_score_mean", "oof_score_std",
                                                                            "test_score_mean", "test_score_std")}


def bench_full_size(seeds: int) -> dict:
    """exp042 on the --full-size synthetic dataset (real aggregated widths), written to input/synthetic_full."""
    from src.data import synth
    full = ROOT / "input" / "synthetic_full"
    t0 = time.perf_counter()
    if not full.exists():
        synth.write(full, seed=0, full_size=True)
    generate_s = round(time.perf_counter() - t0, 1)
    res = bench_experiment("exp042", "--input", str(full), "--set", f"train.seeds={seeds}")
    return {**res, "seeds": seeds, "generate_s": generate_s}


def forward_flops(cfg, widths: list[int]) -> float:
    """Matrix-product FLOPs (2 per multiply-add) of one clip's forward pass; widths: per encoder."""
    m = cfg.model
    if m.name == "mlp":
        return 2.0 * (sum(widths) * m.hidden + m.hidden * 6)
    E, S = len(widths), m.shared_dim
    heads = 2 if m.heads == "two" else 1
    return 2.0 * (sum(widths) * S          # projectors
                  + E * S * 3 * S          # attention in-projection
                  + 2 * E * E * S          # attention scores and weighted values
                  + E * S * S + E * S      # attention out-projection, scorer
                  + S * m.fused_dim + heads * m.fused_dim * 6)


def training_flops(exp_id: str, input_dir: Path) -> float:
    """FLOPs of training every model of an experiment: 3x the forward (backward ~2x), twice with CORAL."""
    from src import data
    from src.run.subruns import n_seeds, sub_runs
    from src.run import config
    cfg = config.load(resolve(exp_id))
    ds = data.load(input_dir, cfg.data.encoders, cfg.data.allow_missing)
    total = 0.0
    for sub in sub_runs(cfg, ds.encoders)[2]:
        if sub.prior is not None:
            continue
        per_clip = 3 * forward_flops(sub.cfg, [ds.features[e].shape[1] for e in sub.encoders])
        per_clip *= 2 if sub.cfg.adapt.coral_weight > 0 else 1
        probes = 2 if sub.cfg.model.name == "fusion" and sub.cfg.model.selection == "fixed" else 1
        rows = sum(len(ds.split(k)[0]) for k in ds.fold_ids)
        total += per_clip * rows * sub.cfg.train.epochs * n_seeds(cfg, sub) * probes
    return total


def matmul_shapes(widths: list[int], batch: int = 64, shared: int = 256, fused: int = 512):
    """The (rows, inner, cols) matrix products of the fusion model's forward pass at these widths."""
    tokens = len(widths)
    return ([(batch, w, shared) for w in widths] + [(batch * tokens, shared, 3 * shared),
            (batch * tokens, shared, shared), (batch, shared, fused)])


def matmul_rate(shapes, models: int = 15, seconds: float = 2.0, dtype: str = "float32") -> float:
    """GFLOP/s of this process on the model's products, forward + both backward products, `models` at once
    (at least one round, however slow)."""
    import torch
    dt = getattr(torch, dtype)
    mats = [(torch.randn(models, r, k, dtype=dt), torch.randn(models, k, c, dtype=dt), torch.randn(models, r, c, dtype=dt))
            for r, k, c in shapes]
    flops = sum(6 * models * r * k * c for r, k, c in shapes)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, w, g in mats:
            torch.bmm(x, w), torch.bmm(x.transpose(1, 2), g), torch.bmm(g, w.transpose(1, 2))
        done += 1
    return flops * done / (time.perf_counter() - t0) / 1e9


def _rate_one_thread(shapes, dtype: str) -> float:
    import torch
    torch.set_num_threads(1)
    return matmul_rate(shapes, dtype=dtype)


# What an AVX2-only CPU runs, on a CPU with more: torch's kernels, oneDNN (bfloat16) and MKL (float32) capped at
# AVX2. train.precision auto then picks float32 (src/device.py reads ONEDNN_MAX_CPU_ISA).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def bench_device() -> dict:
    """The device, the precision train.precision auto picks on it, and one thread's float32 and bfloat16 rates on
    a 64x1024 @ 1024x256 product (a projector's shape at the real widths)."""
    import torch

    from src import device
    cpu = torch.device("cpu")
    torch.set_num_threads(1)
    rates = {dtype: round(matmul_rate([(64, 1024, 256)], models=1, seconds=1.0, dtype=dtype), 1)
             for dtype in ("float32", "bfloat16")}
    return {"device": device.describe(cpu), "auto_precision": device.resolve_precision("auto", cpu),
            "native_bfloat16": device.native_bfloat16(cpu), "float32_gflops_1_thread": rates["float32"],
            "bfloat16_gflops_1_thread": rates["bfloat16"],
            "bfloat16_over_float32": round(rates["bfloat16"] / rates["float32"], 3)}


def bench_matmul(input_dir: Path) -> dict:
    """Matrix-product GFLOP/s on the fusion model's shapes, float32 and (where native) bfloat16: 1 thread,
    2 threads, 2 processes x 1 thread."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from src import data, device
    ds = data.load(input_dir)
    shapes = matmul_shapes([ds.features[e].shape[1] for e in ds.encoders])
    res = {}
    for dtype in ("float32", "bfloat16") if device.native_bfloat16(torch.device("cpu")) else ("float32",):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res[f"{dtype}_threads_{threads}_gflops"] = round(matmul_rate(shapes, dtype=dtype), 1)
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            res[f"{dtype}_processes_2x1_gflops"] = round(sum(pool.map(_rate_one_thread, [shapes] * 2, [dtype] * 2)), 1)
    return res


# (train.batched, train.workers, train.precision) per run of bench --training: one model at a time in one
# process, then the default stacks on two processes, in each precision (bfloat16 only where native)
TRAINING_RUNS = [(False, 1, "float32"), (False, 1, "bfloat16"), (True, 2, "float32"), (True, 2, "bfloat16")]


def bench_training(exp_id: str, input_dir: Path, matmul: dict, runs=TRAINING_RUNS) -> list:
    """Wall time of one experiment per (batched, workers, precision) in runs; achieved model FLOP/s, also as a
    share of the best matrix-product rate measured at that precision (matmul: bench_matmul's figures).
    bfloat16 runs are skipped (and say why) on a CPU that only emulates bfloat16: they would take an hour.

    train_s sums the log's training times ("N fold x seed models trained at once in Xs")."""
    import re

    import torch

    from src import device
    flops = training_flops(exp_id, input_dir)
    rows = []
    for batched, t, precision in runs:
        if precision == "bfloat16" and not device.native_bfloat16(torch.device("cpu")):
            print(f"skipped {exp_id} batched={batched} bfloat16: {device.describe(torch.device('cpu'))} has no "
                  f"native bfloat16 (about {device.BF16_EMULATED_SLOWDOWN} slower than float32)", flush=True)
            continue
        sets = [f"train.batched={str(batched).lower()}", f"train.workers={t}", f"train.precision={precision}"]
        log = output_dir(resolve(exp_id), input_dir.name, variant_name(False, sets)) / "log.txt"
        before = log.stat().st_size if log.is_file() else 0  # log.txt grows by one run's lines per run
        res = bench_experiment(exp_id, "--input", str(input_dir), *[a for s in sets for a in ("--set", s)])
        with open(log) as fh:
            fh.seek(before)
            lines = fh.read()
        pattern = r"models trained at once in ([0-9.]+)s"
        train_s = sum(float(x) for x in re.findall(pattern, lines))
        achieved = flops / max(train_s, 1e-9) / 1e9
        peak = max(v for k, v in matmul.items() if k.startswith(precision))
        rows.append({**res, "batched": batched, "workers": t, "precision": precision, "train_s": round(train_s, 1),
                     "model_tflop": round(flops / 1e12, 2), "achieved_gflops": round(achieved, 1),
                     "of_matmul_rate": round(achieved / peak, 2),
                     "of_float32_matmul_rate": round(achieved / max(v for k, v in matmul.items() if k.startswith("float32")), 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def profile_training(exp_id: str, input_dir: Path, models: int = 8, epochs: int | None = None) -> dict:
    """Where one worker's training time goes: `models` fold x seed models of exp_id (a worker's share of 15 on
    two processes) trained as one stack in this process on one thread, each stage of src/train/trainer.py
    timed by a wrapper around its function (the process is single-threaded and CPU work synchronous, so wall =
    cost), with the number of calls per stage."""
    import collections
    import functools

    import torch

    from src import data, device
    from src.device import configure_torch
    from src.run import config
    from src.run.pipeline import fold_job
    from src.train import inputs, optim, trainer
    sets = ["train.workers=1"] + ([f"train.epochs={epochs}"] if epochs else [])
    cfg = config.load(resolve(exp_id), sets)
    seconds, calls = collections.Counter(), collections.Counter()
    t0 = time.perf_counter()
    ds = data.load(input_dir, cfg.data.encoders, cfg.data.allow_missing)
    load_s = time.perf_counter() - t0
    configure_torch(1, torch.device("cpu"))

    def timed(name, f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start
                calls[name] += 1
        return wrapper

    patches = [(trainer, "dropout_masks", "dropout masks (per step)"),
               (trainer, "draw_plan", "batch plan and per-clip draws (per epoch)"),
               (inputs.StackedInputs, "gather", "gathering and standardising inputs"),
               (optim.StackedAdam, "step", "Adam"),
               (trainer, "model_outputs", "prediction (valid, test)"),
               (trainer, "projections", "projections (valid)"),
               (torch.autograd, "grad", "backward")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    make_loss = trainer.make_loss
    try:
        for owner, name, label in patches:
            setattr(owner, name, timed(label, getattr(owner, name)))
        trainer.make_loss = lambda *a, **k: timed("forward and losses", make_loss(*a, **k))
        jobs = [fold_job(ds, cfg, s, k) for s in range(cfg.train.seeds) for k in ds.fold_ids][:models]
        t0 = time.perf_counter()
        trainer.fit_folds(ds, cfg, ds.encoders, jobs, torch.device("cpu"))
        wall = time.perf_counter() - t0
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        trainer.make_loss = make_loss
    timed_s = sum(seconds.values())
    seconds["setup and bookkeeping (rest)"] = wall - timed_s
    return {"experiment": exp_id, "input": input_dir.name, "models": len(jobs), "epochs": cfg.train.epochs,
            "precision": device.resolve_precision(cfg.train.precision, torch.device("cpu")),
            "data_loading_s": round(load_s, 2), "training_s": round(wall, 2), "timed_s": round(timed_s, 2),
            "share": {k: round(v / wall, 3) for k, v in seconds.most_common()},
            "seconds": {k: round(v, 2) for k, v in seconds.most_common()}, "calls": dict(calls)}


def bench_ensemble(members: tuple, input_dir: Path) -> dict:
    """Time the lgbm ensemble of members on a dataset (fitting only, nothing written)."""
    from src import data, ensemble
    ds = data.load_labels(input_dir)
    loaded = ensemble.load_members(members, ds)
    started = time.time()
    res = ensemble.build(loaded, ds, "lgbm")
    seconds = time.time() - started
    return {"members": list(members), "method": "lgbm", "dataset": ds.name, "n_train": ds.n_train,
            "n_test": len(ds.test_files), "n_features": res["n_features"], "seconds": round(seconds, 2),
            "oof_score": res["oof"]["score"], "rounds": [d["rounds"] for d in res["decoder"]["per_fold"]],
            "decoder": res["decoder"]["name"],
            "best_member_oof_score": max(m["figures"]["oof"]["score"] for m in loaded)}


def bench_prepare(seed: int = 0) -> dict:
    """`bash run.sh prepare` on a full-size generated download (3,050 clips, six encoders, real widths), twice:
    the first run does everything, the second finds every encoder up to date."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from src.data import synth_download
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        t0 = time.perf_counter()
        download = synth_download.write(Path(tmp) / "download", seed=seed, full_size=True)
        generate_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in download.rglob("*") if p.is_file())
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "src.data.prepare", str(download), "--out", str(Path(tmp) / "out")],
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
    p.add_argument("--runs", nargs="+", metavar="EXP", default=["exp010", "exp020", "exp042"],
                   help="experiments timed on the default dataset (default exp010 exp020 exp042; the ensemble "
                        "benchmark needs those three)")
    p.add_argument("--skip-extract", action="store_true", help="skip the feature-extraction benchmark")
    p.add_argument("--prepare", action="store_true", help="also time `prepare` on a generated full-size download")
    p.add_argument("--training", nargs="*", metavar="EXP", default=None,
                   help="only the training benchmark: matmul GFLOP/s, then one-at-a-time vs stacked wall time "
                        "in float32 and bfloat16 of each EXP (default exp042)")
    p.add_argument("--profile", metavar="EXP", default=None,
                   help="only where one worker's training time goes: 8 fold x seed models of EXP, batched, one thread")
    p.add_argument("--input", type=Path, default=None,
                   help="dataset for --training (default input/synthetic; input/synthetic_full with --full-size)")
    p.add_argument("--stacked-only", action="store_true",
                   help="--training: only the stacked runs (not each model one at a time)")
    p.add_argument("--as-avx2", action="store_true",
                   help="run as an AVX2-only CPU would: torch, oneDNN and MKL capped at AVX2 (auto picks float32)")
    args = p.parse_args(argv)
    if args.as_avx2 and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        import sys  # the caps take effect only in a process that starts with them
        os.environ.update(AVX2_ENV)
        os.execv(sys.executable, [sys.executable, "-m", "tools.bench", *(sys.argv[1:] if argv is None else argv)])
    # every run below (subprocesses inherit this) and the ensemble read/write the benchmark's own roots
    os.environ.update({"BLEMORE_OUTPUT_ROOT": str(BENCH_ROOT / "exp"), "BLEMORE_SUBMISSIONS": str(BENCH_ROOT / "submissions")})
    if args.profile is not None or args.training is not None:
        from src.data import synth
        from src.run.experiments import DEFAULT_INPUT
        inputs = args.input or (ROOT / "input" / "synthetic_full" if args.full_size else DEFAULT_INPUT)
        if args.input is None and not inputs.exists():  # only the default synthetic folders are generated
            synth.write(inputs, seed=0, full_size=args.full_size)
    if args.profile is not None:
        print(json.dumps(profile_training(args.profile, inputs), indent=2))
        return
    results = {"device": bench_device()}
    print(json.dumps(results["device"]), flush=True)
    if args.training is not None:
        results["matmul"] = bench_matmul(inputs)
        print(json.dumps(results["matmul"]), flush=True)
        for exp in args.training or ["exp042"]:
            runs = [r for r in TRAINING_RUNS if r[0] or not args.stacked_only]
            results[exp] = bench_training(exp, inputs, results["matmul"], runs)
        print(json.dumps(results, indent=2))
        return
    results["grid_search"] = bench_grid_search()
    print(json.dumps(results["grid_search"]), flush=True)
    if not args.skip_runs:
        for exp in args.runs:
            results[exp] = bench_experiment(exp)
            print(json.dumps(results[exp]), flush=True)
        members = ("exp010", "exp020", "exp042")
        if set(members) <= set(args.runs):
            results["ensemble_lgbm"] = bench_ensemble(members, DEFAULT_INPUT)
            print(json.dumps(results["ensemble_lgbm"]), flush=True)
    if args.full_size:
        results["exp042_full_size"] = bench_full_size(args.full_size_seeds)
        print(json.dumps(results["exp042_full_size"]), flush=True)
    if args.prepare:
        results["prepare"] = bench_prepare()
        print(json.dumps(results["prepare"]), flush=True)
    if not args.skip_extract:
        from tools.bench_extract import run_benchmark as bench_extract
        results["extraction"] = bench_extract()
        print(json.dumps(results["extraction"]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
