"""Imported first by the scripts a user may start as files (`python src/ensemble.py`, `python src/score.py`):
makes `src` importable and re-runs the script under the repository's .venv when another interpreter started it.
Only the standard library is imported before the re-run, so nothing is loaded twice."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
sys.path.insert(0, str(ROOT))
python = VENV / "bin" / "python"
# never loop, whatever the venv's prefix looks like
if python.exists() and not os.environ.get("BLEMORE_VENV_REEXEC") and Path(sys.prefix).resolve() != VENV.resolve():
    os.environ["BLEMORE_VENV_REEXEC"] = "1"
    os.execv(str(python), [str(python), *sys.argv])
