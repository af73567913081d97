"""The `bertmath` command line: output, exit status, one-line errors. Three tests run it as a user does (a
subprocess, the console script), and the four of a pipe closed early (it needs a real pipe); the rest call the
same `main` in-process, which is what a subprocess runs after ~2 s of imports (the suite has to fit in minutes
on a slow 2-core CPU)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertmath import load_config, parameter_counts
from bertmath.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args, command=None):
    """Run `python -m bertmath ARGS` (or `command ARGS`) from the repository root."""
    argv = (command or [sys.executable, "-m", "bertmath"]) + [str(a) for a in args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """`main(ARGS)` in this process, its exit status and output shaped like a subprocess's."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""


@pytest.mark.smoke
def test_params_base():
    result = run("params", "configs/base.yaml")
    assert result.returncode == 0, result.stderr
    assert "109,514,298" in result.stdout  # BertForMaskedLM, tied decoder counted once
    assert "109,482,240" in result.stdout  # encoder with pooler (transformers' BertModel)


def test_params_json_matches_parameter_counts(capsys):
    result = run_main(capsys, "params", ROOT / "configs/base.yaml", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"] == parameter_counts(load_config(ROOT / "configs/base.yaml").model)
    assert data["totals"]["bert_for_masked_lm"] == 109_514_298
    assert sum(data["parts"].values()) == data["totals"]["bert_for_masked_lm"]


def test_params_large(capsys):
    result = run_main(capsys, "params", ROOT / "configs/large.yaml")
    assert result.returncode == 0, result.stderr
    assert "335,174,458" in result.stdout
    assert "335,141,888" in result.stdout


def test_unknown_key_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden_size: 64\n  num_heads: 4\n  hiden_dropout: 0.1\n")
    assert_one_line_error(run("params", path), "model.hiden_dropout", str(path))  # as a user meets it
    assert_one_line_error(run_main(capsys, "params", path), "model.hiden_dropout", str(path))


def test_missing_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "missing.yaml"
    assert_one_line_error(run_main(capsys, "params", path), str(path))


def test_set_invalid_heads_exits_2(capsys):
    assert_one_line_error(run_main(capsys, "params", ROOT / "configs/base.yaml", "--set", "model.num_heads=5"),
                          "num_heads")


def test_help_lists_params():
    script = shutil.which("bertmath")
    result = run("--help", command=[script] if script else None)
    assert result.returncode == 0
    assert "params" in result.stdout


# In-process: the same `main` the console script calls; cheaper than a subprocess for the remaining cases.


def test_main_set_overrides_the_counts(capsys):
    assert main(["params", str(ROOT / "configs/base.yaml"), "--json", "--set", "model.num_layers=1",
                 "--set", "model.tie_word_embeddings=false"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    cfg = load_config(ROOT / "configs/base.yaml", ["model.num_layers=1", "model.tie_word_embeddings=false"]).model
    assert totals == parameter_counts(cfg)
    assert totals["bert_for_masked_lm"] == totals["bert_for_masked_lm_decoder_counted_separately"]


def test_main_yaml_syntax_error_returns_2(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  hidden_size: [64\n")
    assert main(["params", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(path) in err and "line" in err


def test_main_without_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_prepare_prints_what_it_wrote_and_a_second_run_reads_the_cache(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: the king and the queen speak of war and peace" for i in range(300)))
    args = ["prepare", "configs/small.yaml", "--set", f"train.out_dir={tmp_path / 'run'}", "--set", "data.source=text",
            "--set", f"data.paths={corpus}", "--set", "model.vocab_size=64"]
    first = run_main(capsys, *args)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["tokens:", "train:", "eval:", "prepared"]
    assert str(tmp_path / "run" / "cache" / "pieces") in lines[0]
    assert "blocks of 128 tokens" in lines[1] and (tmp_path / "run" / "tokenizer.json").is_file()
    files = sorted(p.name for p in (tmp_path / "run" / "cache").rglob("*.arrow"))
    again = run_main(capsys, *args)
    assert again.returncode == 0 and again.stdout.splitlines()[:3] == lines[:3]
    assert sorted(p.name for p in (tmp_path / "run" / "cache").rglob("*.arrow")) == files


def test_prepare_bad_input_is_one_line(tmp_path, capsys):
    result = run_main(capsys, "prepare", "configs/small.yaml", "--set", f"train.out_dir={tmp_path}",
                      "--set", "data.source=text", "--set", f"data.paths={tmp_path / 'missing.txt'}")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"bertmath prepare: error: {tmp_path / 'missing.txt'}: file not found"]
    result = run_main(capsys, "prepare", "configs/small.yaml", "--set", "data.num_proc=4")
    assert result.returncode == 2 and "data.num_proc: removed" in result.stderr


# --- a reader that stops early: `bertmath ... | head -1` ------------------------------------------------------


def task_run(out: Path, mlm: Path, model_class, task: dict) -> Path:
    """A run directory of an untrained `model_class` head on the tiny encoder of `mlm` (read_with_tokenizer):
    what classify, tag and answer load, without the seconds fine-tuning takes."""
    import dataclasses
    import torch
    from bertmath.checkpoint import model_files, save_checkpoint
    from bertmath.config import Config, TaskConfig
    from bertmath.pretrained import read_with_tokenizer

    _, model_config, _, tokenizer = read_with_tokenizer(mlm)
    task = TaskConfig(init=str(mlm), train_file="train", eval_file="dev", **task)
    torch.manual_seed(0)
    model = model_class(model_config) if task.kind == "span" else model_class(model_config, task.num_labels)
    config = dataclasses.replace(Config(), model=model_config, task=task)
    save_checkpoint(out, step=0, files=model_files(model.eval(), config, tokenizer), keep=1)
    return out


@pytest.fixture(scope="module")
def pipe_inputs(tmp_path_factory):
    """Runs for the four commands that print a line (or a few) per input, and enough inputs for 150-300 kB of
    output each, measured: far more than a pipe (64 kB) and stdout's buffer (8 kB) hold, so the command is
    still writing when the reader goes."""
    from bertmath.model import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
    from helpers import make_bertmath_run, sentences

    root = tmp_path_factory.mktemp("pipe")
    mlm = make_bertmath_run(root / "mlm")

    def lines(name: str, n: int, line) -> Path:  # n inputs from the 439 distinct sentences, repeated
        (root / name).write_text("".join(line(t) + "\n" for t in (sentences(500) * 10)[:n]))
        return root / name

    masked = lines("masked.txt", 1200, lambda t: " ".join(t.split()[:-2]) + " [MASK] .")  # ~210 bytes out each
    questions = lines("questions.jsonl", 1600, lambda t: json.dumps({"question": f"who {t}?", "context": t}))  # ~150
    return {
        "fill-mask": ["fill-mask", mlm, "--file", masked],
        "classify": ["classify", task_run(root / "classify", mlm, BertForSequenceClassification,
                                          dict(num_labels=2, label_names=["no", "yes"])),
                     "--file", lines("classify.txt", 3000, str)],  # ~45 bytes out each
        "tag --json": ["tag", task_run(root / "tag", mlm, BertForTokenClassification,
                                       dict(kind="tokens", label_names=["O", "B-PER", "I-PER"])),
                       "--file", lines("tag.txt", 200, str), "--json"],  # ~1,300 bytes out each
        "answer --json": ["answer", task_run(root / "answer", mlm, BertForQuestionAnswering, dict(kind="span")),
                          "--file", questions, "--json"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fill-mask", "classify", "tag --json", "answer --json"])
def test_a_reader_that_stops_after_one_line_ends_the_command_quietly(command, pipe_inputs, tmp_path):
    """`bertmath COMMAND ... | head -1`: the reader closes the pipe after one line while the command still has
    hundreds of kB to write. The command stops with no traceback and nothing on stderr but its log lines, with
    status 141 (what a shell reports for coreutils killed by SIGPIPE), not 1 and a BrokenPipeError."""
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "bertmath", *map(str, pipe_inputs[command])], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=stderr)
        first = process.stdout.readline()
        process.stdout.close()
        code = process.wait(timeout=120)
    err = stderr_path.read_text()
    assert first.strip(), err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert code == 141, (code, err)


def test_pretrain_on_one_document_evaluates_and_always_ends_with_its_summary_line(tmp_path, capsys):
    """A corpus of one document (one sentence a line, no blank line) longer than the cut bound is split at its
    parts, so it is evaluated; without a held-out set the run still ends with its summary line."""
    import yaml

    from bertmath.corpus import PART_CHARS
    from test_trainer import tiny_config_tree

    tree = tiny_config_tree(tmp_path, max_steps=2, eval_every=2, save_every=2, eval_batches=1)
    corpus = Path(tree["data"]["paths"][0])
    lines = corpus.read_text().replace("\n\n", "\n")
    corpus.write_text(lines * (2 * PART_CHARS // len(lines) + 1))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    evaluated = run_main(capsys, "pretrain", str(config))
    assert evaluated.returncode == 0, evaluated.stderr
    last = evaluated.stdout.splitlines()[-1]
    assert last.startswith("done: 2 steps") and "held-out [MASK] accuracy" in last
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_mask_accuracy"] is not None and summary["final_eval_loss"] is not None
    plain = run_main(capsys, "pretrain", str(config), "--set", "data.eval_fraction=0", "--set",
                     f"train.out_dir={tmp_path / 'plain'}")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines()[-1].startswith("done: 2 steps, ") and \
        plain.stdout.splitlines()[-1].endswith(f"no held-out measurement (data.eval_fraction: 0); checkpoint: "
                                               f"{tmp_path / 'plain'}")
