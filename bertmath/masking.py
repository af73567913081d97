"""Masked-language-model corruption (Devlin+19 §3.1, "Task #1: Masked LM"), per batch, vectorised.

Choose:   c_t ~ Bernoulli(p) for every non-special token t (p = data.mlm_probability), i.i.d. as in
          transformers' DataCollatorForLanguageModeling (Google's script instead takes exactly round(p·n)).
          Whole-word masking draws one Bernoulli(p) per word and gives it to all the word's pieces.
Replace:  u_t ~ U[0, 1) per chosen token:  u < q_mask → [MASK];  q_mask ≤ u < q_mask + q_rand → a random
          token;  otherwise unchanged  (q_mask, q_rand = 0.8, 0.1 in BERT).
Labels:   y_t = x_t where chosen, -100 (ignored by cross_entropy) elsewhere.

Random replacements are drawn uniformly from the NON-special ids (BERT and transformers draw from the whole
vocabulary): a random [MASK] would be an unannounced extra mask, a random [CLS]/[SEP]/[PAD] a structure
token the model never sees in that role, and [UNK] carries no word. With a 30k vocabulary the difference is
5 ids in 30k.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import DataConfig
from .tokenizer import SpecialTokens

IGNORE_INDEX = -100  # label of tokens not chosen; functional.cross_entropy skips it
SLOT_MULTIPLE = 64  # prediction slots come in multiples of this: few distinct shapes, aligned matmuls
SLOT_SIGMAS = 6  # static slots cover the mean masked count + 6σ: a batch needs more about once in 10⁹


def mask_tokens(input_ids: torch.Tensor, specials: SpecialTokens, vocab_size: int, data: DataConfig,
                generator: torch.Generator, is_continuation: torch.Tensor | None = None,
                shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̃, y) = MLM corruption of x (see module docstring).

    input_ids: (B, T) long; specials: ids never chosen ([PAD] [UNK] [CLS] [SEP] [MASK]); vocab_size: V, random
    replacements come from [0, V) minus the specials; data: mlm_probability, mask_token_probability,
    random_token_probability, whole_word_masking; generator: the only randomness (on input_ids' device), so
    the same generator state gives the same masks; is_continuation: (V,) bool, True for "##" pieces
    (tokenizer.continuation_mask), needed for whole-word masking; shard: (r, P) when input_ids are rows
    [r·B, (r+1)·B) of a batch of P·B rows split over P processes: the randomness is drawn for all P·B rows
    and rows r·B.. kept, so each row is masked the same whatever P.
    Returns masked_input_ids (B, T) long and labels (B, T) long. Three draws of (P·B, T) per call, always."""
    device = input_ids.device
    rank, parts = shard
    rows = slice(rank * len(input_ids), (rank + 1) * len(input_ids))
    whole = (parts * input_ids.shape[0], input_ids.shape[1])  # (P·B, T)
    special = _is_special(input_ids, specials)  # (B, T)
    draw = torch.rand(whole, generator=generator, device=device)[rows]  # (B, T) choice
    if data.whole_word_masking:
        if is_continuation is None:
            raise ValueError("whole-word masking needs is_continuation (tokenizer.continuation_mask)")
        draw = draw.gather(1, _word_starts(input_ids, special, torch.as_tensor(is_continuation, device=device)))
    chosen = ~special & (draw < data.mlm_probability)

    decision = torch.rand(whole, generator=generator, device=device)[rows]  # (B, T) per piece, as Google's WWM
    to_mask = chosen & (decision < data.mask_token_probability)
    to_random = chosen & ~to_mask & (decision < data.mask_token_probability + data.random_token_probability)
    random_ids = _random_tokens(whole, specials, vocab_size, generator, device)[rows]

    masked = torch.where(to_mask, torch.full_like(input_ids, specials.mask), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def _is_special(input_ids: torch.Tensor, specials: SpecialTokens) -> torch.Tensor:
    return torch.isin(input_ids, torch.tensor(specials.ids, device=input_ids.device))


def _word_starts(input_ids: torch.Tensor, special: torch.Tensor, is_continuation: torch.Tensor) -> torch.Tensor:
    """For each position, the position of the first piece of its word: (B, T) long.

    A word is a non-special piece that is not a "##" continuation, plus the continuations after it. A
    continuation right after a special token or at position 0 (a word cut by packing) starts its own word."""
    continues = _lookup(is_continuation.to(torch.bool), input_ids)  # (B, T)
    after_special = F.pad(special[:, :-1], (1, 0), value=True)  # (B, T): previous token special, or none
    start = ~special & (~continues | after_special)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(start, positions, torch.zeros_like(positions)).cummax(dim=1).values


def _random_tokens(shape: torch.Size, specials: SpecialTokens, vocab_size: int, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Ids uniform over {0, ..., V-1} minus the special ids: (shape) long."""
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[[i for i in specials.ids if i < vocab_size]] = False
    candidates = allowed.nonzero().squeeze(1)  # (V - specials,)
    return _lookup(candidates, torch.randint(len(candidates), shape, generator=generator, device=device))


def _lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] for a 1-D table; index_select is ~100x faster than advanced indexing on CPU for (32, 128)."""
    return table.index_select(0, ids.reshape(-1)).reshape(ids.shape)


def static_slot_count(num_tokens: int, mlm_probability: float) -> int:
    """S for sparse MLM on a batch of n tokens: ⌈n·p + 6·√(n·p·(1-p))⌉ rounded up to a multiple of 64.

    The masked count M ~ Binomial(n, p) (roughly: specials are never chosen, whole words add variance), so
    M ≤ S all but never; `prediction_slots` still takes more slots when a batch needs them."""
    mean = num_tokens * mlm_probability
    bound = math.ceil(mean + SLOT_SIGMAS * math.sqrt(mean * (1 - mlm_probability)))
    return _round_up(max(bound, 1), SLOT_MULTIPLE)


def slot_count(num_tokens: int, mlm_probability: float, device: torch.device, compiled: bool) -> int | None:
    """Sparse MLM's slots for a micro-batch of num_tokens: static where shapes matter (CUDA, where a
    data-dependent shape costs a host sync; torch.compile, where it costs a graph break), else None: exactly
    the masked tokens, the least work for eager CPU, where neither cost exists."""
    if device.type == "cpu" and not compiled:
        return None
    return static_slot_count(num_tokens, mlm_probability)


def prediction_slots(labels: torch.Tensor, num_slots: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled positions of labels (B, T) as flat indices into the B·T positions, and their labels.

    Returns positions (S,) long and slot_labels (S,) long, positions in ascending order. num_slots None:
    S = M, the number of labelled tokens. Otherwise S = num_slots, the unused slots pointing at position 0
    with label -100 (ignored), so that every batch has the same shape: no data-dependent shape reaches the
    device (no host sync, no torch.compile graph break). If M > num_slots, S = M rounded up to 64: a new
    shape (a recompile) rather than a dropped label. Call it where labels live on the CPU."""
    flat = labels.reshape(-1)
    positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)  # (M,)
    if num_slots is None:
        return positions, flat[positions]
    slots = num_slots if len(positions) <= num_slots else _round_up(len(positions), SLOT_MULTIPLE)
    padded = torch.zeros(slots, dtype=torch.long, device=labels.device)
    padded[:len(positions)] = positions
    slot_labels = torch.full((slots,), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    slot_labels[:len(positions)] = flat[positions]
    return padded, slot_labels


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
