"""bertmath.tasks.classify, `bertmath classify` and the export of a fine-tuned classifier: the [CLS] a [SEP] b [SEP]
layout and longest-first truncation as transformers' tokenizer does them, padding that changes no result, text /
JSON / file / stdin input, and transformers' AutoModelForSequenceClassification loading the export with the
same logits."""

import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from bertmath import BertForSequenceClassification
from bertmath.tasks.classify import Classifier
from bertmath.tasks.encoding import collate, encode, truncate_longest_first
from bertmath.cli import main
from bertmath.tasks.finetune import finetune
from bertmath.config import load_config
from bertmath.pretrained import load_checkpoint_tokenizer
from helpers import assert_one_line_error, make_bertmath_run, minilm_dir

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures"
ATOL, RTOL = 1e-5, 1e-5  # float32 logits of the same weights, two implementations
PAIRS = [("A man is playing a flute.", "A man plays the flute loudly in the park."),
         ("Dogs run.", "Two dogs are running through a very long field of tall green grass near the river."),
         ("The cat sat on the mat.", "A cat.")]


def finetuned(tmp_path_factory, task: dict, name: str) -> Path:
    base = tmp_path_factory.mktemp(name)
    init = make_bertmath_run(base / "init")
    tree = {"task": {"init": str(init), "max_seq_len": 48, **task},
            "train": {"out_dir": str(base / "run"), "max_steps": 4, "batch_size": 8, "eval_every": 4,
                      "save_every": 4, "warmup_steps": 1, "lr": 3e-3, "precision": "fp32", "plot": False}}
    (base / "c.yaml").write_text(yaml.safe_dump(tree))
    finetune(load_config(base / "c.yaml"))
    return base / "run"


@pytest.fixture(scope="module")
def rotten_run(tmp_path_factory):
    return finetuned(tmp_path_factory, dict(
        train_file=str(FIXTURES / "rotten_train.csv"), eval_file=str(FIXTURES / "rotten_dev.tsv"),
        text_columns=["text"], label_column="label", num_labels=2, label_names=["rotten", "fresh"]), "rotten")


@pytest.fixture(scope="module")
def stsb_run(tmp_path_factory):
    return finetuned(tmp_path_factory, dict(
        train_file=str(FIXTURES / "stsb_train.jsonl"), eval_file=str(FIXTURES / "stsb_dev.jsonl"),
        text_columns=["sentence1", "sentence2"], label_column="score", num_labels=1, metric="pearson"), "stsb")


# --- encoding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_len", [64, 16, 9])
def test_pairs_and_truncation_match_transformers_tokenizer(max_len):
    """ids and segment ids of pairs and single texts equal BertTokenizerFast's (truncation="longest_first")."""
    directory = minilm_dir()
    ours = encode(load_checkpoint_tokenizer(directory), PAIRS, max_len)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)([a for a, _ in PAIRS], [b for _, b in PAIRS],
                                                                   truncation="longest_first", max_length=max_len)
    assert ours.ids == theirs["input_ids"]
    assert ours.types == theirs["token_type_ids"]
    full = encode(load_checkpoint_tokenizer(directory), PAIRS, 512).ids
    assert ours.truncated == sum(len(ids) > max_len for ids in full) and (max_len == 64) == (ours.truncated == 0)
    single = encode(load_checkpoint_tokenizer(directory), [(b,) for _, b in PAIRS], max_len)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)([b for _, b in PAIRS], truncation=True,
                                                                   max_length=max_len)
    assert single.ids == theirs["input_ids"] and all(set(t) == {0} for t in single.types)


def test_truncate_longest_first_takes_from_the_longer_text():
    assert truncate_longest_first([1, 2, 3, 4, 5], [6, 7], 4) == ([1, 2], [6, 7])
    assert truncate_longest_first([1, 2, 3], [4, 5, 6, 7], 5) == ([1, 2], [4, 5, 6])  # tokenizers' balance
    assert truncate_longest_first([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])
    assert truncate_longest_first([1, 2, 3], None, 2) == ([1, 2], None)


def test_collate_pads_with_the_pad_id_and_masks_it():
    from bertmath.tasks.encoding import Encoded
    batch = collate(Encoded([[2, 5, 3], [2, 3]], [[0, 0, 0], [0, 0]]), [1, 0], pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 3, 0], [2, 5, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


# --- inference ----------------------------------------------------------------------------------------------


def test_padding_changes_no_prediction(rotten_run, stsb_run):
    """Each example scored alone (no padding) and in a batch padded to the longest give the same numbers."""
    for run, examples in ((rotten_run, [a for a, _ in PAIRS]), (stsb_run, PAIRS)):
        classifier = Classifier.from_pretrained(run)
        together = classifier(examples, batch_size=8)
        for example, batched in zip(examples, together):
            alone = classifier([example])[0]
            assert alone.label == batched.label
            assert alone.score == pytest.approx(batched.score, abs=1e-5)


def test_cli_prints_labels_and_scores(rotten_run, capsys):
    assert main(["classify", str(rotten_run), "a gripping film"]) == 0
    label, score, text = capsys.readouterr().out.strip().split("\t")
    assert label in ("rotten", "fresh") and 0.5 <= float(score) <= 1 and text == "a gripping film"
    assert main(["classify", "--json", str(rotten_run), "a dull mess"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["scores"]) == {"rotten", "fresh"} and sum(result["scores"].values()) == pytest.approx(1)


def test_cli_regression_pairs_from_a_file_and_stdin(stsb_run, tmp_path, capsys, monkeypatch):
    assert main(["classify", str(stsb_run), "--json", *PAIRS[0]]) == 0  # texts after an option are kept
    value = json.loads(capsys.readouterr().out)["value"]
    lines = "".join(f"{a}\t{b}\n" for a, b in PAIRS)
    (tmp_path / "pairs.tsv").write_text(lines)
    (tmp_path / "more.tsv").write_text("\n" + lines[:lines.index("\n") + 1])  # blank lines are skipped
    assert main(["classify", str(stsb_run), "--json", "--pairs", "--file", str(tmp_path / "pairs.tsv"),
                 "--file", str(tmp_path / "more.tsv")]) == 0
    from_file = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in from_file] == [list(p) for p in PAIRS + PAIRS[:1]]  # in input order
    assert from_file[0]["value"] == pytest.approx(value, abs=1e-5)
    assert from_file[3]["value"] == pytest.approx(value, abs=1e-5)
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["classify", str(stsb_run), "--json", "--pairs", "--file", "-"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == [list(p) for p in PAIRS]


def test_cli_bad_inputs_are_one_line(rotten_run, tiny_run, tmp_path, capsys):
    assert main(["classify", str(tiny_run), "text"]) == 1  # an MLM checkpoint has no classifier
    assert_one_line_error(capsys, "classify", "not a fine-tuned classifier")
    assert main(["classify", str(rotten_run)]) == 1
    assert_one_line_error(capsys, "classify", "no input")
    (tmp_path / "one.tsv").write_text("only one text\n")
    assert main(["classify", str(rotten_run), "--pairs", "--file", str(tmp_path / "one.tsv")]) == 1
    assert_one_line_error(capsys, "classify", "not two tab-separated texts")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["classify", str(rotten_run), "--file", str(tmp_path / "latin1.txt")]) == 1
    assert_one_line_error(capsys, "classify", "latin1.txt", "not UTF-8")
    assert main(["classify", str(rotten_run), "one", "two", "three"]) == 1
    assert_one_line_error(capsys, "classify", "TEXT TEXT2", "--file")


# --- export -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rotten", "stsb"])
def test_export_loads_in_transformers_with_the_same_logits(which, rotten_run, stsb_run, tmp_path, capsys):
    run = rotten_run if which == "rotten" else stsb_run
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "BertForSequenceClassification"
    classifier = Classifier.from_pretrained(run)
    examples = PAIRS if which == "stsb" else [(a,) for a, _ in PAIRS]
    encoded = encode(classifier.tokenizer, examples, 48)
    batch = collate(encoded, range(len(examples)), classifier.pad_id)
    with torch.no_grad():
        assert_close(classifier.model(**batch).logits, hf(**batch).logits, atol=ATOL, rtol=RTOL)
    if which == "rotten":
        assert hf.config.id2label == {0: "rotten", 1: "fresh"}
    else:
        assert hf.config.num_labels == 1 and hf.config.problem_type == "regression"
    # and bertmath reads its own export back: the same predictions, label names kept
    assert BertForSequenceClassification.from_pretrained(tmp_path / "hf").num_labels == hf.config.num_labels
    again = Classifier.from_pretrained(tmp_path / "hf")
    assert [p.label for p in again(examples)] == [p.label for p in classifier(examples)]
