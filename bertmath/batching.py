"""Batches of variable-length inputs (sentences to fill, classify or embed) that waste little on padding.

A batch of B inputs is padded to its longest, T_max, and the encoder pays for all B·T_max positions, of
which only Σ_b len_b are real. Taking the inputs in input order pads each batch to whatever long input it
happens to hold (transformers' pipeline does this); sorting by length first makes neighbours nearly equal:

    sort by length, longest first; cut a new batch when one more input would make
    B·T_max > max_tokens,  or B > max_batch,  or  (B·T_max − Σ_b len_b) > max_padding · B·T_max.

Inputs of one length form a batch with no padding at all, which then needs no attention mask either.
Callers keep their results per input, so the order of the batches never shows in the output.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

MAX_TOKENS = 8192  # positions per forward pass: big enough for efficient matmuls, small enough for memory
MAX_BATCH = 256
MAX_PADDING = 0.1  # at most 10% of a batch's positions may be padding


def mask_if_padded(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The batch's attention mask (1 = real token), or None where no position is padding: the encoder then
    attends everywhere without a mask, its faster attention path."""
    return None if bool(attention_mask.all()) else attention_mask


def length_batches(lengths: Sequence[int], max_tokens: int = MAX_TOKENS, max_batch: int = MAX_BATCH,
                   max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches (see the module docstring), longest inputs first, so that
    the largest batch runs first and a memory error shows at once. Every index appears exactly once; an input
    longer than max_tokens gets a batch of its own."""
    if max_tokens < 1 or max_batch < 1 or not 0 <= max_padding < 1:
        raise ValueError(f"length_batches: max_tokens {max_tokens} and max_batch {max_batch} must be >= 1 and "
                         f"max_padding {max_padding} in [0, 1)")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    batch: list[int] = []
    real = 0  # Σ len over the batch
    for i in order:
        longest = lengths[batch[0]] if batch else lengths[i]
        size = len(batch) + 1
        positions = longest * size
        too_big = positions > max_tokens or size > max_batch
        if batch and (too_big or positions - (real + lengths[i]) > max_padding * positions):
            batches.append(batch)
            batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        batches.append(batch)
    return batches


def padding_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """(Σ_batches B·T_max − Σ len) / Σ_batches B·T_max: the share of computed positions that are padding."""
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return 1 - sum(lengths) / computed if computed else 0.0


@torch.no_grad()
def predict_in_batches(model, lengths: Sequence[int], inputs_of: Callable[[list[int]], dict],
                       batch_size: int = MAX_BATCH, device: torch.device | str = "cpu", autocast: Callable | None = None,
                       max_tokens: int = MAX_TOKENS) -> list[tuple[list[int], object]]:
    """[(indices, output)]: `model` in eval mode (its mode restored after) on length_batches of the inputs, each
    batch's inputs from `inputs_of(indices)` (padded; an attention mask, or None) moved to `device`, under `autocast`
    when given. The outputs stay as the model returns them; the caller keeps each input's share."""
    was_training = model.training
    model.eval()
    out = []
    for batch in length_batches(lengths, max_tokens, batch_size):
        inputs = inputs_of(batch)
        with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
            out.append((batch, model(**{k: None if v is None else v.to(device) for k, v in inputs.items()})))
    model.train(was_training)
    return out
