"""bertmath.hardware: train.precision auto picks bf16 only where the hardware multiplies it natively."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertmath import hardware
from bertmath.hardware import cpu_class, native_bf16, resolve_precision

CPU = torch.device("cpu")
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}  # Skylake-class: AVX-512 but no bf16 instructions
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16"}


@pytest.mark.parametrize("flags, expected", [(AVX2, "fp32"), (AVX512, "fp32"), (AVX512_BF16, "bf16"), (AMX, "bf16"),
                                             (frozenset(), "fp32")], ids=["avx2", "avx512", "avx512_bf16", "amx", "unknown"])
def test_auto_is_bf16_only_with_native_bf16(machine, flags, expected, caplog):
    machine(flags)
    with caplog.at_level(logging.INFO, logger="bertmath.hardware"):
        assert resolve_precision("auto", CPU) == expected
    assert f"precision auto → {expected} ({native_bf16(CPU)[1]})" in caplog.text  # says what it chose, and why


def test_auto_is_fp32_when_onednn_is_held_below_bf16(machine):
    """ONEDNN_MAX_CPU_ISA=AVX2 on a bf16-capable CPU: oneDNN would emulate bf16, so auto keeps fp32."""
    machine(AVX512_BF16, onednn_bf16=False)
    assert native_bf16(CPU) == (False, "CPU has avx512_bf16 but torch's oneDNN does not use them")
    assert resolve_precision("auto", CPU) == "fp32"


def test_explicit_bf16_is_kept_but_warns_where_emulated(machine, caplog):
    machine(AVX2)
    with caplog.at_level(logging.WARNING, logger="bertmath.hardware"):
        assert resolve_precision("bf16", CPU) == "bf16"
    assert "75x slower" in caplog.text and "precision auto or fp32" in caplog.text
    caplog.clear()
    machine(AMX)
    with caplog.at_level(logging.WARNING, logger="bertmath.hardware"):
        assert resolve_precision("bf16", CPU) == "bf16"
    assert caplog.text == ""


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_explicit_precisions_are_kept(machine, precision):
    machine(AMX)
    assert resolve_precision(precision, CPU) == precision


@pytest.mark.parametrize("flags, name", [(AVX2, "avx2"), (AVX512, "avx512"), (AVX512_BF16, "avx512_bf16"), (AMX, "amx"),
                                         (frozenset({"neon"}), "other")])
def test_cpu_class(machine, flags, name):
    machine(flags)
    assert cpu_class() == name


def test_this_machine_agrees_with_its_cpuinfo():
    """On the machine running the tests: the flags read are /proc/cpuinfo's, and bf16 counts as native
    exactly when they hold avx512_bf16 or amx_bf16 and torch's oneDNN says it uses bf16."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    assert hardware.cpu_flags() == flags
    expected = bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert native_bf16(CPU)[0] == expected


def test_unknown_precision_is_a_config_error():
    from bertmath.config import ConfigError, config_from_dict
    with pytest.raises(ConfigError, match="train.precision.*'auto'"):
        config_from_dict({"train": {"precision": "int8"}})


def test_auto_held_to_fp32_by_the_environment(machine, monkeypatch, caplog):
    """BERTMATH_AUTO_PRECISION=fp32: auto is fp32 even on AMX, for training and inference, and says why; any
    other value is a one-line ConfigError naming the variable."""
    from bertmath.errors import ConfigError
    from bertmath.hardware import resolve_inference_precision
    machine(AMX)
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setenv(hardware.AUTO_PRECISION_ENV, "fp32")
    with caplog.at_level(logging.INFO, logger="bertmath.hardware"):
        assert resolve_precision("auto", CPU) == "fp32"
    assert "precision auto → fp32 (BERTMATH_AUTO_PRECISION=fp32)" in caplog.text
    assert resolve_inference_precision("auto", CPU) == ("fp32", "auto: BERTMATH_AUTO_PRECISION=fp32")
    assert resolve_precision("bf16", CPU) == "bf16"  # explicit choices are not touched
    monkeypatch.setenv(hardware.AUTO_PRECISION_ENV, "bf16")
    with pytest.raises(ConfigError, match="BERTMATH_AUTO_PRECISION='bf16': the one value it takes is fp32"):
        resolve_precision("auto", CPU)


# A step's worth of activations, allocated and freed again and again, in a fresh process (the malloc settings are
# process-global): the page faults a round, with glibc's defaults, then with keep_freed_memory.
_FAULTS_PER_ROUND = """
import resource, torch
from bertmath.hardware import keep_freed_memory
def faults_per_round():
    def round_():
        tensors = [torch.ones(2 ** 20) for _ in range(8)] + [torch.ones(10 * 2 ** 20)]  # 8 x 4 MiB, and 40 MiB
        return sum(float(t[-1]) for t in tensors)
    for _ in range(5):
        round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        round_()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
default = faults_per_round()
assert keep_freed_memory()
print(default, faults_per_round())
"""


def _huge_pages_always() -> bool:
    """Transparent huge pages on every mapping: a fresh mapping faults in 2 MiB at a time, and the default's
    page faults are too few to count."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not hardware.keep_freed_memory() or _huge_pages_always(),
                    reason="glibc's mallopt only (Linux), with 4 KiB pages")
def test_keep_freed_memory_stops_the_page_faults_of_each_round():
    """72 MiB freed and allocated again each round: glibc's default maps a block over 32 MiB afresh each time and
    faults its pages in again (10,240 for 40 MiB in 4 KiB pages); with keep_freed_memory the memory is reused."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_ROUND], capture_output=True, text=True, check=True)
    default, kept = map(float, out.stdout.split())
    assert default > 5000, default  # what the setting is for: the default faults most pages in again
    assert kept < 100, kept
