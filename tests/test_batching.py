"""bertmath.batching: length-sorted batches under a token budget, checked against the rules by brute force."""

import random

import pytest
import torch

from bertmath.batching import length_batches, mask_if_padded, padding_share


def _check(lengths, batches, max_tokens, max_batch, max_padding):
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))  # each input once
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        positions = longest * len(batch)
        if len(batch) > 1:
            assert positions <= max_tokens and len(batch) <= max_batch
            assert positions - sum(lengths[i] for i in batch) <= max_padding * positions
        assert lengths[batch[0]] == longest  # the longest first within a batch...
    firsts = [lengths[batch[0]] for batch in batches]
    assert firsts == sorted(firsts, reverse=True)  # ...and the longest batch first


@pytest.mark.parametrize("max_tokens, max_batch, max_padding", [(8192, 256, 0.1), (64, 4, 0.0), (300, 32, 0.3)])
def test_batches_keep_the_budget_the_batch_size_and_the_padding_bound(max_tokens, max_batch, max_padding):
    rng = random.Random(0)
    lengths = [rng.randint(3, 90) for _ in range(500)] + [200, 1, 1]  # 200 > 64: alone in its batch
    batches = length_batches(lengths, max_tokens, max_batch, max_padding)
    _check(lengths, batches, max_tokens, max_batch, max_padding)
    assert 0 <= padding_share(lengths, batches) <= max_padding


def test_equal_lengths_share_a_batch_with_no_padding_and_sorting_beats_input_order():
    rng = random.Random(1)
    lengths = [rng.choice([12, 30, 31, 64]) for _ in range(200)]
    batches = length_batches(lengths, max_tokens=10_000, max_batch=1000, max_padding=0.0)
    assert all(len({lengths[i] for i in batch}) == 1 for batch in batches) and len(batches) == 4
    assert padding_share(lengths, batches) == 0
    in_order = [list(range(s, min(s + 32, len(lengths)))) for s in range(0, len(lengths), 32)]
    assert padding_share(lengths, in_order) > 0.2  # what a pipeline batching in input order computes


def test_padding_share_by_hand():
    assert padding_share([4, 2, 3], [[0, 1], [2]]) == pytest.approx(1 - 9 / (2 * 4 + 3))
    assert length_batches([]) == [] and padding_share([], []) == 0.0


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_tokens"):
        length_batches([3], max_tokens=0)


def test_a_mask_only_where_a_position_is_padding():
    """No padding: no mask (the encoder's faster path); one padded position keeps the whole mask as it is."""
    assert mask_if_padded(torch.ones(3, 5, dtype=torch.long)) is None
    padded = torch.ones(3, 5, dtype=torch.long)
    padded[1, 4] = 0
    assert mask_if_padded(padded) is padded
