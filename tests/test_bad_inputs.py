"""`bertmath` on bad inputs: one table of cases over every command, run in-process through `cli.main`.

Each case must: exit non-zero; leave exactly one line on stderr, `bertmath COMMAND: error: ...`, once progress
output is removed (see `error_lines`), naming what is wrong (the case's words); show no traceback; and change
no file that was there before (every file of the case's sandbox is hashed before and after).

Damaged checkpoints are damaged in the *latest step directory*, where loading and resuming read. The sources
(a tiny bertmath run from tests/helpers.py, a 4-step pretraining run, a corpus and a config) are built once
per module; each case gets a copy of what it names, so no case can spoil another.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from bertmath import checkpoint as ckpt
from bertmath.cli import main
from bertmath.config import config_from_dict
from bertmath.io import atomic_save_safetensors, read_safetensors
from bertmath.trainer import train

from helpers import make_bertmath_run
from test_trainer import tiny_config_tree

pytest.importorskip("matplotlib")  # plot, figures, attention and embed draw PNGs


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {run} {trained}: the sandbox's copies; {tmp}: the sandbox; {config}: the shared YAML
    words: tuple[str, ...]  # the error line holds each ({pid}: this process's id)
    prepare: Callable[[Path], object] | None = None  # damages the sandbox; may return something to close after
    stdin: str = ""
    exit_code: int = 1
    may_create: str | None = None  # a directory under the sandbox the command may create files in


def latest(directory: Path) -> Path:
    return ckpt.latest_checkpoint(directory)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def write(path: Path, data: bytes | str) -> None:
    """Replace a file by a new one (a step file may be a hard link shared with out_dir: do not write through)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def integer_weights(step_dir: Path) -> None:
    state = read_safetensors(step_dir / ckpt.MODEL_FILE)
    (step_dir / ckpt.MODEL_FILE).unlink()
    atomic_save_safetensors({name: tensor.to(torch.int64) for name, tensor in state.items()},
                                 step_dir / ckpt.MODEL_FILE)


def foreign_directory(tmp: Path) -> None:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("not an export")


def transformers_like_directory(tmp: Path) -> None:
    (tmp / "bert").mkdir()
    (tmp / "bert" / "config.json").write_text('{"model_type": "bert", "transformers_version": "5.0.0"}')


def copy_of_the_corpus(tmp: Path) -> None:
    """The trained run's corpus, copied to tmp/copy.txt: the same text, another file."""
    corpus = yaml.safe_load((tmp / "trained" / ckpt.CONFIG_FILE).read_text())["data"]["paths"][0]
    shutil.copyfile(corpus, tmp / "copy.txt")


def not_an_encoder(tmp: Path) -> None:
    """A directory with a tokenizer and a transformers config.json of a model bertmath does not implement."""
    (tmp / "gpt").mkdir()
    (tmp / "gpt" / "config.json").write_text('{"model_type": "gpt2", "n_embd": 8, "n_layer": 2}')
    (tmp / "gpt" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    write(tmp / "docs.txt", "a document\n")


def metrics(text: bytes | str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "m").mkdir() or write(tmp / "m" / "metrics.jsonl", text)


def finetune_config(tmp: Path, **task) -> None:
    """tmp/ft.yaml: a fine-tuning config whose task: section holds `task` (its files need not exist: the cases
    stop at the config)."""
    tree = {"task": {"init": str(tmp / "init"), "train_file": "train.csv", "eval_file": "dev.csv", **task},
            "train": {"out_dir": str(tmp / "ft")}}
    write(tmp / "ft.yaml", yaml.safe_dump(tree))


def embedding_task(train: str) -> Callable[[Path], None]:
    """An embedding fine-tuning config (tmp/embed.yaml, init set by --set) whose train file holds `train`."""
    def prepare(tmp: Path) -> None:
        write(tmp / "pairs.jsonl", train)
        write(tmp / "dev.jsonl", '{"sentence1": "a cat", "sentence2": "a dog", "score": 2.5}\n')
        write(tmp / "embed.yaml", yaml.safe_dump({"task": {
            "kind": "embedding", "init": "unset", "train_file": str(tmp / "pairs.jsonl"),
            "eval_file": str(tmp / "dev.jsonl"), "loss": "cosent" if "score" in train else "mnrl"},
            "train": {"out_dir": str(tmp / "out"), "max_steps": 2}}))
    return prepare


EMBED = ("finetune", "{tmp}/embed.yaml", "--set", "task.init={run}")
RESUME = ("pretrain", "{config}", "--set", "train.out_dir={trained}", "--set", "train.max_steps=6")
FRESH = ("pretrain", "{config}", "--set", "train.out_dir={tmp}/fresh")
EMBED_OK = ("--word", "cat", "--analogy", "cat", "dog", "man", "--context-word", "cat", "--sentence", "the cat sat",
            "--sentence", "a cat ran")
TOO_LONG = "the cat sat on the mat " * 40  # > 64 positions of the tiny models

CASES = [
    # params: the config file and --set
    Case("params: missing config file", ("params", "{tmp}/nope.yaml"), ("nope.yaml", "not found"), exit_code=2),
    Case("params: config is a directory", ("params", "{tmp}"), ("cannot read config file",), exit_code=2),
    Case("params: binary config", ("params", "{tmp}/bin.yaml"), ("bin.yaml", "UnicodeDecodeError"),
         lambda tmp: write(tmp / "bin.yaml", b"\xff\xfe\x00model"), exit_code=2),
    Case("params: a list, not sections", ("params", "{tmp}/list.yaml"), ("expected sections", "got list"),
         lambda tmp: write(tmp / "list.yaml", "- 1\n- 2\n"), exit_code=2),
    Case("params: wrong type", ("params", "{config}", "--set", "model.hidden_size=abc"),
         ("model.hidden_size", "expected int"), exit_code=2),
    Case("params: oversize number", ("params", "{config}", "--set", "model.hidden_size=1e400"),
         ("model.hidden_size", "got inf"), exit_code=2),
    Case("params: --set without =", ("params", "{config}", "--set", "model.hidden_size"), ("KEY=VALUE",),
         exit_code=2),
    # pretrain: config, corpus, out_dir, and resuming from a damaged latest step
    Case("pretrain: out_dir is a file", ("pretrain", "{config}", "--set", "train.out_dir={tmp}/taken.txt"),
         ("train.out_dir", "taken.txt: is a file"), lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("pretrain: wrong type", ("pretrain", "{config}", "--set", "train.max_steps=abc"),
         ("train.max_steps", "expected int"), exit_code=2),
    Case("pretrain: empty corpus", FRESH + ("--set", "data.paths={tmp}/empty.txt"), ("empty.txt", "no text"),
         lambda tmp: write(tmp / "empty.txt", " \n\n "), may_create="fresh"),
    Case("pretrain: missing corpus", FRESH + ("--set", "data.paths={tmp}/nope.txt"), ("nope.txt",),
         may_create="fresh"),
    Case("pretrain: corpus is a FIFO", FRESH + ("--set", "data.paths={tmp}/fifo"),
         ("fifo", "not a regular file but a FIFO"), lambda tmp: os.mkfifo(tmp / "fifo"), may_create="fresh"),
    Case("pretrain: corpus links to a device", FRESH + ("--set", "data.paths={tmp}/null.txt"),
         ("null.txt", "not a regular file but a link to a character device"),
         lambda tmp: os.symlink("/dev/null", tmp / "null.txt"), may_create="fresh"),
    Case("pretrain: empty corpus path", FRESH + ("--set", 'data.paths=[""]'), ("data.paths", "empty path"),
         exit_code=2),
    Case("pretrain: cache_dir is a file", FRESH + ("--set", "data.cache_dir={tmp}/taken.txt"),
         ("data.cache_dir", "taken.txt: is a file"), lambda tmp: write(tmp / "taken.txt", "mine"), may_create="fresh"),
    Case("prepare: cache_dir under a file", ("prepare", "{config}", "--set", "train.out_dir={tmp}/fresh", "--set",
                                             "data.cache_dir={tmp}/taken.txt/cache"),
         ("data.cache_dir", "cannot be created", "taken.txt is a file"), lambda tmp: write(tmp / "taken.txt", "mine"),
         may_create="fresh"),
    Case("pretrain: tokenizer sample too small", FRESH + ("--set", "data.tokenizer_sample_bytes=10", "--set",
                                                          "model.vocab_size=120"),
         ("data.tokenizer_sample_bytes 10", "raise data.tokenizer_sample_bytes"), may_create="fresh"),
    Case("pretrain: eval_fraction too small", FRESH + ("--set", "data.paths={tmp}/distinct.txt", "--set",
                                                       "data.eval_fraction=0.0001"),
         ("eval split", "raise data.eval_fraction (now 0.0001"), lambda tmp: write(tmp / "distinct.txt", "\n\n".join(
             f"paragraph {i}" for i in range(3000))),
         may_create="fresh"),
    Case("pretrain: one short document", FRESH + ("--set", "data.paths={tmp}/one.txt"),
         ("held-out split", "nothing can be held out", "set data.eval_fraction: 0"),
         lambda tmp: write(tmp / "one.txt", "\n".join(f"line {i} of a text with no blank line" for i in range(200))),
         may_create="fresh"),
    Case("pretrain: oversize max_seq_len", FRESH + ("--set", "data.max_seq_len=100000"), ("data.max_seq_len",),
         may_create="fresh"),
    Case("pretrain: --resume without a checkpoint", FRESH + ("--resume",), ("no checkpoint",), may_create="fresh"),
    Case("pretrain: out_dir in use", RESUME, ("is in use by pid {pid}",),
         lambda tmp: ckpt.lock_run_dir(tmp / "trained")),
    Case("pretrain: resume with another max_seq_len", RESUME + ("--set", "data.max_seq_len=16"),
         ("cannot resume", "the data changed", "data.max_seq_len: 32 then, 16 now", "train.allow_data_change: true")),
    Case("pretrain: resume on another corpus", RESUME + ("--set", "data.paths={tmp}/copy.txt"),
         ("cannot resume", "the corpus (its files", "train.allow_data_change: true"), copy_of_the_corpus),
    Case("pretrain: latest model.safetensors truncated", RESUME,
         ("step-0000004/model.safetensors", "newest intact checkpoint is step-0000002"),
         lambda tmp: truncate(latest(tmp / "trained") / ckpt.MODEL_FILE)),
    Case("pretrain: latest optimizer.safetensors truncated", RESUME,
         ("step-0000004/optimizer.safetensors", "step-0000002"),
         lambda tmp: truncate(latest(tmp / "trained") / ckpt.OPTIMIZER_FILE)),
    Case("pretrain: latest trainer_state.json garbage", RESUME, ("step-0000004/trainer_state.json", "step-0000002"),
         lambda tmp: write(latest(tmp / "trained") / ckpt.STATE_FILE, b"\x00{not json")),
    Case("pretrain: latest trainer_state.json wrong type", RESUME,
         ("step-0000004/trainer_state.json", "not the trainer state"),
         lambda tmp: write(latest(tmp / "trained") / ckpt.STATE_FILE, '{"train_state": {"step": "four"}, '
                                                                      '"param_groups": []}')),
    Case("pretrain: latest config.yaml garbage", RESUME, ("step-0000004/config.yaml", "step-0000002"),
         lambda tmp: write(latest(tmp / "trained") / ckpt.CONFIG_FILE, b"model: [\xff")),
    Case("pretrain: latest tokenizer.json missing", RESUME, ("step-0000004/tokenizer.json", "step-0000002"),
         lambda tmp: (latest(tmp / "trained") / ckpt.TOKENIZER_FILE).unlink()),
    # finetune: the task: section
    Case("finetune: a label name twice", ("finetune", "{tmp}/ft.yaml"), ("task.label_names", "'fresh' appears twice"),
         lambda tmp: finetune_config(tmp, label_names=["rotten", "fresh", "fresh"]), exit_code=2),
    Case("finetune: --set both run lengths", ("finetune", "{tmp}/ft.yaml", "--set", "task.epochs=1", "--set",
                                              "train.max_steps=2"), ("both decide the run's length", "give one"),
         finetune_config, exit_code=2),
    # fill-mask: checkpoint, texts, options
    Case("fill-mask: missing checkpoint", ("fill-mask", "{tmp}/nope", "the [MASK]"), ("nope", "not found")),
    Case("fill-mask: checkpoint is a file", ("fill-mask", "{tmp}/taken.txt", "the [MASK]"), ("got a file",),
         lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("fill-mask: empty text", ("fill-mask", "{run}", ""), ("no [MASK]",)),
    Case("fill-mask: empty stdin", ("fill-mask", "{run}", "-"), ("no input text",), stdin=""),
    Case("fill-mask: no text at all", ("fill-mask", "{run}"), ("no input text", "--file")),
    Case("fill-mask: missing --file", ("fill-mask", "{run}", "--file", "{tmp}/nope.txt"), ("nope.txt", "cannot read")),
    Case("fill-mask: oversize text", ("fill-mask", "{run}", TOO_LONG + "[MASK]"), ("tokens long",)),
    Case("fill-mask: --top-k not a number", ("fill-mask", "{run}", "the [MASK]", "--top-k", "abc"),
         ("--top-k", "invalid int value"), exit_code=2),
    Case("fill-mask: latest model.safetensors truncated", ("fill-mask", "{run}", "the [MASK]"),
         ("step-0000000/model.safetensors", "corrupted"), lambda tmp: truncate(latest(tmp / "run") / ckpt.MODEL_FILE)),
    Case("fill-mask: latest config.yaml wrong type", ("fill-mask", "{run}", "the [MASK]"),
         ("step-0000000/config.yaml", "model.hidden_size"),
         lambda tmp: write(latest(tmp / "run") / ckpt.CONFIG_FILE, "model:\n  hidden_size: wide\n")),
    Case("fill-mask: latest tokenizer.json missing", ("fill-mask", "{run}", "the [MASK]"),
         ("step-0000000", "no tokenizer.json"), lambda tmp: (latest(tmp / "run") / ckpt.TOKENIZER_FILE).unlink()),
    Case("fill-mask: latest weights of integer type", ("fill-mask", "{run}", "the [MASK]"),
         ("dtype torch.int64",), lambda tmp: integer_weights(latest(tmp / "run"))),
    # tag: input and a checkpoint without a token head
    Case("tag: missing checkpoint", ("tag", "{tmp}/nope", "Hamlet"), ("nope", "not found")),
    Case("tag: empty stdin", ("tag", "{run}", "-"), ("no input text",), stdin=""),
    Case("tag: no text at all", ("tag", "{run}"), ("no input text", "--file")),
    Case("tag: missing --file", ("tag", "{run}", "--file", "{tmp}/nope.txt"), ("nope.txt", "cannot read")),
    Case("tag: no token head", ("tag", "{run}", "Hamlet"), ("not a fine-tuned token classifier", "task.kind: tokens")),
    # encode: input, the checkpoint, --out
    Case("encode: no text at all", ("encode", "{run}"), ("no input text", "--file")),
    Case("encode: empty stdin", ("encode", "{run}", "-"), ("no input text",), stdin=""),
    Case("encode: missing checkpoint", ("encode", "{tmp}/nope", "a text"), ("nope", "not found")),
    Case("encode: checkpoint without an encoder", ("encode", "{tmp}/gpt", "a text"),
         ("gpt/config.json", "model_type 'gpt2' is not an encoder"), not_an_encoder),
    Case("encode: --out is a directory", ("encode", "{run}", "a text", "--out", "{tmp}/mine"),
         ("mine", "is a directory"), foreign_directory),
    # search: the documents file, the checkpoint
    Case("search: binary --docs", ("search", "{run}", "--docs", "{tmp}/docs.bin", "--query", "q"),
         ("docs.bin", "not UTF-8", "offset 0"), lambda tmp: write(tmp / "docs.bin", b"\x89PNG\r\n\x1a\n\xff")),
    Case("search: empty --docs", ("search", "{run}", "--docs", "{tmp}/docs.txt", "--query", "q"),
         ("docs.txt", "no documents"), lambda tmp: write(tmp / "docs.txt", "")),
    Case("search: missing --docs", ("search", "{run}", "--docs", "{tmp}/nope.txt", "--query", "q"),
         ("nope.txt", "not found")),
    Case("search: --docs is a directory", ("search", "{run}", "--docs", "{tmp}/mine", "--query", "q"),
         ("mine", "cannot read"), foreign_directory),
    Case("search: checkpoint without an encoder", ("search", "{tmp}/gpt", "--docs", "{tmp}/docs.txt", "--query", "q"),
         ("model_type 'gpt2' is not an encoder",), not_an_encoder),
    Case("search: empty stdin for --query", ("search", "{run}", "--docs", "{tmp}/docs.txt", "--query", "-"),
         ("no query",), lambda tmp: write(tmp / "docs.txt", "a document\n"), stdin=""),
    # finetune: pair files of an embedding task
    Case("finetune: empty pair file", EMBED, ("pairs.jsonl", "no pairs (an empty file)"), embedding_task("\n"),
         exit_code=2),
    Case("finetune: a pair without a positive", EMBED, ("pairs.jsonl:2", "no column 'positive'"),
         embedding_task('{"anchor": "a cat", "positive": "a kitten"}\n{"anchor": "a dog"}\n'), exit_code=2),
    Case("finetune: a score outside task.score_range", EMBED, ("pairs.jsonl:1", "score 7 is outside task.score_range"),
         embedding_task('{"sentence1": "a cat", "sentence2": "a dog", "score": 7}\n'), exit_code=2),
    # export: what OUT may be, and damaged sources
    Case("export: OUT is a file", ("export", "{run}", "{tmp}/taken.txt"), ("taken.txt", "is a file"),
         lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("export: OUT under a file", ("export", "{run}", "{tmp}/taken.txt/out"), ("taken.txt is a file",),
         lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("export: OUT another program's directory", ("export", "{run}", "{tmp}/mine"),
         ("mine", "not a previous bertmath export"), foreign_directory),
    Case("export: OUT saved by transformers", ("export", "{run}", "{tmp}/bert"),
         ("bert", "not a previous bertmath export"), transformers_like_directory),
    Case("export: latest model.safetensors empty", ("export", "{run}", "{tmp}/out"),
         ("step-0000000/model.safetensors",), lambda tmp: write(latest(tmp / "run") / ckpt.MODEL_FILE, b"")),
    Case("export: latest tokenizer.json garbage", ("export", "{run}", "{tmp}/out"),
         ("step-0000000/tokenizer.json", "not a readable tokenizer"),
         lambda tmp: write(latest(tmp / "run") / ckpt.TOKENIZER_FILE, "{}")),
    # plot: metrics.jsonl
    Case("plot: no metrics.jsonl", ("plot", "{run}"), ("metrics.jsonl", "no metrics file")),
    Case("plot: run directory is a file", ("plot", "{tmp}/taken.txt"), ("no metrics file",),
         lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("plot: empty metrics.jsonl", ("plot", "{tmp}/m"), ("no metrics yet",), metrics("")),
    Case("plot: loss of the wrong type", ("plot", "{tmp}/m"), ("metrics.jsonl:2", "'loss' is 'low'"),
         metrics('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": "low"}\n')),
    Case("plot: evaluation without accuracy", ("plot", "{tmp}/m"), ("'eval_accuracy' is missing",),
         metrics('{"step": 1, "eval_loss": 2.5}\n')),
    Case("plot: fine-tuning evaluation without its score", ("plot", "{tmp}/m"), ("'eval_f1' is missing",),
         metrics('{"step": 1, "metric": "f1", "eval_loss": 2.5, "eval_accuracy": 0.5}\n')),
    Case("plot: binary metrics.jsonl", ("plot", "{tmp}/m"), ("metrics.jsonl", "unreadable"), metrics(b"\xff\xfe{")),
    Case("plot: --out is a directory", ("plot", "{trained}", "--out", "{tmp}/mine"), ("mine", "is a directory"),
         foreign_directory),
    # figures
    Case("figures: --out is a file", ("figures", "--out", "{tmp}/taken.txt"), ("taken.txt", "is a file"),
         lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("figures: --out under a file", ("figures", "--out", "{tmp}/taken.txt/figs"), ("taken.txt is a file",),
         lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("figures: missing --checkpoint", ("figures", "--out", "{tmp}/figs", "--checkpoint", "{tmp}/nope"),
         ("nope", "not found")),
    Case("figures: latest model.safetensors truncated", ("figures", "--out", "{tmp}/figs", "--checkpoint", "{run}"),
         ("step-0000000/model.safetensors",), lambda tmp: truncate(latest(tmp / "run") / ckpt.MODEL_FILE)),
    # attention
    Case("attention: empty text", ("attention", "{run}", "", "--out", "{tmp}/a.png"), ("has no tokens",)),
    Case("attention: oversize text", ("attention", "{run}", TOO_LONG, "--out", "{tmp}/a.png"), ("tokens long",)),
    Case("attention: --layer out of range", ("attention", "{run}", "the cat", "--out", "{tmp}/a.png", "--layer", "99"),
         ("layer: 99 is out of range",), exit_code=2),
    Case("attention: --out is a directory", ("attention", "{run}", "the cat", "--out", "{tmp}/mine"),
         ("mine", "is a directory"), foreign_directory),
    Case("attention: --out under a file", ("attention", "{run}", "the cat", "--out", "{tmp}/taken.txt/a.png"),
         ("taken.txt is a file",), lambda tmp: write(tmp / "taken.txt", "mine")),
    Case("attention: latest config.yaml garbage", ("attention", "{run}", "the cat", "--out", "{tmp}/a.png"),
         ("step-0000000/config.yaml",), lambda tmp: write(latest(tmp / "run") / ckpt.CONFIG_FILE, b"\x00\xff")),
    # embed
    Case("embed: word of several pieces", ("embed", "{run}", "--word", "zebraqx", "--out", "{tmp}/e.png"),
         ("'zebraqx'", "not a single whole-word token")),
    Case("embed: empty word", ("embed", "{run}", "--word", "", "--out", "{tmp}/e.png"), ("word ''",)),
    Case("embed: --top-k 0", ("embed", "{run}", "--top-k", "0", "--out", "{tmp}/e.png"), ("top_k",), exit_code=2),
    Case("embed: one sentence", ("embed", "{run}", "--sentence", "the cat", "--out", "{tmp}/e.png"),
         ("at least two sentences",), exit_code=2),
    Case("embed: oversize sentence", ("embed", "{run}", *EMBED_OK, "--sentence", TOO_LONG, "--out", "{tmp}/e.png"),
         ("tokens long",)),
    Case("embed: --out is a directory", ("embed", "{run}", *EMBED_OK, "--out", "{tmp}/mine"),
         ("mine", "is a directory"), foreign_directory),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Built once: a tiny bertmath run (step-0000000), a 4-step pretraining run (step-0000002 and
    step-0000004, metrics.jsonl), and the YAML that trained it."""
    root = tmp_path_factory.mktemp("bad_inputs")
    tree = tiny_config_tree(root, max_steps=4, save_every=2, eval_every=2)
    train(config_from_dict(tree))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return {"run": make_bertmath_run(root / "tiny"), "trained": Path(tree["train"]["out_dir"]), "config": config}


# A tqdm bar as it stands once drawn: "desc:  40%|████      | 4/10 [00:01<00:02, 3.1it/s]".
_PROGRESS_BAR = re.compile(r"\d+%\|.*\| *[\d.]+[kMGTP]?/[\d.]+[kMGTP]? \[")  # counts, or unit_scale's 41.7k/2.1M


def error_lines(stderr: str) -> list[str]:
    """The lines of `stderr` left once progress output is removed. tqdm redraws a bar in place with carriage
    returns, so each line is cut to what follows its last "\\r" (what a terminal shows of it); a line that is
    then a bar (one closed with leave=True) or blank is dropped. Log records never reach this text: in-process,
    pytest's log handler takes them (the CLI's own handler would send them to stderr, before the error)."""
    shown = (line.rsplit("\r", 1)[-1] for line in stderr.split("\n"))
    return [line for line in shown if line.strip() and not _PROGRESS_BAR.search(line)]


def hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` but the run directories' lock files, which every run that takes
    the lock rewrites with its pid."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ckpt.LOCK_FILE}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, sources, tmp_path, capsys, monkeypatch):
    places = {"tmp": str(tmp_path), "config": str(sources["config"])}
    for name in ("run", "trained"):
        if any(f"{{{name}}}" in arg for arg in case.argv):
            places[name] = str(shutil.copytree(sources[name], tmp_path / name))
    held = case.prepare(tmp_path) if case.prepare else None
    argv = [arg.format(**places) for arg in case.argv]
    before = hashes(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(case.stdin))
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    finally:
        if held is not None:
            held.close()
    captured = capsys.readouterr()

    command = argv[0]
    assert code == case.exit_code, captured.err
    assert "Traceback" not in captured.err
    lines = error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith(f"bertmath {command}: error: "), captured.err
    for word in case.words:
        assert word.format(pid=os.getpid()) in lines[0], (word, lines[0])
    after = hashes(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing overwritten or deleted
    created = [k for k in after if k not in before and not (case.may_create and k.startswith(case.may_create + "/"))]
    assert created == []  # nor any file left, a temporary one included


def test_error_lines_drop_progress_bars_and_keep_the_error():
    stderr = ("\rMap:   0%|          | 0/10 [00:00<?, ?examples/s]\rMap: 100%|██████████| 10/10 [00:00<00:00, "
              "900.1examples/s]\n\rpretrain:  40%|████      | 4/10 [00:01<00:02]\r                    \r"
              "bertmath pretrain: error: something\n")
    assert error_lines(stderr) == ["bertmath pretrain: error: something"]
    assert error_lines("one\ntwo\n") == ["one", "two"]
