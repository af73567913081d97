"""Choices that depend on the hardware, made in one place: the device, and the training precision.

bf16 autocast pays only where the hardware multiplies bf16 natively. On this project's 2-core machines with
torch 2.13 a CPU with AMX ran bf16 matmuls ~6× faster than fp32 and one with AVX512-BF16 ~2×, but an AVX2-only
CPU has no bf16 instructions and torch emulated them ~75× SLOWER than fp32 (0.7 against 53 GFLOP/s). So
`train.precision: auto` picks bf16 on a CUDA GPU that supports it and on a CPU with AVX512-BF16 or AMX,
and fp32 everywhere else. An explicit `bf16` is obeyed, with one warning where it is emulated.

Inference (`--precision` of fill-mask, classify, tag, answer) chooses the same way (resolve_inference_precision),
but an explicit bf16 where it would be emulated is an error rather than a warning: a command that runs 75×
slower than asked is never what its user wants. int8 (functional.int8_linear) runs on oneDNN's int8 GEMM. With
VPDPBUSD (avx512_vnni, avx_vnni) or AMX (amx_int8) it sums u8×s8 products in int32, exactly. On an AVX2 CPU without
them it adds each pair of products in int16 with saturation (VPMADDUBSW): full-range weights came out up to 5e4
wrong there, so such CPUs get 7-bit weights (|q_w| ≤ 63: 255·2·63 < 2¹⁵, never saturated; int8_weight_max).
`auto` never picks int8 (it changes results more than bf16: opt in). Measured figures: docs/benchmarks.md,
"Inference precision".
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import sys
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


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_KEPT_BYTES = 1 << 30  # freed memory glibc keeps for the next allocation instead of returning it


@functools.cache
def keep_freed_memory() -> bool:
    """Linux with glibc: let the memory a step frees serve the next step's allocations, as it is, instead of
    handing it back to the kernel and faulting it in again, page by page, on the next step.

    By default glibc returns a freed block at the top of the heap once it exceeds a threshold (128 KiB, raised
    by its dynamic threshold only up to 32 MiB, and the mmap threshold with it), and a training step frees
    every activation it made. On the main job's 3-layer step (a 2-core AVX2 VM) that was 15,000-24,000 page
    faults and 40-75 ms of kernel CPU time a step. Both thresholds fixed at 1 GiB (mmap first: fixing only the
    trim threshold also freezes the mmap threshold at 128 KiB, and then every activation is an mmap) keep it:
    72-162 faults a step, and the step ~9% faster (scripts/step_time.py; docs/benchmarks.md). The process holds
    up to 1 GiB more than it uses at the moment, memory it had in use a moment before. PyTorch's CPU tuning
    guide gets the same from jemalloc or tcmalloc; this needs no preloaded library. False (nothing changed)
    elsewhere, or when glibc refuses a value."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_KEPT_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, HEAP_KEPT_BYTES))
    except (OSError, AttributeError):
        return False


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


# /proc/cpuinfo flags of the instructions that sum int8 products in int32 (oneDNN's int8 GEMM: VPDPBUSD or AMX).
NATIVE_INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "int8")
INT8_WEIGHT_MAX_WITHOUT_VNNI = 63  # VPMADDUBSW's int16 pair sums: 255·2·63 = 32,130 ≤ 32,767, so never saturated


def int8_weight_max(device: torch.device) -> tuple[int | None, str]:
    """(the largest |q_w| whose int8 products `device` sums exactly, why), for functional.int8_linear's oneDNN
    kernel; None where bertmath offers no int8. 127 with VNNI or AMX (int32 sums); 63 on an AVX2 CPU without them,
    where oneDNN adds pairs of u8×s8 products in int16 (VPMADDUBSW) and 8-bit weights would saturate."""
    if device.type != "cpu":
        return None, f"device {device.type}: int8 runs on the CPU only"
    flags = cpu_flags()
    if flags & set(NATIVE_INT8_CPU_FLAGS):
        return 127, f"CPU has {', '.join(sorted(flags & set(NATIVE_INT8_CPU_FLAGS)))}"
    if "avx2" in flags:
        return INT8_WEIGHT_MAX_WITHOUT_VNNI, "CPU class avx2, no VNNI: 7-bit weights, so the int16 pair sums never saturate"
    return None, f"CPU class {cpu_class()}: no avx2, avx512_vnni, avx_vnni or amx_int8 instructions"


# Set to fp32, `auto` resolves to fp32 on every machine (training and inference): results that do not depend on
# the CPU class, e.g. for a test suite that compares commands with fp32 references on whatever CPU runs it.
AUTO_PRECISION_ENV = "BERTMATH_AUTO_PRECISION"


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(what `auto` resolves to on `device`, 'bf16' or 'fp32', why), for training and inference alike: bf16 where
    native (native_bf16), else fp32; fp32 everywhere when AUTO_PRECISION_ENV says so."""
    value = os.environ.get(AUTO_PRECISION_ENV)
    if value not in (None, "", "fp32"):
        raise ConfigError(f"environment variable {AUTO_PRECISION_ENV}={value!r}: the one value it takes is fp32")
    if value == "fp32":
        return "fp32", f"{AUTO_PRECISION_ENV}=fp32"
    native, why = native_bf16(device)
    return ("bf16" if native else "fp32"), why


def resolve_inference_precision(precision: str, device: torch.device, key: str = "precision") -> tuple[str, str]:
    """(`precision` for inference → 'fp32', 'bf16' or 'int8', why), logged once. 'auto': bf16 where native
    (native_bf16), else fp32. An explicit bf16 where it would be emulated, or int8 without VNNI/AMX, is a
    ConfigError naming `key` (see the module docstring)."""
    if precision not in INFERENCE_PRECISIONS:
        raise ConfigError(f"{key}: {precision!r} is not a precision; choose one of {', '.join(INFERENCE_PRECISIONS)}")
    if precision == "auto":
        chosen, why = auto_precision(device)
        why = f"auto: {why}"
    elif precision == "bf16":
        native, why = native_bf16(device)
        if not native:
            raise ConfigError(f"{key} bf16: {why}, so bf16 would be emulated, ~75x slower than fp32; use auto or fp32")
        chosen = "bf16"
    elif precision == "int8":
        weight_max, why = int8_weight_max(device)
        if weight_max is None:
            raise ConfigError(f"{key} int8: {why}; use auto or fp32")
        chosen = "int8"
    else:
        chosen, why = "fp32", "asked for"
    log.debug("inference precision %s (%s)", chosen, why)  # the commands say it in their summary line
    return chosen, why


def resolve_precision(precision: str, device: torch.device) -> str:
    """`train.precision` → the autocast dtype name to use ('fp32', 'bf16' or 'fp16'), logged once with why.
    'auto' is bf16 where it is native (see module docstring), else fp32; explicit values are kept."""
    if precision == "auto":
        chosen, why = auto_precision(device)
        log.info("precision auto → %s (%s)", chosen, why)
        return chosen
    if precision == "bf16":
        native, why = native_bf16(device)
        if not native:
            log.warning("train.precision bf16 on a device without native bf16 (%s): torch emulates it, which can "
                        "be ~75x slower than fp32 on CPU; use precision auto or fp32", why)
    return precision
