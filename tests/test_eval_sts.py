"""scripts/eval_sts.py: Spearman of cosine similarity on an STS file, bertmath and sentence-transformers alike."""

from pathlib import Path

import pytest
from scipy.stats import spearmanr

from helpers import load_script, minilm_dir

FIXTURE = Path(__file__).parent / "fixtures" / "stsb_dev.jsonl"


def test_both_systems_score_the_fixture_alike(capsys):
    pytest.importorskip("sentence_transformers")
    sts = load_script("eval_sts")
    report = sts.main([str(minilm_dir()), "--file", str(FIXTURE), "--json"])
    assert report["pairs"] == 20
    ours, theirs = report["rows"]
    assert (ours["system"], theirs["system"]) == ("bertmath", "sentence-transformers")
    assert ours["spearman"] == pytest.approx(theirs["spearman"], abs=1e-9)  # the same ranks of near-equal cosines
    assert ours["spearman"] > 0.6  # MiniLM ranks the pairs' similarity well above chance
    first, second, gold = sts.read_pairs(FIXTURE)
    assert spearmanr(gold, gold).statistic == 1 and len(first) == len(second) == 20
