"""Experiment ids -> folders, and where outputs and submissions live.

Output layout (docs/experiments.md): the committed config writes `exp/<id>/output/<dataset>/`; a variant
(`--smoke`, a set of `--set` overrides, or `--name NAME`) writes `exp/<id>/output/<dataset>@<variant>/`;
submissions are `submissions/<dataset>/<exp folder>[@variant].csv|json|zip`. The environment variables
BLEMORE_OUTPUT_ROOT (a folder mirroring exp/) and BLEMORE_SUBMISSIONS move both roots (tests, benchmarks).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from src.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
EXP_DIR = ROOT / "exp"
# Where every command looks by default, and where submissions go: defined once here.
DEFAULT_INPUT = ROOT / "input" / "synthetic"
SUBMISSIONS = ROOT / "submissions"
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def output_root() -> Path:
    """The folder that mirrors exp/ for outputs: exp/ itself unless BLEMORE_OUTPUT_ROOT is set."""
    return Path(os.environ["BLEMORE_OUTPUT_ROOT"]) if os.environ.get("BLEMORE_OUTPUT_ROOT") else EXP_DIR


def submissions_root() -> Path:
    return Path(os.environ["BLEMORE_SUBMISSIONS"]) if os.environ.get("BLEMORE_SUBMISSIONS") else SUBMISSIONS


def outputs_of(folder: Path) -> Path:
    """exp/<id>/ or exp/ensembles/<name>/ -> its output/ folder under the output root."""
    folder = Path(folder).resolve()
    rel = folder.relative_to(EXP_DIR) if folder.is_relative_to(EXP_DIR) else Path(folder.name)
    return output_root() / rel / "output"


def run_name(folder: Path, variant: str | None) -> str:
    """'exp042_rank_topn_coral' or 'exp042_rank_topn_coral@smoke': output folder suffix and submission name."""
    return Path(folder).name + (f"@{variant}" if variant else "")


def output_dir(folder: Path, dataset: str, variant: str | None = None) -> Path:
    return outputs_of(folder) / (dataset + (f"@{variant}" if variant else ""))


def display_path(path: Path) -> str:
    """A path relative to the repository when it lies inside it (shorter console and report lines)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def new_experiments_dir() -> Path:
    """Where `bash run.sh tune` writes child experiments: exp/, or the moved output root (tests, benchmarks)."""
    return output_root()


def all_experiments() -> list[Path]:
    """Every experiment folder: exp/ and, when the output root is moved, the children written there."""
    found = {p.name: p for d in dict.fromkeys([new_experiments_dir(), EXP_DIR]) for p in d.glob("exp[0-9]*")
             if (p / "config.yaml").exists()}  # exp/ last: its folders win a name clash
    return sorted(found.values(), key=lambda p: p.name)


def resolve(exp_id: str) -> Path:
    """'exp042' (or any unique prefix, or the full folder name) -> exp/exp042_<slug>/."""
    exp_id = Path(str(exp_id).rstrip("/")).name
    exact = [p for p in all_experiments() if p.name == exp_id]
    matches = exact or [p for p in all_experiments() if p.name.startswith(exp_id)]
    if len(matches) != 1:
        names = ", ".join(p.name for p in (matches or all_experiments()))
        what = "no experiment" if not matches else f"{len(matches)} experiments"
        raise UserError(f"'{exp_id}' matches {what}; candidates: {names}")
    return matches[0]


def resolve_run(spec: str) -> tuple[Path, str | None]:
    """'exp042' -> (folder, None); 'exp042@smoke' -> (folder, 'smoke'): an experiment and one of its variants."""
    exp_id, _, variant = str(spec).partition("@")
    if variant and not VARIANT_NAME.fullmatch(variant):
        raise UserError(f"'{spec}': variant '{variant}' is not a valid name")
    return resolve(exp_id), variant or None
