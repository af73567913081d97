"""scripts/bench_task_precision.py on a tiny BERT that the script fine-tunes itself: its scores, agreement and
deltas are recounted from its predictions by other code (seqeval; SQuAD's evaluate-v2.0.py rewritten here on the
raw JSON; the fine-tuning path's tags; Answerer's own spans), it skips what the CPU lacks, and fails in one line."""

import collections
import contextlib
import io
import json
import re
import string

import pytest
import torch
from tokenizers import Tokenizer
from helpers import load_script, minilm_dir

from bertmath import hardware
from bertmath.batching import MAX_BATCH
from bertmath.checkpoint import model_files, save_checkpoint
from bertmath.config import Config, ModelConfig
from bertmath.model import BertForMaskedLM
from bertmath.tasks import qa
from bertmath.tasks.answer import Answerer
from bertmath.tasks.tagging import Tagger, encode_tagged, read_tagged, token_logits, word_tags

# Tagging: 60 steps at a high rate find most names (dev F1 0.68-0.81 from four random inits). QA: 2 slow
# steps leave the model near its random init, so that it answers with spans (the no-answer of [CLS] is what a few
# steps teach it first), which Answerer's own spans can check; on passages of a word or two, where the [CLS] score
# has one span or three to beat, it answers nothing about as often.
TRAIN = ["train.warmup_steps=1", "train.eval_every=1000", "train.save_every=1000"]
TAGGING = TRAIN + ["train.max_steps=60", "train.lr=1e-2"]
QA = TRAIN + ["train.max_steps=2", "train.lr=1e-4", "task.max_seq_len=64", "task.doc_stride=16",
              "task.max_question_tokens=16"]
FORCED_BF16 = "made native by the test"


def load_bench():
    load_script("bench_real")
    load_script("bench_inference")
    return load_script("bench_task_precision")


def bf16_allowed(patch):
    """bf16 runs here (emulated where the CPU lacks it: slow, but the model is tiny)."""
    patch.setattr(hardware, "native_bf16", lambda device: (True, FORCED_BF16))


def tiny_init(out_dir, seed: int = 0):
    """A bertmath run of a random 2-layer, D 32 BertForMaskedLM (BERT's init, no dropout) with MiniLM's tokenizer,
    whose bert-base-uncased pieces hold Shakespeare's names whole."""
    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).eval()
    save_checkpoint(out_dir, step=0, files=model_files(model, Config(model=config), tokenizer), keep=1)
    return out_dir


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """The script end to end: tiny_init fine-tuned on the tagging fixtures and on a QA dev file of the first 12
    passages' questions and 12 passages of their first two words, benched at fp32, bf16 and (where this CPU has it)
    int8. (report, root)."""
    root = tmp_path_factory.mktemp("task_precision")
    bench = load_bench()
    dev = json.loads(bench.DEV["qa"].read_text())
    paragraphs = [p for article in dev["data"] for p in article["paragraphs"]][:12]
    short = [{"context": " ".join(p["context"].split()[:2]), "qas": [
        {"id": f"short-{n}", "question": p["qas"][0]["question"], "is_impossible": False,
         "answers": [{"text": p["context"].split()[0], "answer_start": 0}]}]} for n, p in enumerate(paragraphs)]
    (root / "qa_dev.json").write_text(json.dumps({**dev, "data": [{"title": "t", "paragraphs": paragraphs + short}]}))
    argv = ["--init", str(tiny_init(root / "init")), "--runs", str(root / "runs"), "--rounds", "1", "--qa-dev",
            str(root / "qa_dev.json"), "--json", "--out", str(root / "report.json")]
    argv += [a for key in TAGGING for a in ("--set-tagging", key)] + [a for key in QA for a in ("--set-qa", key)]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        bf16_allowed(patch)
        assert bench.main(argv) == 0
    report = json.loads((root / "report.json").read_text())
    assert json.loads(out.getvalue()) == report
    return report, root


def precisions_here() -> list[str]:
    return ["fp32", "bf16"] + (["int8"] if hardware.int8_weight_max(torch.device("cpu"))[0] is not None else [])


def task(report: dict, name: str) -> dict:
    return next(t for t in report["tasks"] if t["task"] == name)


def test_report_names_the_machine_and_every_precision(bench_run):
    report, root = bench_run
    assert report["precisions"] == precisions_here() and report["cpu_class"] and report["threads"] >= 1
    assert report["load_average"] >= 0
    for name in ("tagging", "qa"):
        t = task(report, name)
        assert [r["precision"] for r in t["rows"]] == report["precisions"] == list(t["predictions"])
        assert t["checkpoint"] == str(root / "runs" / name)
        assert t["fine_tune"]["steps"] == (60 if name == "tagging" else 2)
        for row in t["rows"]:
            assert row["per_s"] == pytest.approx(t["examples"] / row["seconds"]) and row["per_s"] > 0
            assert row["delta_f1_points"] == pytest.approx(100 * (row["scores"]["f1"] - t["rows"][0]["scores"]["f1"]))
            assert row["within_goal"] == (None if row["precision"] == "fp32" else
                                          abs(row["delta_f1_points"]) <= {"bf16": 0.1, "int8": 0.5}[row["precision"]])
        assert t["rows"][0]["same_as_fp32"] == 1.0 and t["rows"][0]["delta_f1_points"] == 0.0


def test_tagging_scores_are_seqevals_on_the_fine_tuning_paths_tags(bench_run, monkeypatch):
    """Each precision's tags equal those the fine-tuning evaluation's path gives (WordPieces of the CoNLL words,
    the first piece's argmax) with the same prepared model; seqeval on them gives the report's scores."""
    seqeval = pytest.importorskip("seqeval.metrics")
    report, root = bench_run
    t = task(report, "tagging")
    bf16_allowed(monkeypatch)
    fp32 = t["predictions"]["fp32"]
    for row in t["rows"]:
        tagger = Tagger.from_pretrained(root / "runs" / "tagging", precision=row["precision"])
        dev = read_tagged(t["dev"], tagger.label_names)
        encoded = encode_tagged(tagger.tokenizer, dev, tagger.label_names, 64)
        logits = token_logits(tagger.model, encoded.ids, MAX_BATCH, tagger.pad_id, "cpu", tagger.precision.autocast)
        tags = [word_tags(first, z.argmax(-1).tolist(), tagger.label_names)
                for first, z in zip(encoded.first_pieces, logits)]
        assert t["predictions"][row["precision"]] == tags
        assert row["scores"]["f1"] == pytest.approx(seqeval.f1_score(dev.tags, tags), abs=1e-12)
        assert row["scores"]["precision"] == pytest.approx(seqeval.precision_score(dev.tags, tags), abs=1e-12)
        assert row["scores"]["recall"] == pytest.approx(seqeval.recall_score(dev.tags, tags), abs=1e-12)
        assert row["same_as_fp32"] == sum(a == b for a, b in zip(tags, fp32)) / len(dev)
    assert t["rows"][0]["scores"]["f1"] > 0.3  # a score that means something: names found
    assert t["examples"] == len(fp32) == 160 and t["entities"] == 86  # tests/fixtures/README.md
    # the fine-tuning run's own last evaluation (its training model, eval mode) scored the same tags
    assert t["fine_tune"]["eval_scores"]["f1"] == pytest.approx(t["rows"][0]["scores"]["f1"], abs=0.015)


def squad_v2(predictions: list[str], path) -> dict:
    """SQuAD's evaluate-v2.0.py (EM and F1, as fractions) on the raw JSON's questions, in file order."""
    def normalize(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

    def f1(gold, pred):
        g, p = normalize(gold).split(), normalize(pred).split()
        if not g or not p:
            return float(g == p)
        same = sum((collections.Counter(g) & collections.Counter(p)).values())
        return 0.0 if same == 0 else 2 * (same / len(p)) * (same / len(g)) / (same / len(p) + same / len(g))

    questions = [q for a in json.loads(path.read_text())["data"] for p in a["paragraphs"] for q in p["qas"]]
    golds = [[a["text"] for a in q["answers"] if normalize(a["text"])] or [""] for q in questions]
    assert len(golds) == len(predictions)
    return {"exact_match": sum(max(float(normalize(g) == normalize(p)) for g in gs)
                               for p, gs in zip(predictions, golds)) / len(golds),
            "f1": sum(max(f1(g, p) for g in gs) for p, gs in zip(predictions, golds)) / len(golds)}


def null_score(answerer: Answerer, question: str, context: str) -> float:
    """SQuAD v2.0's no-answer score, min over the windows of start[0] + end[0], one window a forward pass."""
    features = qa.make_features(answerer.tokenizer, [qa.Question("q", question, context, ())], answerer.max_seq_len,
                                answerer.doc_stride, answerer.max_question_tokens, targets=False)
    scores = []
    for w in range(len(features)):
        ids, types = torch.tensor([features.ids(w)]), torch.tensor([features.types(w)])
        with torch.no_grad(), answerer.precision.autocast():
            out = answerer.model(ids, torch.ones_like(ids), types)
        scores.append(float(out.start_logits[0, 0]) + float(out.end_logits[0, 0]))
    return min(scores)


def test_qa_scores_are_squads_and_answers_are_answerers_spans(bench_run, monkeypatch):
    """Each precision's answers: Answerer's best span where there is one, none exactly where the [CLS] score
    (computed a window at a time here) beats that span; EM and F1 those of SQuAD's script."""
    report, root = bench_run
    t = task(report, "qa")
    bf16_allowed(monkeypatch)
    rows = json.loads((root / "qa_dev.json").read_text())
    examples = [(q["question"], p["context"]) for a in rows["data"] for p in a["paragraphs"] for q in p["qas"]]
    assert t["examples"] == len(examples) and t["version_2"] and t["unanswerable"] >= 1
    fp32 = t["predictions"]["fp32"]
    for row in t["rows"]:
        predicted = t["predictions"][row["precision"]]
        expected = squad_v2(predicted, root / "qa_dev.json")
        assert row["scores"]["f1"] == pytest.approx(expected["f1"], abs=1e-12)
        assert row["scores"]["exact_match"] == pytest.approx(expected["exact_match"], abs=1e-12)
        assert row["same_as_fp32"] == sum(a == b for a, b in zip(predicted, fp32)) / len(examples)
        answerer = Answerer.from_pretrained(root / "runs" / "qa", precision=row["precision"])
        best = [answer.spans[0] for answer in answerer(examples)]
        assert all(p == span.answer for p, span in zip(predicted, best) if p)  # an answer is Answerer's best span
        null = [null_score(answerer, question, context) for question, context in examples]
        assert all(n > span.logit - 1e-3 for p, span, n in zip(predicted, best, null) if not p)
        assert all(n < span.logit + 1e-3 for p, span, n in zip(predicted, best, null) if p)
        assert 0 < predicted.count("") < len(examples) // 2  # both checks bite
    assert t["fine_tune"]["eval_scores"]["f1"] == pytest.approx(t["rows"][0]["scores"]["f1"], abs=0.02)


def test_precisions_the_cpu_lacks_are_skipped_and_checkpoints_reused(bench_run, monkeypatch, capsys):
    report, root = bench_run
    monkeypatch.setattr(hardware, "native_bf16", lambda device: (False, "no bf16 here"))
    monkeypatch.setattr(hardware, "int8_weight_max", lambda device: (None, "no int8 here"))
    bench = load_bench()
    assert bench.main(["--tagging-checkpoint", str(root / "runs" / "tagging"), "--qa-checkpoint",
                       str(root / "runs" / "qa"), "--qa-dev", str(root / "qa_dev.json"), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "bf16: skipped: no bf16 here (emulated" in out and "int8: skipped: no int8 here" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "/s |" in line]
    assert len(table) == 2 and all("| fp32 |" in line for line in table)
    for name, line in zip(("tagging", "qa"), table):  # the same checkpoint, the same fp32 F1
        assert f"| {100 * task(report, name)['rows'][0]['scores']['f1']:.2f} |" in line
    assert report["tasks"][0]["fine_tune"] and "fine-tuned" not in out  # nothing fine-tuned this time


def test_errors_are_one_line(tmp_path, capsys):
    bench = load_bench()
    assert bench.main(["--tasks", "tagging", "--tagging-checkpoint", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("bench_task_precision: ") and captured.err.count("\n") == 1
    assert "--tagging-checkpoint" in captured.err and "missing: not found" in captured.err and captured.out == ""
    assert bench.main(["--tagging-checkpoint", str(tmp_path), "--qa-dev", str(tmp_path / "dev.json")]) == 2
    assert capsys.readouterr().err == f"bench_task_precision: --qa-dev {tmp_path / 'dev.json'}: not found\n"
    assert bench.main(["--rounds", "0"]) == 2
    assert capsys.readouterr().err == "bench_task_precision: --rounds must be at least 1\n"
