"""Extractive question answering with a fine-tuned checkpoint: the best spans of a passage for a question.

    windows [CLS] q [SEP] passage-window [SEP] (qa.make_features: run_qa.py's, overlapping by doc_stride)
    → start and end logits of BertForQuestionAnswering, windows batched by length (qa.predict_span_logits)
    → the top-k spans s ≤ e of passage tokens, e − s < max_answer_tokens, by start[s] + end[e] over all
      windows, as characters of the passage (qa.best_spans: run_qa.py's post-processing rule)

transformers 5 has no question-answering pipeline any more; tests/test_answer.py holds this to that rule
computed from transformers' BertForQuestionAnswering logits on the same checkpoint, exported.
The window shape comes from the fine-tuning run's task: section; a transformers directory gets run_qa.py's
384-token windows overlapping by 128 (less for a model with fewer positions).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..batching import MAX_BATCH
from ..checkpoint import CONFIG_FILE, read_config
from ..errors import InputError
from ..inference import Precision, load_for_inference
from ..io import parse_json_object, read_text
from ..model import BertForQuestionAnswering
from ..tokenizer import preview, special_tokens
from .qa import Question, Span, best_spans, make_features, predict_span_logits


@dataclass
class Answer:
    """A question's best spans in its passage, best first."""

    question: str
    spans: list[Span]

    def to_dict(self) -> dict:
        return {"question": self.question, "answers": [span.to_dict() for span in self.spans]}

    def to_text(self) -> str:
        """One line a span: score, character offsets, the answer (its line breaks shown as spaces)."""
        return "\n".join(f"{s.score:.4f}\t{s.start}-{s.end}\t{' '.join(s.answer.split())}" for s in self.spans)


def window_shape(max_positions: int) -> tuple[int, int, int]:
    """(max_seq_len, doc_stride, max_question_tokens) for a model without a fine-tuning task: run_qa.py's 384,
    128 and 64 where the model has the positions, else all its positions, a quarter for the question and half the
    rest as overlap (as task.doc_stride's default)."""
    max_seq_len = min(384, max_positions)
    max_question_tokens = min(64, max_seq_len // 4)
    return max_seq_len, max(1, min(128, (max_seq_len - max_question_tokens - 3) // 2)), max_question_tokens


class Answerer:
    """A fine-tuned BertForQuestionAnswering with its tokenizer and window shape.

        qa = Answerer.from_pretrained("runs/squad")
        qa([("Who wrote Hamlet?", "Hamlet is a tragedy by William Shakespeare.")], top_k=3)"""

    def __init__(self, model: BertForQuestionAnswering, tokenizer: Tokenizer, max_seq_len: int, doc_stride: int,
                 max_question_tokens: int, device: torch.device | str = "cpu", precision: Precision | None = None):
        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.precision = precision or Precision.of("fp32", self.device)
        self.model = self.precision.prepare(model.eval())
        self.max_seq_len, self.doc_stride, self.max_question_tokens = max_seq_len, doc_stride, max_question_tokens
        self.pad_id = special_tokens(tokenizer).pad

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> "Answerer":
        """A bertmath fine-tuning run or step directory (task.kind span), or a transformers
        BertForQuestionAnswering directory. The model runs torch's fused kernels (model.fused), as classify's."""
        directory, config, model, tokenizer, precision = load_for_inference(
            BertForQuestionAnswering, path, device, precision)
        task = read_config(directory).task if (directory / CONFIG_FILE).is_file() else None
        if task is not None and task.kind == "span":
            shape = task.max_seq_len, task.doc_stride, task.max_question_tokens
        else:
            shape = window_shape(config.max_position_embeddings)
        return cls(model, tokenizer, *shape, precision.device, precision)

    def __call__(self, examples: list[tuple[str, str]], top_k: int = 1, max_answer_tokens: int = 30,
                 batch_size: int = MAX_BATCH) -> list[Answer]:
        """The top_k spans of each (question, passage), in input order."""
        if not examples:
            raise InputError("no question")
        if top_k < 1 or max_answer_tokens < 1:
            raise InputError(f"top_k ({top_k}) and max_answer_tokens ({max_answer_tokens}) must be at least 1")
        for n, (question, context) in enumerate(examples, 1):
            for name, text in (("question", question), ("passage", context)):
                if not text.strip():
                    where = f"input {n}: " if len(examples) > 1 else ""
                    raise InputError(f"{where}the {name} is empty ({preview(text)}); give some text")
        questions = [Question(str(n), q, c, ()) for n, (q, c) in enumerate(examples)]
        features = make_features(self.tokenizer, questions, self.max_seq_len, self.doc_stride,
                                 self.max_question_tokens, targets=False)
        starts, ends = predict_span_logits(self.model, features, batch_size, self.pad_id, self.device,
                                          self.precision.autocast)
        out = []
        for n, windows in sorted(features.by_example().items()):
            spans = best_spans(questions[n].context, features, windows, [starts[w] for w in windows],
                               [ends[w] for w in windows], max_answer_tokens, top_k)
            out.append(Answer(questions[n].question, spans))
        return out


def read_examples_file(source: str) -> list[tuple[str, str]]:
    """(question, context) of each non-empty line of a JSON-lines file (or stdin, "-"): objects with the keys
    "question" and "context"; an InputError naming the file and line otherwise."""
    lines = sys.stdin.read().splitlines() if source == "-" else read_text(Path(source)).splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{'stdin' if source == '-' else source}:{number}"
        row = parse_json_object(line, where, InputError)
        for key in ("question", "context"):
            if not isinstance(row.get(key), str):
                raise InputError(f"{where}: expected a \"{key}\" holding text, got "
                                 f"{json.dumps(row.get(key))[:40] if key in row else 'none'}")
            if not row[key].strip():
                raise InputError(f"{where}: the {key} is empty; give some text")
        out.append((row["question"], row["context"]))
    if not out:
        raise InputError(f"{'stdin' if source == '-' else source}: no questions (empty input)")
    return out
