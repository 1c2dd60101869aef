"""Shared fixtures: a tiny synthetic dataset with a unique name, and a runner for the real entry points."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src import synth  # noqa: E402

TINY = dict(n_train_actors=6, n_test_actors=2, n_folds=3, width_scale=0.25)


def remove_outputs(name: str) -> None:
    """Experiment outputs and submissions written for a test dataset live in the repo tree: clean them."""
    for path in list(ROOT.glob(f"exp/*/output/{name}")) + list(ROOT.glob(f"exp/ensembles/*/output/{name}")):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(ROOT / "submissions" / name, ignore_errors=True)


@pytest.fixture
def make_dataset(tmp_path):
    """Factory: write a tiny synthetic dataset with a unique folder name; outputs removed after the test."""
    names = []

    def make(**kwargs):
        name = f"tiny_{uuid.uuid4().hex[:8]}"
        names.append(name)
        return synth.write(tmp_path / name, seed=kwargs.pop("seed", 0), **{**TINY, **kwargs})

    yield make
    for name in names:
        remove_outputs(name)


@pytest.fixture(scope="session")
def shared_dataset(tmp_path_factory):
    """One tiny dataset reused by read-only tests and smoke runs."""
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    path = synth.write(tmp_path_factory.mktemp("data") / name, seed=0, **TINY)
    yield path
    remove_outputs(name)


def run_cli(*args, check=True) -> subprocess.CompletedProcess:
    """Run `python -m <args>` from the repo root, as run.sh does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_script(path: str, *args) -> subprocess.CompletedProcess:
    """Run a file as a user would (`python src/score.py ...`), from the repo root, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(ROOT / path), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def run_exp(exp_id: str, input_dir: Path, *args, check=True) -> subprocess.CompletedProcess:
    """An experiment as `bash run.sh` runs it; one torch thread, which is faster for tiny data on 2 cores."""
    return run_cli("src.experiments", exp_id, "--input", input_dir, "--quiet", "--set", "train.num_threads=1",
                   *args, check=check)


def output_dir(exp_id: str, input_dir: Path) -> Path:
    from src.experiments import resolve
    return resolve(exp_id) / "output" / Path(input_dir).name
