"""Shared fixtures: tiny synthetic datasets, output roots under pytest's tmp folder, runners for the entry points.

Every output a test causes goes under one session tmp folder: BLEMORE_OUTPUT_ROOT (mirrors exp/) and
BLEMORE_SUBMISSIONS are set here, before any test runs, and subprocesses inherit them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from src import device  # noqa: E402
from src.data import synth  # noqa: E402
from src.run.config import variant_name  # noqa: E402
from src.run.experiments import output_dir as _output_dir  # noqa: E402
from src.run.experiments import resolve, submissions_root
from src.run.pipeline import parse_args  # noqa: E402

# The tests train in float32 (train.precision auto) on every machine, unless a test is about bfloat16: in this
# process the CPU's bfloat16 flags are hidden from auto (fixture below); subprocesses run with oneDNN capped at
# AVX2 (SUBPROCESS_ENV), as on an AVX2-only CPU. A test about bfloat16 is marked with `bfloat16`: skipped where the
# CPU only emulates it (tens of times slower), run where it is native.
NATIVE_BF16 = device.native_bfloat16(torch.device("cpu"))
SUBPROCESS_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}  # one torch thread: faster for tiny data


def bfloat16(test):
    """Mark a test about bfloat16: it sees the CPU's real flags, and is skipped where bfloat16 is not native."""
    reason = (f"{device.describe(torch.device('cpu'))} has no native bfloat16: it runs about "
              f"{device.BF16_EMULATED_SLOWDOWN} slower than float32")
    return pytest.mark.bfloat16(pytest.mark.skipif(not NATIVE_BF16, reason=reason)(test))


def pytest_configure(config):
    config.addinivalue_line("markers", "bfloat16: trains in bfloat16 (skipped where the CPU only emulates it)")


@pytest.fixture(autouse=True)
def float32_unless_bfloat16(request, monkeypatch):
    if request.node.get_closest_marker("bfloat16") is None:
        monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2"})


TINY = dict(n_train_actors=6, n_test_actors=2, n_folds=3, width_scale=0.25)
TEMPLATE = Path(__file__).parent / "data" / "submission_template.json"  # 4 entries of the organisers' template


@pytest.fixture(scope="session", autouse=True)
def output_roots(tmp_path_factory):
    """Experiment/ensemble outputs and submissions of the whole session, under pytest's tmp folder."""
    root = tmp_path_factory.mktemp("roots")
    os.environ["BLEMORE_OUTPUT_ROOT"] = str(root / "exp")
    os.environ["BLEMORE_SUBMISSIONS"] = str(root / "submissions")
    yield root


@pytest.fixture
def exp_root(output_roots) -> Path:
    """The session's output root: mirrors exp/ (outputs) and holds the experiments `tune` writes."""
    return Path(os.environ["BLEMORE_OUTPUT_ROOT"])


@pytest.fixture
def make_dataset(tmp_path):
    """Factory: write a tiny synthetic dataset with a unique folder name."""
    def make(**kwargs):
        name = f"tiny_{uuid.uuid4().hex[:8]}"
        return synth.write(tmp_path / name, seed=kwargs.pop("seed", 0), **{**TINY, **kwargs})
    return make


@pytest.fixture(scope="session")
def shared_dataset(tmp_path_factory):
    """One tiny dataset reused by read-only tests and smoke runs."""
    name = f"tiny_{uuid.uuid4().hex[:8]}"
    return synth.write(tmp_path_factory.mktemp("data") / name, seed=0, **TINY)


def run_cli(*args, check=True, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run `python -m <args>` from the repo root, as run.sh does, as on an AVX2-only CPU (SUBPROCESS_ENV)."""
    env = {**os.environ, "PYTHONPATH": str(cwd), **SUBPROCESS_ENV}
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_script(path: str, *args) -> subprocess.CompletedProcess:
    """Run a file as a user would (`python src/score.py ...`), from the repo root, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | SUBPROCESS_ENV
    return subprocess.run([sys.executable, str(ROOT / path), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def run_exp(exp_id: str, input_dir: Path, *args, check=True, cwd=ROOT) -> subprocess.CompletedProcess:
    """An experiment as `bash run.sh` runs it."""
    return run_cli("src.main", exp_id, "--input", input_dir, "--quiet", *args, check=check, cwd=cwd)


def output_dir(exp_id: str, input_dir: Path, *args) -> Path:
    """The output folder of the variant that `run_exp(exp_id, input_dir, *args)` writes."""
    a = parse_args(["--input", str(input_dir), *map(str, args)])
    return _output_dir(resolve(exp_id), Path(input_dir).name, variant_name(a.smoke, a.sets, a.name))


def submissions_dir(input_dir: Path) -> Path:
    return submissions_root() / Path(input_dir).name
