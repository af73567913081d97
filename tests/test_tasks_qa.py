"""bertmath.tasks.qa: SQuAD files (v1.1, v2.0) and their one-line errors with file:line:column, the windows against
transformers' tokenizer (return_overflowing_tokens + stride, run_qa.py's training targets recomputed here as
run_qa.py writes them), the best span against a brute-force search over every span, SQuAD's EM/F1 on
hand-worked cases, the first-sentence baseline."""

import json
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bertmath.errors import ConfigError
from bertmath.errors import TaskDataError
from bertmath.pretrained import load_checkpoint_tokenizer
from bertmath import checkpoint as ckpt
from bertmath.cli import main
from bertmath.model import BertForQuestionAnswering
from bertmath.tasks.qa import (Features, Question, Tokens, Window, answer_positions, best_spans, collate_windows,
                         exact_match, first_sentence, gold_answers, json_position, make_features, normalize_answer,
                         null_logit, predict_answers, predict_span_logits, read_squad, span_losses, squad_scores,
                         token_f1, window_ranges)
from helpers import assert_finetune_resumes_exactly, load_script, make_bertmath_run, minilm_dir, tiny_model_config

CONTEXT = "Romeo and Juliet is a tragedy. It was written by William Shakespeare early in his career."


def squad(paragraphs, version=None):
    tree = {"data": [{"title": "t", "paragraphs": paragraphs}]}
    if version:
        tree["version"] = version
    return tree


def qa(qid, question, answers, **extra):
    return {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers],
            **extra}


GOOD_V1 = squad([{"context": CONTEXT, "qas": [
    qa("q1", "Who wrote it?", [("William Shakespeare", 49), ("Shakespeare", 57)]),
    qa("q2", "What is it?", [("a tragedy", 20)])]}], version="1.1")
GOOD_V2 = squad([{"context": CONTEXT, "qas": [
    qa("q1", "Who wrote it?", [("William Shakespeare", 49)], is_impossible=False),
    {"id": "q3", "question": "Who acted?", "answers": [], "plausible_answers": [{"text": "Romeo", "answer_start": 0}],
     "is_impossible": True}]}], version="v2.0")


def write(tmp_path, tree, name="squad.json", indent=2):
    path = tmp_path / name
    path.write_text(json.dumps(tree, indent=indent))
    return path


# --- reading ------------------------------------------------------------------------------------------------


def test_reads_v1_and_v2(tmp_path):
    v1 = read_squad(write(tmp_path, GOOD_V1, "v1.json"))
    assert not v1.version_2 and len(v1) == 2
    assert v1.questions[0] == Question("q1", "Who wrote it?", CONTEXT,
                                       (("William Shakespeare", 49), ("Shakespeare", 57)), False)
    v2 = read_squad(write(tmp_path, GOOD_V2, "v2.json"))
    assert v2.version_2 and [q.is_impossible for q in v2.questions] == [False, True]
    assert v2.questions[1].answers == ()


def _answer_line(text: str, marker: str) -> tuple[int, int]:
    """Where json.dumps(indent=2) put the object holding `marker`: its '{' is alone on the line above."""
    lines = text.splitlines()
    n = next(i for i, line in enumerate(lines) if marker in line)
    return n, lines[n - 1].index("{") + 1  # 1-based line of the '{' = n (0-based index n-1, plus 1)


BAD = [
    ("answer_start", squad([{"context": CONTEXT, "qas": [qa("q1", "Who?", [("William Shakespeare", 48)])]}]),
     '"text": "William Shakespeare"', "question 'q1': answer 'William Shakespeare' does not match its "
                                      "answer_start 48 (the context there reads ' William Shakespear'; "),
    ("beyond_context", squad([{"context": "short", "qas": [qa("q1", "Who?", [("short", 9)])]}]),
     '"text": "short"', "does not match its answer_start 9 (the context there reads nothing"),
    ("empty_context", squad([{"context": "  ", "qas": [qa("q7", "Who?", [("x", 0)])]}]),
     '"id": "q7"', "question 'q7' has an empty context"),
    ("no_answers", squad([{"context": CONTEXT, "qas": [qa("q9", "Who?", [])]}]),
     '"id": "q9"', "question 'q9' has no answers"),
    ("impossible_with_answers", squad([{"context": CONTEXT, "qas": [qa("q4", "Who?", [("Romeo", 0)],
                                                                       is_impossible=True)]}]),
     '"id": "q4"', "question 'q4' is_impossible but has answers"),
    ("empty_question", squad([{"context": CONTEXT, "qas": [qa("q5", " ", [("Romeo", 0)])]}]),
     '"id": "q5"', "question 'q5' is empty"),
    ("no_id", squad([{"context": CONTEXT, "qas": [{"question": "Who?", "answers": []}]}]),
     '"question": "Who?"', 'the question has no "id" (keys: question, answers)'),
    ("answer_start_text", squad([{"context": CONTEXT, "qas": [
        {"id": "q2", "question": "Who?", "answers": [{"text": "Romeo", "answer_start": "0"}]}]}]),
     '"text": "Romeo"', '"answer_start" should be an integer, got "0"'),
]


@pytest.mark.parametrize("name,tree,marker,message", BAD, ids=[b[0] for b in BAD])
def test_bad_file_is_one_line_with_its_line(tmp_path, name, tree, marker, message):
    path = write(tmp_path, tree)
    line, column = _answer_line(path.read_text(), marker)
    with pytest.raises(TaskDataError) as error:
        read_squad(path)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{path}:{line}:{column}: "), (text, line, column)
    assert message in text


def test_one_line_file_names_the_column(tmp_path):
    """The official SQuAD files are a single line: the column finds the answer."""
    tree = squad([{"context": CONTEXT, "qas": [qa("q1", "Who?", [("Romeo", 0)]), qa("q2", "What?", [("tragic", 22)])]}])
    path = write(tmp_path, tree, indent=None)
    text = path.read_text()
    column = text.index('{"text": "tragic"') + 1
    with pytest.raises(TaskDataError, match=rf"^{path}:1:{column}: question 'q2': answer 'tragic' does not match"):
        read_squad(path)


@pytest.mark.parametrize("content,message", [
    ('{"data": [', ":1:11: not JSON"),
    ('[1, 2]', ":1:1: the file should be an object"),
    ('{"version": "1.1"}', ':1:1: the file has no "data"'),
    ('{"data": [{"paragraphs": {}}]}', ':1:11: "paragraphs" should be a list'),
    ('{"data": []}', "no questions (an empty split)"),
])
def test_not_squad_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=re.escape(message)):
        read_squad(path)


def test_duplicate_id_and_bytes_that_are_not_utf8(tmp_path):
    tree = squad([{"context": CONTEXT, "qas": [qa("q1", "Who?", [("Romeo", 0)]), qa("q1", "What?", [("Romeo", 0)])]}])
    with pytest.raises(TaskDataError, match=re.escape("question id 'q1' appears twice (also at "
                                                      "data[0].paragraphs[0].qas[0])")):
        read_squad(write(tmp_path, tree))
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"data": "caf\xe9"}')
    with pytest.raises(TaskDataError, match="not UTF-8"):
        read_squad(path)
    with pytest.raises(TaskDataError, match="cannot read"):
        read_squad(tmp_path / "nowhere.json")


def test_json_position_follows_the_path():
    text = '{"a": [\n  {"b": 1},\n  {"c": [1,\n    {"d": 2}]}]}'
    assert json_position(text, ()) == (1, 1)
    assert json_position(text, ("a",)) == (1, 7)
    assert json_position(text, ("a", 1)) == (3, 3)
    assert json_position(text, ("a", 1, "c", 1)) == (4, 5)
    assert json_position(text, ("a", 0, "b")) == (2, 3)  # a number: its object
    assert json_position(text, ("a", 5)) == (1, 7)  # not there: the deepest found


# --- windows ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers():
    """(bertmath's tokenizers.Tokenizer, transformers' tokenizer) of bert-base-uncased's vocabulary."""
    transformers = pytest.importorskip("transformers")
    directory = minilm_dir()
    return load_checkpoint_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))


def test_window_ranges_step_by_length_minus_stride():
    # L = 20 - 4 - 3 = 13 context tokens a window, starts 9 apart, the last the first to reach 30
    assert window_ranges(30, 4, 20, 4) == [(0, 13), (9, 22), (18, 30)]
    assert window_ranges(13, 4, 20, 4) == [(0, 13)]
    assert window_ranges(5, 4, 20, 4) == [(0, 5)]
    with pytest.raises(ConfigError, match="task.doc_stride: 13 tokens of overlap"):
        window_ranges(30, 4, 20, 13)


def passages(n: int, seed: int) -> list[Question]:
    """Questions over passages of 5-120 words with accents and punctuation, each answer a random run of
    1-6 words (so some cross window edges and some sit in a window's last token)."""
    rng = random.Random(seed)
    words = ["Romeo", "Juliet's", "café", "naïve", "unbelievably", "Verona,", "the", "quarrel;", "1597", "(night)",
             "Montague", "Capulet.", "swords!", "—", "apothecary", "O", "wherefore", "art", "thou?", "fair"]
    out = []
    for i in range(n):
        chosen = [rng.choice(words) for _ in range(rng.randint(5, 120))]
        context = " ".join(chosen)
        a = rng.randrange(len(chosen))
        b = min(len(chosen), a + rng.randint(1, 6))
        start = len(" ".join(chosen[:a])) + (a > 0)
        text = " ".join(chosen[a:b])
        assert context[start:start + len(text)] == text
        question = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        impossible = i % 7 == 3
        out.append(Question(f"q{i}", question, context, () if impossible else ((text, start),), impossible))
    return out


def run_qa_train_positions(encoding, i: int, question: Question, cls_id: int) -> tuple[int, int]:
    """run_qa.py's prepare_train_features for feature i, as it is written (pad_on_right)."""
    input_ids, offsets = encoding["input_ids"][i], encoding["offset_mapping"][i]
    cls_index = input_ids.index(cls_id)
    sequence_ids = encoding.sequence_ids(i)
    if not question.answers:
        return cls_index, cls_index
    start_char = question.answers[0][1]
    end_char = start_char + len(question.answers[0][0])
    token_start_index = 0
    while sequence_ids[token_start_index] != 1:
        token_start_index += 1
    token_end_index = len(input_ids) - 1
    while sequence_ids[token_end_index] != 1:
        token_end_index -= 1
    if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
        return cls_index, cls_index
    while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
        token_start_index += 1
    while offsets[token_end_index][1] >= end_char:
        token_end_index -= 1
    return token_start_index - 1, token_end_index + 1


@pytest.mark.parametrize("max_seq_len,stride,max_question", [(32, 8, 64), (48, 16, 64), (40, 4, 6)])
def test_windows_equal_transformers_overflowing_tokens(tokenizers, max_seq_len, stride, max_question):
    ours_tokenizer, theirs = tokenizers
    questions = passages(40, seed=max_seq_len)
    features = make_features(ours_tokenizer, questions, max_seq_len, stride, max_question)
    by_example = features.by_example()
    assert sorted(by_example) == list(range(len(questions)))
    quirks = 0
    for n, q in enumerate(questions):
        question_ids = theirs(q.question, add_special_tokens=False)["input_ids"][:max_question]
        cut = theirs.decode(question_ids)  # the question as run_qa.py would need it: already short enough
        encoding = theirs(cut, q.context, truncation="only_second", max_length=max_seq_len, stride=stride,
                          return_overflowing_tokens=True, return_offsets_mapping=True)
        assert theirs(cut, add_special_tokens=False)["input_ids"] == question_ids
        windows = by_example[n]
        assert len(windows) == len(encoding["input_ids"])
        for i, w in enumerate(windows):
            assert features.ids(w) == encoding["input_ids"][i]
            assert features.types(w) == encoding["token_type_ids"][i]
            expected = [tuple(o) if s == 1 else None
                        for o, s in zip(encoding["offset_mapping"][i], encoding.sequence_ids(i))]
            assert features.offsets(w) == expected
            start, end = run_qa_train_positions(encoding, i, q, theirs.cls_token_id)
            window = features.windows[w]
            if start == len(expected) - 1:  # run_qa.py's loop ran onto the [SEP]: the answer starts in the last token
                quirks += 1
                start -= 1
            assert (window.start_position, window.end_position) == (start, end), (n, i)
            if start:
                answer, answer_start = q.answers[0]
                assert expected[start][0] <= answer_start and expected[end][1] >= answer_start + len(answer)
    assert quirks > 0  # some answers start in a window's last token (run_qa.py's loop runs onto the [SEP])
    assert sum(len(w) > 1 for w in by_example.values()) > 10  # many passages need several windows
    assert sum(features.windows[w].start_position > 0 for w in range(len(features))) > 20


def test_answer_in_the_last_token_of_a_window():
    """run_qa.py would give the [SEP] after the window; the answer's token is the window's last."""
    offsets = [(0, 3), (4, 8), (9, 14)]
    assert answer_positions(offsets, 0, 3, 9, 14, context_start=5) == (7, 7)
    assert answer_positions(offsets, 0, 3, 4, 14, context_start=5) == (6, 7)
    assert answer_positions(offsets, 0, 2, 9, 14, context_start=5) == (0, 0)  # not in the window: [CLS]
    assert answer_positions(offsets, 1, 3, 0, 3, context_start=5) == (0, 0)
    assert answer_positions(offsets, 0, 3, 5, 6, context_start=5) == (6, 6)  # inside one token


# --- the best span ------------------------------------------------------------------------------------------


def brute_force(question: Question, hf_offsets: list[list], starts, ends, max_answer_tokens: int) -> list:
    """Every span s ≤ e of context tokens, e − s < max_answer_tokens, of every window, as (sum, start char,
    end char), a character span keeping its best sum; best first."""
    best = {}
    for offsets, start, end in zip(hf_offsets, starts, ends):
        for s in range(len(offsets)):
            for e in range(s, min(len(offsets), s + max_answer_tokens)):
                if offsets[s] is None or offsets[e] is None:
                    continue
                chars = (offsets[s][0], offsets[e][1])
                total = float(start[s]) + float(end[e])
                best[chars] = max(best.get(chars, -float("inf")), total)
    return sorted(((v, a, b) for (a, b), v in best.items()), key=lambda c: -c[0])


def test_best_span_is_the_best_of_all_spans_of_all_windows(tokenizers):
    tokenizer, _ = tokenizers
    questions = passages(30, seed=5)
    features = make_features(tokenizer, questions, 40, 10, 64, targets=False)
    g = torch.Generator().manual_seed(0)
    starts = [torch.randn(features.length(w), generator=g) * 3 for w in range(len(features))]
    ends = [torch.randn(features.length(w), generator=g) * 3 for w in range(len(features))]
    for n, windows in features.by_example().items():
        q = questions[n]
        offsets = [features.offsets(w) for w in windows]
        for max_answer_tokens in (1, 4, 30):
            expected = brute_force(q, offsets, [starts[w] for w in windows], [ends[w] for w in windows],
                                   max_answer_tokens)
            spans = best_spans(q.context, features, windows, [starts[w] for w in windows],
                               [ends[w] for w in windows], max_answer_tokens, top_k=5)
            assert [(s.start, s.end) for s in spans] == [(a, b) for _, a, b in expected[:5]]
            assert all(s.answer == q.context[s.start:s.end] for s in spans)
            assert [s.logit for s in spans] == pytest.approx([v for v, _, _ in expected[:5]], abs=1e-5)
            top = torch.tensor([v for v, _, _ in expected[:20]], dtype=torch.float64)
            assert [s.score for s in spans] == pytest.approx(torch.softmax(top, 0)[:5].tolist(), abs=1e-9)


def one_window(context_offsets, question_ids=(7,)):
    tokens = Tokens(list(question_ids), list(range(len(context_offsets))), context_offsets)
    return Features([tokens], [Window(0, 0, len(context_offsets))], cls=1, sep=2)


def test_ties_go_to_the_earlier_start_and_end_and_the_null_answer():
    features = one_window([(0, 1), (2, 3), (4, 5)])  # "a b c": window positions 3, 4, 5
    flat = torch.zeros(7)
    spans = best_spans("a b c", features, [0], [flat], [flat], max_answer_tokens=2, top_k=10)
    assert [(s.start, s.end) for s in spans] == [(0, 1), (0, 3), (2, 3), (2, 5), (4, 5)]
    assert [s.score for s in spans] == pytest.approx([0.2] * 5)
    start = torch.tensor([4.0, 0, 0, 1, 0, 0, 0])
    end = torch.tensor([0.0, 0, 0, 0, 0, 2, 0])
    best = best_spans("a b c", features, [0], [start], [end], max_answer_tokens=30)[0]
    assert (best.answer, best.logit) == ("a b c", 3.0)
    assert null_logit([start], [end]) == 4.0
    question = Question("q", "?", "a b c", ())
    assert predict_answers([question], features, [start], [end], 30, version_2=True) == [""]
    assert predict_answers([question], features, [start], [end], 30, version_2=False) == ["a b c"]
    end[5] = 3.5  # the span now beats the null score: 4.5 > 4
    assert predict_answers([question], features, [start], [end], 30, version_2=True) == ["a b c"]


# --- scores -------------------------------------------------------------------------------------------------


def test_normalisation_by_hand():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre Anthem") == "theatre anthem"  # articles only as words
    assert normalize_answer("don't-stop") == "dontstop"
    assert normalize_answer("the") == "" and normalize_answer("") == ""


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Cat.", ["cat"]) == 1.0 and exact_match("cats", ["cat"]) == 0.0
    # pred {quick, brown, fox}, gold {quick, fox, jumps}: common 2, P = R = 2/3
    assert token_f1("the quick brown fox", ["quick fox jumps"]) == pytest.approx(2 / 3)
    # multisets: pred x x y, gold x y y: common x·1 + y·1 = 2 of 3 each
    assert token_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)
    # P = 1/1, R = 1/4: F1 = 2·(1/4)/(5/4) = 0.4
    assert token_f1("Verona", ["in fair Verona, where"]) == pytest.approx(0.4)
    # the best gold counts
    assert exact_match("red door", ["door", "a red door"]) == 1.0
    assert token_f1("red door", ["door", "green door"]) == pytest.approx(2 / 3)
    # no answer: right only when both are empty
    assert (exact_match("", [""]), token_f1("", [""])) == (1.0, 1.0)
    assert (exact_match("x", [""]), token_f1("x", [""])) == (0.0, 0.0)
    assert (exact_match("", ["x"]), token_f1("", ["x"])) == (0.0, 0.0)


def test_squad_scores_average_over_questions():
    questions = [Question("a", "?", "c", (("Romeo", 0), ("Romeo and Juliet", 0))),
                 Question("b", "?", "c", (), True),
                 Question("c", "?", "c", (("the", 0),))]  # normalises to nothing: scored as no answer
    assert gold_answers(questions[1]) == [""] and gold_answers(questions[2]) == [""]
    # EM 1, 1, 0; F1 1, 1, 0
    assert squad_scores(["romeo", "", "x"], questions) == {"exact_match": pytest.approx(2 / 3),
                                                          "f1": pytest.approx(2 / 3)}
    # "juliet": F1 vs "Romeo and Juliet" = 2·1·(1/3)/(4/3) = 0.5; "" vs no-answer 1; "" vs [""] 1
    assert squad_scores(["juliet", "", ""], questions) == {"exact_match": pytest.approx(2 / 3),
                                                          "f1": pytest.approx(2.5 / 3)}


def test_first_sentence():
    assert first_sentence("  Hello there. General Kenobi!") == "Hello there."
    assert first_sentence("Wait... what? Yes.") == "Wait..."
    assert first_sentence("ROMEO.\nBut soft!") == "ROMEO."
    assert first_sentence("no end at all") == "no end at all"
    assert first_sentence("3.5 is a number! ok") == "3.5 is a number!"


# --- the fixtures -------------------------------------------------------------------------------------------


FIXTURES = Path(__file__).parent / "fixtures"


def test_fixtures_are_what_the_script_writes(tmp_path):
    script = load_script("make_task_fixtures")
    written = script.write_qa_fixtures(tmp_path)
    assert [p.name for p in written] == ["qa_train.json", "qa_dev.json"]
    for path in written:
        assert path.read_bytes() == (FIXTURES / path.name).read_bytes(), path.name


def test_fixtures_are_squad_v2_with_long_passages(tokenizers):
    tokenizer, _ = tokenizers
    train, dev = read_squad(FIXTURES / "qa_train.json"), read_squad(FIXTURES / "qa_dev.json")
    assert train.version_2 and dev.version_2
    assert 250 <= len(train) and 80 <= len(dev) and sum(p.stat().st_size for p in FIXTURES.glob("qa_*.json")) < 300_000
    for split in (train, dev):
        assert sum(q.is_impossible for q in split.questions) >= 5
        assert len({q.question.split()[0] for q in split.questions}) == 2  # Who says / What follows
    assert not {q.context for q in train.questions} & {q.context for q in dev.questions}
    features = make_features(tokenizer, dev.questions, 128, 32, 64)
    windows = features.by_example()
    assert sum(len(w) > 1 for w in windows.values()) >= 10  # passages longer than one 128-token window
    # every answer lies wholly inside some window, so that every answerable question trains its span
    for n, q in enumerate(dev.questions):
        assert q.is_impossible or any(features.windows[w].start_position > 0 for w in windows[n]), q.id


# --- bertmath finetune (task.kind span) ---------------------------------------------------------------------


def fixture_subset(name: str, questions: int, out: Path) -> Path:
    """The first paragraphs of a fixture holding about `questions` questions, as a SQuAD v2.0 file."""
    tree = json.loads((FIXTURES / name).read_text())
    paragraphs, count = [], 0
    for paragraph in (p for article in tree["data"] for p in article["paragraphs"]):
        if count >= questions:
            break
        paragraphs.append(paragraph)
        count += len(paragraph["qas"])
    out.write_text(json.dumps({"version": "v2.0", "data": [{"title": "subset", "paragraphs": paragraphs}]}))
    return out


@pytest.fixture(scope="module")
def span_run_inputs(tmp_path_factory):
    """A tiny random BERT with dropout on (so that an exact resume needs the dropout RNG too) and small train
    and eval files cut from the fixtures."""
    root = tmp_path_factory.mktemp("span")
    init = make_bertmath_run(root / "init", hidden_dropout=0.1, attention_dropout=0.1)
    return (init, fixture_subset("qa_train.json", 16, root / "train.json"),
            fixture_subset("qa_dev.json", 6, root / "dev.json"))


def write_span_config(tmp_path, inputs, **train) -> Path:
    init, train_file, eval_file = inputs
    tree = {"task": {"kind": "span", "init": str(init), "train_file": str(train_file), "eval_file": str(eval_file),
                     "max_seq_len": 64, "max_question_tokens": 20, "doc_stride": 16},
            "train": {"out_dir": str(tmp_path / "run"), "max_steps": 6, "batch_size": 8, "eval_every": 3,
                      "save_every": 3, "warmup_steps": 1, "lr": 1e-3, "precision": "fp32", "plot": False, **train}}
    path = tmp_path / "span.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_finetune_reports_em_and_f1_next_to_the_first_sentence(tmp_path, capsys, span_run_inputs):
    assert main(["finetune", str(write_span_config(tmp_path, span_run_inputs))]) == 0
    out = capsys.readouterr().out
    assert "done: 6 steps" in out and "f1 " in out and "the passage's first sentence" in out and "exact_match" in out
    records = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
               if "metric" in r]
    assert [r["step"] for r in records] == [3, 6]
    dev = read_squad(span_run_inputs[2])
    baseline = squad_scores([first_sentence(q.context) for q in dev.questions], dev.questions)
    last = records[-1]
    assert last["metric"] == "f1" and last["eval_examples"] == len(dev)
    assert (last["baseline_f1"], last["baseline_exact_match"]) == (baseline["f1"], baseline["exact_match"])
    assert 0 <= last["eval_exact_match"] <= last["eval_f1"] <= 1 and last["eval_loss"] > 0
    assert "qa_outputs.weight" in load_file(tmp_path / "run" / "model.safetensors")
    saved = ckpt.read_config(tmp_path / "run")
    assert (saved.task.kind, saved.task.doc_stride, saved.task.max_question_tokens) == ("span", 16, 20)


def test_span_run_resumes_exactly(tmp_path, span_run_inputs):
    """Stopped after its step-3 checkpoint and resumed, a run ends with the weights and metrics of one that never
    stopped (windows drawn as a pure function of (seed, step), dropout's RNG in the checkpoint)."""
    assert_finetune_resumes_exactly(write_span_config(tmp_path, span_run_inputs), tmp_path / "run")


def test_span_eval_loss_is_the_models_loss(span_run_inputs):
    """span_losses over the per-window logits of predict_span_logits (batched by length, padded) = the mean of
    BertForQuestionAnswering's loss on each window alone."""
    init, train_file, _ = span_run_inputs
    tokenizer = load_checkpoint_tokenizer(init)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_model_config(tokenizer.get_vocab_size())).eval()
    features = make_features(tokenizer, read_squad(train_file).questions[:8], 64, 16, 20)
    pad = tokenizer.token_to_id("[PAD]")
    starts, ends = predict_span_logits(model, features, 4, pad)
    with torch.no_grad():
        alone = [float(model(**collate_windows(features, [w], pad, targets=True)).loss) for w in range(len(features))]
    assert len(features) > 8 and span_losses(starts, ends, features) == pytest.approx(sum(alone) / len(alone), abs=1e-5)
