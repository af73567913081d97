"""bertmath.tasks.answer and `bertmath answer`: held to run_qa.py's post-processing rule computed here, independently,
from transformers' BertForQuestionAnswering logits on the `bertmath export` of the same fine-tuned checkpoint
(transformers 5 has no question-answering pipeline); batching changes no answer; stdin; one-line errors."""

import io
import json
import math
from pathlib import Path

import pytest
import yaml

from bertmath.tasks.answer import Answerer, read_examples_file, window_shape
from bertmath.cli import main
from bertmath.tasks.qa import read_squad
from helpers import assert_one_line_error, make_bertmath_run

FIXTURES = Path(__file__).parent / "fixtures"
MAX_SEQ_LEN, DOC_STRIDE, MAX_QUESTION = 64, 16, 20


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    """A tiny BERT fine-tuned for 8 steps on the QA fixtures (64-token windows: most passages need several)."""
    root = tmp_path_factory.mktemp("answer")
    init = make_bertmath_run(root / "init")
    eval_file = root / "dev.json"  # a few questions: the run's final evaluation is not what is tested here
    dev = json.loads((FIXTURES / "qa_dev.json").read_text())
    eval_file.write_text(json.dumps({**dev, "data": [{"title": "t", "paragraphs": dev["data"][0]["paragraphs"][:3]}]}))
    tree = {"task": {"kind": "span", "init": str(init), "train_file": str(FIXTURES / "qa_train.json"),
                     "eval_file": str(eval_file), "max_seq_len": MAX_SEQ_LEN,
                     "doc_stride": DOC_STRIDE, "max_question_tokens": MAX_QUESTION},
            "train": {"out_dir": str(root / "run"), "max_steps": 8, "batch_size": 16, "eval_every": 1000,
                      "save_every": 1000, "warmup_steps": 1, "lr": 3e-3, "precision": "fp32", "plot": False}}
    (root / "qa.yaml").write_text(yaml.safe_dump(tree))
    assert main(["finetune", str(root / "qa.yaml")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def exported(qa_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", str(qa_run), str(out)]) == 0
    return out


def inputs() -> list[tuple[str, str]]:
    """Three dozen (question, passage): the dev fixture's first questions (passages up to ~20 windows of this
    model) and a few by hand (a one-window passage, accents, a question longer than max_question_tokens)."""
    dev = read_squad(FIXTURES / "qa_dev.json").questions[:27]
    by_hand = [("Who wrote it?", "Romeo and Juliet is a tragedy by William Shakespeare."),
               ("Où est le café?", "The café is near the naïve apothecary's shop, in Verona."),
               ("what " * 30 + "?", "A long question, a short passage.")]
    return [(q.question, q.context) for q in dev] + by_hand


def transformers_windows(model, tokenizer, question: str, context: str) -> list:
    """run_qa.py's features, from transformers alone: windows by the tokenizer's overflowing tokens with a stride
    (the question cut to MAX_QUESTION tokens first), each as (start logits, end logits, offsets, the positions of
    context tokens), the logits of the model on the window alone."""
    import torch

    ids = tokenizer(question, add_special_tokens=False)["input_ids"][:MAX_QUESTION]
    cut = tokenizer.decode(ids)
    assert tokenizer(cut, add_special_tokens=False)["input_ids"] == ids
    encoding = tokenizer(cut, context, truncation="only_second", max_length=MAX_SEQ_LEN, stride=DOC_STRIDE,
                         return_overflowing_tokens=True, return_offsets_mapping=True)
    out = []
    for i, input_ids in enumerate(encoding["input_ids"]):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([input_ids]),
                           token_type_ids=torch.tensor([encoding["token_type_ids"][i]]))
        out.append((logits.start_logits[0].tolist(), logits.end_logits[0].tolist(), encoding["offset_mapping"][i],
                    [t for t, s in enumerate(encoding.sequence_ids(i)) if s == 1]))
    return out


def run_qa_rule(windows: list, context: str, max_answer_tokens: int, top_k: int) -> list:
    """run_qa.py's rule: every span s ≤ e of context tokens with e − s < max_answer_tokens scored
    start[s] + end[e], a character span keeping its best score over the windows; the top_k as (text, start, end,
    probability), the probability a softmax over the 20 best."""
    best = {}
    for start, end, offsets, inside in windows:
        for s in inside:
            for e in inside:
                if s <= e < s + max_answer_tokens:
                    chars = (offsets[s][0], offsets[e][1])
                    best[chars] = max(best.get(chars, -math.inf), start[s] + end[e])
    ranked = sorted(best.items(), key=lambda item: -item[1])
    top = [v for _, v in ranked[:20]]
    probabilities = [math.exp(v - top[0]) / sum(math.exp(u - top[0]) for u in top) for v in top]
    return [(context[a:b], a, b, p) for ((a, b), _), p in zip(ranked[:top_k], probabilities)]


def test_answers_are_run_qa_rule_on_transformers_logits(qa_run, exported):
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForQuestionAnswering.from_pretrained(str(exported)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
    answerer = Answerer.from_pretrained(qa_run)
    assert (answerer.max_seq_len, answerer.doc_stride, answerer.max_question_tokens) == \
        (MAX_SEQ_LEN, DOC_STRIDE, MAX_QUESTION)  # the run's task: section
    examples = inputs()
    windows = [transformers_windows(model, tokenizer, q, c) for q, c in examples]
    assert len(examples) >= 30 and sum(len(w) > 1 for w in windows) >= 20 and min(map(len, windows)) == 1
    for max_answer_tokens in (30, 3):
        answers = answerer(examples, top_k=3, max_answer_tokens=max_answer_tokens)
        for (question, context), answer, theirs in zip(examples, answers, windows):
            expected = run_qa_rule(theirs, context, max_answer_tokens, 3)
            assert [(s.answer, s.start, s.end) for s in answer.spans] == [e[:3] for e in expected], question
            assert [s.score for s in answer.spans] == pytest.approx([e[3] for e in expected], abs=1e-4)
            assert all(context[s.start:s.end] == s.answer for s in answer.spans)


def test_batching_changes_no_answer(qa_run):
    answerer = Answerer.from_pretrained(qa_run)
    examples = inputs()[:12]
    together = answerer(examples, top_k=2)
    for example, answer in zip(examples, together):
        (alone,) = answerer([example], top_k=2)
        assert [(s.start, s.end) for s in alone.spans] == [(s.start, s.end) for s in answer.spans]
        assert [s.score for s in alone.spans] == pytest.approx([s.score for s in answer.spans], abs=1e-5)


def test_a_transformers_directory_gets_run_qa_windows(exported):
    answerer = Answerer.from_pretrained(exported)
    assert (answerer.max_seq_len, answerer.doc_stride, answerer.max_question_tokens) == window_shape(64) == (64, 22, 16)
    assert window_shape(512) == (384, 128, 64)
    (answer,) = answerer([inputs()[0]])
    assert len(answer.spans) == 1 and answer.spans[0].answer


# --- the command --------------------------------------------------------------------------------------------


def test_cli_text_json_top_k_and_stdin(qa_run, capsys, monkeypatch, tmp_path):
    (question, context), (question2, _) = inputs()[:2]
    expected = Answerer.from_pretrained(qa_run)([(question, context), (question2, context)], top_k=2)
    assert main(["answer", str(qa_run), "--question", question, "--context", context]) == 0
    score, offsets, text = capsys.readouterr().out.rstrip("\n").split("\t")
    best = expected[0].spans[0]
    assert (float(score), offsets, text) == (pytest.approx(best.score, abs=1e-4), f"{best.start}-{best.end}",
                                             " ".join(best.answer.split()))
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{question}\n\n{question2}\n"))
    (tmp_path / "passage.txt").write_text(context)
    assert main(["answer", str(qa_run), "--question", "-", "--context-file", str(tmp_path / "passage.txt"),
                 "--top-k", "2", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"question": a.question, "answers": [{"answer": s.answer, "start": s.start, "end": s.end,
                                              "score": pytest.approx(s.score, abs=1e-6)} for s in a.spans]}
        for a in expected]
    (tmp_path / "many.jsonl").write_text("\n".join(json.dumps({"question": q, "context": context})
                                                   for q in (question, question2)) + "\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(context))
    assert main(["answer", str(qa_run), "--question", question, "--context-file", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"][0]["start"] == best.start
    assert main(["answer", str(qa_run), "--file", str(tmp_path / "many.jsonl"), "--json"]) == 0
    assert [json.loads(line)["answers"][0]["end"] for line in capsys.readouterr().out.splitlines()] == \
        [a.spans[0].end for a in expected]


@pytest.mark.parametrize("arguments,words", [
    (["--question", "Who?", "--context", "  "], ["the passage is empty"]),
    (["--question", " ", "--context", "Romeo speaks."], ["the question is empty"]),
    (["--question", "Who?"], ["--context"]),
    (["--question", "-", "--context-file", "-"], ["stdin", "not both"]),
    (["--question", "Who?", "--context", "Romeo.", "--top-k", "0"], ["top_k (0)"]),
    (["--question", "Who?", "--context-file", "nowhere.txt"], ["nowhere.txt", "cannot read"]),
])
def test_bad_input_is_one_line(qa_run, capsys, arguments, words):
    assert main(["answer", str(qa_run), *arguments]) != 0
    assert_one_line_error(capsys, "answer", *words)


@pytest.mark.parametrize("content,words", [
    ('{"question": "Who?", "context": "Romeo."}\n{"question": ', [":2: not JSON"]),
    ('{"question": "Who?"}\n', [':1: expected a "context" holding text, got none']),
    ('{"question": "Who?", "context": "x"}\n\n{"question": "Who?", "context": " "}\n', [":3: the context is empty"]),
    ("\n", ["no questions"]),
])
def test_bad_file_is_one_line_naming_its_line(qa_run, capsys, tmp_path, content, words):
    path = tmp_path / "questions.jsonl"
    path.write_text(content)
    assert main(["answer", str(qa_run), "--file", str(path)]) == 1
    assert_one_line_error(capsys, "answer", str(path), *words)


def test_a_checkpoint_without_a_span_head_is_one_line(tmp_path, capsys):
    mlm = make_bertmath_run(tmp_path / "mlm")
    assert main(["answer", str(mlm), "--question", "Who?", "--context", "Romeo."]) == 1
    assert_one_line_error(capsys, "answer", "not a fine-tuned question-answering model")


def test_a_byte_order_mark_before_the_first_question_is_dropped(tmp_path):
    """--file's JSON lines: a BOM before the first object is not part of it (json.loads would refuse it)."""
    path = tmp_path / "bom.jsonl"
    path.write_text('\ufeff{"question": "Who?", "context": "Romeo."}\n{"question": "Where?", "context": "Verona."}\n',
                    encoding="utf-8")
    assert read_examples_file(str(path)) == [("Who?", "Romeo."), ("Where?", "Verona.")]
