"""Generalisation suite: experiments on several worlds, per-world OOF and test scores, mean ranks.

    python -m src.suite EXP [EXP ...] [--worlds a,b] [--seeds N] [--set k=v ...] [--smoke] [--name NAME]
                        [--ensemble lgbm|weights|mean]
    python -m src.suite --build-only [--worlds a,b]                       (bash run.sh suite ...)

Worlds are defined once, in WORLDS below: synthetic ones written by src/data/synth.py with its knobs, and a real
multi-view dataset (src.mfeat). Each is built under input/suite/<world>/ (--worlds-dir moves it) and
rebuilt only when its definition or the generator code changes (world.json records both). Every
experiment runs on every world through the normal command line (`python -m src.main EXP --input
input/suite/<world> --quiet ...`), so its outputs are the usual exp/<id>/output/<world>[@variant]/ (the
committed config's folder unless --seeds, --set or --smoke make a variant) and a rerun resumes finished
folds. Scores come from each run's metrics.json.

Choose on OOF: the table is sorted by the mean OOF rank, and the test columns are for reading afterwards.
Results: <output root>/suite/output/<name>.json and .csv, a new name per suite run (never overwritten).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from src.errors import UserError, cli
from src.io import write_csv, write_json
from src.run import config as config_mod
from src.run.config import variant_name
from src.run.experiments import EXP_DIR, ROOT, VARIANT_NAME, display_path, output_dir, output_root, resolve

WORLDS_DIR = ROOT / "input" / "suite"
FIGURES = ("acc_presence", "acc_salience", "score")
# What each world tests is in docs/suite.md. Synthetic worlds: src/data/synth.py knobs; `encoders` is
# make_encoders' arguments. Every synthetic world names its test actors (test_actor_column) for the
# shift report.
WORLDS = {
    # the default world's structure and encoders at half its actors: where today's defaults were chosen
    "blemore7": {"source": "synth", "seed": 101, "n_train_actors": 25, "n_test_actors": 8, "n_folds": 5},
    # few wide encoders; audio often silent; a strong affine recording shift on one video encoder
    "enc4_affine": {"source": "synth", "seed": 102, "n_train_actors": 20, "n_test_actors": 6, "n_folds": 4,
                    "encoders": {"n": 4, "n_audio": 2, "widths": [48, 96], "seed": 4},
                    "p_fail": {"audio": 0.3, "video": 0.05},
                    "shifted": ["video1"], "shift_kind": "affine", "shift_strength": 1.5},
    # many narrow encoders, three of them unreliable on their own; test noise on four (signal lost)
    "enc12_noise": {"source": "synth", "seed": 103, "n_train_actors": 30, "n_test_actors": 8, "n_folds": 5,
                    "encoders": {"n": 12, "n_audio": 4, "widths": [6, 24], "seed": 12},
                    "p_fail": {"video": 0.05, "audio": 0.1, "video2": 0.4, "video5": 0.3, "audio3": 0.3},
                    "shifted": ["video1", "video3", "audio1", "audio2"], "shift_kind": "noise",
                    "shift_strength": 1.0},
    # few training actors, many test actors; on half of the test actors two encoders fail on 60% of the
    # clips (a failure training rarely showed)
    "enc6_testfail": {"source": "synth", "seed": 104, "n_train_actors": 16, "n_test_actors": 12, "n_folds": 4,
                      "encoders": {"n": 6, "n_audio": 2, "widths": [8, 160], "seed": 6},
                      "p_fail": {"audio": 0.15, "video": 0.1},
                      "shifted": ["video1", "audio1"], "shift_kind": "fail", "shift_strength": 0.6,
                      "shift_fraction": 0.5},
    # real: UCI multiple-features digits, six views, six classes as singles, pseudo-actors (src/data/mfeat.py)
    "mfeat": {"source": "mfeat", "seed": 0},
}
SYNTH_KEYS = {"seed", "n_train_actors", "n_test_actors", "n_folds", "n_dropped", "width_scale", "encoders",
              "redundant", "p_fail", "shifted", "shift_kind", "shift_strength", "shift_fraction"}
GENERATOR_CODE = ("src/data/synth.py", "src/data/mfeat.py", "src/labels.py", "src/io.py")


# ---- worlds --------------------------------------------------------------------------------------------
def world_key(definition: dict) -> str:
    """Hash of a world's definition and of the code that writes it: a change of either rebuilds the world."""
    h = hashlib.sha256(json.dumps(definition, sort_keys=True).encode())
    for rel in GENERATOR_CODE:
        h.update((ROOT / rel).read_bytes())
    if definition.get("source") == "mfeat":
        from src.data.mfeat import PACKAGE_VERSION
        h.update(PACKAGE_VERSION.encode())
    return h.hexdigest()[:16]


def check_world(name: str, definition: dict) -> None:
    source = definition.get("source")
    if source not in ("synth", "mfeat"):
        raise UserError(f"world '{name}': source {source!r} is not synth or mfeat")
    allowed = SYNTH_KEYS if source == "synth" else {"seed"}
    unknown = sorted(set(definition) - allowed - {"source"})
    if unknown:
        raise UserError(f"world '{name}': unknown key '{unknown[0]}' (known: {', '.join(sorted(allowed))})")


def write_world(folder: Path, definition: dict) -> None:
    """Write one world's dataset folder (synthetic or real) from its definition."""
    knobs = {k: v for k, v in definition.items() if k != "source"}
    if definition["source"] == "mfeat":
        from src.data.mfeat import write
        write(folder, **knobs)
        return
    from src.data import synth
    if "encoders" in knobs:
        spec = dict(knobs["encoders"])
        knobs["encoders"] = synth.make_encoders(spec.pop("n"), **{k: tuple(v) if isinstance(v, list) else v
                                                                   for k, v in spec.items()})
    if "shifted" in knobs:
        knobs["shifted"] = tuple(knobs["shifted"])
    synth.write(folder, test_actor_column=True, **knobs)


def build(name: str, definition: dict, root: Path = WORLDS_DIR) -> Path:
    """root/<name>/, rebuilt (into a temporary folder, then swapped in) unless world.json matches."""
    check_world(name, definition)
    folder = Path(root) / name
    key = world_key(definition)
    record = folder / "world.json"
    if record.is_file() and json.loads(record.read_text()).get("key") == key:
        return folder
    tmp, old = Path(root) / f".{name}.building", Path(root) / f".{name}.old"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    write_world(tmp, definition)
    write_json(tmp / "world.json", {"world": name, "key": key, "definition": definition})
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


# ---- runs ----------------------------------------------------------------------------------------------
def run_one(exp_dir: Path, world_dir: Path, smoke: bool, sets: list[str]) -> dict:
    """Run one experiment on one world through the command line; its metrics (or the error) and wall time."""
    cmd = ["src.main", exp_dir.name, "--input", str(world_dir), "--quiet"]
    cmd += ["--smoke"] * smoke + [a for s in sets for a in ("--set", s)]
    return scored_run(cmd, exp_dir.name, world_dir, output_dir(exp_dir, world_dir.name, variant_name(smoke, sets)))


def run_ensemble(exp_dirs: list[Path], world_dir: Path, method: str, smoke: bool, sets: list[str]) -> dict:
    """The world's ensemble of the suite's experiments (src/ensemble.py, its stacker fitted per world): one more row."""
    variant = variant_name(smoke, sets)
    members = [p.name + (f"@{variant}" if variant else "") for p in exp_dirs]
    name = f"suite_{method}_" + "+".join(p.name.split("_")[0] for p in exp_dirs) + (f"@{variant}" if variant else "")
    cmd = ["src.ensemble", *members, "--input", str(world_dir), "--method", method, "--name", name, "--quiet"]
    out = output_dir(EXP_DIR / "ensembles" / name, world_dir.name)
    return scored_run(cmd, f"ensemble_{method}", world_dir, out)


def scored_run(module_args: list[str], label: str, world_dir: Path, out: Path) -> dict:
    """`python -m <module_args>`, then the scores from out/metrics.json (or the error's last line) and wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *module_args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    row = {"experiment": label, "world": world_dir.name, "output": display_path(out),
           "wall_s": round(time.perf_counter() - start, 1)}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit code {proc.returncode}"]
        return row | {"error": lines[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    for part in ("oof", "test"):
        for key in FIGURES:
            row[f"{part}_{key}"] = (metrics.get(part) or {}).get(key, math.nan)
    return row | {"runtime_s": metrics.get("runtime_s", math.nan)}


def add_ranks(frame: pd.DataFrame) -> pd.DataFrame:
    """rank_oof / rank_test per world (1 = best score; ties share the mean rank; failed runs unranked)."""
    frame = frame.copy()
    for part in ("oof", "test"):
        frame[f"rank_{part}"] = frame.groupby("world")[f"{part}_score"].rank(ascending=False, method="average")
    return frame


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: mean OOF and test score and mean ranks over worlds, best mean OOF rank first."""
    g = frame.groupby("experiment", sort=False)
    out = pd.DataFrame({"mean_oof_score": g["oof_score"].mean(), "mean_test_score": g["test_score"].mean(),
                        "mean_rank_oof": g["rank_oof"].mean(), "mean_rank_test": g["rank_test"].mean(),
                        "worlds": g["oof_score"].count()})
    return out.sort_values(["mean_rank_oof", "mean_oof_score"], ascending=[True, False], kind="stable")


def format_table(frame: pd.DataFrame, worlds: list[str]) -> str:
    """Console text: per world 'OOF (test)', then the means and mean ranks."""
    summ = summary(frame)
    cell = {(r.experiment, r.world): ("failed" if isinstance(getattr(r, "error", None), str)
                                     else f"{r.oof_score:.3f} ({r.test_score:.3f})")
            for r in frame.itertuples(index=False)}
    width = max(len(e) for e in summ.index) + 2
    head = f"{'experiment':<{width}}" + "".join(f"{w:>16}" for w in worlds)
    head += f"{'mean OOF':>10}{'mean test':>10}{'rank OOF':>10}{'rank test':>10}"
    lines = [head]
    for exp, s in summ.iterrows():
        lines.append(f"{exp:<{width}}" + "".join(f"{cell.get((exp, w), '-'):>16}" for w in worlds)
                     + f"{s.mean_oof_score:>10.4f}{s.mean_test_score:>10.4f}{s.mean_rank_oof:>10.2f}"
                     f"{s.mean_rank_test:>10.2f}")
    return "\n".join(lines)


def results_dir() -> Path:
    """Where suite results go: <output root>/suite/output/."""
    return output_root() / "suite" / "output"


def results_path(name: str | None) -> Path:
    """A results file name no earlier suite run holds: NAME, or the start time (with -2, -3 .. on a clash)."""
    folder = results_dir()
    if name is not None:
        if (folder / f"{name}.json").exists():
            raise UserError(f"--name {name}: {display_path(folder / (name + '.json'))} exists; suite results "
                            "are never overwritten, choose another name")
        return folder / f"{name}.json"
    stem = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, i = folder / f"{stem}.json", 1
    while path.exists() or path.with_suffix(".csv").exists():
        i += 1
        path = folder / f"{stem}-{i}.json"
    return path


def run_sets(seeds: int | None, sets) -> list[str]:
    """The --set list of every run: --seeds N becomes train.seeds=N; without it each experiment's own seeds."""
    sets = list(sets)
    if seeds is None:
        return sets
    if any(s.split("=", 1)[0].strip() == "train.seeds" for s in sets):
        raise UserError("--set train.seeds and --seeds both given; use --seeds")
    return [f"train.seeds={seeds}"] + sets


def run_suite(experiments: list[str], worlds: dict[str, dict], root: Path = WORLDS_DIR, seeds: int | None = None,
              sets: list[str] = (), smoke: bool = False, name: str | None = None, ensemble: str | None = None,
              log=print) -> tuple[pd.DataFrame, Path]:
    """Build the worlds, run every experiment on each, write the results; (per run table, results .json)."""
    if name is not None and not VARIANT_NAME.fullmatch(name):
        raise UserError(f"--name '{name}': use letters, digits and . _ + = - only")
    path = results_path(name)
    exp_dirs = [resolve(e) for e in experiments]
    if len({p.name for p in exp_dirs}) != len(exp_dirs):
        raise UserError(f"experiments: {' '.join(experiments)} name one experiment twice")
    sets = run_sets(seeds, sets)
    for exp in exp_dirs:  # a bad --set fails here, before any world is built
        config_mod.load(exp, sets, smoke)
    dirs = {}
    for world, definition in worlds.items():
        dirs[world] = build(world, definition, root)
        log(f"world {world}: {display_path(dirs[world])}")
    rows, total = [], len(exp_dirs) * len(dirs)
    for world, folder in dirs.items():
        for exp in exp_dirs:
            row = run_one(exp, folder, smoke, sets)
            rows.append(row)
            what = (f"failed: {row['error']}" if "error" in row else
                    f"OOF {row['oof_score']:.4f}, test {row['test_score']:.4f}")
            log(f"[{len(rows)}/{total}] {exp.name} on {world}: {what} ({row['wall_s']} s)")
        if ensemble and len(exp_dirs) > 1:
            row = run_ensemble(exp_dirs, folder, ensemble, smoke, sets)
            rows.append(row)
            what = (f"failed: {row['error']}" if "error" in row else
                    f"OOF {row['oof_score']:.4f}, test {row['test_score']:.4f}")
            log(f"{row['experiment']} on {world}: {what} ({row['wall_s']} s)")
    columns = [f"{part}_{key}" for part in ("oof", "test") for key in FIGURES]
    frame = add_ranks(pd.DataFrame(rows).reindex(columns=list(dict.fromkeys([*rows[0], *columns]))))
    summ = summary(frame)
    write_csv(path.with_suffix(".csv"), frame)
    write_json(path, {"experiments": [p.name for p in exp_dirs], "sets": sets, "smoke": smoke, "ensemble": ensemble,
                      "command": " ".join(sys.argv), "worlds": {w: {"path": display_path(d), "definition": worlds[w],
                                                                     "key": world_key(worlds[w])}
                                                                 for w, d in dirs.items()},
                      "runs": json.loads(frame.to_json(orient="records")),
                      "summary": json.loads(summ.reset_index().to_json(orient="records"))})
    return frame, path


def select_worlds(spec: str | None) -> dict[str, dict]:
    """--worlds a,b -> {name: definition} in the order given; None: every world."""
    if spec is None:
        return dict(WORLDS)
    names = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORLDS]
    if unknown or not names:
        raise UserError(f"--worlds: unknown world '{unknown[0] if unknown else spec}' (known: {', '.join(WORLDS)})")
    return {w: WORLDS[w] for w in dict.fromkeys(names)}


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Run experiments on every world of the suite and rank them.")
    parser.add_argument("experiments", nargs="*", metavar="EXP")
    parser.add_argument("--worlds", default=None, help=f"comma-separated, default all: {','.join(WORLDS)}")
    parser.add_argument("--seeds", type=int, default=None, help="train.seeds of every run (default: each experiment's own)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--smoke", action="store_true", help="every run with --smoke (2 epochs, 1 seed)")
    parser.add_argument("--name", default=None, help="results file name (default: the start time)")
    parser.add_argument("--worlds-dir", type=Path, default=WORLDS_DIR, help="where worlds are built")
    parser.add_argument("--ensemble", choices=("lgbm", "weights", "mean"), default=None,
                        help="also ensemble the experiments on each world (src/ensemble.py --method)")
    parser.add_argument("--build-only", action="store_true", help="build the worlds, run nothing")
    args = parser.parse_args(argv)
    worlds = select_worlds(args.worlds)
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds: {args.seeds} is below the minimum 1")
    if args.build_only:
        for world, definition in worlds.items():
            print(f"world {world}: {display_path(build(world, definition, args.worlds_dir))}")
        return
    if not args.experiments:
        raise UserError("usage: bash run.sh suite EXP [EXP ...] [--worlds a,b] [--seeds N] [--set k=v ...]")
    frame, path = run_suite(args.experiments, worlds, args.worlds_dir, args.seeds, args.sets, args.smoke, args.name,
                            args.ensemble)
    print("\nOOF score (test score), per world; sorted by mean OOF rank. Choose on OOF; read test afterwards.")
    print(format_table(frame, list(worlds)))
    print(f"wrote {display_path(path)} and {path.with_suffix('.csv').name}")
    failed = frame[frame["error"].notna()] if "error" in frame else frame.iloc[:0]
    if len(failed):
        first = failed.iloc[0]
        raise UserError(f"{len(failed)} of {len(frame)} runs failed, e.g. {first.experiment} on {first.world}: "
                        f"{first.error}")


if __name__ == "__main__":
    main()
