"""bertmath.tagging: CoNLL and jsonl tag files (and their one-line errors), WordPieces labelled as transformers'
run_ner.py labels them, entity scores equal to `seqeval`'s, and a text's entities grouped as transformers'
token-classification pipeline (aggregation_strategy="simple") groups them."""

import logging
import random
import warnings

import pytest
import torch

from bertmath.errors import TaskDataError
from bertmath.tagging import (IGNORE, OUTSIDE, TaggedSplit, baseline_tags, encode_tagged, entities, entity_scores,
                              group_entities, read_tagged, tagged_words, word_tags)
from bertmath.tokenizer import load_tokenizer
from helpers import minilm_dir

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
    with caplog.at_level(logging.WARNING, logger="bertmath.tagging"):
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
