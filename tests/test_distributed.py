"""Distributed: a real 2-process `torchrun` (Gloo on CPU) equals one process with 2-step gradient accumulation.

Rank r of P takes global micro-batch m = (step·A + micro)·P + r, so 2 ranks × 1 micro-batch see the same
blocks and the same masks as 1 process × 2 accumulated micro-batches; DDP's mean of the ranks' gradients
is the accumulated mean. With dropout off, weights and logged losses agree to float rounding: the ranks
trained on different micro-batches (had both taken the same one, the weights would differ at the 1e-3 level).
A run resumed under torchrun ends bit-identical to one that never stopped.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertmath import checkpoint as ckpt
from bertmath.config import config_from_dict
from bertmath.distributed import DistInfo, mean
from bertmath.model import BertForMaskedLM
from bertmath.trainer import train

from test_trainer import REPO, tiny_config_tree, write_config

STEPS, BATCH, SEQ = 12, 4, 32


def _tree(tmp_path: Path) -> dict:
    tree = tiny_config_tree(tmp_path, max_steps=STEPS, batch_size=BATCH, save_every=6, eval_every=6)
    tree["model"].update(hidden_dropout=0.0, attention_dropout=0.0)  # deterministic: compare across layouts
    return tree


def _torchrun(config: Path, out_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "bertmath", "pretrain", str(config), "--set", f"train.out_dir={out_dir}", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _metrics(out_dir: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


def _assert_same_training(ddp: Path, single: Path) -> None:
    a, b = ckpt.read_safetensors(ddp / ckpt.MODEL_FILE), ckpt.read_safetensors(single / ckpt.MODEL_FILE)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    (steps_a, evals_a), (steps_b, evals_b) = _metrics(ddp), _metrics(single)
    assert [r["step"] for r in steps_a] == [r["step"] for r in steps_b]
    assert [r["tokens"] for r in steps_a] == [r["tokens"] for r in steps_b]
    for x, y in zip(steps_a, steps_b):  # the logged loss is the mean over both ranks' micro-batches
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-12)
    assert [r["step"] for r in evals_a] == [r["step"] for r in evals_b]
    for x, y in zip(evals_a, evals_b):
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_train_like_one_with_gradient_accumulation(tmp_path):
    tree = _tree(tmp_path)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run = _torchrun(write_config(tmp_path, tree), ddp)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stdout.count("done:") == 1  # only rank 0 reports

    tree["train"].update(out_dir=str(single), grad_accum_steps=2)
    train(config_from_dict(tree))

    # rank 0 alone wrote: one checkpoint per save, one metrics line per step, nothing half-written left over
    assert [p.name for p in ckpt.list_checkpoints(ddp)] == ["step-0000006", "step-0000012"]
    assert not [p.name for p in ddp.iterdir() if p.name.startswith(".")]
    steps, evals = _metrics(ddp)
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert [r["step"] for r in evals] == [6, 12]
    losses = [r["loss"] for r in steps]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1  # it learns

    # both ranks' micro-batches count: 2 × (batch × seq) tokens per step
    tokens = STEPS * 2 * BATCH * SEQ
    assert json.loads((ddp / "summary.json").read_text())["tokens"] == tokens
    assert ckpt.read_json(ddp / ckpt.STATE_FILE)["train_state"]["tokens_seen"] == tokens

    model = BertForMaskedLM.from_pretrained(ddp)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in model.state_dict())
    _assert_same_training(ddp, single)


@pytest.mark.slow
def test_two_process_resume_is_bit_identical(tmp_path):
    """Under torchrun with dropout on: a run stopped after its step-6 checkpoint (its later checkpoint removed,
    its metrics running on to step 12, as a kill leaves them) and resumed ends bit-identical to the run that
    never stopped: rank 1 continues from rank 0's saved RNG state, which is its own (same seed, same draws)."""
    tree = tiny_config_tree(tmp_path, max_steps=STEPS, batch_size=BATCH, save_every=6, eval_every=6)
    assert tree["model"]["hidden_dropout"] > 0
    config, out = write_config(tmp_path, tree), tmp_path / "ddp"
    run = _torchrun(config, out)
    assert run.returncode == 0, run.stderr[-3000:]
    straight = ckpt.read_safetensors(out / "step-0000012" / ckpt.MODEL_FILE)
    straight_metrics = (out / "metrics.jsonl").read_text()
    shutil.rmtree(out / "step-0000012")

    run = _torchrun(config, out, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("resumed from") == 2 and "step-0000006" in run.stderr  # both ranks
    resumed = ckpt.read_safetensors(out / "step-0000012" / ckpt.MODEL_FILE)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    strip = lambda text: [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "tokens_per_s")}
                          for line in text.splitlines()]
    assert strip((out / "metrics.jsonl").read_text()) == strip(straight_metrics)  # steps 7-12 logged once, same


def test_mean_in_one_process_is_the_value():
    x = torch.tensor(3.5)
    assert mean(x, DistInfo()) is x
