"""Shared fixtures: the tiny seeded BERT config that model, hf_format and parity tests build; a tiny run
directory and the Shakespeare vocabulary for the figure commands."""

import dataclasses
import os

import pytest
import torch

from bertmath import ModelConfig

# Under pytest-xdist (`-n auto`) each worker gets its share of the cores: two workers of two threads each on
# two cores would spend their time switching instead of computing.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

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
def shakespeare_tokenizer():
    """The 8192-piece WordPiece vocabulary `bertmath figures` trains on the embedded corpus (~2 s, once)."""
    from bertmath.viz.figures import shakespeare_tokenizer
    return shakespeare_tokenizer()
