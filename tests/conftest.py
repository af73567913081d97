"""Shared fixtures: the tiny seeded BERT config that model, hf_format and parity tests build; a tiny run
directory for the figure commands and the Shakespeare vocabulary (configs/small.yaml's)."""

import dataclasses
import os

import pytest
import torch

from bertmath import ModelConfig

# Under pytest-xdist (`-n auto`) each worker gets its share of the cores: two workers of two threads each on
# two cores would spend their time switching instead of computing.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# `auto` precision resolves to fp32 on every CPU class (hardware.AUTO_PRECISION_ENV; subprocesses inherit it): the
# commands' output is compared with fp32 references, and CI machines change class. Tests of auto's choice unset it.
os.environ["BERTMATH_AUTO_PRECISION"] = "fp32"

# vocab 99, D 32, 2 layers, 4 heads (Dh 8), F 37 (not a multiple of D on purpose), 64 positions; no dropout
# so that train-mode passes are deterministic.
TINY = ModelConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
                   max_position_embeddings=64, activation="gelu", hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture
def tiny_config():
    """A factory: tiny_config(**changes) → TINY with `changes` applied (validated by ModelConfig)."""
    return lambda **changes: dataclasses.replace(TINY, **changes)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A bertmath run directory with a tiny random-init model (2 layers, 4 heads, D 32) and a 200-piece
    vocabulary (tests/helpers.py), shared by the tests of the figure commands: they only read it."""
    from helpers import make_bertmath_run
    return make_bertmath_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def shakespeare_tokenizer(tmp_path_factory):
    """The 8192-piece WordPiece vocabulary `bertmath figures` trains on the embedded corpus (~3 s), which is
    configs/small.yaml's: trained once a run. Under pytest-xdist the first worker that needs it saves it where the
    others load it (the run's shared temporary directory; pytest-xdist's recipe for a session fixture)."""
    from bertmath.viz.figures import shakespeare_tokenizer as train
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return train()
    from filelock import FileLock
    from tokenizers import Tokenizer

    path = tmp_path_factory.getbasetemp().parent / "shakespeare_tokenizer.json"
    with FileLock(f"{path}.lock"):
        if not path.is_file():
            train().save(str(path))
        return Tokenizer.from_file(str(path))


@pytest.fixture
def machine(monkeypatch):
    """machine(flags, onednn_bf16): pretend to be a CPU with these /proc/cpuinfo flags, whose oneDNN does or does
    not use its bf16 instructions; `auto` then chooses from them (BERTMATH_AUTO_PRECISION unset)."""
    from bertmath import hardware

    def pretend(flags, onednn_bf16=True):
        monkeypatch.delenv(hardware.AUTO_PRECISION_ENV, raising=False)
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    return pretend
