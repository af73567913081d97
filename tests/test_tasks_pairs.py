"""bertmath.tasks.pairs and `bertmath finetune` with task.kind embedding: pair files and their one-line errors, the
evaluation against sentence-transformers' evaluators on MiniLM, tiny end-to-end runs of each loss, exact resume
(GradCache with dropout on), and unsupervised SimCSE on the embedded corpus."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bertmath import checkpoint as ckpt
from bertmath.checkpoint import load_state_into
from bertmath.cli import main
from bertmath.config import DataConfig, TaskConfig, load_config
from bertmath.errors import ConfigError, TaskDataError
from bertmath.io import read_safetensors
from bertmath.tasks.finetune import load_init
from bertmath.tasks.pairs import EmbeddingShape, read_pairs
from helpers import (assert_finetune_resumes_exactly, assert_one_line_error, eval_records, make_bertmath_run,
                     minilm_dir, write_finetune_config)

FIXTURES = Path(__file__).parent / "fixtures"
STSB_TRAIN, STSB_DEV = FIXTURES / "stsb_train.jsonl", FIXTURES / "stsb_dev.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stsb_rows(path: Path = STSB_TRAIN) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory) -> Path:
    """The STS-B fixture's pairs as anchor/positive with a hard negative: another row's sentence2."""
    rows = stsb_rows()
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    return write_jsonl(path, [{"anchor": r["sentence1"], "positive": r["sentence2"],
                               "negative": rows[(i + 7) % len(rows)]["sentence2"]} for i, r in enumerate(rows)])


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """Dropout on, so that an exact resume needs the dropout RNG restored too."""
    return make_bertmath_run(tmp_path_factory.mktemp("init"), hidden_dropout=0.1, attention_dropout=0.1)


def embedding_task(**changes) -> dict:
    return {"kind": "embedding", "train_file": str(STSB_TRAIN), "eval_file": str(STSB_DEV), "loss": "cosent",
            **changes}


# --- pair files -------------------------------------------------------------------------------------------------


def test_reads_pairs_negatives_and_scored_pairs(tmp_path, pair_file):
    pairs = read_pairs(pair_file, [0, 5])
    assert list(pairs.columns) == ["anchor", "positive", "negative"] and len(pairs) == 40 and not pairs.scored
    scored = read_pairs(STSB_TRAIN, [0, 5])
    assert list(scored.columns) == ["sentence1", "sentence2"] and scored.scored
    assert scored.scores.tolist() == pytest.approx([r["score"] / 5 for r in stsb_rows()])  # (y − 0)/(5 − 0)
    csv = tmp_path / "pairs.csv"
    csv.write_text("anchor,positive\nhello there,hi\n\"a, b\",c\n")
    assert read_pairs(csv, [0, 1]).columns == {"anchor": ["hello there", "a, b"], "positive": ["hi", "c"]}


BAD_FILES = [
    ("empty.jsonl", "\n", {}, "no pairs (an empty file)"),
    ("no_positive.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n', {}, ":2: no column 'positive'"),
    ("no_negative.jsonl", '{"anchor": "a", "positive": "b", "negative": "x"}\n{"anchor": "c", "positive": "d"}\n',
     {}, ":2: no column 'negative'"),
    ("neither.jsonl", '{"query": "a", "document": "b"}\n', {}, ":1: expected columns anchor and positive"),
    ("outside.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 5}\n{"sentence1": "a", "sentence2": "b", '
     '"score": 5.5}\n', {"loss": "cosent"}, ":2: score 5.5 is outside task.score_range [0, 5]"),
    ("word.jsonl", '{"sentence1": "a", "sentence2": "b", "score": "high"}\n', {"loss": "cosent"},
     ":1: score 'high' is not a number"),
    ("number.jsonl", '{"anchor": "a", "positive": 3}\n', {}, ":1: column 'positive' holds 3, not text"),
    ("scored_for_mnrl.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n', {},
     ":1: the loss trains on anchor/positive pairs"),
    ("pairs_for_cosent.jsonl", '{"anchor": "a", "positive": "b"}\n', {"loss": "cosent"},
     ":1: the loss trains on scored pairs"),
]


@pytest.mark.parametrize("name,content,task,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_pair_file_is_one_line_exit_2(tmp_path, capsys, init_run, name, content, task, message):
    bad = tmp_path / name
    bad.write_text(content)
    config = write_finetune_config(tmp_path, init_run, embedding_task(**{"loss": "mnrl", **task,
                                                                         "train_file": str(bad)}))
    assert main(["finetune", str(config)]) == 2
    assert_one_line_error(capsys, "finetune", str(bad), message)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("changes,key", [
    (dict(pooling="mean"), "task.pooling"),  # the classifier's pooler, not the sentence's
    (dict(num_labels=2), "task.num_labels"),
    (dict(scale=0.0), "task.scale"),
    (dict(loss="cached_mnrl", mini_batch_size=0), "task.mini_batch_size"),
    (dict(symmetric=True), "task.symmetric"),  # cosent has no directions
    (dict(score_range=[5, 0]), "task.score_range"),
    (dict(metric="accuracy"), "task.metric"),
    (dict(simcse=True), "task.train_file"),  # SimCSE reads the data: corpus
    (dict(simcse=True, train_file=None), "task.loss"),  # cosent needs scores
    (dict(kind="sequence", simcse=True, train_file=None, loss="mnrl"), "task.simcse"),
])
def test_bad_embedding_config_names_the_key(tmp_path, init_run, changes, key):
    with pytest.raises(ConfigError, match=key):
        load_config(write_finetune_config(tmp_path, init_run, embedding_task(**changes)))


def test_metric_must_fit_the_eval_file(pair_file):
    with pytest.raises(TaskDataError, match="task.metric 'ndcg@10' scores retrieval, but the eval file holds scored"):
        EmbeddingShape(TaskConfig(init="x", **embedding_task(metric="ndcg@10")), DataConfig())
    shape = EmbeddingShape(TaskConfig(init="x", **embedding_task(loss="mnrl", train_file=str(pair_file),
                                                                 eval_file=str(pair_file))), DataConfig())
    assert shape.default_metric == "ndcg@10" and len(shape.retrieval.queries) == 40


# --- evaluation against sentence-transformers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    """(bertmath's BertForSentenceEmbedding of MiniLM, its init, sentence-transformers' SentenceTransformer)."""
    st = pytest.importorskip("sentence_transformers")
    init = load_init(str(minilm_dir()))
    return init, st.SentenceTransformer(str(minilm_dir()), device="cpu")


def minilm_shape(init, **task) -> tuple[EmbeddingShape, torch.nn.Module]:
    shape = EmbeddingShape(TaskConfig(init=str(init.directory), **task), DataConfig())
    shape.encode(init.tokenizer)
    model = shape.model(init.model_config)
    load_state_into(model, init.state, str(init.directory))
    return shape, model.eval()


# the same MiniLM in two implementations: cosines within ~1e-6, so the rank statistics agree up to a near-tie
SPEARMAN_ATOL = 1e-6


def test_similarity_scores_equal_embedding_similarity_evaluator(minilm):
    """Spearman and Pearson of the cosines on the 40 STS-B pairs of the training fixture, as
    EmbeddingSimilarityEvaluator computes them (scipy, sentence-transformers' encode)."""
    evaluation = pytest.importorskip("sentence_transformers.sentence_transformer.evaluation")
    init, st_model = minilm
    shape, model = minilm_shape(init, **embedding_task(eval_file=str(STSB_TRAIN)))
    ours, baseline, examples = shape.evaluate(model, 16, torch.device("cpu"), None)
    rows = stsb_rows()
    evaluator = evaluation.EmbeddingSimilarityEvaluator([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
                                                        [r["score"] for r in rows], similarity_fn_names=["cosine"])
    theirs = evaluator(st_model)
    assert examples == 40
    assert ours["spearman"] == pytest.approx(theirs["spearman_cosine"], abs=SPEARMAN_ATOL)
    assert ours["pearson"] == pytest.approx(theirs["pearson_cosine"], abs=SPEARMAN_ATOL)
    assert ours["spearman"] > baseline["spearman"] + 0.1  # MiniLM beats counting shared words on these pairs


def test_retrieval_scores_equal_information_retrieval_evaluator(minilm, pair_file):
    """Each anchor a query over every positive and negative: the scores of InformationRetrievalEvaluator with the
    same queries, corpus and relevant documents."""
    evaluation = pytest.importorskip("sentence_transformers.sentence_transformer.evaluation")
    init, st_model = minilm
    shape, model = minilm_shape(init, **embedding_task(loss="mnrl", train_file=str(pair_file),
                                                      eval_file=str(pair_file)))
    ours, bm25, examples = shape.evaluate(model, 16, torch.device("cpu"), None)
    r = shape.retrieval
    ids = [f"d{n:05d}" for n in range(len(r.corpus))]
    evaluator = evaluation.InformationRetrievalEvaluator(
        {f"q{q}": text for q, text in enumerate(r.queries)}, dict(zip(ids, r.corpus)),
        {f"q{q}": {ids[n] for n in rel} for q, rel in enumerate(r.relevant)}, precision_recall_at_k=[1, 5, 10],
        show_progress_bar=False, score_functions={"cosine": lambda a, b: st_model.similarity(a, b)})
    theirs = evaluator(st_model)
    assert examples == len(r.queries) == 40
    for name in ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@5", "recall@10"):
        assert ours[name] == pytest.approx(theirs[f"cosine_{name}"], abs=1e-9), name
    assert set(bm25) == set(ours) and 0 < bm25["ndcg@10"] <= 1


# --- bertmath finetune ------------------------------------------------------------------------------------------


def test_cosent_run_records_the_embedding_config(tmp_path, capsys, init_run):
    config = write_finetune_config(tmp_path, init_run, embedding_task(sentence_pooling="max", normalize=False))
    assert main(["finetune", str(config)]) == 0
    assert "spearman" in capsys.readouterr().out
    records = eval_records(tmp_path / "run")
    assert [r["step"] for r in records] == [3, 6] and records[-1]["metric"] == "spearman"
    assert {"eval_spearman", "eval_pearson", "baseline_spearman"} <= set(records[-1])
    saved = ckpt.read_config(tmp_path / "run")  # what the inference side reads the pooling from
    assert (saved.task.kind, saved.task.sentence_pooling, saved.task.normalize) == ("embedding", "max", False)
    assert saved.task.metric == "spearman" and saved.model.pooling == "cls"  # model.pooling: the classifier's
    weights = load_file(tmp_path / "run" / "model.safetensors")
    before = read_safetensors(init_run / "model.safetensors")
    name = "bert.encoder.layers.0.attention.query.weight"
    assert all(k.startswith("bert.") for k in weights) and not torch.equal(weights[name], before[name])


def test_mnrl_run_scores_retrieval_next_to_bm25(tmp_path, capsys, init_run, pair_file):
    config = write_finetune_config(tmp_path, init_run, embedding_task(loss="mnrl", symmetric=True,
                                                                      train_file=str(pair_file),
                                                                      eval_file=str(pair_file)), max_steps=3)
    assert main(["finetune", str(config)]) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and "ndcg@10 " in done[0] and ", BM25)" in done[0]
    last = eval_records(tmp_path / "run")[-1]
    assert last["metric"] == "ndcg@10" and last["eval_examples"] == 40
    assert {"eval_mrr@10", "eval_map@100", "eval_recall@10", "baseline_ndcg@10"} <= set(last)


@pytest.mark.slow
def test_cached_mnrl_run_resumes_exactly(tmp_path, init_run, pair_file):
    """GradCache with dropout on, stopped after its step-3 checkpoint and resumed: the same weights and metrics."""
    task = embedding_task(loss="cached_mnrl", mini_batch_size=3, train_file=str(pair_file))
    assert_finetune_resumes_exactly(write_finetune_config(tmp_path, init_run, task), tmp_path / "run")


def test_simcse_on_the_embedded_corpus(tmp_path, init_run):
    """Unsupervised SimCSE end to end: the data: corpus's documents paired with themselves; the recorded config
    keeps the corpus it ran on."""
    config = write_finetune_config(tmp_path, init_run, embedding_task(loss="mnrl", simcse=True, train_file=None),
                                   max_steps=3)
    tree = yaml.safe_load(config.read_text())
    tree["data"] = {"source": "embedded", "max_documents": 64}
    config.write_text(yaml.safe_dump(tree))
    assert main(["finetune", str(config)]) == 0
    saved = ckpt.read_config(tmp_path / "run")
    assert saved.task.simcse and saved.data.max_documents == 64 and saved.data.max_seq_len == 48
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)
    assert eval_records(tmp_path / "run")[-1]["metric"] == "spearman"


def test_make_pairs_writes_pair_files_the_shape_reads(tmp_path):
    """scripts/make_pairs.py: STS-B pairs scored >= 4 and the QA fixtures' questions with their passages."""
    from helpers import load_script
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "train.jsonl").write_text(STSB_TRAIN.read_text())
    assert load_script("make_pairs").main(["--tasks", str(tmp_path)]) == 0
    pairs = read_pairs(tmp_path / "stsb" / "pairs_train.jsonl", [0, 5], "pairs")
    assert len(pairs) == sum(r["score"] >= 4 for r in stsb_rows()) > 0
    qa = read_pairs(tmp_path / "qa_pairs" / "dev.jsonl", [0, 5], "pairs")
    assert 0 < len(qa) < 92 and all(q.startswith(("Who says", "What follows")) for q in qa.columns["anchor"])
