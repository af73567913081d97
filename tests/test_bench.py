"""scripts/bench.py: it runs end to end on a tiny config and emits well-formed JSON, and the two models it
compares do the same work (same weights, same inputs, the same loss and masked-position logits).
No timing is asserted anywhere: speed depends on the machine."""

import dataclasses
import json

import pytest
import torch
from torch.testing import assert_close

from bertmath.hardware import resolve_precision
from bertmath.hf_format import hf_to_bertmath_name
from helpers import load_script

transformers = pytest.importorskip("transformers")

TINY_YAML = """\
model:
  vocab_size: 120
  hidden_size: 32
  num_layers: 2
  num_heads: 4
  intermediate_size: 64
  max_position_embeddings: 64
  activation: gelu
  hidden_dropout: 0.0
  attention_dropout: 0.0
data:
  max_seq_len: 32
train:
  precision: fp32
"""


def load_bench():
    return load_script("bench", "bench_script")


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def run_bench(capsys, *args) -> dict:
    """The script's main in this process (a fresh interpreter would spend most of this test importing transformers);
    what it prints on stdout, which must be one JSON document."""
    load_bench().main(list(args))
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_bench_runs_and_reports_json(tiny_yaml, capsys):
    report = run_bench(capsys, "--config", str(tiny_yaml), "--steps", "2", "--repeats", "1", "--warmup", "1", "--json",
                       "--batch-size", "2", "--fused", "--sparse-mlm", "--peak-size", "256")
    meta = report["meta"]
    assert meta["transformers_default_attention"] in ("sdpa", "eager")
    assert meta["peak_flops"]["fp32"] > 0 and meta["seq_len"] == 32
    (group,) = report["groups"]
    systems = {(r["impl"], r["mode"]): r for r in group["systems"]}
    assert set(systems) == {(i, m) for i in ("bertmath", "transformers") for m in ("train", "infer")}
    for r in systems.values():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and 0 < r["mfu"]
        assert len(r["samples_ms"]) == 1 and r["step_memory_mb"] >= 0 and r["state_mb"] > 0
    bertmath_train = systems[("bertmath", "train")]
    assert bertmath_train["settings"]["sparse_mlm"] and bertmath_train["settings"]["fused"]
    # MFU counts the plain model's FLOPs; the executed count is lower with sparse MLM
    assert bertmath_train["flops_per_token_executed"] < bertmath_train["flops_per_token"]
    assert systems[("transformers", "train")]["flops_per_token"] == bertmath_train["flops_per_token"]
    (row,) = group["rows"]
    assert row["train"]["ratio"] > 0 and row["infer"]["ratio"] > 0


def test_bench_suite_runs(tiny_yaml, capsys):
    report = run_bench(capsys, "--config", str(tiny_yaml), "--suite", "cpu", "--no-compile", "--steps", "1", "--repeats",
                       "1", "--warmup", "1", "--json", "--batch-size", "2", "--peak-size", "256", "--no-memory")
    rows = [row["row"] for group in report["groups"] for row in group["rows"]]
    assert len(rows) == 6 and any(r.startswith("(1) identical math") for r in rows)
    # auto resolves to what the trainer would pick on this machine: bf16 only where it is native
    assert set(report["meta"]["peak_flops"]) == {"fp32", resolve_precision("auto", torch.device("cpu"))}
    assert "auto" not in {s["settings"]["precision"] for g in report["groups"] for s in g["systems"]}


def test_suites_are_well_formed():
    bench = load_bench()
    args = bench.parse_args(["--suite", "cpu"])
    for name in ("cpu", "ablation"):
        for group in bench.suite_groups(name, args):
            assert len(set(group.systems)) == len(group.systems)
            for _, a, b in group.rows:  # every row compares two systems that the group measures
                assert a in group.systems and b in group.systems and a != b
    (main, _) = bench.suite_groups("cpu", args)
    identical = main.rows[0][1]
    assert identical.precision == "fp32" and not (identical.sparse_mlm or identical.fused_qkv or identical.compile)
    best = next(a for title, a, _ in main.rows if title.startswith("(2)"))
    assert best.precision == "auto" and best.sparse_mlm  # resolved per machine when measured
    group = bench.suite_groups("cpu", bench.parse_args(["--suite", "cpu", "--compile", "--precision", "fp16"]))[0]
    overridden = next(a for title, a, _ in group.rows if title.startswith("(2)"))
    assert overridden == dataclasses.replace(best, compile=True, precision="fp16")  # the command line wins


@pytest.mark.parametrize("precision, static_slots", [("fp32", False), ("bf16", False), ("fp32", True)])
def test_both_models_do_the_same_work(precision, static_slots):
    """The benchmark's two runners hold the same weights and compute the same training loss and the same
    masked-position logits (within float rounding; looser for bf16 autocast); also with sparse MLM's
    static-shape slots (what CUDA and torch.compile get), padded with ignored slots."""
    bench = load_bench()
    from bertmath.config import ModelConfig

    config = ModelConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                         max_position_embeddings=64, activation="gelu", hidden_dropout=0.0, attention_dropout=0.0)
    device = torch.device("cpu")
    hf_state = bench.reference_weights(config, seed=0)
    batch = bench.make_batch(config, 3, 20, 0.15, seed=1, device=device, compiled=static_slots)
    assert batch["index"].numel() == 3 * 3  # round(0.15 · 20) = 3 masked positions per row
    assert batch["slots"].numel() == (64 if static_slots else 9)
    assert ((batch["labels"] != -100).flatten().nonzero().squeeze(1) == batch["index"]).all()
    ours = bench.Runner(bench.System("bertmath", precision, fused=True, fused_qkv=True, sparse_mlm=True),
                        config, hf_state, batch, device)
    theirs = bench.Runner(bench.System("transformers", precision, attn="sdpa"), config, hf_state, batch, device)
    tol = dict(atol=1e-5, rtol=1e-5) if precision == "fp32" else dict(atol=2e-2, rtol=2e-2)
    assert_close(ours.infer_step().float(), theirs.infer_step().float(), **tol)
    # the full model's logits at the masked positions are what the inference step computes
    ours.model.eval()
    with torch.no_grad(), ours._autocast():
        full = ours.model(batch["inputs"]).logits.flatten(0, 1)[batch["index"]]
    assert_close(ours.infer_step().float(), full.float(), **tol)
    assert_close(ours.train_step(), theirs.train_step(), **tol)  # the loss before the first update
    # and one AdamW step (lr 1e-4) leaves both with the same weights: atol 2·lr covers a gradient that is
    # zero in exact math (the key bias) and whose rounding noise takes either sign in the two models
    ours_params = dict(ours.model.named_parameters())
    for name, p in theirs.model.named_parameters():
        assert_close(ours_params[hf_to_bertmath_name(name)], p, atol=2e-4, rtol=1e-4, msg=name)


def test_peak_flops_and_memory_helpers():
    bench = load_bench()
    device = torch.device("cpu")
    assert bench.peak_flops(torch.float32, device, 64, trials=2) > 0
    assert bench.step_memory_bytes(lambda: torch.ones(1 << 22).sum(), device) >= 0
    assert "RSS" in bench.memory_method(device) or "ru_maxrss" in bench.memory_method(device)
    system = bench.System("bertmath", "bf16", fused_qkv=True, compile=True)
    assert system.name == "bertmath bf16 fused fused_qkv compile"
    assert dataclasses.replace(system, impl="transformers", attn="sdpa").name.startswith("transformers bf16 attn=sdpa")
