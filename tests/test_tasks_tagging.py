"""bertmath.tasks.tagging: CoNLL and jsonl tag files (and their one-line errors), WordPieces labelled as transformers'
run_ner.py labels them, entity scores equal to `seqeval`'s, and a text's entities grouped as transformers'
token-classification pipeline (aggregation_strategy="simple") groups them."""

import io
import json
import logging
import math
import random
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertmath import checkpoint as ckpt
from bertmath.cli import main
from bertmath.config import TaskConfig
from bertmath.errors import TaskDataError
from bertmath.model import BertForTokenClassification
from bertmath.pretrained import load_checkpoint_tokenizer, load_model_and_tokenizer
from bertmath.tasks.tagging import (IGNORE, OUTSIDE, TaggedSplit, Tagger, TaggingShape, baseline_tags, encode_tagged,
                              entities, entity_scores, group_entities, read_tagged, tagged_words, word_tags)
from bertmath.tokenizer import load_tokenizer
from helpers import (assert_finetune_resumes_exactly, assert_one_line_error, eval_records, make_bertmath_run,
                     minilm_dir, write_finetune_config)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(minilm_dir())


# --- task files -----------------------------------------------------------------------------------------------


def test_reads_conll_columns(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- -X- O\n\nHamlet NNP B-NP B-PER\nsails\tVBZ I-VP O\nto O\n"
                    "Elsinore B-LOC\n.  O\n\n\n\nOphelia B-PER\n  \n-DOCSTART- O\nGood O\nmorrow O\n")
    split = read_tagged(path, LABELS)
    assert split.words == [["Hamlet", "sails", "to", "Elsinore", "."], ["Ophelia"], ["Good", "morrow"]]
    assert split.tags == [["B-PER", "O", "O", "B-LOC", "O"], ["B-PER"], ["O", "O"]]
    assert split.source == str(path) and len(split) == 3


def test_reads_jsonl_with_tag_names_or_indices(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"tokens": ["Hamlet", "sails"], "tags": ["B-PER", "O"]}\n\n'
                    '{"tokens": [], "tags": []}\n{"tokens": ["to", "Elsinore"], "tags": [0, 3], "id": 7}\n')
    split = read_tagged(path, LABELS)
    assert split.words == [["Hamlet", "sails"], ["to", "Elsinore"]]
    assert split.tags == [["B-PER", "O"], ["O", "B-LOC"]]


BOM = "\ufeff"  # the byte-order mark some editors write at the start of a UTF-8 file (EF BB BF)


@pytest.mark.parametrize("name,content,words", [
    ("docstart.conll", "-DOCSTART- -X- -X- O\n\nHamlet B-PER\nsails O\n", [["Hamlet", "sails"]]),
    ("first_word.conll", "Hamlet B-PER\nsails O\n", [["Hamlet", "sails"]]),
    ("first_line.jsonl", '{"tokens": ["Hamlet", "sails"], "tags": ["B-PER", "O"]}\n', [["Hamlet", "sails"]]),
])
def test_a_byte_order_mark_is_not_data(tmp_path, name, content, words):
    """A BOM before the first line neither turns -DOCSTART- into a sentence nor sticks to the first word, nor
    spoils the first JSON line: the file reads as it does without one."""
    path = tmp_path / name
    path.write_text(BOM + content, encoding="utf-8")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    split = read_tagged(path, LABELS)
    assert split.words == words and split.tags == [["B-PER", "O"]]


BAD_FILES = [
    ("a.conll", b"Hamlet B-PER\nsails\nto O\n", ":2: no tag after the token 'sails'"),
    ("a.conll", b"Hamlet B-PER\n\nYorick B-MISC\n", ":3: tag 'B-MISC' is not in task.label_names (O, B-PER, I-PER"),
    ("a.txt", b"Hamlet B-PER\nsails O\n\xff\xfe O\n", ":3: not UTF-8 text"),
    ("a.conll", b"", ": no tagged sentences"),
    ("a.conll", b"-DOCSTART- O\n\n\n", ": no tagged sentences"),
    ("a.jsonl", b'{"tokens": ["a", "b"], "tags": ["O"]}\n', ":1: 2 tokens but 1 tags"),
    ("a.jsonl", b'{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a"]}\n', ":2: no key 'tags'"),
    ("a.jsonl", b'{"tokens": ["a"], "tags": ["O"]}\n{"tokens": "a b", "tags": ["O"]}\n', ":2: 'tokens' holds str"),
    ("a.jsonl", b'{"tokens": ["a"], "tags": [5]}\n', ":1: tag 5 is not in task.label_names"),
    ("a.jsonl", b'{"tokens": ["a", ""], "tags": ["O", "O"]}\n', ":1: token '' is not a word"),
    ("a.jsonl", b'{"tokens": ["a"], "tags": ["O"]\n', ":1: not JSON"),
    ("a.jsonl", b"", ": no tagged sentences"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES)
def test_bad_tag_files_are_one_line_errors_naming_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TaskDataError) as error:
        read_tagged(path, LABELS)
    text = str(error.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text
    assert error.value.exit_code == 2


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(TaskDataError, match="cannot read task file"):
        read_tagged(tmp_path / "nope.conll", LABELS)


# --- WordPieces and labels ------------------------------------------------------------------------------------

SENTENCES = [["Hamlet", "sails", "to", "Elsinore", "."], ["Ophelia's", "brother", "Laertes", "returns"],
             ["Good", "morrow", ",", "Rosencrantz", "and", "Guildenstern", "!"], ["Ünïcodé", "naïveté", "x"]]
TAGS = [["B-PER", "O", "O", "B-LOC", "O"], ["B-PER", "O", "B-PER", "O"],
        ["O", "O", "O", "B-PER", "O", "B-PER", "O"], ["B-LOC", "I-LOC", "O"]]


def transformers_labels(words, tags, max_length):
    """transformers' run_ner.py tokenize_and_align_labels (label_all_tokens False): the label on each word's first
    piece, -100 on the others and on [CLS] and [SEP]."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    out = hf(words, is_split_into_words=True, truncation=True, max_length=max_length)
    ids, labels = [], []
    for n in range(len(words)):
        previous, row = None, []
        for word in out.word_ids(n):
            row.append(IGNORE if word is None or word == previous else LABELS.index(tags[n][word]))
            previous = word
        ids.append(out["input_ids"][n])
        labels.append(row)
    return ids, labels


@pytest.mark.parametrize("max_len", [64, 8])
def test_labels_sit_on_first_pieces_as_transformers_run_ner_puts_them(tokenizer, max_len, caplog):
    split = TaggedSplit(SENTENCES, TAGS, "sentences")
    with caplog.at_level(logging.WARNING, logger="bertmath.tasks.tagging"):
        encoded = encode_tagged(tokenizer, split, LABELS, max_len)
    ids, labels = transformers_labels(SENTENCES, TAGS, max_len)
    assert encoded.ids == ids and encoded.labels == labels
    assert max(map(len, encoded.ids)) <= max_len
    truncated = sum(len(tokenizer.encode(" ".join(w)).ids) > max_len for w in SENTENCES)
    assert encoded.truncated == truncated and (truncated > 0) == (max_len == 8)
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == (1 if truncated else 0)
    for n, first in enumerate(encoded.first_pieces):  # each kept word's first piece holds its label
        assert len(first) == len(SENTENCES[n])
        for word, position in enumerate(first):
            if position >= 0:
                assert encoded.labels[n][position] == LABELS.index(TAGS[n][word])
        assert sum(p >= 0 for p in first) == sum(label != IGNORE for label in encoded.labels[n])


def test_word_tags_read_first_pieces_and_lost_words_are_outside():
    assert word_tags([1, 3, -1], [0, 2, 4, 1, 0], LABELS) == ["I-PER", "B-PER", OUTSIDE]


# --- scores ---------------------------------------------------------------------------------------------------

HAND_MADE = [
    # (true, predicted): B/I runs, IOB1 I- starts, a type change inside a run, E-/S- tags, a run at the end
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]),
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "I-LOC"]]),
    ([["I-PER", "I-PER", "O", "I-LOC", "I-LOC"]], [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]),
    ([["B-PER", "I-LOC", "I-LOC"], ["O"]], [["B-PER", "B-LOC", "I-LOC"], ["B-PER"]]),
    ([["B-PER", "B-PER", "I-PER"]], [["B-PER", "I-PER", "I-PER"]]),
    ([["S-PER", "B-LOC", "E-LOC", "O"]], [["B-PER", "B-LOC", "I-LOC", "O"]]),
    ([["O", "O"]], [["O", "O"]]),
    ([["O", "O"]], [["B-PER", "O"]]),
    ([["B-LOC", "O"]], [["O", "O"]]),
]


def seqeval_scores(true, predicted):
    metrics = pytest.importorskip("seqeval.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on zero denominators (UndefinedMetricWarning)
        return {"precision": metrics.precision_score(true, predicted), "recall": metrics.recall_score(true, predicted),
                "f1": metrics.f1_score(true, predicted), "accuracy": metrics.accuracy_score(true, predicted)}


def assert_scores_equal(true, predicted):
    ours, theirs = entity_scores(true, predicted), seqeval_scores(true, predicted)
    for key, value in theirs.items():
        assert abs(ours[key] - float(value)) <= 1e-12, (key, ours, theirs, true, predicted)


@pytest.mark.parametrize("true,predicted", HAND_MADE)
def test_entity_scores_equal_seqeval_on_hand_made_tags(true, predicted):
    assert_scores_equal(true, predicted)


@pytest.mark.parametrize("tag_set", [LABELS, LABELS + ["B-ORG", "I-ORG"], ["O", "I-PER", "I-LOC", "B-LOC"],
                                     ["O", "B-PER", "I-PER", "E-PER", "S-PER", "S-LOC"]])
def test_entity_scores_equal_seqeval_on_random_tags(tag_set):
    rng = random.Random(len(tag_set))
    for trial in range(200):
        lengths = [rng.randint(1, 12)] + [rng.randint(0 if trial % 7 else 1, 12) for _ in range(rng.randint(0, 5))]
        weights = [4] + [1] * (len(tag_set) - 1)  # mostly O, as in real data
        true = [rng.choices(tag_set, weights, k=n) for n in lengths]
        # predictions near the truth: each tag kept with probability 0.7
        predicted = [[t if rng.random() < 0.7 else rng.choice(tag_set) for t in sentence] for sentence in true]
        assert_scores_equal(true, predicted)


def test_entities_equal_seqeval_get_entities():
    get_entities = pytest.importorskip("seqeval.metrics.sequence_labeling").get_entities
    rng = random.Random(0)
    tag_set = LABELS + ["E-PER", "S-LOC"]
    for _ in range(300):
        tags = rng.choices(tag_set, k=rng.randint(0, 15))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "... seems not to be NE tag"
            theirs = [(t, start, end + 1) for t, start, end in get_entities(tags)]
        assert entities(tags) == theirs, tags


def test_the_baseline_tags_everything_outside_and_scores_zero_f1():
    true = [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    base = baseline_tags(true)
    assert base == [["O", "O", "O"], ["O", "O"]]
    assert entity_scores(true, base) == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.4}
    assert entity_scores(true, true)["f1"] == 1.0


def test_entity_scores_refuse_mismatched_shapes():
    with pytest.raises(ValueError):
        entity_scores([["O", "O"]], [["O"]])


# --- a text's entities ----------------------------------------------------------------------------------------

TEXTS = ["Hamlet, Prince of Denmark, sails from Elsinore to England.",
         "My lord Polonius and Ophelia walk in the castle at Elsinore",
         "  Rosencrantz   and Guildenstern are dead!  ",
         "Ünïcodé names: Fortinbras of Norway; naïveté in Wittenberg.",
         "An emoji 🙂 and a snowman ☃ stand for [UNK] pieces",
         "x", "King Claudius", "O Romeo, Romeo, wherefore art thou Romeo?"]


@pytest.fixture(scope="module")
def transformers_tagger():
    """MiniLM with a random token-classification head large enough that the labels vary from piece to piece."""
    transformers = pytest.importorskip("transformers")
    id2label = dict(enumerate(LABELS))
    model = transformers.BertForTokenClassification.from_pretrained(
        str(minilm_dir()), num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.3)
        model.classifier.bias.copy_(torch.tensor([1.0, 0, 0, 0, 0]))
    model.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    return model, tokenizer, transformers.pipeline("token-classification", model=model, tokenizer=tokenizer,
                                                   aggregation_strategy="simple", device="cpu")


def test_entities_group_as_transformers_pipeline_simple(tokenizer, transformers_tagger):
    model, hf_tokenizer, pipe = transformers_tagger
    found = 0
    for text in TEXTS:
        encoding = tokenizer.encode(text)
        with torch.no_grad():
            logits = model(torch.tensor([encoding.ids])).logits[0]
        ours = group_entities(tokenizer, text, encoding, torch.softmax(logits, -1), LABELS)
        theirs = pipe(text)
        assert [(e.label, e.word, e.start, e.end) for e in ours] == \
               [(e["entity_group"], e["word"], e["start"], e["end"]) for e in theirs], text
        for a, b in zip(ours, theirs):
            assert abs(a.score - float(b["score"])) < 1e-5
            assert a.label in ("PER", "LOC") and text[a.start:a.end].strip()
        found += len(ours)
    assert found > 10  # the random head tags plenty of pieces, merged and not


def test_grouping_merges_i_after_b_and_splits_at_b_type_changes_and_o(tokenizer):
    text = "Hamlet Horatio Romeo went to Elsinore castle"
    encoding = tokenizer.encode(text)
    assert encoding.tokens == ["[CLS]", "hamlet", "horatio", "romeo", "went", "to", "el", "##sin", "##ore", "castle",
                               "[SEP]"]
    pieces = ["B-LOC", "B-PER", "I-PER", "B-PER", "O", "O", "I-LOC", "I-LOC", "I-PER", "B-PER", "B-LOC"]
    probabilities = torch.full((11, len(LABELS)), 0.1)
    for i, label in enumerate(pieces):
        probabilities[i, LABELS.index(label)] = 0.6 if i != 2 else 0.8
    got = [(e.label, e.word, text[e.start:e.end], round(e.score, 6))
           for e in group_entities(tokenizer, text, encoding, probabilities, LABELS)]
    assert got == [("PER", "hamlet horatio", "Hamlet Horatio", 0.7), ("PER", "romeo", "Romeo", 0.6),
                   ("LOC", "elsin", "Elsin", 0.6), ("PER", "##ore", "ore", 0.6), ("PER", "castle", "castle", 0.6)]
    words = tagged_words(text, encoding, probabilities, LABELS)
    assert [(w.word, w.label) for w in words] == [("Hamlet", "B-PER"), ("Horatio", "I-PER"), ("Romeo", "B-PER"),
                                                  ("went", "O"), ("to", "O"), ("Elsinore", "I-LOC"),
                                                  ("castle", "B-PER")]
    assert [text[w.start:w.end] for w in words] == text.split()


# --- fine-tuning (bertmath finetune, task.kind tokens) ---------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
TASK = dict(kind="tokens", train_file=str(FIXTURES / "tagging_train.conll"),
            eval_file=str(FIXTURES / "tagging_dev.conll"), label_names=LABELS)


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """Dropout on, so that an exact resume needs the dropout RNG restored too."""
    return make_bertmath_run(tmp_path_factory.mktemp("init"), hidden_dropout=0.1, attention_dropout=0.1)


def write_config(tmp_path, init, task=TASK, **train):
    return write_finetune_config(tmp_path, init, task, "tagging.yaml", **train)


@pytest.fixture(scope="module")
def tag_run(tmp_path_factory, init_run):
    """A tagging run: the tiny model fine-tuned 6 steps on the fixtures (its run directory)."""
    base = tmp_path_factory.mktemp("tag_run")
    assert main(["finetune", str(write_config(base, init_run))]) == 0
    return base / "run"


def test_finetune_reports_entity_scores_next_to_the_all_o_baseline(tag_run, tmp_path, init_run, capsys):
    records = eval_records(tag_run)
    assert [r["step"] for r in records] == [3, 6] and records[-1]["metric"] == "f1"
    last = records[-1]
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_loss"} <= set(last)
    dev = read_tagged(FIXTURES / "tagging_dev.conll", LABELS)
    outside = sum(t == "O" for sentence in dev.tags for t in sentence) / sum(map(len, dev.tags))
    assert last["baseline_f1"] == 0.0 and last["baseline_accuracy"] == pytest.approx(outside)
    assert last["eval_examples"] == 160 and math.isfinite(last["eval_loss"])
    saved = ckpt.read_config(tag_run)
    assert saved.task.kind == "tokens" and saved.task.num_labels == 5
    assert load_file(tag_run / "model.safetensors")["classifier.weight"].shape == (5, 32)
    summary = json.loads((tag_run / "summary.json").read_text())
    assert summary["baseline"]["f1"] == 0.0 and summary["metric"] == "f1"


def test_the_cli_line_names_the_baseline(tmp_path, init_run, capsys):
    assert main(["finetune", str(write_config(tmp_path, init_run, max_steps=1, eval_every=1))]) == 0
    out = capsys.readouterr().out
    assert "done: 1 steps" in out and "f1 " in out and "(baseline 0.000, every word O)" in out, out


def test_evaluation_equals_seqeval_on_sentences_tagged_one_at_a_time(tag_run):
    """The run's last eval scores = seqeval's on the words' tags predicted sentence by sentence (no batching, no
    padding), each word's tag its first piece's argmax."""
    metrics = pytest.importorskip("seqeval.metrics")
    model, tokenizer = load_model_and_tokenizer(BertForTokenClassification, tag_run)
    dev = read_tagged(FIXTURES / "tagging_dev.conll", LABELS)
    predicted = []
    for words in dev.words:
        encoding = tokenizer.encode(words, is_pretokenized=True)
        with torch.no_grad():
            z = model(torch.tensor([encoding.ids[:48]])).logits[0]
        first = {}
        for position, word in enumerate(encoding.word_ids[:47]):
            if word is not None:
                first.setdefault(word, position)
        predicted.append([LABELS[int(z[first[w]].argmax())] if w in first else "O" for w in range(len(words))])
    last = eval_records(tag_run)[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert last["eval_f1"] == pytest.approx(metrics.f1_score(dev.tags, predicted), abs=1e-12)
        assert last["eval_precision"] == pytest.approx(metrics.precision_score(dev.tags, predicted), abs=1e-12)
        assert last["eval_accuracy"] == pytest.approx(metrics.accuracy_score(dev.tags, predicted), abs=1e-12)
    assert any(t != "O" for sentence in predicted for t in sentence)  # the model does tag entities


def test_micro_batches_pad_labels_with_ignore_and_count_the_labelled_pieces(init_run):
    shape = TaggingShape(TaskConfig(init="x", max_seq_len=48, **TASK))
    shape.encode(load_checkpoint_tokenizer(init_run))
    inputs, terms = shape.micro_batch([0, 5, 7])
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    labels, mask = inputs["labels"], inputs["attention_mask"]
    assert labels.shape == inputs["input_ids"].shape and bool((labels[mask == 0] == IGNORE).all())
    assert terms == int((labels != IGNORE).sum()) == sum(p >= 0 for i in (0, 5, 7)
                                                         for p in shape.encoded["train"].first_pieces[i])
    assert shape.examples("train") == 480 and shape.examples("eval") == 160


def test_killed_run_resumes_exactly(tmp_path, init_run):
    assert_finetune_resumes_exactly(write_config(tmp_path, init_run), tmp_path / "run")


@pytest.mark.parametrize("content,message", [
    ("Hamlet B-PER\nsails\n", ":2: no tag after the token 'sails'"),
    ("Hamlet B-PER\n\nYorick B-MISC\n", ":3: tag 'B-MISC' is not in task.label_names"),
])
def test_bad_tag_file_stops_finetune_with_one_line(tmp_path, capsys, init_run, content, message):
    bad = tmp_path / "bad.conll"
    bad.write_text(content)
    assert main(["finetune", str(write_config(tmp_path, init_run, {**TASK, "train_file": str(bad)}))]) == 2
    assert_one_line_error(capsys, "finetune", f"{bad}{message}")


def test_a_tag_set_without_o_is_a_config_error(tmp_path, capsys, init_run):
    config = write_config(tmp_path, init_run, {**TASK, "label_names": ["B-PER", "I-PER"]})
    assert main(["finetune", str(config)]) == 2
    assert_one_line_error(capsys, "finetune", "task.label_names", "needs the tag O")


# --- bertmath tag --------------------------------------------------------------------------------------------

TAG_TEXTS = TEXTS + [" ".join(words) for words in read_tagged(FIXTURES / "tagging_dev.conll", LABELS).words[:30]]


def assert_tags_match_pipeline(checkpoint, transformers_dir, texts):
    """Tagger on `checkpoint` = transformers' pipeline("token-classification", aggregation_strategy="simple") on
    `transformers_dir`: the same entities (label, word, start, end) in order, scores within 1e-5. Returns the
    entities' count."""
    transformers = pytest.importorskip("transformers")
    pipe = transformers.pipeline("token-classification", model=str(transformers_dir), tokenizer=str(transformers_dir),
                                 aggregation_strategy="simple", device="cpu")
    ours = Tagger.from_pretrained(checkpoint)(texts)
    found = 0
    for text, tagged, theirs in zip(texts, ours, pipe(texts)):
        assert [(e.label, e.word, e.start, e.end) for e in tagged.entities] == \
               [(e["entity_group"], e["word"], e["start"], e["end"]) for e in theirs], text
        for a, b in zip(tagged.entities, theirs):
            assert abs(a.score - float(b["score"])) < 1e-5
        found += len(theirs)
    return found


def test_tag_json_equals_the_pipeline_on_the_export(tag_run, tmp_path, capsys, monkeypatch):
    assert main(["export", str(tag_run), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    assert assert_tags_match_pipeline(tag_run, tmp_path / "hf", TAG_TEXTS) > 20
    # the command: stdin '-' and TEXT arguments, one JSON object per text in input order
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TAG_TEXTS[:5]) + "\n\n"))
    assert main(["tag", str(tag_run), "-", TAG_TEXTS[5], "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    expected = Tagger.from_pretrained(tag_run)(TAG_TEXTS[:6])
    for line, tagged in zip(lines, expected):
        record = json.loads(line)
        assert record["text"] == tagged.text
        assert record["entities"] == [e.to_dict() for e in tagged.entities]
        assert all(set(e) == {"label", "word", "start", "end", "score"} for e in record["entities"])


def test_tag_reads_a_transformers_token_classifier(tag_run, tmp_path):
    """A directory transformers saved (BertForTokenClassification with id2label, a new random head) tags the same
    through bertmath as through the pipeline."""
    transformers = pytest.importorskip("transformers")
    assert main(["export", str(tag_run), str(tmp_path / "hf")]) == 0
    model = transformers.BertForTokenClassification.from_pretrained(str(tmp_path / "hf"))
    assert model.config.id2label == dict(enumerate(LABELS))
    torch.manual_seed(1)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    model.save_pretrained(str(tmp_path / "saved"))
    transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf")).save_pretrained(str(tmp_path / "saved"))
    assert assert_tags_match_pipeline(tmp_path / "saved", tmp_path / "saved", TAG_TEXTS) > 20


def test_tag_text_output_lists_words_and_entities(tag_run, tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("Hamlet sails to Elsinore.\n\nGood morrow, Romeo!\n")
    assert main(["tag", str(tag_run), "--file", str(tmp_path / "texts.txt")]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2
    first = blocks[0].splitlines()
    assert [line.split("\t")[0] for line in first[:-1]] == ["Hamlet", "sails", "to", "Elsinore", "."]
    assert all(line.split("\t")[1] in LABELS for line in first[:-1]) and first[-1].startswith("entities: ")


def test_tag_truncates_long_texts_once_with_a_warning(tag_run, caplog):
    tagger = Tagger.from_pretrained(tag_run)
    long = " ".join(["Hamlet"] * 200)
    with caplog.at_level(logging.WARNING, logger="bertmath"):
        tagged = tagger([long, "Hamlet"])
    assert [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()] == \
        ["1 of 2 inputs were longer than 64 tokens and were truncated (their end is not tagged)"]
    pieces = len(tagger.tokenizer.encode("Hamlet", add_special_tokens=False).ids)
    assert len(tagged[0].words) == math.ceil(62 / pieces) and len(tagged[1].words) == 1  # 62 pieces and 2 specials
