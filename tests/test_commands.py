"""Every documented command runs as written: `bash run.sh <verb>` and `python src/<tool>.py` from another Python."""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


@pytest.mark.parametrize("verb", ["report", "leaderboard", "compare", "ensemble", "score", "synth", "predict",
                                  "prepare", "tune", "results"])
def test_every_tool_is_a_run_sh_verb(verb):
    if not VENV_PYTHON.exists():
        pytest.skip("no .venv (run.sh would create one)")
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), verb, "--help"], cwd=ROOT, capture_output=True, text=True)
    if verb == "score":  # a plain argv tool: --help is a usage error with its one-line message
        assert proc.returncode == 2 and proc.stderr.startswith("error: usage: python src/score.py")
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage:")


def test_a_script_started_by_another_python_reruns_under_the_venv(tmp_path):
    """`python3 src/ensemble.py` with a Python that lacks the packages still works (re-exec into .venv)."""
    other = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if not VENV_PYTHON.exists() or other is None:
        pytest.skip("needs .venv and a second Python")
    probe = subprocess.run([other, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    if Path(probe.stdout.strip()).resolve() == (ROOT / ".venv").resolve():
        pytest.skip("python3 on PATH is the venv's")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BLEMORE_VENV_REEXEC")}
    proc = subprocess.run([other, "src/ensemble.py", "exp010", "--input", str(tmp_path / "nothing")], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    # the ensemble imports lightgbm, pandas and torch: reaching its own one-line error means it ran under the venv
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "nothing" in proc.stderr, proc.stderr


def test_run_sh_passes_test_paths_alone_and_defaults_to_the_tests_folder(tmp_path):
    """run.sh's argument handling, with a stand-in Python that prints its arguments: no pytest runs inside
    pytest, and nothing is installed (the requirement stamps match)."""
    for name in ["run.sh", *(p.name for p in ROOT.glob("requirements*.txt"))]:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for req in tmp_path.glob("requirements*.txt"):
        (tmp_path / ".venv" / f".{req.name}.sha256").write_text(hashlib.sha256(req.read_bytes()).hexdigest() + "\n")
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)

    def python_args(*args):
        proc = subprocess.run(["bash", str(tmp_path / "run.sh"), *args], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return proc.stdout.strip()

    assert python_args("test", "tests/test_layers.py") == "-m pytest -q tests/test_layers.py"
    assert python_args("test", "--collect-only", "tests/test_layers.py") == "-m pytest -q --collect-only tests/test_layers.py"
    assert python_args("test", "-x", "tests/a.py::t", "tests/b.py") == "-m pytest -q -x tests/a.py::t tests/b.py"
    assert python_args("test") == "-m pytest -q tests"
    assert python_args("test", "-x", "--lf") == "-m pytest -q tests -x --lf"
    assert python_args("results", "--dry-run") == "-m src.analysis.results_page --dry-run"
