"""Where a run computes and at which precision: decided from what torch and the CPU report, never from a timing,
so the choice is the same on every run on one machine.

bfloat16 pays only where the hardware multiplies it natively: CUDA devices with bfloat16 support, and CPUs with
AVX-512 BF16 or AMX. Elsewhere (AVX2-only CPUs) torch emulates it, and a bfloat16 matrix product runs tens of
times slower than float32 (BF16_EMULATED_SLOWDOWN).
"""
from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import torch

from src.errors import UserError

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 dot products
# bfloat16 vs float32 matrix products on a CPU without those flags: 64x1024 @ 1024x256, one thread. 57x on an
# AVX2-only 2-core CPU (34 vs 0.6 GFLOP/s); 34x on an AMD EPYC with its oneDNN capped at AVX2 (95 vs 2.8).
# `bash run.sh bench` prints this machine's two rates.
BF16_EMULATED_SLOWDOWN = "35-57x"


def pick_device(name: str, what: str = "train.device") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device this machine has; `what` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{what} {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what} {name}: CUDA is not available on this machine (torch sees no CUDA device)")
    return device


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is missing: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith(("flags", "Features")) for f in line.split(":", 1)[1].split()}


def onednn_allows_bf16() -> bool:
    """False when ONEDNN_MAX_CPU_ISA caps oneDNN (torch's CPU bfloat16 kernels) below the bfloat16 instructions,
    e.g. AVX2 or AVX512_CORE: the machine then computes as a CPU without them would."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return cap in ("", "ALL", "DEFAULT") or any(k in cap for k in ("BF16", "AMX", "FP16", "AVX10"))


def native_bfloat16(device: torch.device, flags: set[str] | None = None) -> bool:
    """Whether this device multiplies bfloat16 natively (so faster than float32); flags: the CPU's, for tests."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_CPU_FLAGS) and onednn_allows_bf16()


def describe(device: torch.device, flags: set[str] | None = None) -> str:
    """One line naming the device and what decides the precision: 'cpu (AMD EPYC, AVX512, avx512_bf16, 2 cores)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    flags = cpu_flags() if flags is None else flags
    native = [f for f in BF16_CPU_FLAGS if f in flags] or ["no bf16 flags"]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {', '.join(native)}"
            + (f", ONEDNN_MAX_CPU_ISA={cap}" if cap else "") + f", {os.cpu_count()} cores)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_precision(requested: str, device: torch.device, flags: set[str] | None = None) -> str:
    """train.precision -> the precision that runs: auto is bfloat16 where the device has it natively, else float32."""
    if requested == "auto":
        return "bfloat16" if native_bfloat16(device, flags) else "float32"
    return requested


def precision_warning(requested: str, device: torch.device, flags: set[str] | None = None) -> str | None:
    """The one warning line for an explicit bfloat16 on a device that only emulates it, else None."""
    if requested != "bfloat16" or native_bfloat16(device, flags):
        return None
    return (f"warning: train.precision bfloat16 on {describe(device, flags)}, which has no native bfloat16: "
            f"training runs about {BF16_EMULATED_SLOWDOWN} slower than in float32; "
            "use train.precision: auto (the default) or --set train.precision=float32")


def keep_freed_memory() -> None:
    """Keep freed blocks under 32 MiB in the process. By default glibc hands large freed blocks back to the
    OS (mmap / trim), so each training step's multi-MB tensors would fault their pages in anew, a cost paid
    in the kernel on every step. A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: serve blocks under 32 MiB from the heap
        libc.mallopt(-1, 2**31 - 1)   # M_TRIM_THRESHOLD: never shrink the heap
    except (OSError, AttributeError):
        pass


def configure_torch(num_threads: int, device: torch.device) -> None:
    """This process's torch: num_threads threads (0: all cores), deterministic kernels on CPU."""
    keep_freed_memory()
    torch.set_num_threads(num_threads or torch.get_num_threads())
    # Bit-identical reruns on CPU; on GPU some kernels stay nondeterministic (logged by the pipeline).
    # (the kernels' flag alone: torch.use_deterministic_algorithms also imports inductor to set its flag, ~3 s in
    # every process and worker, and nothing here compiles)
    torch._C._set_deterministic_algorithms(device.type == "cpu", warn_only=False)
    # ...without its NaN-filling of every new tensor, a guard against kernels that read memory they never
    # wrote: none does here (the determinism tests compare reruns byte for byte), and the fill costs time per step
    torch.utils.deterministic.fill_uninitialized_memory = False
