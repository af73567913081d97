"""Retrieval: queries, a corpus and which documents are relevant to each query; the ranking scores of a ranked
corpus; and two baselines that know nothing of a model, BM25 and the bag-of-words cosine.

    rank_q = the corpus sorted by score(q, d), highest first (ties: the lower document index first)
    MRR@k = mean_q 1/r_q, r_q the rank of q's first relevant document in the top k (0 when none is)
    NDCG@k = mean_q DCG_q / IDCG_q,  DCG_q = Σ_{r ≤ k} rel(r) / log2(r + 1),  IDCG_q: the relevant documents first
    Recall@k = mean_q |relevant ∩ top k| / |relevant|
    MAP@k = mean_q (1 / min(k, |relevant|)) Σ_{r ≤ k, rel(r)} P@r,  P@r = |relevant ∩ top r| / r

as sentence-transformers' InformationRetrievalEvaluator computes them (binary relevance; tests/test_tasks_retrieval.py).
BM25 (Robertson & Walker 1994; Robertson & Zaragoza 2009, Okapi BM25 with Lucene's idf, as the bm25s package's
default method) and the bag-of-words cosine tokenise alike: lowercased runs of two or more word characters.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

RECALL_AT = (1, 5, 10)
WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's and bm25s' default token pattern


@dataclass
class RetrievalSet:
    """Queries, the corpus, and for each query the indices of its relevant documents (at least one)."""

    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]

    def __post_init__(self):
        assert len(self.queries) == len(self.relevant) and all(self.relevant), "every query needs a relevant document"


def ranking(scores: Tensor) -> Tensor:
    """Each row's document indices by descending score, ties by ascending index. (Q, N) → (Q, N)."""
    return torch.sort(-scores.double(), dim=1, stable=True).indices


def retrieval_scores(scores: Tensor, relevant: list[set[int]]) -> dict[str, float]:
    """ndcg@10, mrr@10, map@100 and recall@1/5/10 (the module docstring's formulas) of the rankings that
    `scores` (Q, N), a score per query and document, make."""
    ranked = ranking(scores)[:, :100].tolist()
    totals = Counter()
    for order, wanted in zip(ranked, relevant):
        hits = [d in wanted for d in order]  # rel(r) for r = 1, 2, …
        first = next((r for r, hit in enumerate(hits[:10], 1) if hit), None)
        totals["mrr@10"] += 1 / first if first else 0.0
        dcg = sum(1 / math.log2(r + 1) for r, hit in enumerate(hits[:10], 1) if hit)
        ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(wanted), 10) + 1))
        totals["ndcg@10"] += dcg / ideal
        found, precisions = 0, 0.0
        for r, hit in enumerate(hits[:100], 1):
            if hit:
                found += 1
                precisions += found / r
        totals["map@100"] += precisions / min(100, len(wanted))
        for k in RECALL_AT:
            totals[f"recall@{k}"] += sum(hits[:k]) / len(wanted)
    names = ["ndcg@10", "mrr@10", "map@100", *(f"recall@{k}" for k in RECALL_AT)]
    return {name: totals[name] / len(relevant) for name in names}


def words(text: str) -> list[str]:
    """The text's lowercased tokens of two or more word characters (what BM25 and the bag of words count)."""
    return WORD.findall(text.lower())


class BM25:
    """score(q, d) = Σ_{t ∈ q} idf(t) · f(t, d) / (f(t, d) + k1 · (1 − b + b · |d| / avgdl)),
    idf(t) = ln(1 + (N − n(t) + 0.5) / (n(t) + 0.5)): f the term's count in d, |d| its length in terms, avgdl the
    corpus's mean, n(t) the documents holding t, N the corpus's size; a term twice in q counts twice. Okapi BM25
    (Robertson & Zaragoza 2009, eq. 3.15) without its constant factor (k1 + 1), which changes no ranking, and with
    Lucene's idf, never negative; k1 = 1.5, b = 0.75 (bm25s' defaults)."""

    def __init__(self, corpus: list[str], k1: float = 1.5, b: float = 0.75):
        self.k1, self.b = k1, b
        self.counts = [Counter(words(d)) for d in corpus]
        self.lengths = torch.tensor([sum(c.values()) for c in self.counts], dtype=torch.float64)  # |d|
        self.document_frequency = Counter(t for c in self.counts for t in c)  # n(t)
        self.average_length = float(self.lengths.mean()) if len(corpus) else 0.0

    def idf(self, term: str) -> float:
        n, N = self.document_frequency[term], len(self.counts)
        return math.log(1 + (N - n + 0.5) / (n + 0.5))

    def scores(self, queries: list[str]) -> Tensor:
        """(Q, N) BM25 scores of every query against every document."""
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.average_length, 1e-12))  # (N,)
        out = torch.zeros(len(queries), len(self.counts), dtype=torch.float64)
        for q, query in enumerate(queries):
            for term in words(query):
                if term in self.document_frequency:
                    f = torch.tensor([c[term] for c in self.counts], dtype=torch.float64)
                    out[q] += self.idf(term) * f / (f + norm)
        return out


def bag_of_words_cosine(a: list[str], b: list[str]) -> Tensor:
    """cos(x_i, y_i) of each pair's word-count vectors: how much two texts share their words, blind to meaning and
    order (0 for texts with no word in common). (N,) float64."""
    out = torch.zeros(len(a), dtype=torch.float64)
    for i, (x, y) in enumerate(zip(a, b)):
        cx, cy = Counter(words(x)), Counter(words(y))
        dot = sum(n * cy[t] for t, n in cx.items())
        norms = math.sqrt(sum(n * n for n in cx.values()) * sum(n * n for n in cy.values()))
        out[i] = dot / norms if norms else 0.0
    return out


# --- retrieval sets made from other tasks' files ----------------------------------------------------------------


def from_pairs(anchors: list[str], positives: list[str], negatives: list[str] | None = None) -> RetrievalSet:
    """Each distinct anchor a query; the corpus every distinct positive and hard negative; an anchor's
    positives its relevant documents."""
    corpus = list(dict.fromkeys(positives + (negatives or [])))
    index = {d: n for n, d in enumerate(corpus)}
    relevant: dict[str, set[int]] = {}
    for anchor, positive in zip(anchors, positives):
        relevant.setdefault(anchor, set()).add(index[positive])
    return RetrievalSet(list(relevant), corpus, list(relevant.values()))


def from_scored_pairs(first: list[str], second: list[str], scores: list[float], threshold: float) -> RetrievalSet:
    """Every distinct sentence of the pairs is a document; a sentence with a partner scored ≥ threshold is a query,
    its relevant documents those partners (both ways). The corpus holds the queries too: rank with `exclude_self`,
    so that a sentence is not its own answer."""
    corpus = list(dict.fromkeys(first + second))
    index = {d: n for n, d in enumerate(corpus)}
    relevant: dict[str, set[int]] = {}
    for x, y, s in zip(first, second, scores):
        if s >= threshold and x != y:
            relevant.setdefault(x, set()).add(index[y])
            relevant.setdefault(y, set()).add(index[x])
    return RetrievalSet(list(relevant), corpus, list(relevant.values()))


def exclude_self(scores: Tensor, retrieval: RetrievalSet) -> Tensor:
    """scores with each query's own text (when the corpus holds it) set to −∞: a sentence is not its own answer
    (BEIR's rule for query ids equal to document ids)."""
    index = {d: n for n, d in enumerate(retrieval.corpus)}
    scores = scores.clone()
    for q, query in enumerate(retrieval.queries):
        if query in index:
            scores[q, index[query]] = -math.inf
    return scores
