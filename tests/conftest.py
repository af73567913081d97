"""Shared fixtures: the tiny seeded BERT config that model, hf_format and parity tests build."""

import dataclasses

import pytest

from bertmath import ModelConfig

# vocab 99, D 32, 2 layers, 4 heads (Dh 8), F 37 (not a multiple of D on purpose), 64 positions; no dropout
# so that train-mode passes are deterministic.
TINY = ModelConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
                   max_position_embeddings=64, activation="gelu", hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture
def tiny_config():
    """A factory: tiny_config(**changes) → TINY with `changes` applied (validated by ModelConfig)."""
    return lambda **changes: dataclasses.replace(TINY, **changes)
