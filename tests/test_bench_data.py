"""scripts/bench_data.py: the corpus it writes, the memory it measures, and one tiny run end to end."""

import json
import sys

import pytest
from helpers import load_script

from bertmath import data
from bertmath.config import DataConfig


def test_the_synthetic_corpus_is_sized_seeded_and_reused(tmp_path):
    bench = load_script("bench_data")
    files = bench.write_corpus(tmp_path / "c", gigabytes=0.003, file_mb=1.0)
    assert len(files) == 3 and 2.9e6 < bench.corpus_bytes(files) < 3.1e6
    text = files[0].read_text()
    assert text.count("\n\n") > 100 and "\n\n\n" not in text
    stamp = files[0].stat().st_mtime_ns
    assert bench.write_corpus(tmp_path / "c", gigabytes=0.003, file_mb=1.0) == files  # reused, not rewritten
    assert files[0].stat().st_mtime_ns == stamp
    again = bench.write_corpus(tmp_path / "d", gigabytes=0.003, file_mb=1.0)
    assert [f.read_bytes() for f in again] == [f.read_bytes() for f in files]  # seeded
    batches = list(bench.paragraphs(files, limit_bytes=500_000))
    assert 400_000 < sum(len(p) + 2 for batch in batches for p in batch) < 600_000


def test_the_layouts_hold_the_same_text_but_for_its_separators(tmp_path):
    bench = load_script("bench_data")
    files = {layout: bench.write_corpus(tmp_path / layout, gigabytes=0.002, file_mb=1.0, layout=layout)
             for layout in ("paragraph", "lines", "line")}
    texts = {layout: [f.read_text() for f in paths] for layout, paths in files.items()}
    assert all(len(paths) == 2 for paths in files.values())
    assert all(t.count("\n\n") > 100 for t in texts["paragraph"])
    assert all("\n\n" not in t and t.count("\n") > 1000 for t in texts["lines"])  # one document a file
    assert all(t.count("\n") == 1 and t.endswith("\n") for t in texts["line"])  # one line a file
    words = {layout: [t.split() for t in ts] for layout, ts in texts.items()}
    assert words["paragraph"] == words["lines"] == words["line"]
    assert bench.write_corpus(tmp_path / "lines", gigabytes=0.002, file_mb=1.0, layout="lines") == files["lines"]


def test_the_memory_of_a_process_tree_counts_its_children(tmp_path):
    """A parent whose child holds 300 MB of anonymous memory: the tree's anonymous peak sees it."""
    bench = load_script("bench_data")
    child = "import time; block = bytearray(300_000_000); time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    result = bench.run_measured([sys.executable, "-c", parent], period=0.1)
    assert result["returncode"] == 0
    assert 0.3 < result["peak_anon_gb"] < 0.6 and result["peak_pss_gb"] >= result["peak_anon_gb"]


def test_the_log_line_it_reads_and_the_table_it_writes():
    bench = load_script("bench_data")
    assert bench.prepared_seconds("...\ndata: prepared in 12.5 s\n...") == 12.5
    assert bench.prepared_seconds("nothing") is None
    row = {"text_mb": 400.0, "files": 8, "cold": {"wall_s": 90.0, "prepare_mb_per_s": 5.0, "peak_anon_gb": 1.1,
                                                  "peak_pss_gb": 1.5},
           "warm": {"wall_s": 12.0, "peak_anon_gb": 0.9, "peak_pss_gb": 1.0, "prepare_s": 0.02},
           "tokenizers_alone": {"encode_batch": 5.5, "encode_batch_fast": 6.0},
           "ratio_to_encode_batch": 5 / 5.5, "ratio_to_encode_batch_fast": 5 / 6}
    text = bench.table({"rows": [row]})
    assert "| 0.40 GB | 8 | 90 s | 5.00 | 1.10 / 1.50 GB | 12.0 s (0.0 s) | 0.90 / 1.00 GB | 5.50 / 6.00 | 0.91 / 0.83 |" \
        in text
    lines = {"gigabytes": 0.4, "layout": "lines", "text_mb": 400.0, "files": 8,
             "cold": {"wall_s": 95.0, "prepare_mb_per_s": 4.8, "peak_anon_gb": 1.21, "peak_pss_gb": 1.6}}
    text = bench.table({"rows": [row | {"gigabytes": 0.4, "layout": "paragraph"}, lines]})
    assert "| 0.40 GB (lines) | 8 | 95 s | 4.80 | 1.21 / 1.60 GB | – | – | – | – |" in text
    assert "lines at 0.40 GB: cold peak anon 1.100x the paragraph layout's" in text


@pytest.mark.slow
def test_a_tiny_run_end_to_end(tmp_path, capsys, monkeypatch, shakespeare_tokenizer):
    """The script's main in this process (the `bertmath pretrain` it measures is a process of its own, as always) on
    2 files of 0.5 MB. The vocabulary it trains first, configs/small.yaml's, is the one the session trained already
    (tests/conftest.py: the same call on the same config), handed over instead of ~5 s of training it again."""
    train_corpus_tokenizer = data.train_corpus_tokenizer

    def trained_once(config, documents=None):
        if (config.model.vocab_size, config.data, documents) == (8192, DataConfig(), None):
            return shakespeare_tokenizer, None  # (the count of documents it was trained on: unused here)
        return train_corpus_tokenizer(config, documents)

    monkeypatch.setattr(data, "train_corpus_tokenizer", trained_once)
    out = tmp_path / "report.json"
    tiny = [arg for setting in ("model.num_layers=1", "model.hidden_size=32", "model.intermediate_size=64",
                                "train.eval_batches=1", "train.batch_size=4") for arg in ("--set", setting)]
    load_script("bench_data").main(["--sizes", "0.001", "--file-mb", "0.5", "--baseline-mb", "0.5", "--no-warm",
                                    "--work", str(tmp_path / "w"), "--out", str(out), *tiny])
    row = json.loads(out.read_text())["rows"][0]
    assert row["files"] == 2 and row["cold"]["prepare_mb_per_s"] > 0 and row["cold"]["peak_anon_gb"] > 0.1
    assert row["tokenizers_alone"]["encode_batch"] > 0 and "0.00 GB | 2 |" in capsys.readouterr().out
    assert not list((tmp_path / "w").glob("runs-*"))  # the runs are removed, the corpus kept
