"""bertmath.masking: the 15% / 80-10-10 statistics, what is never chosen, labels, determinism, whole words."""

import math

import pytest
import torch

from bertmath import functional
from bertmath.config import DataConfig
from bertmath.masking import IGNORE_INDEX, mask_tokens, prediction_slots, slot_count, static_slot_count
from bertmath.tokenizer import SpecialTokens

V = 1000
SPECIALS = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4)


def blocks(batch=400, length=500, seed=0) -> torch.Tensor:
    """(B, T) blocks shaped like packed data: [CLS] ... [SEP] with document [SEP]s, some [UNK] and [PAD]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIALS.cls, SPECIALS.sep
    ids[:, 50::97] = SPECIALS.sep
    ids[:, 77::211] = SPECIALS.unk
    ids[-10:, -40:] = SPECIALS.pad
    return ids


def run(ids, seed=0, continuation=None, **data):
    return mask_tokens(ids, SPECIALS, V, DataConfig(**data), torch.Generator().manual_seed(seed), continuation)


@pytest.mark.smoke
def test_statistics_match_bert():
    ids = blocks()  # 200k positions
    masked, labels = run(ids)
    special = torch.isin(ids, torch.tensor(SPECIALS.ids))
    chosen = labels != IGNORE_INDEX
    fraction = chosen.sum() / (~special).sum()
    assert abs(fraction - 0.15) < 0.005  # binomial sd 0.0008
    n = chosen.sum()
    to_mask = (masked == SPECIALS.mask) & chosen
    unchanged = (masked == ids) & chosen  # includes random draws equal to the original (1/995 of 10%)
    to_random = chosen & ~to_mask & ~unchanged
    assert abs(to_mask.sum() / n - 0.8) < 0.01  # sd 0.0023
    assert abs(to_random.sum() / n - 0.1) < 0.01  # sd 0.0017
    assert abs(unchanged.sum() / n - 0.1) < 0.01
    assert not torch.isin(masked[to_random], torch.tensor(SPECIALS.ids)).any()  # random ids exclude specials
    assert masked[to_random].min() >= 5 and masked[to_random].max() < V
    assert len(masked[to_random].unique()) > 0.9 * (V - 5)  # spread over the vocabulary


def test_specials_never_chosen_and_labels_exact():
    ids = blocks(batch=50)
    masked, labels = run(ids, mlm_probability=0.5)
    special = torch.isin(ids, torch.tensor(SPECIALS.ids))
    chosen = labels != IGNORE_INDEX
    assert not (chosen & special).any()
    assert torch.equal(masked[special], ids[special])  # [CLS] [SEP] [PAD] [UNK] stay
    assert torch.equal(labels[chosen], ids[chosen])
    assert (labels[~chosen] == IGNORE_INDEX).all()
    assert torch.equal(masked[~chosen], ids[~chosen])  # only chosen tokens change
    assert masked.dtype == labels.dtype == torch.long and masked.shape == labels.shape == ids.shape


def test_ratios_follow_config():
    ids = blocks(batch=100)
    masked, labels = run(ids, mlm_probability=0.3, mask_token_probability=0.0, random_token_probability=0.0)
    assert abs((labels != IGNORE_INDEX).float().mean() - 0.3 * 0.9) < 0.02
    assert torch.equal(masked, ids)  # chosen but all kept
    masked, labels = run(ids, mask_token_probability=1.0, random_token_probability=0.0)
    assert torch.equal(masked == SPECIALS.mask, labels != IGNORE_INDEX)


def test_same_generator_state_same_masks():
    ids = blocks(batch=20)
    first, second = run(ids, seed=5), run(ids, seed=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(run(ids, seed=6)[1], first[1])
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(123)  # the global RNG plays no part
    again = mask_tokens(ids, SPECIALS, V, DataConfig(), g)
    assert torch.equal(again[1], first[1])
    assert not torch.equal(mask_tokens(ids, SPECIALS, V, DataConfig(), g)[1], first[1])  # the generator advanced


def test_nothing_chosen_gives_zero_loss():
    ids = blocks(batch=4, length=64)
    _, labels = run(ids, mlm_probability=0.0)
    assert (labels == IGNORE_INDEX).all()
    only_specials = torch.tensor([[SPECIALS.cls, SPECIALS.pad, SPECIALS.unk, SPECIALS.mask, SPECIALS.sep]])
    masked, labels_specials = run(only_specials, mlm_probability=1.0)
    assert (labels_specials == IGNORE_INDEX).all() and torch.equal(masked, only_specials)
    logits = torch.randn(4, 64, V, requires_grad=True)
    loss = functional.cross_entropy(logits.view(-1, V), labels.view(-1))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


# --- whole-word masking ---------------------------------------------------------------------------


def continuation_table() -> torch.Tensor:
    """Ids 500..999 are "##" pieces."""
    table = torch.zeros(V, dtype=torch.bool)
    table[500:] = True
    return table


def word_starts(ids: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """Reference, in plain Python: the index of each position's word start."""
    starts = torch.zeros_like(ids)
    special = set(SPECIALS.ids)
    for b in range(ids.shape[0]):
        start = 0
        for t in range(ids.shape[1]):
            token = ids[b, t].item()
            if token in special or not continuation[token] or t == 0 or ids[b, t - 1].item() in special:
                start = t
            starts[b, t] = start
    return starts


def test_whole_word_masking_chooses_whole_words():
    ids = blocks(batch=40, length=200)
    continuation = continuation_table()
    masked, labels = run(ids, continuation=continuation, whole_word_masking=True)
    chosen = labels != IGNORE_INDEX
    special = torch.isin(ids, torch.tensor(SPECIALS.ids))
    starts = word_starts(ids, continuation)
    is_piece = ~special & continuation[ids] & (starts != torch.arange(ids.shape[1]))
    # a continuation piece is chosen iff its word start is
    assert torch.equal(chosen[is_piece], chosen.gather(1, starts)[is_piece])
    assert not (chosen & special).any()
    assert torch.equal(labels[chosen], ids[chosen])
    # words, not pieces, are drawn with probability p; the expected share of pieces is still p
    word_start = ~special & (starts == torch.arange(ids.shape[1]))
    assert abs(chosen[word_start].float().mean() - 0.15) < 0.02
    assert abs(chosen[~special].float().mean() - 0.15) < 0.03
    # the 80/10/10 decision is per piece: some chosen words are partly [MASK], partly not
    mixed = chosen & is_piece & ((masked == SPECIALS.mask) != (masked.gather(1, starts) == SPECIALS.mask))
    assert mixed.any()


def test_whole_word_masking_continuation_after_special_starts_a_word():
    """A block can begin mid-word ([CLS] ##ing ...): that piece is a word of its own, never chosen with [CLS]."""
    ids = torch.tensor([[SPECIALS.cls, 600, 601, 10, 700, SPECIALS.sep, 800, 20, SPECIALS.sep]])
    continuation = continuation_table()
    for seed in range(200):
        _, labels = run(ids, seed=seed, continuation=continuation, whole_word_masking=True, mlm_probability=0.5)
        chosen = (labels != IGNORE_INDEX)[0].tolist()
        assert chosen[1] == chosen[2] and chosen[3] == chosen[4]
        assert not chosen[0] and not chosen[5] and not chosen[8]


def test_whole_word_masking_needs_the_table():
    with pytest.raises(ValueError, match="is_continuation"):
        run(blocks(batch=2), whole_word_masking=True)


@pytest.mark.parametrize("whole_word_masking", [False, True])
def test_each_process_share_is_masked_as_in_the_whole_batch(whole_word_masking):
    """P processes masking rows [r·B/P, (r+1)·B/P) with (r, P) and the same generator seed reproduce the
    masks of one process masking all B rows: training does not depend on the number of processes."""
    ids, P = blocks(batch=12, length=64), 3
    continuation = continuation_table()
    data = DataConfig(whole_word_masking=whole_word_masking)
    whole = mask_tokens(ids, SPECIALS, V, data, torch.Generator().manual_seed(7), continuation)
    shares = [mask_tokens(ids[r * 4:(r + 1) * 4], SPECIALS, V, data, torch.Generator().manual_seed(7), continuation,
                          shard=(r, P)) for r in range(P)]
    for part, full in zip(zip(*shares), whole):
        assert torch.equal(torch.cat(part), full)
    assert not torch.equal(shares[0][1], shares[1][1])  # the shares are different rows, masked differently


@pytest.mark.parametrize("rate", [0.15, 0.3, 0.4])
@pytest.mark.parametrize("whole_word_masking", [False, True], ids=["pieces", "words"])
def test_all_mask_corruption_at_any_rate_with_whole_words(rate, whole_word_masking):
    """Wettig et al. 2023's 'no 80/10/10': every chosen token becomes [MASK], nothing random or kept, at
    rates above BERT's 15%, with whole words too: [MASK] exactly where a label is, at the chosen rate."""
    ids = blocks(batch=60, length=300)
    continuation = continuation_table()
    masked, labels = run(ids, continuation=continuation, whole_word_masking=whole_word_masking, mlm_probability=rate,
                         mask_token_probability=1.0, random_token_probability=0.0)
    chosen = labels != IGNORE_INDEX
    special = torch.isin(ids, torch.tensor(SPECIALS.ids))
    assert torch.equal(masked == SPECIALS.mask, chosen)
    assert torch.equal(masked[~chosen], ids[~chosen]) and torch.equal(labels[chosen], ids[chosen])
    assert abs(chosen[~special].float().mean() - rate) < 0.03
    if whole_word_masking:
        starts = word_starts(ids, continuation)
        assert torch.equal(chosen[~special], chosen.gather(1, starts)[~special])  # a word is masked whole


def test_prediction_slots_hold_every_labelled_position_in_order():
    labels = torch.full((3, 8), IGNORE_INDEX)
    labels[0, 2], labels[1, 0], labels[1, 7], labels[2, 5] = 11, 12, 13, 14
    positions, slot_labels = prediction_slots(labels)
    assert positions.tolist() == [2, 8, 15, 21] and slot_labels.tolist() == [11, 12, 13, 14]
    assert torch.equal(labels.flatten()[positions], slot_labels)
    padded, padded_labels = prediction_slots(labels, num_slots=6)
    assert padded.tolist() == [2, 8, 15, 21, 0, 0]
    assert padded_labels.tolist() == [11, 12, 13, 14, IGNORE_INDEX, IGNORE_INDEX]
    more, more_labels = prediction_slots(labels, num_slots=3)  # too few: rounded up, nothing dropped
    assert len(more) == 64 and more[:4].tolist() == [2, 8, 15, 21] and (more_labels[4:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("num_tokens, p", [(32 * 128, 0.15), (8 * 512, 0.15), (16 * 128, 0.4), (10, 0.15)])
def test_static_slot_count_covers_six_sigma_of_the_binomial(num_tokens, p):
    slots = static_slot_count(num_tokens, p)
    mean, sigma = num_tokens * p, math.sqrt(num_tokens * p * (1 - p))
    assert slots % 64 == 0 and mean + 6 * sigma <= slots < mean + 6 * sigma + 64 + 1
    # and in practice: the masked counts of BERT's own corruption stay under it
    data = DataConfig(mlm_probability=p)
    rows = max(num_tokens // 128, 1)
    ids = torch.randint(10, 1000, (rows, num_tokens // rows))
    for seed in range(20):
        _, labels = mask_tokens(ids, SPECIALS, 1000, data, torch.Generator().manual_seed(seed))
        assert int((labels != IGNORE_INDEX).sum()) <= slots


def test_static_slots_where_shapes_matter_exact_count_on_eager_cpu():
    """CUDA (a data-dependent shape is a host sync) and torch.compile (a graph break) get static slots;
    eager CPU gets exactly the masked tokens, the least work."""
    static = static_slot_count(4096, 0.15)
    assert slot_count(4096, 0.15, torch.device("cpu"), compiled=False) is None
    assert slot_count(4096, 0.15, torch.device("cpu"), compiled=True) == static
    assert slot_count(4096, 0.15, torch.device("cuda"), compiled=False) == static
