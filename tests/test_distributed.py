"""Distributed: real 2-process `torchrun` jobs (Gloo on CPU), DDP and FSDP2, against one process.

train.batch_size is the batch of all processes together: rank r of P takes rows [r·B/P, (r+1)·B/P) of every
micro-batch, masked as the whole batch would be, and the loss is normalised by the masked tokens of all
processes. So 2 processes × B/2 rows and 1 process × B rows compute the same loss and gradients; with dropout
off the weights agree to float rounding (the reductions add in another order).
Faults: a process killed (SIGKILL) or raising mid-run ends the whole job with a non-zero exit naming it;
the last checkpoint stays whole and a resumed run ends bit-identical to one that never stopped.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertmath import checkpoint as ckpt
from bertmath import cli
from bertmath.config import config_from_dict
from bertmath.distributed import DistInfo, total
# imported under another name: pytest 8.0 runs a test module's top-level `setup` as a nose-style module setup
from bertmath.distributed import setup as distributed_setup
from bertmath.errors import ConfigError
from bertmath.io import read_json, read_safetensors
from bertmath.model import BertForMaskedLM
from bertmath.trainer import train

from test_trainer import REPO, tiny_config_tree, write_config

STEPS, BATCH, SEQ = 12, 8, 32  # BATCH: all processes together
HANG_GUARD_S = 300  # a job still running after this is a hang: the test fails instead of blocking CI


def _tree(tmp_path: Path, dropout: bool = False) -> dict:
    tree = tiny_config_tree(tmp_path, max_steps=STEPS, batch_size=BATCH, save_every=6, eval_every=6)
    if not dropout:  # deterministic: compare across process counts
        tree["model"].update(hidden_dropout=0.0, attention_dropout=0.0)
    return tree


def _torchrun(config: Path, out_dir: Path, *args: str, fault: dict | None = None,
              command: str = "pretrain") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": "1"}
    entry = ["-m", "bertmath"]
    if fault:
        env.update({f"FAULT_{k.upper()}": str(v) for k, v in fault.items()})
        entry = [str(REPO / "tests" / "fault_injection.py")]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *entry,
               command, str(config), "--set", f"train.out_dir={out_dir}", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def _metrics(out_dir: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(run / ckpt.MODEL_FILE)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """The run directory of _tree's deterministic config trained in this one process with the whole batch: what
    2 processes match, with DDP and with FSDP (the corpus is seeded, so each test's copy holds the same text)."""
    tmp_path = tmp_path_factory.mktemp("one_process")
    tree = _tree(tmp_path)
    tree["train"]["out_dir"] = str(tmp_path / "single")
    train(config_from_dict(tree))
    return tmp_path / "single"


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_like_one_process_with_the_whole_batch(tmp_path, parallel, one_process_run):
    tree = _tree(tmp_path)
    spread, single = tmp_path / parallel, one_process_run
    run = _torchrun(write_config(tmp_path, tree), spread, "--set", f"train.parallel={parallel}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stdout.count("done:") == 1 and run.stderr.count("model parameters:") == 1  # only rank 0 reports
    assert f"2 processes ({parallel}, 4 sequences each per micro-batch)" in run.stderr

    # rank 0 alone wrote: one checkpoint per save, one metrics line per step, nothing half-written left over
    assert [p.name for p in ckpt.list_checkpoints(spread)] == ["step-0000006", "step-0000012"]
    assert [p.name for p in spread.iterdir() if p.name.startswith(".")] == [ckpt.LOCK_FILE]  # rank 0's, kept
    assert json.loads((spread / "summary.json").read_text())["tokens"] == STEPS * BATCH * SEQ

    # the same weights: tolerance for float sums taken in another order over 12 AdamW steps
    a, b = _weights(spread), _weights(single)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    (steps_a, evals_a), (steps_b, evals_b) = _metrics(spread), _metrics(single)
    assert [r["step"] for r in steps_a] == [r["step"] for r in steps_b] == list(range(1, STEPS + 1))
    for x, y in zip(steps_a, steps_b):  # the loss over both processes' tokens is the one process's loss
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4), x["step"]
        assert x["tokens"] == y["tokens"]
    assert [r["step"] for r in evals_a] == [r["step"] for r in evals_b] == [6, 12]
    for x, y in zip(evals_a, evals_b):  # each process evaluated half the held-out set; the sums add up
        assert x["eval_masked_tokens"] == y["eval_masked_tokens"]
        assert x["eval_loss"] == pytest.approx(y["eval_loss"], rel=1e-5)
        assert x["eval_accuracy"] == pytest.approx(y["eval_accuracy"], abs=1e-9)

    # one process loads what the job saved, under bare names
    model = BertForMaskedLM.from_pretrained(spread)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("parallel, kind", [("ddp", "kill"), ("fsdp", "raise")])
def test_a_failing_process_stops_the_job_and_the_resumed_run_is_bit_identical(tmp_path, parallel, kind):
    """With dropout on, rank 1 fails before step 9 (after the step-6 checkpoint): the job exits non-zero
    naming rank 1, step 6 stays whole, and resuming with 2 processes reproduces the uninterrupted run bit
    for bit: each process restores its own dropout RNG, AdamW moments and the data/mask position."""
    config = write_config(tmp_path, _tree(tmp_path, dropout=True))
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run = _torchrun(config, straight, "--set", f"train.parallel={parallel}")
    assert run.returncode == 0, run.stderr[-3000:]

    run = _torchrun(config, broken, "--set", f"train.parallel={parallel}",
                    fault={"rank": 1, "step": 8, "kind": kind})
    assert run.returncode != 0
    summary = run.stderr[run.stderr.rindex("Root Cause"):]  # torchrun's report names the first failure
    assert "rank      : 1 " in summary, run.stderr[-3000:]
    if kind == "kill":
        assert "Signal 9 (SIGKILL)" in summary
    else:  # the exception ends the process with 1, or, when Gloo's teardown at interpreter exit races with the
        # peer (seen on a loaded CPU), with SIGABRT after the traceback: either way rank 1's own failure
        assert "exitcode  : 1" in summary or "Signal 6 (SIGABRT)" in summary, summary
        assert "injected fault in rank 1" in run.stderr
    assert [p.name for p in ckpt.list_checkpoints(broken)] == ["step-0000006"]
    assert read_json(broken / ckpt.STATE_FILE)["train_state"]["step"] == 6
    BertForMaskedLM.from_pretrained(broken)  # whole and loadable

    run = _torchrun(config, broken, "--set", f"train.parallel={parallel}", "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("resumed from") == 1 and "step-0000006" in run.stderr  # logged by rank 0 alone
    a, b = _weights(straight), _weights(broken)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "tokens_per_s")}
                          for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert strip(broken) == strip(straight)  # steps 7-8 logged before the fault are logged once, the same


def test_parallel_without_torchrun_is_a_one_line_config_error(tmp_path, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    config = write_config(tmp_path, _tree(tmp_path))
    assert cli.main(["pretrain", str(config), "--set", "train.parallel=fsdp"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.parallel: 'fsdp' needs processes launched by torchrun" in err and "--nproc_per_node" in err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_batch_that_the_world_size_does_not_divide_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"train.batch_size: 8 sequences cannot be split evenly over 3 processes"):
        distributed_setup("cpu", "ddp", batch_size=8, timeout_minutes=1)
    config = write_config(tmp_path, _tree(tmp_path))
    assert cli.main(["pretrain", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertmath pretrain [rank 0/3]: error: train.batch_size: 8") and len(err.splitlines()) == 1


def test_one_process_under_torchrun_with_parallel_auto_trains_plainly(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_setup("cpu", "auto", batch_size=8, timeout_minutes=1) == DistInfo()


def test_total_in_one_process_is_the_value():
    x = torch.tensor(3.5)
    assert total(x, DistInfo()) is x


@pytest.mark.slow
def test_a_hung_process_times_out_instead_of_hanging_the_job(tmp_path):
    """Rank 1 stops answering after step 8: within train.timeout_minutes rank 0's collective gives up, it
    says so in one line naming the last good checkpoint, and torchrun stops the job with a non-zero exit."""
    config = write_config(tmp_path, _tree(tmp_path))
    out = tmp_path / "hung"
    # 6 s: long enough for a loaded CPU's slowest healthy wait (rank 0 saving step 6), short for the suite
    run = _torchrun(config, out, "--set", "train.timeout_minutes=0.1", fault={"rank": 1, "step": 8, "kind": "hang"})
    assert run.returncode != 0
    assert (f"bertmath pretrain [rank 0/2]: error: another process failed or stopped answering" in run.stderr)
    assert f"last good checkpoint: {out / 'step-0000006'}; run the same command again to resume" in run.stderr
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000006"]


@pytest.mark.slow
def test_two_processes_prepare_the_blocks_of_one_and_pretraining_starts_from_them(tmp_path, capsys):
    """`torchrun -m bertmath prepare`: each process tokenises its share of a 3-file corpus (process 0 says
    its share), process 0 packs; the block files are byte-identical to one process's, and `pretrain` with the
    same config trains from them without preparing anything."""
    from test_trainer import split_corpus

    tree = _tree(tmp_path)
    tree["data"]["paths"] = [split_corpus(Path(tree["data"]["paths"][0]), files=3)]
    tree["data"]["cache_dir"] = str(tmp_path / "shared-cache")
    config = write_config(tmp_path, tree)
    run = _torchrun(config, tmp_path / "spread", command="prepare")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "tokens: 0 of 2 pieces cached (the share of process 0 of 2)" in run.stderr
    assert run.stdout.count("train: ") == 1 and "eval: " in run.stdout  # one summary, from process 0

    single = tmp_path / "single-cache"
    assert cli.main(["prepare", str(config), "--set", f"train.out_dir={tmp_path / 'one'}",
                     "--set", f"data.cache_dir={single}"]) == 0
    blocks = lambda d: {p.name: p.read_bytes() for p in sorted(d.glob("*-blocks-*.arrow"))}
    assert len(blocks(single)) == 2 and blocks(single) == blocks(tmp_path / "shared-cache")
    assert (tmp_path / "spread" / "tokenizer.json").read_text() == (tmp_path / "one" / "tokenizer.json").read_text()

    capsys.readouterr()
    import bertmath.data as data_module

    def no_preparation(*args, **kwargs):
        raise AssertionError("pretrain prepared data that `prepare` had cached")

    original = data_module._tokenize_share, data_module._pack
    data_module._tokenize_share = data_module._pack = no_preparation
    try:
        tree["train"].update(out_dir=str(tmp_path / "spread"), max_steps=2)
        train(config_from_dict(tree))
    finally:
        data_module._tokenize_share, data_module._pack = original
    assert ckpt.latest_checkpoint(tmp_path / "spread") is not None
