"""Choices that depend on the hardware, made in one place: the device, and the training precision.

bf16 autocast pays only where the hardware multiplies bf16 natively. On this project's 2-core machines with
torch 2.13 a CPU with AMX ran bf16 matmuls ~6× faster than fp32 and one with AVX512-BF16 ~2×, but an AVX2-only
CPU has no bf16 instructions and torch emulated them ~75× SLOWER than fp32 (0.7 against 53 GFLOP/s). So
`train.precision: auto` picks bf16 on a CUDA GPU that supports it and on a CPU with AVX512-BF16 or AMX,
and fp32 everywhere else. An explicit `bf16` is obeyed, with one warning where it is emulated.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # fp32: no autocast



def autocast(device: torch.device, dtype: torch.dtype):
    """The context a forward runs in: torch.autocast to `dtype` on `device`'s type, or none for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def resolve_device(name: str | torch.device, key: str = "device") -> torch.device:
    """The torch device `name` names; "auto": CUDA where there is a GPU, else the CPU. A ConfigError naming
    `key` (the config key or option) for a name that is no device, or a CUDA device where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{key}: {name!r} is not a device ({str(e).splitlines()[0]})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: '{name}' requested but no CUDA GPU is available (use auto or cpu)")
    return device


# /proc/cpuinfo flags of the x86 instructions that multiply bf16 natively (oneDNN uses them for bf16 GEMM).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_class() -> str:
    """A short name of the CPU class that decides precision: 'amx', 'avx512_bf16', 'avx512', 'avx2' or 'other'."""
    flags = cpu_flags()
    for name, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return "other"


def cpu_report() -> dict:
    """What a CPU benchmark's figures depend on, for its report: torch's threads, the CPU class, the best kernels
    torch's CPU capability allows, the CPU's AVX/AMX flags, torch's version."""
    return {"threads": torch.get_num_threads(), "cpu_class": cpu_class(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))), "torch": torch.__version__}


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` multiplies bf16 natively, why). On CPU both the flags and torch's oneDNN must agree:
    oneDNN may be held below the CPU's best instructions (ONEDNN_MAX_CPU_ISA), and then bf16 is emulated."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"GPU {torch.cuda.get_device_name(device)} {'supports' if ok else 'lacks'} bf16"
    if device.type != "cpu":
        return False, f"device {device.type}"
    flags = cpu_flags() & set(NATIVE_BF16_CPU_FLAGS)
    if not flags:
        return False, f"CPU class {cpu_class()}: no avx512_bf16 or amx_bf16 instructions"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, f"CPU has {', '.join(sorted(flags))} but torch's oneDNN does not use them"
    return True, f"CPU has {', '.join(sorted(flags))}"


def resolve_precision(precision: str, device: torch.device) -> str:
    """`train.precision` → the autocast dtype name to use ('fp32', 'bf16' or 'fp16'), logged once with why.
    'auto' is bf16 where it is native (see module docstring), else fp32; explicit values are kept."""
    if precision == "auto":
        native, why = native_bf16(device)
        chosen = "bf16" if native else "fp32"
        log.info("precision auto → %s (%s)", chosen, why)
        return chosen
    if precision == "bf16":
        native, why = native_bf16(device)
        if not native:
            log.warning("train.precision bf16 on a device without native bf16 (%s): torch emulates it, which can "
                        "be ~75x slower than fp32 on CPU; use precision auto or fp32", why)
    return precision
