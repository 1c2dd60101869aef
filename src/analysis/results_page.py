"""`bash run.sh results`: every experiment run, the claims compared, and the results page written from the numbers.

    bash run.sh results [--input DIR] [--smoke] [--dry-run] [--render-only] [--experiments ID ...]
                        [--claims FILE] [--seeds N] [--boot N] [--docs DIR] [--readme FILE] [--quiet]

1. Every experiment of exp/ runs with its committed config, as `bash run.sh <id>` runs it. A run whose
   fingerprint (config, training code, data, precision) is unchanged reuses its finished folds and only
   decodes again, so a rerun after a decoding change costs seconds per experiment.
2. Every arm of the claims file (docs/claims.yaml) runs as a variant with `--set train.seeds=N --name seeds<N>`,
   N the file's `seeds`, so both arms of a claim share N paired seeds.
3. Each claim is a paired comparison of its two arms (src/analysis/compare.py).
4. docs/results.json holds the numbers. docs/results.md and the README's block between the markers are
   rendered from that file alone, so a test can re-render them and compare.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import yaml

from src import device as device_mod
from src.analysis import compare as compare_mod
from src.analysis import leaderboard
from src.errors import UserError, cli
from src.io import write_json, write_text
from src.run import fingerprint, pipeline, results
from src.run.experiments import DEFAULT_INPUT, ROOT, all_experiments, display_path, output_dir, resolve

DOCS = ROOT / "docs"
README = ROOT / "README.md"
CLAIMS = DOCS / "claims.yaml"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SCHEMA = 1
PLACEHOLDER = "Not generated yet: `bash run.sh results` writes this block from docs/results.json."


# ---- what to run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One `bash run.sh <experiment> [flags]` invocation."""
    experiment: str              # the folder name, exp042_rank_topn_coral
    flags: tuple = ()            # --smoke, --set ..., --name ...
    variant: str | None = None   # what the flags make: None for the committed config

    @property
    def run(self) -> str:
        """The run as compare and ensemble address it: exp042 or exp042@seeds5."""
        return self.experiment.split("_")[0] + (f"@{self.variant}" if self.variant else "")

    def command(self, input_flag: tuple) -> str:
        return " ".join(["bash run.sh", self.experiment.split("_")[0], *input_flag, *self.flags])


@dataclass
class Claim:
    claim: str
    a: Job
    b: Job
    sets: dict = field(default_factory=dict)


def arm_job(spec, seeds: int, smoke: bool, where: str) -> Job:
    """A claims-file arm (`exp040`, or {experiment: exp040, set: [key=value, ...], name: reattend}) -> its Job."""
    if isinstance(spec, str):
        spec = {"experiment": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("experiment"), str):
        raise UserError(f"{where}: an arm is an experiment id or {{experiment: ID, set: [...], name: NAME}}")
    if unknown := set(spec) - {"experiment", "set", "name"}:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: experiment, set, name)")
    sets = spec.get("set") or []
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise UserError(f"{where}: set must be a list of key.path=value strings")
    if sets and not spec.get("name"):
        raise UserError(f"{where}: an arm with set needs a name (its variant is <name>-seeds<N>)")
    variant = "-".join(p for p in ("smoke" if smoke else "", spec.get("name") or "", f"seeds{seeds}") if p)
    flags = (("--smoke",) if smoke else ()) + ("--set", f"train.seeds={seeds}")
    flags += tuple(x for s in sets for x in ("--set", s)) + ("--name", variant)
    return Job(resolve(spec["experiment"]).name, flags, variant)


def load_claims(path: Path, smoke: bool, seeds: int | None = None) -> tuple[int, list[Claim]]:
    """The claims file -> (seeds per arm, claims). Every problem is one line naming the file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: claims file not found") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list):
        raise UserError(f"{path}: expected 'seeds: N' and a list under 'claims:'")
    n = doc.get("seeds") if seeds is None else seeds
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise UserError(f"{path}: seeds must be an integer >= 2 (a spread over seeds needs two), got {n!r}")
    claims = []
    for i, item in enumerate(doc["claims"]):
        where = f"{path}: claims[{i}]"
        if not isinstance(item, dict) or not {"claim", "a", "b"} <= set(item):
            raise UserError(f"{where}: needs claim, a and b")
        if unknown := set(item) - {"claim", "a", "b"}:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: claim, a, b)")
        claims.append(Claim(str(item["claim"]), arm_job(item["a"], n, smoke, f"{where}.a"),
                            arm_job(item["b"], n, smoke, f"{where}.b")))
    return n, claims


def experiment_jobs(ids, smoke: bool) -> list[Job]:
    """The committed config of each experiment (all of exp/ when ids is empty), as `bash run.sh <id>` runs it."""
    folders = [resolve(i) for i in ids] if ids else all_experiments()
    return [Job(f.name, ("--smoke",) if smoke else (), "smoke" if smoke else None) for f in folders]


def status(job: Job, input_dir: Path) -> str:
    """What invoking the job would do, from its fingerprint against the variant's outputs (nothing trained)."""
    args = pipeline.parse_args(["--input", str(input_dir), *job.flags])
    plan = pipeline.plan_run(resolve(job.experiment), args)
    try:
        done = yaml.safe_load((plan.out / "config.resolved.yaml").read_text())["run"]["fingerprint"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        done = None
    if done == plan.record["fingerprint"] and (plan.out / "metrics.json").is_file():
        return "finished: folds reused, decoded again"
    if (plan.run_dir / "fingerprint.json").is_file():
        return "unfinished: trains what is missing"
    previous = pipeline.previous_record(plan.out)
    if previous is None:
        return "trains: no run yet"
    return "trains: " + ("; ".join(fingerprint.changes(previous, plan.record)) or "folds missing")


def invoke(job: Job, input_dir: Path | None, quiet: bool) -> None:
    """Run the job as `bash run.sh` would, in a child process (its own torch threads and log); input_dir None:
    the default dataset, which the run generates when it is absent."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    given = () if input_dir is None else ("--input", str(input_dir))
    cmd = [sys.executable, "-m", "src.main", job.experiment, *given, *job.flags]
    proc = subprocess.run(cmd + (["--quiet"] if quiet else []), cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise UserError(f"{job.run}: the run stopped (exit {proc.returncode}); fix it and rerun bash run.sh results "
                        "(finished runs are reused)")


# ---- the numbers ---------------------------------------------------------------------------------------
def finite(obj):
    """NaN and inf -> None, recursively, so results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def git_state() -> tuple[str, bool]:
    """(HEAD commit, whether tracked files differ from it)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return pipeline.git_commit(), bool(out.strip())


def collect(input_dir: Path, smoke: bool, jobs: list[Job], seeds: int, claims: list[Claim], boot: int,
            input_flag: tuple, options: tuple = ()) -> dict:
    """results.json's content from the finished runs: leaderboard rows, claims, and the facts of the header;
    options: the command's other arguments that shaped the page (claims file, experiments, seeds)."""
    dataset = Path(input_dir).name
    records = {job: results.RunRecord.read(output_dir(resolve(job.experiment), dataset, job.variant))
               for job in dict.fromkeys(jobs + [j for c in claims for j in (c.a, c.b)])}
    rows = [leaderboard.row(job.experiment + (f"@{job.variant}" if job.variant else ""), "experiment", records[job])
            | {"command": job.command(input_flag)} for job in jobs]
    rows.sort(key=lambda r: (-r["oof_score"] if r["oof_score"] == r["oof_score"] else math.inf, r["name"]))
    compared = []
    for c in claims:
        res = compare_mod.compare(c.a.run, c.b.run, input_dir, boot)
        compared.append({"claim": c.claim, **res, "arm_commands": [c.a.command(input_flag), c.b.command(input_flag)],
                         "command": " ".join(["bash run.sh compare", c.a.run, c.b.run, *input_flag, f"--boot {boot}"])})
    commit, dirty = git_state()
    return finite({
        "schema": SCHEMA,
        "generated": {"commit": commit, "uncommitted_changes": dirty,
                      "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      "cpu": device_mod.describe(torch.device("cpu")), "dataset": dataset, "smoke": smoke,
                      "precision": sorted({r.precision or "unknown" for r in records.values()}),
                      "command": " ".join(["bash run.sh results", *input_flag] + (["--smoke"] if smoke else [])
                                          + list(options))},
        "leaderboard": rows,
        "claims": {"seeds": seeds, "boot": boot, "items": compared},
    })


# ---- rendering (from results.json alone) ---------------------------------------------------------------
def signed(mean, std) -> str:
    return "–" if mean is None else f"{mean:+.4f} ± {std:.4f}"


def seeds_line(data: dict) -> str:
    counts = sorted({r["oof_n_seeds"] for r in data["leaderboard"]})
    board = ", ".join(map(str, counts)) or "–"
    return (f"seeds: {board} per leaderboard row (each experiment's committed `train.seeds`), "
            f"{data['claims']['seeds']} paired per claim arm")


def header(data: dict) -> str:
    g = data["generated"]
    commit = f"`{g['commit'][:12]}`" + (" (with uncommitted changes)" if g["uncommitted_changes"] else "")
    return (f"Dataset `{g['dataset']}`{' (smoke runs)' if g['smoke'] else ''}; commit {commit}; {g['date']}; "
            f"{g['cpu']}; precision {', '.join(g['precision'])}; {seeds_line(data)}. "
            f"Regenerate with `{g['command']}`.")


def board_table(data: dict, per_seed: bool) -> str:
    frame = pd.DataFrame(data["leaderboard"]).astype({"runtime_s": float})
    return leaderboard.to_markdown(frame, per_seed=per_seed)


def claims_table(data: dict) -> str:
    claims = data["claims"]
    if not claims["items"]:
        return "No claims in the claims file.\n"
    lines = ["| claim | B - A | per-seed OOF diff | per-seed test diff | seed-mean OOF diff [95% actor bootstrap] "
             "| P(B <= A) |", "|---|---|---:|---:|---:|---:|"]
    for c in claims["items"]:
        oof, test, bs = c["per_seed"]["oof"], c["per_seed"].get("test_vote"), c["bootstrap_oof"]
        lines.append(f"| {c['claim']} | {c['b']} - {c['a']} | {signed(oof['diff_mean'], oof['diff_std'])} | "
                     f"{signed(test['diff_mean'], test['diff_std']) if test else '–'} | "
                     f"{bs['diff']:+.4f} [{bs['ci95'][0]:+.4f}, {bs['ci95'][1]:+.4f}] | {bs['p_b_not_better']:.2f} |")
    return "\n".join(lines) + (
        f"\n\nB - A per claim, both arms trained at the same {claims['seeds']} seeds (paired: same batch order and "
        "initial weights per seed). Per-seed columns: mean ± std over seeds of the difference, each seed decoded on "
        "its own with thresholds refitted per fold on the other folds; test rows decoded by fold vote. Seed-mean: "
        f"the difference of the seed-averaged predictions' OOF scores, with a paired bootstrap over actors "
        f"({claims['boot']} resamples); P(B <= A) is the share of resamples where B does not beat A.\n")


def render_block(data: dict | None) -> str:
    """The block the README and docs/results.md share: header, leaderboard, claims."""
    if data is None:
        return PLACEHOLDER + "\n"
    return "\n".join([header(data), "", "**Leaderboard** (each row: `bash run.sh <id>`; best OOF first)", "",
                      board_table(data, per_seed=False), "**Claims** (paired comparisons)", "",
                      claims_table(data)])


def arm_seed_table(data: dict) -> str:
    """Each claim arm's per-seed OOF scores, as compare derived them from its fold files."""
    arms = {}
    for c in data["claims"]["items"]:
        for side in ("a", "b"):
            arms.setdefault(c[side], c["per_seed"]["oof"][side])
    if not arms:
        return ""
    n = max(len(v) for v in arms.values())
    lines = ["| arm | " + " | ".join(f"seed {i}" for i in range(n)) + " | mean ± std |",
             "|---|" + "---:|" * (n + 1)]
    for name, values in arms.items():
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {mean:.4f} ± {std:.4f} |")
    return "\n".join(lines) + "\n"


def commands(data: dict) -> str:
    lines = [f"- the whole page, docs/results.json and the README block: `{data['generated']['command']}`",
             "- leaderboard rows:"] + [f"  - `{r['command']}`" for r in data["leaderboard"]]
    arms = dict.fromkeys(cmd for c in data["claims"]["items"] for cmd in c["arm_commands"])
    if arms:
        lines += [f"- claim arms ({data['claims']['seeds']} seeds each):"] + [f"  - `{cmd}`" for cmd in arms]
        lines += ["- claims:"] + [f"  - {c['claim']}: `{c['command']}`" for c in data["claims"]["items"]]
    return "\n".join(lines) + "\n"


def render_page(data: dict | None) -> str:
    """docs/results.md: the shared block, then the per-seed tables and every figure's command."""
    parts = ["# Results", "",
             "Generated by `bash run.sh results` from [results.json](results.json); edit neither by hand. "
             "Which experiments run at how many seeds, and why, is in [the claims file](claims.yaml) and "
             "[validation.md](validation.md).", "", render_block(data)]
    if data is not None:
        parts += ["## Per seed", "", "Each figure as mean ± std over seeds, each seed decoded on its own.", "",
                  board_table(data, per_seed=True), "OOF score of each claim arm per seed:", "",
                  arm_seed_table(data), "## Commands", "", commands(data)]
    return "\n".join(parts)


def replace_block(text: str, block: str, where: str = "README.md") -> str:
    """text with everything between the results markers replaced by block."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise UserError(f"{where}: needs the markers {START} and {END}, in that order, around the results block")
    return text[:start + len(START)] + "\n" + block + text[end:]


def block_of(text: str, where: str = "README.md") -> str:
    """The text between the results markers (as replace_block writes it)."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise UserError(f"{where}: needs the markers {START} and {END}, in that order, around the results block")
    return text[start + len(START) + 1:end]


def write_pages(data: dict, docs: Path, readme: Path | None) -> None:
    """results.json, results.md and the README's block; the README is checked before anything is written."""
    new_readme = replace_block(readme.read_text(), render_block(data), str(readme)) if readme else None
    write_json(docs / "results.json", data)
    write_text(docs / "results.md", render_page(data))
    if readme:
        write_text(readme, new_readme)


def read_results(docs: Path) -> dict:
    path = Path(docs) / "results.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing; run bash run.sh results first") from None
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(f"{path}: not a results file of this version (schema {SCHEMA}); rerun bash run.sh results")
    return data


# ---- the command ---------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description="Run every experiment and the claims, then write the results page.")
    p.add_argument("--input", type=Path, default=None, help="dataset folder (default: input/synthetic)")
    p.add_argument("--smoke", action="store_true", help="every run with --smoke (a pipeline check; needs --docs)")
    p.add_argument("--dry-run", action="store_true", help="list what would train or be reused; run nothing")
    p.add_argument("--render-only", action="store_true",
                   help="render results.md and the README block from the existing results.json; run nothing")
    p.add_argument("--experiments", nargs="+", default=[], metavar="ID", help="leaderboard runs (default: all of exp/)")
    p.add_argument("--claims", type=Path, default=CLAIMS, help="claims file (default: docs/claims.yaml)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per claim arm instead of the claims file's")
    p.add_argument("--boot", type=int, default=2000, help="actor bootstrap resamples per claim")
    p.add_argument("--docs", type=Path, default=None, help="where results.json and results.md go (default: docs/)")
    p.add_argument("--readme", type=Path, default=None, help="file whose results block is replaced (default: "
                   "README.md; with --smoke only when given)")
    p.add_argument("--quiet", action="store_true", help="the runs print nothing (their log.txt is still written)")
    args = p.parse_args(argv)
    if args.boot < 1:
        raise UserError(f"--boot {args.boot}: must be >= 1")
    if args.smoke and args.docs is None:
        raise UserError("--smoke: give --docs DIR (smoke figures never replace docs/results.json)")
    args.readme = args.readme or (None if args.smoke else README)
    args.docs = args.docs or DOCS
    return args


@cli
def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render_only:
        write_pages(read_results(args.docs), args.docs, args.readme)
        print(f"rendered {display_path(args.docs / 'results.md')}" + (f" and {display_path(args.readme)}"
                                                                     if args.readme else ""))
        return
    if args.readme and not args.dry_run:
        replace_block(args.readme.read_text(), "", str(args.readme))  # markers checked before hours of runs
    input_dir = args.input or DEFAULT_INPUT
    input_flag = () if args.input is None else ("--input", display_path(args.input))
    seeds, claims = load_claims(args.claims, args.smoke, args.seeds)
    jobs = experiment_jobs(args.experiments, args.smoke)
    todo = list(dict.fromkeys(jobs + [j for c in claims for j in (c.a, c.b)]))
    if args.dry_run:
        if not Path(input_dir).is_dir():
            print(f"{display_path(input_dir)} does not exist yet: every run trains"
                  + (" (the first generates the synthetic dataset)" if args.input is None else ""))
        for job in todo:
            what = status(job, input_dir) if Path(input_dir).is_dir() else "trains: no dataset yet"
            print(f"{job.command(input_flag)}: {what}")
        for c in claims:
            print(f"compare {c.a.run} {c.b.run}: {c.claim}")
        return
    for i, job in enumerate(todo, start=1):
        print(f"[{i}/{len(todo)}] {job.command(input_flag)}", flush=True)
        invoke(job, args.input, args.quiet)
    options = ((["--claims", display_path(args.claims)] if Path(args.claims).resolve() != CLAIMS.resolve() else [])
               + (["--experiments", *args.experiments] if args.experiments else [])
               + (["--seeds", str(args.seeds)] if args.seeds is not None else []))
    data = collect(input_dir, args.smoke, jobs, seeds, claims, args.boot, input_flag, tuple(options))
    write_pages(data, args.docs, args.readme)
    print(f"wrote {display_path(args.docs / 'results.json')}, {display_path(args.docs / 'results.md')}"
          + (f" and the block in {display_path(args.readme)}" if args.readme else ""))


if __name__ == "__main__":
    main()
