"""train.precision auto: bfloat16 only where the device multiplies it natively, decided from what the machine
reports; the precision that ran is recorded with the run."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

from src import device

from conftest import ROOT, bfloat16, output_dir, run_cli, run_exp

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, cap, expected", [
    ({"avx2", "fma"}, None, "float32"),                        # AVX2-only desktop or cloud CPU
    ({"avx2", "avx512f", "avx512bw"}, None, "float32"),        # AVX-512 without BF16 (torch says AVX512)
    ({"avx2", "avx512f", "avx512_bf16"}, None, "bfloat16"),    # Zen 4, Cooper Lake
    ({"avx2", "avx512f", "amx_bf16"}, None, "bfloat16"),       # Sapphire Rapids
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", "float32"),   # oneDNN capped below bfloat16
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512_CORE", "float32"),
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512_CORE_BF16", "bfloat16"),
    ({"avx2", "avx512f", "amx_bf16"}, "AVX512_CORE_AMX", "bfloat16"),
    (set(), None, "float32"),                                  # no /proc/cpuinfo (not Linux)
])
def test_auto_follows_the_cpu_flags(monkeypatch, flags, cap, expected):
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert device.resolve_precision("auto", CPU, flags) == expected
    for explicit in ("float32", "bfloat16"):
        assert device.resolve_precision(explicit, CPU, flags) == explicit


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_asks_torch_for_native_bfloat16(monkeypatch, supported):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert device.resolve_precision("auto", torch.device("cuda")) == ("bfloat16" if supported else "float32")
    assert asked["emulation"] is False  # emulated bfloat16 is the slow case auto must avoid


def test_explicit_bfloat16_without_native_support_warns_once(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    line = device.precision_warning("bfloat16", CPU, {"avx2"})
    assert "\n" not in line and "slower" in line and device.BF16_EMULATED_SLOWDOWN in line
    assert "train.precision" in line and "float32" in line  # how to turn it off
    assert device.precision_warning("bfloat16", CPU, {"avx2", "avx512_bf16"}) is None
    assert device.precision_warning("auto", CPU, {"avx2"}) is None
    assert device.precision_warning("float32", CPU, {"avx2"}) is None


def test_the_tests_train_in_float32():
    """conftest hides the CPU's bfloat16 flags from auto in this process (subprocesses: the next test)."""
    assert device.resolve_precision("auto", CPU) == "float32"


def test_run_records_the_precision_that_ran(shared_dataset):
    """auto on an AVX2-like process: float32 in metrics.json, config.resolved.yaml (part of the fingerprint) and
    the console's first line; an explicit bfloat16 there warns once, in its log, and records bfloat16."""
    run_cli("src.main", "exp030", "--input", shared_dataset, "--smoke")
    out = output_dir("exp030", shared_dataset, "--smoke")
    assert "precision float32 (auto)" in (out / "log.txt").read_text().splitlines()[0]
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["train"]["precision"] == "auto" and resolved["derived"]["precision"] == "float32"
    record = json.loads((out / "runs" / resolved["run"]["fingerprint"] / "fingerprint.json").read_text())
    assert record["config"]["derived"]["precision"] == "float32"
    assert json.loads((out / "metrics.json").read_text())["precision"] == "float32"

    args = ("--smoke", "--set", "train.precision=bfloat16", "--set", "train.epochs=1")
    run_exp("exp030", shared_dataset, *args)
    out = output_dir("exp030", shared_dataset, *args)
    log = (out / "log.txt").read_text()
    assert log.count("no native bfloat16") == 1 and "slower than in float32" in log
    assert json.loads((out / "metrics.json").read_text())["precision"] == "bfloat16"


@bfloat16
def test_auto_picks_bfloat16_where_this_cpu_has_it():
    assert device.native_bfloat16(CPU) and device.resolve_precision("auto", CPU) == "bfloat16"


def test_configure_torch_turns_on_deterministic_kernels_without_importing_inductor():
    """The flag is set directly: torch.use_deterministic_algorithms would import inductor (seconds per process)."""
    code = ("import sys, torch; from src.device import configure_torch; configure_torch(1, torch.device('cpu')); "
            "print(torch.are_deterministic_algorithms_enabled(), 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
