"""bertmath.tasks.retrieval: the ranking scores on hand-made rankings (by hand, and by sentence-transformers'
InformationRetrievalEvaluator on the same ranked lists, 1e-12), BM25 against the bm25s package (1e-5: it scores in
float32), the bag-of-words cosine by hand, and the retrieval sets built from pairs and scored pairs."""

import math

import pytest
import torch

from bertmath.tasks import retrieval
from bertmath.tasks.retrieval import BM25, bag_of_words_cosine, retrieval_scores

# three queries over five documents; rankings fixed by the scores (rows), relevant sets beside them
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5],   # ranking 0 1 2 3 4
                       [0.1, 0.9, 0.3, 0.8, 0.2],   # ranking 1 3 2 4 0
                       [0.5, 0.5, 0.9, 0.1, 0.5]])  # ranking 2 0 1 4 3 (ties by index)
RELEVANT = [{2}, {3, 0}, {3}]


def test_ranking_breaks_ties_by_index():
    assert retrieval.ranking(SCORES).tolist()[2] == [2, 0, 1, 4, 3]


def test_scores_by_hand():
    """Query 0: first hit at rank 3. Query 1: hits at ranks 2 and 5. Query 2: its one hit at rank 5."""
    got = retrieval_scores(SCORES, RELEVANT)
    log2 = lambda r: math.log2(r + 1)
    assert got["mrr@10"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 5) / 3, abs=1e-12)
    ndcg = [(1 / log2(3)) / 1, (1 / log2(2) + 1 / log2(5)) / (1 + 1 / log2(2)), (1 / log2(5)) / 1]
    assert got["ndcg@10"] == pytest.approx(sum(ndcg) / 3, abs=1e-12)
    assert got["map@100"] == pytest.approx((1 / 3 + (1 / 2 + 2 / 5) / 2 + 1 / 5) / 3, abs=1e-12)
    assert got["recall@1"] == 0.0
    assert got["recall@5"] == pytest.approx(1.0, abs=1e-12)
    assert got["recall@10"] == pytest.approx(1.0, abs=1e-12)


def sentence_transformers_scores(scores: torch.Tensor, relevant: list[set[int]]) -> dict[str, float]:
    """InformationRetrievalEvaluator.compute_metrics on the ranked lists `scores` makes (corpus ids whose string
    order is their index order, so that its ties fall as ours)."""
    evaluation = pytest.importorskip("sentence_transformers.sentence_transformer.evaluation")
    Q, N = scores.shape
    ids = [f"d{n:05d}" for n in range(N)]
    evaluator = evaluation.InformationRetrievalEvaluator(
        queries={f"q{q}": f"query {q}" for q in range(Q)}, corpus={ids[n]: f"doc {n}" for n in range(N)},
        relevant_docs={f"q{q}": {ids[n] for n in rel} for q, rel in enumerate(relevant)},
        precision_recall_at_k=[1, 5, 10], accuracy_at_k=[1], show_progress_bar=False)
    hits = [[{"corpus_id": ids[n], "score": float(s)} for n, s in enumerate(row)] for row in scores]
    theirs = evaluator.compute_metrics(hits)
    return {"ndcg@10": theirs["ndcg@k"][10], "mrr@10": theirs["mrr@k"][10], "map@100": theirs["map@k"][100],
            **{f"recall@{k}": theirs["recall@k"][k] for k in (1, 5, 10)}}


def test_scores_equal_sentence_transformers_on_hand_made_rankings():
    theirs = sentence_transformers_scores(SCORES, RELEVANT)
    ours = retrieval_scores(SCORES, RELEVANT)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name


def test_scores_equal_sentence_transformers_on_random_rankings():
    """60 queries over 150 documents, 1 to 15 relevant each (more than 10: NDCG's ideal cut at k), with ties."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 40, (60, 150), generator=g).double() / 40  # many ties
    relevant = [set(torch.randperm(150, generator=g)[:int(torch.randint(1, 16, (1,), generator=g))].tolist())
                for _ in range(60)]
    theirs, ours = sentence_transformers_scores(scores, relevant), retrieval_scores(scores, relevant)
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    # and the check can fail: a ranking turned upside down scores otherwise
    assert retrieval_scores(-scores, relevant)["ndcg@10"] != pytest.approx(theirs["ndcg@10"], abs=1e-3)


CORPUS = ["The cat sat on the mat.", "A dog ran in the park, and the dog barked.", "The cat and the dog are friends.",
          "Cats are nice; cats sleep a lot.", "Stock markets fell sharply on Monday.", "the the the cat"]
QUERIES = ["cat on a mat", "dog dog park", "markets", "what do cats do", "zebra"]


def test_bm25_equals_bm25s():
    bm25s = pytest.importorskip("bm25s")
    index = bm25s.BM25(k1=1.5, b=0.75)  # method "lucene", the default
    index.index(bm25s.tokenize(CORPUS, stopwords=None, show_progress=False), show_progress=False)
    ours = BM25(CORPUS).scores(QUERIES)
    for q, query in enumerate(QUERIES):
        tokens = bm25s.tokenize([query], stopwords=None, show_progress=False, return_ids=False)[0]
        known = [t for t in tokens if t in index.vocab_dict]
        theirs = torch.tensor(index.get_scores(known), dtype=torch.float64) if known else torch.zeros(len(CORPUS), dtype=torch.float64)
        torch.testing.assert_close(ours[q], theirs, atol=1e-5, rtol=1e-5, msg=query)
    assert ours[4].abs().max() == 0  # no query word in the corpus


def test_bm25_by_hand():
    """One term: idf = ln(1 + (N − n + 0.5)/(n + 0.5)), times f/(f + k1(1 − b + b|d|/avgdl))."""
    corpus = ["apple pie", "apple apple banana cherry"]
    lengths, average = [2, 4], 3.0
    idf = math.log(1 + (2 - 2 + 0.5) / (2 + 0.5))
    expected = [idf * f / (f + 1.5 * (0.25 + 0.75 * d / average)) for f, d in zip((1, 2), lengths)]
    assert BM25(corpus).scores(["apple"])[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_bag_of_words_cosine_by_hand():
    got = bag_of_words_cosine(["the cat sat", "a b", "Dog dog"], ["the cat the", "c d", "dog"])
    assert got.tolist() == pytest.approx([3 / math.sqrt(3 * 5), 0.0, 1.0], abs=1e-12)  # "a": one letter, no word


def test_sets_from_pairs_and_scored_pairs():
    pairs = retrieval.from_pairs(["q1", "q2", "q1"], ["d1", "d2", "d3"], ["d4", "d1", "d5"])
    assert pairs.queries == ["q1", "q2"] and pairs.corpus == ["d1", "d2", "d3", "d4", "d5"]
    assert pairs.relevant == [{0, 2}, {1}]
    scored = retrieval.from_scored_pairs(["a", "b", "c"], ["b", "c", "d"], [4.5, 2.0, 4.0], threshold=4.0)
    assert scored.corpus == ["a", "b", "c", "d"] and scored.queries == ["a", "b", "c", "d"]
    assert scored.relevant == [{1}, {0}, {3}, {2}]
    excluded = retrieval.exclude_self(torch.zeros(4, 4), scored)
    assert torch.isinf(excluded.diagonal()).all() and excluded.isfinite().sum() == 12
