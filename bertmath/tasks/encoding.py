"""The encoding every task shares: texts (one or two per example) → BERT's input ids, and batches of them.

    [CLS] a [SEP]            segment ids 0 … 0           (single sentences)
    [CLS] a [SEP] b [SEP]    segment ids 0 … 0 1 … 1     (pairs)

Examples longer than max_seq_len are truncated longest-first, as transformers' fast tokenizers do it
(`truncation="longest_first"`). A batch is padded to its longest example, with an attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor

from ..tokenizer import special_tokens


@dataclass
class Encoded:
    """Token ids and segment ids of examples, unpadded; `truncated`: how many were cut to max_seq_len."""

    ids: list[list[int]]
    types: list[list[int]]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def truncate_longest_first(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
    """Cut the ends of a and b so that len(a) + len(b) ≤ budget, keeping them as balanced as tokenizers'
    LongestFirst (transformers' fast tokenizers, truncation="longest_first") does: the shorter text keeps
    min(its length, ⌊budget/2⌋ when both are long), the longer text the rest of the budget."""
    if b is None:
        return a[:budget], None
    if len(a) + len(b) <= budget:
        return a, b
    short, long = sorted((len(a), len(b)))
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short = budget // 2
        long = short + budget % 2
    n_a, n_b = (long, short) if len(a) > len(b) else (short, long)
    return a[:n_a], b[:n_b]


def encode(tokenizer: Tokenizer, texts: list[tuple[str, ...]], max_seq_len: int) -> Encoded:
    """[CLS] a [SEP] (b [SEP]) ids and segment ids of each example (a tuple of one or two texts)."""
    specials = special_tokens(tokenizer)
    if not texts:
        return Encoded([], [])
    columns = [tokenizer.encode_batch([t[i] for t in texts], add_special_tokens=False) for i in range(len(texts[0]))]
    pairs = len(columns) == 2
    budget = max_seq_len - (3 if pairs else 2)
    out = Encoded([], [])
    for n in range(len(texts)):
        a, b = columns[0][n].ids, columns[1][n].ids if pairs else None
        ta, tb = truncate_longest_first(a, b, budget)
        out.truncated += (len(ta), len(tb or [])) != (len(a), len(b or []))
        ids = [specials.cls, *ta, specials.sep] + ([*tb, specials.sep] if pairs else [])
        out.ids.append(ids)
        out.types.append([0] * (len(ta) + 2) + [1] * (len(ids) - len(ta) - 2))
    return out


def collate(encoded: Encoded, indices: list[int] | Tensor, pad_id: int) -> dict[str, Tensor]:
    """input_ids, attention_mask (1 = real token), token_type_ids of examples `indices`, each (B, T), padded
    to the longest of them."""
    indices = [int(i) for i in indices]
    T = max(len(encoded.ids[i]) for i in indices)
    ids = torch.full((len(indices), T), pad_id, dtype=torch.long)
    types = torch.zeros((len(indices), T), dtype=torch.long)
    mask = torch.zeros((len(indices), T), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(encoded.ids[i])
        ids[row, :n] = torch.tensor(encoded.ids[i])
        types[row, :n] = torch.tensor(encoded.types[i])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
