"""scripts/bench_inference.py on tiny sizes: every system embeds the same sentences, the report adds up."""

import json
import shutil

import pytest
import torch
from helpers import load_script, make_bertmath_run, minilm_dir


@pytest.fixture
def tiny_bert_dir(tmp_path):
    """A random 2-layer, D 32 transformers BertModel with MiniLM's tokenizer files."""
    transformers = pytest.importorskip("transformers")
    source = minilm_dir()
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, tmp_path / name)
    return tmp_path


def test_bench_runs_every_system_on_the_same_batches(tiny_bert_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    load_script("bench_real")
    bench = load_script("bench_inference")
    stsb = tmp_path / "stsb.jsonl"
    stsb.write_text("".join(json.dumps({"sentence1": f"a man plays {w}", "sentence2": f"someone plays {w}",
                                        "score": s}) + "\n" for w, s in [("piano", 4.5), ("chess", 3.0), ("ball", 1.0)]))
    out = tmp_path / "inference.json"
    report = bench.main(["--model", str(tiny_bert_dir), "--sentences", "12", "--rounds", "2", "--batch-size", "4",
                         "--stsb", str(stsb), "--fill-mask", "6", "--fill-mask-model",
                         str(make_bertmath_run(tmp_path / "mlm")), "--json", "--out", str(out)])
    assert json.loads(out.read_text()) == report == json.loads(capsys.readouterr().out)
    rows = {r["system"]: r for r in report["rows"]}
    assert {"bertmath fp32", "bertmath int8", "ORT fp32 fused", "ORT int8 dynamic"} <= set(rows)
    assert rows["bertmath fp32"]["cosine_min"] == pytest.approx(1.0)
    assert rows["ORT fp32 fused"]["cosine_min"] > 0.9999  # the same weights, fp32: the same embeddings
    for row in rows.values():
        assert row["sentences_per_s"] > 0 and row["gflops"] > 0 and row["stsb_spearman"] is not None
    assert report["sentences"] == 12 and report["batches"] >= 3 and report["cpu_class"]
    assert report["auto"] in ("fp32", "bf16") and report["ort_best"].startswith("ORT")
    agreement, rates = report["fill_mask_top1_agreement"], report["fill_mask_sentences_per_s"]
    assert agreement["fp32"] == 1.0 and set(agreement) == set(rates) >= {"fp32", "int8"}
    assert all(0 <= a <= 1 for a in agreement.values()) and all(r > 0 for r in rates.values())
    assert "fill-mask sentences/s: fp32 " in bench.markdown(report)
