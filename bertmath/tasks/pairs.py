"""The embedding shape: a text → a vector e = pool(BERT(text)) (model.BertForSentenceEmbedding), trained on pairs.

    pairs         anchor a_i, positive p_i [, hard negative n_i]   loss mnrl / cached_mnrl (in-batch negatives)
    scored pairs  sentence1 u_i, sentence2 v_i, score y_i          loss cosent
    SimCSE        a document x_i of the data: corpus, twice: (x_i, x_i), the two dropout masks the only noise

Pair files are .jsonl, .csv or .tsv (sequence.task_rows reads them) whose first row's columns say which kind they
are: anchor/positive[/negative] or sentence1/sentence2/score. Scores must lie in task.score_range and are kept as
(y − low)/(high − low) ∈ [0, 1]. Bad rows stop the run with one line naming the file and the line.

The evaluation file decides what is scored. Scored pairs: Spearman's ρ (and Pearson's r) of cos(u_i, v_i)
against y_i, sentence-transformers' EmbeddingSimilarityEvaluator, next to the bag-of-words cosine's. Pairs:
retrieval, each distinct anchor a query over the corpus of every positive and negative, its positives relevant
(NDCG@10, MRR@10, MAP@100, Recall@k: retrieval.py), next to BM25's on the same queries.
Unsupervised SimCSE: Gao, Yao & Chen 2021, §3; Sentence-BERT's pooling and pair training: Reimers & Gurevych 2019.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..batching import predict_in_batches
from ..config import DataConfig, ModelConfig, TaskConfig
from ..corpus import Corpus
from ..errors import ConfigError, TaskDataError
from ..model import BertForSentenceEmbedding
from ..tokenizer import special_tokens
from . import contrastive, retrieval, scores
from .encoding import Encoded, collate, encode
from .sequence import parse_number, task_rows
from .shape import TaskShape

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("anchor", "positive")
NEGATIVE = "negative"
SCORED_COLUMNS = ("sentence1", "sentence2")
SCORE = "score"


@dataclass
class Pairs:
    """A pair file's rows: each column's texts (anchor, positive[, negative], or sentence1, sentence2) and, for
    scored pairs, the scores mapped to [0, 1]."""

    columns: dict[str, list[str]]
    scores: Tensor | None  # (N,) float32 for scored pairs
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def scored(self) -> bool:
        return self.scores is not None


def pair_kind(path: Path) -> str:
    """"pairs" or "scored", from the columns of the file's first row; an empty file or one with neither set
    of columns is a TaskDataError."""
    for number, row in task_rows(path, []):
        if all(c in row for c in PAIR_COLUMNS):
            return "pairs"
        if all(c in row for c in (*SCORED_COLUMNS, SCORE)):
            return "scored"
        raise TaskDataError(f"{path}:{number}: expected columns anchor and positive (pairs, optionally negative) "
                            f"or sentence1, sentence2 and score (scored pairs); this line has: "
                            f"{', '.join(row) or 'nothing'}")
    raise TaskDataError(f"{path}: no pairs (an empty file)")


def _text(row: dict, column: str, where: str) -> str:
    if not isinstance(row[column], str):
        raise TaskDataError(f"{where}: column '{column}' holds {row[column]!r}, not text")
    return row[column]


def _score(value, score_range: list[float], where: str) -> float:
    """(y − low)/(high − low) of a row's score y ∈ [low, high] = task.score_range."""
    y = parse_number(value, "score", where)
    low, high = score_range
    if not low <= y <= high:
        raise TaskDataError(f"{where}: score {y:g} is outside task.score_range [{low:g}, {high:g}] (set "
                            "task.score_range to the file's scale)")
    return (y - low) / (high - low)


def read_pairs(path: str | Path, score_range: list[float], kind: str | None = None) -> Pairs:
    """The rows of a pair file. kind: "pairs" or "scored" when the caller needs one (the loss's), else the file's."""
    path = Path(path)
    found = pair_kind(path)
    if kind is not None and found != kind:
        wanted = "anchor/positive pairs (task.loss mnrl or cached_mnrl)" if kind == "pairs" else \
            "scored pairs sentence1/sentence2/score (task.loss cosent)"
        raise TaskDataError(f"{path}:1: the loss trains on {wanted}, but this file holds "
                            f"{'scored pairs' if found == 'scored' else 'anchor/positive pairs'}: change task.loss "
                            "or the file")
    if found == "scored":
        columns, values = {c: [] for c in SCORED_COLUMNS}, []
        for number, row in task_rows(path, [*SCORED_COLUMNS, SCORE]):
            for c in SCORED_COLUMNS:
                columns[c].append(_text(row, c, f"{path}:{number}"))
            values.append(_score(row[SCORE], score_range, f"{path}:{number}"))
        return Pairs(columns, torch.tensor(values, dtype=torch.float32), str(path))
    names = list(PAIR_COLUMNS)
    for _, row in task_rows(path, []):  # the first row says whether every row has a hard negative
        names += [NEGATIVE] if NEGATIVE in row else []
        break
    columns = {c: [] for c in names}
    for number, row in task_rows(path, names):
        for c in names:
            columns[c].append(_text(row, c, f"{path}:{number}"))
    return Pairs(columns, None, str(path))


def corpus_pairs(data: DataConfig) -> Pairs:
    """Unsupervised SimCSE's training pairs: every document of the corpus `data` names (read as pretraining reads
    it: data.source, data.paths, data.max_documents), paired with itself."""
    corpus = Corpus.plan(data)
    documents = list(corpus.documents())
    if not documents:
        raise corpus.no_text()
    return Pairs({"anchor": documents, "positive": documents}, None, ", ".join(corpus.files))


@torch.no_grad()
def embed(model: nn.Module, encoded: Encoded, batch_size: int, pad_id: int, device: torch.device | str = "cpu",
          autocast=None) -> Tensor:
    """(N, D) float32 embeddings of every encoded text, in input order, batched by length."""
    out = None
    for batch, result in predict_in_batches(model, [len(ids) for ids in encoded.ids],
                                            lambda b: collate(encoded, b, pad_id), batch_size, device, autocast):
        e = result.embeddings.float().cpu()
        out = torch.zeros(len(encoded), e.shape[1]) if out is None else out
        out[batch] = e
    return out


def similarity_scores(cosines: Tensor, targets: Tensor) -> dict[str, float]:
    """Spearman's ρ and Pearson's r of the pairs' cosines against their scores."""
    return {"spearman": scores.spearman(cosines, targets), "pearson": scores.pearson(cosines, targets)}


class EmbeddingShape(TaskShape):
    """A text → a vector: BertForSentenceEmbedding (task.sentence_pooling, task.normalize) trained on pair files or
    a corpus (SimCSE) with task.loss; scored by Spearman's ρ of cosines (scored eval pairs) or by retrieval
    (anchor/positive eval pairs), next to the bag-of-words cosine or BM25."""

    def __init__(self, task: TaskConfig, data: DataConfig):
        super().__init__(task)
        if task.hub_dataset is not None:
            raise ConfigError("task.hub_dataset: an embedding task reads pair files (task.train_file, "
                                "task.eval_file) or, with task.simcse, the data: corpus")
        wanted = "scored" if task.loss == "cosent" else "pairs"
        self.train = corpus_pairs(data) if task.simcse else read_pairs(task.train_file, task.score_range, wanted)
        self.eval = read_pairs(task.eval_file, task.score_range)
        self.default_metric = "spearman" if self.eval.scored else "ndcg@10"
        expected = "similarity" if self.eval.scored else "retrieval"
        if task.metric is not None and task.scoring != expected:
            raise TaskDataError(f"{task.eval_file}: task.metric '{task.metric}' scores {task.scoring}, but the eval "
                                f"file holds {'scored pairs' if self.eval.scored else 'anchor/positive pairs'} "
                                f"(scored by {expected}: use {self.default_metric})")
        if self.eval.scored:
            texts = list(self.eval.columns.values())
            self.baseline = similarity_scores(retrieval.bag_of_words_cosine(*texts), self.eval.scores)
        else:
            self.retrieval = retrieval.from_pairs(*self.eval.columns.values())
            self.baseline = retrieval.retrieval_scores(retrieval.BM25(self.retrieval.corpus).scores(
                self.retrieval.queries), self.retrieval.relevant)
        self.encoded: dict[str, dict[str, Encoded]] = {}
        self.pad_id: int | None = None

    def model(self, config: ModelConfig) -> nn.Module:
        return BertForSentenceEmbedding(config, self.task.sentence_pooling, self.task.normalize)

    def head_parameters(self, config: ModelConfig) -> int:
        """None: the vector is a pooled hidden state."""
        return 0

    def encode(self, tokenizer: Tokenizer) -> None:
        """[CLS] text [SEP] of every text of every column (SimCSE's two columns share one encoding)."""
        self.pad_id = special_tokens(tokenizer).pad
        self.encoded["train"] = self._encode_columns(tokenizer, self.train)
        if self.eval.scored:
            self.encoded["eval"] = self._encode_columns(tokenizer, self.eval)
        else:
            self.encoded["eval"] = {name: self._encode_texts(tokenizer, texts, f"{self.eval.source} ({name})")
                                    for name, texts in (("queries", self.retrieval.queries),
                                                        ("corpus", self.retrieval.corpus))}

    def _encode_columns(self, tokenizer: Tokenizer, pairs: Pairs) -> dict[str, Encoded]:
        out, done = {}, {}
        for name, texts in pairs.columns.items():
            if id(texts) not in done:
                done[id(texts)] = self._encode_texts(tokenizer, texts, f"{pairs.source} ({name})")
            out[name] = done[id(texts)]
        return out

    def _encode_texts(self, tokenizer: Tokenizer, texts: list[str], source: str) -> Encoded:
        encoded = encode(tokenizer, [(t,) for t in texts], self.task.max_seq_len)
        if encoded.truncated:
            log.warning("%s: %d of %d texts are longer than task.max_seq_len (%d tokens) and were truncated",
                        source, encoded.truncated, len(encoded), self.task.max_seq_len)
        return encoded

    def examples(self, split: str) -> int:
        return len(self.train) if split == "train" else len(self.eval)

    def micro_batch(self, indices: list[int]) -> tuple[dict[str, Tensor], int]:
        """Each column's padded inputs, keyed "column.input_ids" and so on, the scores of scored pairs, and B: the
        losses are means over the batch's rows."""
        inputs = {f"{name}.{key}": value for name, encoded in self.encoded["train"].items()
                  for key, value in collate(encoded, indices, self.pad_id).items()}
        if self.train.scored:
            inputs["scores"] = self.train.scores[indices]
        return inputs, len(indices)

    def tokens(self, index: int) -> int:
        return sum(len(encoded.ids[index]) for encoded in self.encoded["train"].values())

    def loss(self, embeddings: list[Tensor], inputs: dict[str, Tensor]) -> Tensor:
        """task.loss on the columns' embeddings (contrastive.py): CoSENT on (u, v, scores), or in-batch negatives
        with the anchors against the positives and hard negatives."""
        t = self.task
        embeddings = [e.float() for e in embeddings]
        if t.loss == "cosent":
            return contrastive.cosent_loss(embeddings[0], embeddings[1], inputs["scores"], t.scale)
        return contrastive.in_batch_negatives_loss(embeddings[0], torch.cat(embeddings[1:]), t.scale, t.symmetric)

    def columns(self, inputs: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """A micro-batch's inputs per column (anchor, positive[, negative] or sentence1, sentence2), each the
        model's input_ids, attention_mask and token_type_ids."""
        return [{key.split(".", 1)[1]: value for key, value in inputs.items() if key.startswith(f"{name}.")}
                for name in self.encoded["train"]]

    def forward_backward(self, model, inputs, weight, autocast, backward) -> Tensor:
        """w · L on the embeddings of each column's texts, one forward pass per column (anchors, positives, then
        negatives, as sentence-transformers embeds them); cached_mnrl: by GradCache, in task.mini_batch_size rows."""
        columns = self.columns(inputs)

        def embed_rows(features: dict[str, Tensor]) -> Tensor:
            with autocast():
                return model(**features).embeddings

        def loss_of(embeddings: list[Tensor]) -> Tensor:
            return self.loss(embeddings, inputs) * weight

        if self.task.loss == "cached_mnrl":
            device = inputs["anchor.input_ids"].device
            return contrastive.grad_cache_backward(embed_rows, columns, loss_of, self.task.mini_batch_size, backward,
                                                   device)
        loss = loss_of([embed_rows(features) for features in columns])
        backward(loss)
        return loss.detach()

    def evaluate(self, model, batch_size, device, autocast) -> tuple[dict, dict, int]:
        """Spearman's ρ and Pearson's r of the eval pairs' cosines, or the retrieval scores of the eval anchors
        over the eval corpus; the baseline's next to them."""
        vectors = {name: embed(model, encoded, batch_size, self.pad_id, device, autocast)
                   for name, encoded in self.encoded["eval"].items()}
        if self.eval.scored:
            u, v = vectors.values()
            return similarity_scores(contrastive.paired_cosine(u, v), self.eval.scores), self.baseline, len(self.eval)
        similarities = contrastive.cosine_matrix(vectors["queries"], vectors["corpus"])
        return retrieval.retrieval_scores(similarities, self.retrieval.relevant), self.baseline, \
            len(self.retrieval.queries)
