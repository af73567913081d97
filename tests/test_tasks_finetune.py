"""bertmath.tasks.finetune and `bertmath finetune`: task files in three formats, the bad-input one-line errors,
scores next to the baseline, exact resume, truncation reported once. A tiny random-init BERT (tests/helpers.py)
fine-tuned for a few steps on the fixtures in tests/fixtures/ (samples of STS-B and Rotten Tomatoes)."""

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertmath import checkpoint as ckpt
from bertmath.cli import main
from bertmath.config import TaskConfig, config_from_dict, config_to_yaml, load_config, run_length
from bertmath.data import batch_indices
from bertmath.errors import ConfigError
from bertmath.io import read_safetensors
from bertmath.pretrained import load_checkpoint_tokenizer
from bertmath.tasks.encoding import encode
from bertmath.tasks.sequence import baseline_predictions, read_examples
from helpers import assert_finetune_resumes_exactly, assert_one_line_error, assert_png, make_bertmath_run
from helpers import eval_records, write_finetune_config

FIXTURES = Path(__file__).parent / "fixtures"
STSB = dict(train_file=str(FIXTURES / "stsb_train.jsonl"), eval_file=str(FIXTURES / "stsb_dev.jsonl"),
            text_columns=["sentence1", "sentence2"], label_column="score", num_labels=1, metric="pearson")
ROTTEN = dict(train_file=str(FIXTURES / "rotten_train.csv"), eval_file=str(FIXTURES / "rotten_dev.tsv"),
              text_columns=["text"], label_column="label", num_labels=2, metric="accuracy",
              label_names=["rotten", "fresh"])


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """Dropout on, so that an exact resume needs the dropout RNG restored too."""
    return make_bertmath_run(tmp_path_factory.mktemp("init"), hidden_dropout=0.1, attention_dropout=0.1)


write_config = write_finetune_config


# --- task files ---------------------------------------------------------------------------------------------


def test_reads_the_three_formats():
    stsb = read_examples(FIXTURES / "stsb_train.jsonl", TaskConfig(init="x", **STSB))
    assert len(stsb.texts) == 40 and len(stsb.texts[0]) == 2 and stsb.labels.dtype == torch.float32
    assert 0 <= float(stsb.labels.min()) and float(stsb.labels.max()) <= 5
    for name, n in (("rotten_train.csv", 40), ("rotten_dev.tsv", 20)):
        rotten = read_examples(FIXTURES / name, TaskConfig(init="x", **ROTTEN))
        assert len(rotten.texts) == n and rotten.labels.dtype == torch.long and set(rotten.labels.tolist()) == {0, 1}
    first = (FIXTURES / "rotten_dev.tsv").read_text().splitlines()[1].split("\t")
    assert rotten.texts[0] == (first[0],) and rotten.labels[0] == int(first[1])


@pytest.mark.parametrize("name,content", [
    ("bom.csv", 'text,label\ngood,1\n"bad, sadly",0\n'),
    ("bom.tsv", "text\tlabel\ngood\t1\nbad, sadly\t0\n"),
    ("bom.jsonl", '{"text": "good", "label": 1}\n{"text": "bad, sadly", "label": 0}\n'),
])
def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, name, content):
    """A BOM an editor put before the header (csv, tsv) or the first object (jsonl) is dropped: the first column
    is still 'text', the first line still JSON."""
    path = tmp_path / name
    path.write_text("\ufeff" + content, encoding="utf-8")
    examples = read_examples(path, TaskConfig(init="x", **{**ROTTEN, "train_file": str(path)}))
    assert examples.texts == [("good",), ("bad, sadly",)] and examples.labels.tolist() == [1, 0]


def test_label_names_may_stand_for_indices(tmp_path):
    path = tmp_path / "named.csv"
    path.write_text("text,label\ngood,fresh\nbad,rotten\n")
    assert read_examples(path, TaskConfig(init="x", **{**ROTTEN, "train_file": str(path)})).labels.tolist() == [1, 0]


def test_baselines_know_only_the_training_labels():
    assert baseline_predictions(torch.tensor([1, 0, 1]), 4, 2).tolist() == [1, 1, 1, 1]
    assert baseline_predictions(torch.tensor([1.0, 2.0, 6.0]), 2, 1).tolist() == [3.0, 3.0]


BAD_FILES = [
    ("missing.jsonl", '{"sentence1": "a", "score": 1}\n', STSB, ":1: no column 'sentence2'"),
    ("missing.csv", "text,score\nhello,1\n", ROTTEN, ":1: no column 'label'"),
    ("outside.csv", "text,label\nfine,1\nodd,2\n", ROTTEN, ":3: label '2' is not in 0..1"),
    ("outside.tsv", "text\tlabel\nfine\t-1\n", ROTTEN, ":2: label '-1' is not in 0..1"),
    ("word.jsonl", '{"sentence1": "a", "sentence2": "b", "score": "high"}\n', STSB,
     ":1: regression label 'high' is not a number"),
    ("empty.jsonl", "\n", STSB, "no examples (an empty split)"),
    ("header_only.csv", "text,label\n", ROTTEN, "no examples (an empty split)"),
    ("broken.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": \n', STSB, ":2: not JSON"),
    ("short_row.csv", "text,label\nonly one field\n", ROTTEN, ":2: 1 fields, but the header has 2"),
    ("notes.txt", "text\n", ROTTEN, "unknown task file type '.txt'"),
]


@pytest.mark.parametrize("name,content,task,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_task_file_is_one_line_exit_2(tmp_path, capsys, init_run, name, content, task, message):
    bad = tmp_path / name
    bad.write_text(content)
    config = write_config(tmp_path, init_run, {**task, "train_file": str(bad)})
    assert main(["finetune", str(config)]) == 2
    assert_one_line_error(capsys, "finetune", str(bad), message)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_init_that_is_not_a_bert_checkpoint_is_one_line(tmp_path, capsys):
    not_bert = tmp_path / "gpt"
    not_bert.mkdir()
    (not_bert / "config.json").write_text('{"model_type": "gpt2", "n_embd": 8}')
    config = write_config(tmp_path, not_bert, STSB)
    assert main(["finetune", str(config)]) == 1
    assert_one_line_error(capsys, "finetune", str(not_bert))
    config = write_config(tmp_path, tmp_path / "nowhere", STSB)
    assert main(["finetune", str(config)]) == 1
    assert_one_line_error(capsys, "finetune", "nowhere", "checkpoint not found")


@pytest.mark.parametrize("changes,key", [
    (dict(metric="accuracy"), "task.metric"),  # a classification score for regression
    (dict(text_columns=["a", "b", "c"]), "task.text_columns"),
    (dict(eval_file=None), "task.eval_file"),
    (dict(num_labels=0), "task.num_labels"),
    (dict(kind="tokens", num_labels=None, label_names=["O"]), "task.label_names"),  # a tag set of one
    (dict(kind="tokens", num_labels=3, label_names=["O", "B-PER"], metric=None), "task.num_labels"),
    (dict(kind="tokens", num_labels=None, label_names=["O", "B-X"], metric="pearson"), "task.metric"),
    (dict(kind="span", num_labels=None, metric="accuracy"), "task.metric"),
    (dict(kind="span", num_labels=None, metric=None, label_names=["a"]), "task.label_names"),
    (dict(kind="span", num_labels=None, metric=None, max_question_tokens=46), "task.max_question_tokens"),
    (dict(kind="span", num_labels=None, metric=None, max_question_tokens=16, doc_stride=29), "task.doc_stride"),
])
def test_bad_task_config_names_the_key(tmp_path, init_run, changes, key):
    with pytest.raises(ConfigError, match=key):
        load_config(write_config(tmp_path, init_run, {**STSB, **changes}))


@pytest.mark.parametrize("changes", [
    dict(num_labels=2, metric="accuracy", label_names=["fresh", "fresh"]),
    dict(kind="tokens", num_labels=None, metric=None, label_names=["O", "B-PER", "I-PER", "B-PER"]),
])
def test_a_label_name_twice_is_one_config_error(tmp_path, init_run, capsys, changes):
    """Training maps a name to its first index, the export's label2id to its last: a name given twice is refused
    when the config loads, before a model disagrees with its training."""
    config = write_config(tmp_path, init_run, {**STSB, **changes})
    with pytest.raises(ConfigError, match=r"task.label_names: '(fresh|B-PER)' appears twice"):
        load_config(config)
    assert main(["finetune", str(config)]) == 2
    assert_one_line_error(capsys, "finetune", "task.label_names", "appears twice")


@pytest.mark.parametrize("changes,num_labels,metric", [
    (dict(), 2, "accuracy"),
    (dict(label_names=["a", "b", "c"]), 3, "accuracy"),
    (dict(num_labels=1), 1, "pearson"),
    (dict(kind="tokens", label_names=["O", "B-PER", "I-PER"]), 3, "f1"),
    (dict(kind="span"), 2, "f1"),
])
def test_task_defaults_follow_the_kind(changes, num_labels, metric):
    """num_labels and metric left out are resolved once, by the kind, and recorded as resolved."""
    task = TaskConfig(init="x", train_file="a", eval_file="b", **changes)
    assert (task.num_labels, task.metric) == (num_labels, metric)
    assert TaskConfig(**{**vars(task)}) == task  # the recorded (resolved) config reads back the same


def test_span_windows_default_to_a_stride_that_fits():
    """run_qa.py's stride of 128 needs windows over 128 passage tokens; shorter windows overlap by half."""
    assert TaskConfig(init="x", train_file="a", eval_file="b", kind="span", max_seq_len=384).doc_stride == 128
    assert TaskConfig(init="x", train_file="a", eval_file="b", kind="span", max_seq_len=128).doc_stride == 30


# --- training -----------------------------------------------------------------------------------------------


def test_regression_run_logs_scores_next_to_the_mean_baseline(tmp_path, capsys, init_run):
    assert main(["finetune", str(write_config(tmp_path, init_run, STSB))]) == 0
    out = capsys.readouterr().out
    assert "done: 6 steps" in out and "pearson" in out and "baseline 0.000, the mean score" in out
    records = eval_records(tmp_path / "run")
    assert [r["step"] for r in records] == [3, 6]
    assert records[-1]["baseline_pearson"] == 0.0 and records[-1]["eval_examples"] == 20
    assert records[-1]["baseline_mse"] > 0 and "eval_loss" not in records[-1]  # regression's loss is its eval_mse
    saved = ckpt.read_config(tmp_path / "run")
    assert saved.task.num_labels == 1 and saved.model.hidden_size == 32  # the model's shape comes from task.init
    assert "classifier.weight" in load_file(tmp_path / "run" / "model.safetensors")


def test_classification_run_beats_nothing_but_reports_the_majority_baseline(tmp_path, capsys, init_run):
    assert main(["finetune", str(write_config(tmp_path, init_run, ROTTEN))]) == 0
    last = eval_records(tmp_path / "run")[-1]
    majority = max(sum(1 for line in (FIXTURES / "rotten_dev.tsv").read_text().splitlines()[1:]
                       if line.split("\t")[1] == label) for label in ("0", "1")) / 20
    train_majority = "1"  # the training fixture has more fresh than rotten snippets
    dev_labels = [line.split("\t")[1] for line in (FIXTURES / "rotten_dev.tsv").read_text().splitlines()[1:]]
    assert last["baseline_accuracy"] == pytest.approx(dev_labels.count(train_majority) / 20)
    assert majority >= last["baseline_accuracy"]
    assert last["baseline_matthews"] == 0.0
    assert {"eval_accuracy", "eval_f1", "eval_matthews", "eval_loss"} <= set(last)
    assert "accuracy" in capsys.readouterr().out
    if importlib.util.find_spec("matplotlib") is not None:  # the pretraining curves, drawn from metrics.jsonl
        assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "curves.png")]) == 0
        assert_png(tmp_path / "curves.png")


def test_epochs_set_max_steps(tmp_path, init_run, caplog):
    """task.epochs and train.max_steps both in the file: task.epochs decides, and the log says so."""
    with caplog.at_level(logging.INFO, logger="bertmath.tasks.finetune"):
        main(["finetune", str(write_config(tmp_path, init_run, {**ROTTEN, "epochs": 0.5}, max_steps=1000))])
    assert ckpt.read_config(tmp_path / "run").train.max_steps == 3  # ceil(0.5 · 40 / 8)
    assert ("run length: 3 steps from task.epochs 0.5 (40 training rows, 8 a step); from the file, task.epochs "
            "wins over train.max_steps") in caplog.text


@pytest.mark.parametrize("in_file,overrides,decides", [
    (dict(), [], ("train.max_steps", "task.epochs is not set")),
    (dict(epochs=2), [], ("task.epochs", "from the file, task.epochs wins over train.max_steps")),
    (dict(epochs=2), ["train.max_steps=2"], ("train.max_steps", "given with --set, which wins over task.epochs "
                                                                "from the file")),
    (dict(), ["task.epochs=2"], ("task.epochs", "given with --set, which wins over train.max_steps from the file")),
    (dict(epochs=2), ["task.epochs=3"], ("task.epochs", "given with --set, which wins over train.max_steps from "
                                                        "the file")),
])
def test_the_command_line_decides_the_run_length_over_the_file(tmp_path, init_run, in_file, overrides, decides):
    """One rule for task.epochs and train.max_steps (the file always holds train.max_steps: 6): the command line
    wins over the file; from the file alone, task.epochs wins."""
    config = load_config(write_config(tmp_path, init_run, {**ROTTEN, **in_file}), overrides)
    assert run_length(config) == decides
    assert "set_keys" not in config_to_yaml(config)  # where a value came from is not a setting to record


def test_both_lengths_on_the_command_line_are_one_config_error(tmp_path, init_run):
    with pytest.raises(ConfigError, match="--set task.epochs and --set train.max_steps both decide the run's length"):
        load_config(write_config(tmp_path, init_run, ROTTEN), ["task.epochs=1", "train.max_steps=2"])
    with pytest.raises(ConfigError, match="unknown key 'set_keys'"):
        config_from_dict({"set_keys": ["train.lr"]})


@pytest.mark.parametrize("in_file,overrides,steps,line", [
    (dict(epochs=0.5), ["train.max_steps=2"], 2, "run length: 2 steps from train.max_steps; given with --set, "
                                                 "which wins over task.epochs from the file"),
    (dict(), ["task.epochs=0.5"], 3, "run length: 3 steps from task.epochs 0.5 (40 training rows, 8 a step); given "
                                     "with --set, which wins over train.max_steps from the file"),
])
def test_a_run_as_long_as_the_command_line_says(tmp_path, init_run, caplog, in_file, overrides, steps, line):
    """`bertmath finetune CONFIG --set train.max_steps=2` beside task.epochs in the file trains 2 steps (it
    trained the epochs' steps without a word), and `--set task.epochs` beside the file's train.max_steps (6) its
    epochs' steps; the run logs which setting decided and why, and records the one that decided."""
    config = write_config(tmp_path, init_run, {**ROTTEN, **in_file})
    with caplog.at_level(logging.INFO, logger="bertmath.tasks.finetune"):
        assert main(["finetune", str(config), *(a for o in overrides for a in ("--set", o))]) == 0
    saved = ckpt.read_config(tmp_path / "run")
    assert saved.train.max_steps == steps and eval_records(tmp_path / "run")[-1]["step"] == steps
    assert saved.task.epochs == (0.5 if "task.epochs" in line.split(";")[0] else None)
    assert line in caplog.text


def test_killed_run_resumes_exactly(tmp_path, init_run):
    """A run stopped after its step-3 checkpoint and resumed ends with the same weights and metrics as one
    that never stopped (batches are a pure function of (seed, step); dropout's RNG is in the checkpoint)."""
    assert_finetune_resumes_exactly(write_config(tmp_path, init_run, STSB), tmp_path / "run")


def test_fine_tuning_trains_the_encoder_too(tmp_path, init_run):
    assert main(["finetune", str(write_config(tmp_path, init_run, ROTTEN))]) == 0
    before = read_safetensors(init_run / "model.safetensors")
    after = load_file(tmp_path / "run" / "model.safetensors")
    assert not torch.equal(before["bert.encoder.layers.0.attention.query.weight"],
                           after["bert.encoder.layers.0.attention.query.weight"])


def test_truncation_is_reported_once_per_split(tmp_path, init_run, caplog):
    config = write_config(tmp_path, init_run, {**STSB, "max_seq_len": 8}, max_steps=2)
    with caplog.at_level(logging.WARNING, logger="bertmath"):
        assert main(["finetune", str(config)]) == 0
    truncated = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(truncated) == 2 and "40 of 40 examples" in truncated[0] and "task.max_seq_len (8 tokens)" in truncated[0]


def test_init_from_a_transformers_directory(tmp_path, init_run):
    """task.init may be a transformers BERT directory (as MiniLM's): here the tiny run exported to that layout."""
    assert main(["export", str(init_run), str(tmp_path / "hf")]) == 0
    assert main(["finetune", str(write_config(tmp_path, tmp_path / "hf", ROTTEN, max_steps=2))]) == 0
    saved = ckpt.read_config(tmp_path / "run")
    assert saved.model.hidden_size == 32 and saved.model.fused  # task.fused: the fused kernels by default
    assert len(eval_records(tmp_path / "run")) == 1


def test_tokens_are_the_real_tokens_of_each_step(tmp_path, init_run):
    """metrics.jsonl's `tokens`: the running sum of each step's examples' tokens ([CLS] and [SEP] included,
    padding not), the examples being those batch_indices(seed, step) draws."""
    assert main(["finetune", str(write_config(tmp_path, init_run, ROTTEN, max_steps=3))]) == 0
    examples = read_examples(FIXTURES / "rotten_train.csv", TaskConfig(init="x", **ROTTEN))
    lengths = [len(ids) for ids in encode(load_checkpoint_tokenizer(init_run), examples.texts, 48).ids]
    seed = ckpt.read_config(tmp_path / "run").train.seed
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = 0
    for step, record in enumerate(r for r in records if "loss" in r):
        expected += sum(lengths[int(i)] for i in batch_indices(len(lengths), 8, step, seed))
        assert record["tokens"] == expected
    assert expected < 3 * 8 * max(lengths)  # padding is not counted


def test_init_pretrained_with_sparse_mlm(tmp_path):
    """An init whose config says sparse_mlm (an MLM head's option): the classifier trains on all its examples."""
    init = make_bertmath_run(tmp_path / "init", sparse_mlm=True)
    assert main(["finetune", str(write_config(tmp_path, init, ROTTEN, max_steps=2))]) == 0
    assert not ckpt.read_config(tmp_path / "run").model.sparse_mlm
