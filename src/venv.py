"""Run a script under the repository's .venv when another interpreter started it (`python src/ensemble.py`)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parents[1] / ".venv"


def use_venv() -> None:
    """Re-execute this process with .venv/bin/python unless it already runs there (or there is no .venv).

    Only the standard library is imported before this call, so nothing is loaded twice.
    """
    python = VENV / "bin" / "python"
    if not python.exists() or os.environ.get("BLEMORE_VENV_REEXEC"):
        return
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    os.environ["BLEMORE_VENV_REEXEC"] = "1"  # never loop, whatever the venv's prefix looks like
    os.execv(str(python), [str(python), *sys.argv])
