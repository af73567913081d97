"""What fine-tuning needs to know of each shape of task (Devlin et al. 2019, Figure 4), behind one interface:

    sequence   a text or a pair → one label or score      sequence.SequenceShape   BertForSequenceClassification
    tokens     a sentence → a tag per word                tagging.TaggingShape     BertForTokenClassification
    span       a question and a passage → the answer      qa.SpanShape             BertForQuestionAnswering
    embedding  a text → a vector, trained on pairs         pairs.EmbeddingShape     BertForSentenceEmbedding

The trainer (finetune.FinetuneTrainer) is the same loop for all four: it asks the shape for the model, for the
inputs and targets of a micro-batch (which examples: a pure function of (seed, step)), and for the scores of
the eval split next to a trivial baseline's (embedding: one that knows no model, BM25 or the
bag-of-words cosine).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tokenizers import Tokenizer

from ..config import ModelConfig, TaskConfig

# What each kind of score is compared with: a model that knows nothing of the inputs.
BASELINES = {"classification": "the majority class", "regression": "the mean score", "tokens": "every word O",
             "span": "the passage's first sentence", "similarity": "the bag-of-words cosine", "retrieval": "BM25"}


class TaskShape:
    """One kind of task: its examples (read at construction), their encoding, the model, batches and scores."""

    default_metric: str | None = None  # task.metric when left out, where the examples decide it (embedding)

    def __init__(self, task: TaskConfig):
        self.task = task

    def model(self, config: ModelConfig) -> nn.Module:
        """The model with a fresh head (the encoder's weights are loaded into it afterwards)."""
        raise NotImplementedError

    def head_parameters(self, config: ModelConfig) -> int:
        """Parameters of the head alone, for the parameter report."""
        raise NotImplementedError

    def encode(self, tokenizer: Tokenizer) -> None:
        """Turn both splits into token ids (called once, when the run starts)."""
        raise NotImplementedError

    def examples(self, split: str) -> int:
        """How many encoded training ("train") or evaluation ("eval") rows there are: what batches index."""
        raise NotImplementedError

    def micro_batch(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        """Training rows `indices`, padded: the model's inputs with its targets (labels=, or start_positions= and
        end_positions=), and how many terms the model's loss averages over (for exact gradient accumulation)."""
        raise NotImplementedError

    def forward_backward(self, model: nn.Module, inputs: dict[str, torch.Tensor], weight: float,
                         autocast: Callable, backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """w · L on a micro-batch's `inputs` (micro_batch's, on the device), back-propagated with `backward`;
        returns w · L detached. The model's own loss by default; a shape whose loss the model does not compute
        (embedding), or that computes its gradients in parts (GradCache), does it here."""
        with autocast():
            loss = model(**inputs).loss * weight
        backward(loss)
        return loss.detach()

    def tokens(self, index: int) -> int:
        """Real (non-padding) tokens of training row `index`."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, batch_size: int, device: torch.device,
                 autocast: Callable | None) -> tuple[dict[str, float], dict[str, float], int]:
        """(model's scores, the baseline's scores, eval examples) on the eval split; task.metric among the scores."""
        raise NotImplementedError
