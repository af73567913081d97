"""Sequence classification with a fine-tuned checkpoint: encode texts (or pairs), batch with padding, score.

    [CLS] a [SEP]            segment ids 0 … 0           (single sentences)
    [CLS] a [SEP] b [SEP]    segment ids 0 … 0 1 … 1     (pairs)

Examples longer than max_seq_len are truncated longest-first, as transformers' fast tokenizers do it
(`truncation="longest_first"`); the count is reported once. Many examples are batched by length
(batching.length_batches: little padding), each batch padded to its longest example with an attention mask:
padding changes no result (tests/test_classify.py), and the results come back in input order.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from ..batching import MAX_BATCH, MAX_TOKENS, predict_in_batches
from ..checkpoint import CONFIG_FILE, read_config
from ..errors import InputError
from ..hardware import resolve_device
from ..model import BertForSequenceClassification
from ..pretrained import build_from_state, classifier_label_names, read_with_tokenizer
from ..tokenizer import special_tokens

log = logging.getLogger(__name__)


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


def predict_logits(model, encoded: Encoded, batch_size: int, pad_id: int, device: torch.device | str = "cpu",
                   autocast=None, max_tokens: int = MAX_TOKENS) -> Tensor:
    """(N, C) float32 logits of every example, in input order; computed in batches of similar length
    (batching.length_batches: at most `batch_size` examples and `max_tokens` padded positions each)."""
    out = torch.zeros(len(encoded), model.num_labels)
    for batch, result in predict_in_batches(model, [len(ids) for ids in encoded.ids],
                                            lambda b: collate(encoded, b, pad_id), batch_size, device, autocast,
                                            max_tokens):
        out[batch] = result.logits.float().cpu()
    return out


@dataclass
class Prediction:
    """One example's result: the label (name) and its probability, every label's probability; for regression
    (one output) the predicted value."""

    text: tuple[str, ...]
    label: str | None = None
    score: float | None = None  # probability of `label`, or the predicted value for regression
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"text": list(self.text)}
        if self.label is None:
            out["value"] = self.score
        else:
            out.update(label=self.label, score=self.score, scores=self.scores)
        return out

    def to_text(self) -> str:
        shown = " | ".join(self.text)
        if self.label is None:
            return f"{self.score:.4f}\t{shown}"
        return f"{self.label}\t{self.score:.4f}\t{shown}"


class Classifier:
    """A fine-tuned BertForSequenceClassification with its tokenizer and label names.

        clf = Classifier.from_pretrained("runs/sst2")
        clf(["a gripping film", "a dull mess"])             # single sentences
        clf([("A man is eating.", "Someone eats food.")])   # pairs"""

    def __init__(self, model: BertForSequenceClassification, tokenizer: Tokenizer, label_names: list[str],
                 max_seq_len: int, device: torch.device | str = "cpu"):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, torch.device(device)
        self.label_names = label_names or [str(i) for i in range(model.num_labels)]
        self.max_seq_len = max_seq_len
        self.pad_id = special_tokens(tokenizer).pad

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "Classifier":
        """A bertmath fine-tuning run or step directory, or a transformers BertForSequenceClassification
        directory. The model runs torch's fused kernels (model.fused, tested equal to functional.py's
        from-scratch ops), as fill-mask's does. Examples are cut to the run's task.max_seq_len, or to
        max_position_embeddings for a transformers directory."""
        device = resolve_device(device)
        directory, config, state, tokenizer = read_with_tokenizer(path)
        model = build_from_state(BertForSequenceClassification, dataclasses.replace(config, fused=True), state,
                                 str(directory))
        task = read_config(directory).task if (directory / CONFIG_FILE).is_file() else None
        max_seq_len = task.max_seq_len if task is not None else config.max_position_embeddings
        names = classifier_label_names(directory, model.num_labels) or []
        return cls(model.to(device), tokenizer, names, max_seq_len, device)

    def __call__(self, examples: list[str | tuple[str, ...]], batch_size: int = MAX_BATCH) -> list[Prediction]:
        texts = [(e,) if isinstance(e, str) else tuple(e) for e in examples]
        if not texts:
            raise InputError("no input text")
        if len({len(t) for t in texts}) > 1:
            raise InputError("mix of single texts and pairs: give every example one text, or every one two")
        encoded = encode(self.tokenizer, texts, self.max_seq_len)
        if encoded.truncated:
            log.warning("%d of %d inputs were longer than %d tokens and were truncated", encoded.truncated,
                        len(encoded), self.max_seq_len)
        logits = predict_logits(self.model, encoded, batch_size, self.pad_id, self.device)
        if self.model.num_labels == 1:
            return [Prediction(t, None, float(z[0])) for t, z in zip(texts, logits)]
        probabilities = torch.softmax(logits, dim=-1)
        out = []
        for t, p in zip(texts, probabilities):
            best = int(p.argmax())
            out.append(Prediction(t, self.label_names[best], float(p[best]),
                                  {name: float(v) for name, v in zip(self.label_names, p)}))
        return out
