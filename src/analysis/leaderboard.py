"""A local leaderboard of every experiment, variant and ensemble with outputs for one dataset, best OOF first.

    bash run.sh leaderboard [--input DIR] [--markdown] [--per-seed] [--experiments-only] [--smoke]
Rich table on the console; --markdown prints the table that README's results section is generated from.
Each variant (exp042@name) is its own row; smoke runs (and ensembles of them) only with --smoke.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from src.errors import UserError, cli
from src.run import results
from src.run.experiments import DEFAULT_INPUT, output_root

FIGURES = ("acc_presence", "acc_salience", "score")


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, population std) of a list; NaNs when empty. Same convention as the pipeline's seed_spread."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values))


def metrics_files(dataset: str) -> list[tuple[str, str, Path]]:
    """(name, kind, metrics.json) of every experiment variant and ensemble with outputs for the dataset.

    Names: exp042_<slug> (committed config), exp042_<slug>@<variant>, ensembles/<name>.
    """
    root, found = output_root(), []
    for pattern, kind, prefix in (("exp[0-9]*/output/{}/metrics.json", "experiment", ""),
                                  ("ensembles/*/output/{}/metrics.json", "ensemble", "ensembles/")):
        for folder in (dataset, f"{dataset}@*"):
            for p in root.glob(pattern.format(folder)):
                variant = p.parent.name[len(dataset):]  # "" or "@<variant>"
                found.append((prefix + p.parents[2].name + variant, kind, p))
    return sorted(found)


def row(name: str, kind: str, m: results.RunRecord) -> dict:
    """One leaderboard row from a run's record; figures an output lacks are NaN."""
    out = {"name": name, "kind": kind}
    for part in ("oof", "test"):
        for key in FIGURES:
            out[f"{part}_{key}"] = (getattr(m, part) or {}).get(key, math.nan)
        seeds = [s[part] for s in m.seeds if s.get(part)]
        for key in FIGURES:
            out[f"{part}_{key}_seed_mean"], out[f"{part}_{key}_seed_std"] = spread([s[key] for s in seeds])
        out[f"{part}_n_seeds"] = len(seeds)
    folds = [f["score"] for f in m.folds]
    out["oof_score_fold_mean"], out["oof_score_fold_std"] = spread(folds)
    out["n_folds"] = len(folds)
    out["runtime_s"] = m.runtime_s  # summed over invocations
    out["resumes"] = m.resumes
    out["smoke"] = m.smoke
    out["precision"] = m.precision or "–"  # results of two machines are told apart
    return out


def collect(input_dir: Path, smoke: bool = False) -> pd.DataFrame:
    """One row per experiment/ensemble with outputs for the dataset named by input_dir, best OOF score first.

    Columns: name, kind, oof_/test_ acc_presence, acc_salience, score (seed-averaged predictions),
    <part>_<figure>_seed_mean/_std and <part>_n_seeds (each seed decoded on its own), oof_score_fold_mean/_std, n_folds,
    runtime_s (summed over invocations), resumes, smoke. Test columns are NaN when the dataset has no test
    labels. Smoke runs are left out unless `smoke`.
    """
    dataset = Path(input_dir).name
    rows = []
    for name, kind, path in metrics_files(dataset):
        try:
            rows.append(row(name, kind, results.RunRecord.read(path.parent)))
        except UserError as err:  # one old or broken output must not hide the others
            print(f"warning: left out {name}: {err}", file=sys.stderr)
    n_smoke = sum(r["smoke"] for r in rows)
    rows = [r for r in rows if smoke or not r["smoke"]]
    if not rows:
        hint = f" ({n_smoke} smoke runs left out; add --smoke to list them)" if n_smoke else ""
        raise UserError(f"no experiment or ensemble has outputs for dataset '{dataset}' "
                        f"(exp/*/output/{dataset}[@variant]/metrics.json){hint}; run one first, "
                        f"e.g. bash run.sh exp040 --input {input_dir}")
    frame = pd.DataFrame(rows)
    return frame.sort_values(["oof_score", "name"], ascending=[False, True], ignore_index=True)


def fmt(value: float, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_spread(mean: float, std: float, n: int) -> str:
    return "–" if not n else f"{fmt(mean)} ± {fmt(std)} ({n})"


def fmt_runtime(seconds: float, resumes: int = 0) -> str:
    """Run time summed over invocations, with the number of resumes when there were any."""
    if math.isnan(seconds):
        return "–"
    text = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    return text + (f" ({resumes} resume{'s' if resumes > 1 else ''})" if resumes else "")


def per_seed_rows(df: pd.DataFrame, with_test: bool) -> tuple[list[str], list[list[str]]]:
    """Every figure as mean ± std over seeds (each seed decoded on its own), and the run time."""
    parts = ("oof", "test") if with_test else ("oof",)
    header = ["#", "experiment"] + [f"{p.upper() if p == 'oof' else p} {k.replace('acc_', 'ACC_')}"
                                    for p in parts for k in FIGURES] + ["seeds", "precision", "run time", "smoke"]
    rows = []
    for i, r in enumerate(df.itertuples(index=False), start=1):
        r = r._asdict()
        cells = [str(i), r["name"]] + [f"{fmt(r[f'{p}_{k}_seed_mean'], 3)} ± {fmt(r[f'{p}_{k}_seed_std'], 3)}"
                                       if r[f"{p}_n_seeds"] else "–" for p in parts for k in FIGURES]
        rows.append(cells + [str(r["oof_n_seeds"]), r["precision"], fmt_runtime(r["runtime_s"], r["resumes"]), "smoke" if r["smoke"] else ""])
    return header, rows


def display_rows(df: pd.DataFrame, per_seed: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows of strings) shared by the console and markdown tables; test columns only when any exist."""
    with_test = df["test_score"].notna().any()
    if per_seed:
        return per_seed_rows(df, with_test)
    header = ["#", "experiment", "OOF ACC_presence", "OOF ACC_salience", "OOF score",
              "OOF score over seeds", "OOF score over folds"]
    if with_test:
        header += ["test ACC_presence", "test ACC_salience", "test score", "test score over seeds"]
    header += ["precision", "run time", "smoke"]
    rows = []
    for i, r in enumerate(df.itertuples(index=False), start=1):
        cells = [str(i), r.name, fmt(r.oof_acc_presence), fmt(r.oof_acc_salience), fmt(r.oof_score),
                 fmt_spread(r.oof_score_seed_mean, r.oof_score_seed_std, r.oof_n_seeds),
                 fmt_spread(r.oof_score_fold_mean, r.oof_score_fold_std, r.n_folds)]
        if with_test:
            cells += [fmt(r.test_acc_presence), fmt(r.test_acc_salience), fmt(r.test_score),
                      fmt_spread(r.test_score_seed_mean, r.test_score_seed_std, r.test_n_seeds)]
        cells += [r.precision, fmt_runtime(r.runtime_s, r.resumes), "smoke" if r.smoke else ""]
        rows.append(cells)
    return header, rows


NOTE = ("OOF: out-of-fold, decoder thresholds (and, for experiments with sub-runs, the sub-run) chosen per fold on "
        "the other folds. Precision: what training ran at. Run time: summed over invocations. Score columns without ± are "
        "the seed-averaged predictions; ± columns are mean ± std (count) over seeds, each decoded on its own, "
        "or over folds.")


NOTE_PER_SEED = ("Mean ± std over seeds, each seed's OOF (and test) predictions decoded on their own with thresholds "
                 "refitted per fold on the other folds; rows sorted by the OOF score of the seed-averaged predictions.")


def to_markdown(df: pd.DataFrame, per_seed: bool = False) -> str:
    """The leaderboard as a markdown table (plus a one-line legend), best OOF score first."""
    header, rows = display_rows(df, per_seed)
    align = ["---" if i == 1 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + f"\n\n{NOTE_PER_SEED if per_seed else NOTE}\n"


def show(df: pd.DataFrame, dataset: str, per_seed: bool = False) -> None:
    header, rows = display_rows(df, per_seed)
    table = Table(title=f"leaderboard on {dataset}", caption=NOTE_PER_SEED if per_seed else NOTE)
    for i, col in enumerate(header):
        table.add_column(col.replace(" ", "\n", 1), justify="left" if i == 1 else "right", overflow="fold",
                         min_width=None if i < 2 else 6)  # numbers stay whole; long words fold
    for cells in rows:
        table.add_row(*cells)
    console = Console()
    # a terminal: fit its width (rich wraps cells); a pipe or file reports 80 columns, too narrow for 13
    (console if console.is_terminal else Console(width=220)).print(table)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="Local leaderboard of every experiment and ensemble on a dataset.")
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="dataset folder (default: input/synthetic)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table instead of the console table")
    p.add_argument("--per-seed", action="store_true",
                   help="every figure as mean ± std over seeds (the README's results table)")
    p.add_argument("--experiments-only", action="store_true", help="leave out ensembles")
    p.add_argument("--smoke", "--all", dest="smoke", action="store_true", help="also list smoke runs")
    args = p.parse_args(argv)
    df = collect(args.input, args.smoke)
    if args.experiments_only:
        df = df[df["kind"] == "experiment"].reset_index(drop=True)
    if args.markdown:
        print(to_markdown(df, args.per_seed), end="")
    else:
        show(df, args.input.name, args.per_seed)


if __name__ == "__main__":
    main()
