"""scripts/make_task_fixtures.py writes tests/fixtures/tagging_{train,dev}.conll byte for byte, and what it writes
reads back through bertmath.tasks.tagging with both entity types, B- and I- tags, and no sentence in both splits."""

from pathlib import Path

from bertmath.tasks.tagging import entities, read_tagged
from helpers import load_script

FIXTURES = Path(__file__).parent / "fixtures"
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_the_script_reproduces_the_committed_fixtures(tmp_path, capsys):
    script = load_script("make_task_fixtures")
    written = script.write_tagging_fixtures(tmp_path)
    assert [p.name for p in written] == ["tagging_train.conll", "tagging_dev.conll"]
    for path in written:
        assert path.read_bytes() == (FIXTURES / path.name).read_bytes(), path.name
    assert "480 sentences" in capsys.readouterr().out


def test_the_fixtures_are_small_tagged_sentences():
    train, dev = (read_tagged(FIXTURES / f"tagging_{split}.conll", LABELS) for split in ("train", "dev"))
    assert (len(train), len(dev)) == (480, 160)
    assert sum(p.stat().st_size for p in FIXTURES.glob("tagging_*")) < 200_000
    tags = {t for sentence in train.tags for t in sentence}
    assert tags == set(LABELS)
    chunks = [c for sentence in train.tags for c in entities(sentence)]
    assert {c[0] for c in chunks} == {"PER", "LOC"} and len(chunks) > 200
    assert not {tuple(w) for w in train.words} & {tuple(w) for w in dev.words if len(w) > 6}
