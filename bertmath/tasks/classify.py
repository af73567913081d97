"""Sequence classification with a fine-tuned checkpoint: encode texts (or pairs), batch with padding, score.

    [CLS] a [SEP]            segment ids 0 … 0           (single sentences)
    [CLS] a [SEP] b [SEP]    segment ids 0 … 0 1 … 1     (pairs)

Examples longer than max_seq_len are truncated longest-first, as transformers' fast tokenizers do it
(`truncation="longest_first"`); the count is reported once. Many examples are batched by length
(batching.length_batches: little padding), each batch padded to its longest example with an attention mask:
padding changes no result (tests/test_tasks_classify.py), and the results come back in input order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from ..batching import MAX_BATCH, MAX_TOKENS, predict_in_batches
from ..checkpoint import CONFIG_FILE, read_config
from ..errors import InputError
from ..inference import Precision, load_for_inference
from ..model import BertForSequenceClassification
from ..pretrained import classifier_label_names
from ..tokenizer import special_tokens
from .encoding import Encoded, collate, encode

log = logging.getLogger(__name__)


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
                 max_seq_len: int, device: torch.device | str = "cpu", precision: Precision | None = None):
        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.precision = precision or Precision.of("fp32", self.device)
        self.model = self.precision.prepare(model.eval())
        self.label_names = label_names or [str(i) for i in range(model.num_labels)]
        self.max_seq_len = max_seq_len
        self.pad_id = special_tokens(tokenizer).pad

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> "Classifier":
        """A bertmath fine-tuning run or step directory, or a transformers BertForSequenceClassification
        directory. The model runs torch's fused kernels (model.fused, tested equal to functional.py's
        from-scratch ops), as fill-mask's does. Examples are cut to the run's task.max_seq_len, or to
        max_position_embeddings for a transformers directory."""
        directory, config, model, tokenizer, precision = load_for_inference(
            BertForSequenceClassification, path, device, precision)
        task = read_config(directory).task if (directory / CONFIG_FILE).is_file() else None
        max_seq_len = task.max_seq_len if task is not None else config.max_position_embeddings
        names = classifier_label_names(directory, model.num_labels) or []
        return cls(model, tokenizer, names, max_seq_len, precision.device, precision)

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
        logits = predict_logits(self.model, encoded, batch_size, self.pad_id, self.device, self.precision.autocast)
        if self.model.num_labels == 1:
            return [Prediction(t, None, float(z[0])) for t, z in zip(texts, logits)]
        probabilities = torch.softmax(logits, dim=-1)
        out = []
        for t, p in zip(texts, probabilities):
            best = int(p.argmax())
            out.append(Prediction(t, self.label_names[best], float(p[best]),
                                  {name: float(v) for name, v in zip(self.label_names, p)}))
        return out
