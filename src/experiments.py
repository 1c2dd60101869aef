"""Experiment ids -> folders, and `python -m src.experiments exp042 [args]` which runs the folder's run.py."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from src.errors import UserError, cli

ROOT = Path(__file__).resolve().parents[1]
EXP_DIR = ROOT / "exp"
# Where every command looks by default, and where submissions go: defined once here.
DEFAULT_INPUT = ROOT / "input" / "synthetic"
SUBMISSIONS = ROOT / "submissions"


def display_path(path: Path) -> str:
    """A path relative to the repository when it lies inside it (shorter console and report lines)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def all_experiments() -> list[Path]:
    return sorted(p for p in EXP_DIR.glob("exp[0-9]*") if (p / "config.yaml").exists())


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


@cli
def main():
    if len(sys.argv) < 2:
        raise UserError("usage: python -m src.experiments EXP_ID [--input DIR] [--smoke] [--set k=v ...]")
    script = resolve(sys.argv[1]) / "run.py"
    sys.argv = [str(script)] + sys.argv[2:]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
