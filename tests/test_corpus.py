"""bertmath.corpus: documents from every source, read a piece at a time, equal to reading each file whole;
plans that read no text; cache keys from file identity; bad files named in one line."""

import dataclasses
import json
import os
import random

import pytest

from bertmath import corpus as C
from bertmath.config import DataConfig
from bertmath.errors import DataError


def documents(config: DataConfig, piece_bytes: int = C.PIECE_BYTES) -> list[str]:
    return list(C.Corpus.plan(config, piece_bytes).documents())


def whole_file_paragraphs(texts: list[str]) -> list[str]:
    """The independent reference: each file read whole, \\r\\n made \\n, split at blank lines, stripped."""
    import re

    return [p.strip() for t in texts for p in re.split(r"\n[ \t\r\f\v]*\n", t.replace("\r\n", "\n")) if p.strip()]


# --- sources ---------------------------------------------------------------------------------------


def test_embedded_corpus_plays_and_speeches():
    works = C.load_documents(DataConfig(documents="file"))
    assert len(works) == 42 and works.column_names == ["text"]
    assert works[0]["text"].startswith("ALL'S WELL THAT ENDS WELL")
    assert all("gutenberg" not in text.lower() for text in works["text"])
    speeches = C.load_documents(DataConfig())
    assert len(speeches) > 30_000
    assert all(text == text.strip() and "\n\n" not in text for text in speeches["text"][:2000])
    assert len(C.load_documents(DataConfig(max_documents=7))) == 7
    plan = C.Corpus.plan(DataConfig())
    assert len(plan.pieces) == 1 and 5e6 < plan.total_bytes < 6e6  # the gzip's recorded text size


def test_text_files_glob_and_document_modes(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.txt").write_text("First para\nstill first.\n\n  \nSecond para.\r\n\r\nThird.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("nested\n")
    glob = str(tmp_path / "*.txt")
    paragraphs = C.load_documents(DataConfig(source="text", paths=[glob]))
    assert list(paragraphs["text"]) == ["First para\nstill first.", "Second para.", "Third.", "second file"]
    files = C.load_documents(DataConfig(source="text", paths=[glob], documents="file"))
    assert list(files["text"]) == ["First para\nstill first.\n\n  \nSecond para.\r\n\r\nThird.", "second file"]
    everything = C.load_documents(DataConfig(source="text", paths=[str(tmp_path / "**" / "*.txt"),
                                                                     str(tmp_path / "a.txt")], documents="file"))
    assert len(everything) == 3  # a.txt named twice, read once
    assert len(C.load_documents(DataConfig(source="text", paths=[glob], max_documents=2))) == 2


def test_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"body": "one", "id": 1}, {"body": None}, {"body": "  "}, {"body": "two"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert documents(DataConfig(source="jsonl", paths=[str(path)], text_column="body")) == ["one", "two"]


def test_parquet_in_row_group_pieces(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["alpha", None, "beta"], "n": [1, 2, 3]}), path)
    assert documents(DataConfig(source="parquet", paths=[str(path)], text_column="content")) == ["alpha", "beta"]
    many = tmp_path / "many.parquet"
    texts = [f"row {i} " + "word " * (i % 7) for i in range(1000)]
    pq.write_table(pa.table({"text": texts}), many, row_group_size=100)
    plan = C.Corpus.plan(DataConfig(source="parquet", paths=[str(many)]), piece_bytes=2_000)
    assert len(plan.pieces) > 3
    assert list(plan.documents()) == [t.strip() for t in texts]


@pytest.mark.smoke
def test_hub_source_without_network(monkeypatch):
    """The hub path with `datasets.load_dataset` replaced by an in-memory dataset (tests never download)."""
    import datasets

    rows = {"content": ["first", "   ", "second", "third", None, "fourth"], "id": [1, 2, 3, 4, 5, 6]}
    calls = []
    monkeypatch.setattr(C.datasets, "load_dataset",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or datasets.Dataset.from_dict(rows))
    config = DataConfig(source="hub", hub_dataset="someone/corpus", hub_config="en", text_column="content",
                        max_documents=3)
    assert documents(config) == ["first", "second", "third"]  # the first 3 documents; blank rows are none
    assert calls == [(("someone/corpus", "en"), {"split": "train"})]
    plan = C.Corpus.plan(dataclasses.replace(config, max_documents=None), piece_bytes=8)  # a few rows a piece
    assert len(plan.pieces) > 1 and list(plan.documents()) == ["first", "second", "third", "fourth"]
    with pytest.raises(DataError, match="someone/corpus/en: no column 'body' .* columns: content, id"):
        C.Corpus.plan(dataclasses.replace(config, text_column="body"))

    def offline(*args, **kwargs):
        raise ConnectionError("no internet\nmore lines")

    monkeypatch.setattr(C.datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"^someone/corpus/en: cannot load split 'train' \(no internet\)$"):
        C.Corpus.plan(config)


def test_in_memory_texts_are_one_piece_keyed_by_content():
    config = DataConfig()
    a = C.Corpus.of_texts([" one ", "", "two"], config)
    assert list(a.documents()) == ["one", "two"] and len(a.pieces) == 1
    assert C.Corpus.of_texts(["one", "two"], config).pieces[0].key == a.pieces[0].key
    assert C.Corpus.of_texts(["one", "three"], config).pieces[0].key != a.pieces[0].key


# --- pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece_bytes, read_bytes", [(7, 5), (13, 64), (64, 3), (1000, 1000)])
def test_paragraph_pieces_give_the_whole_file_split(tmp_path, monkeypatch, piece_bytes, read_bytes):
    """Random texts made of the characters that matter (blank runs, \\r\\n, tabs), cut into pieces of a few
    bytes and read a few bytes at a time: the same documents, in the same order, as each file split whole."""
    monkeypatch.setattr(C, "READ_BYTES", read_bytes)
    rng = random.Random(piece_bytes * 1000 + read_bytes)
    texts = []
    for i in range(6):
        text = "".join(rng.choice(["a", "b", "é", " ", "\n", "\n", "\r\n", "\t", "\n\n"]) for _ in range(rng.randint(1, 300)))
        texts.append(text)
        (tmp_path / f"{i}.txt").write_text(text, encoding="utf-8", newline="")
    config = DataConfig(source="text", paths=[str(tmp_path / f"{i}.txt") for i in range(6)])
    plan = C.Corpus.plan(config, piece_bytes)
    assert len(plan.pieces) == sum(-(-len(t.encode()) // piece_bytes) for t in texts)
    assert list(plan.documents()) == whole_file_paragraphs(texts)


@pytest.mark.parametrize("piece_bytes", [5, 17, 4096])
def test_jsonl_pieces_give_every_line_once(tmp_path, monkeypatch, piece_bytes):
    monkeypatch.setattr(C, "READ_BYTES", 11)
    lines = [json.dumps({"text": f"line {i} " + "é" * (i % 5)}) for i in range(200)]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DataConfig(source="jsonl", paths=[str(path)])
    assert documents(config, piece_bytes) == [json.loads(line)["text"].strip() for line in lines]


def test_a_plan_reads_no_text(tmp_path, monkeypatch):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("some text\n\nmore text\n" * 100)
    monkeypatch.setattr(C, "_open", lambda *a: pytest.fail("the plan opened a file"))
    plan = C.Corpus.plan(DataConfig(source="text", paths=[str(tmp_path / "*.txt")]), piece_bytes=500)
    assert len(plan.pieces) == 3 * 5 and plan.total_bytes == 3 * 2100


def test_keys_follow_each_file_path_size_and_modification_time(tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(f"text of {name}\n" * 50)
    config = DataConfig(source="text", paths=[str(tmp_path / "*.txt")])

    def keys():
        return {(p.name, p.index): p.key for p in C.Corpus.plan(config, piece_bytes=300).pieces}

    before = keys()
    assert keys() == before and len(set(before.values())) == len(before)
    b = tmp_path / "b.txt"
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 1))  # touched: same size, new time
    touched = keys()
    assert {k for k in before if touched[k] != before[k]} == {k for k in before if k[0] == str(b)}
    (tmp_path / "a.txt").write_text("new text\n")  # another size
    (tmp_path / "d.txt").write_text("an added file\n")
    (tmp_path / "c.txt").unlink()
    after = keys()
    assert {k[0] for k in after} == {str(tmp_path / f"{n}.txt") for n in "abd"}
    assert all(after[k] == touched[k] for k in after if k[0] == str(b))
    assert all(after[k] not in before.values() for k in after if k[0] != str(b))
    other_column = {p.key for p in C.Corpus.plan(dataclasses.replace(config, documents="file")).pieces}
    assert not other_column & set(after.values())


# --- bad files ------------------------------------------------------------------------------------


def _data_error(config: DataConfig, piece_bytes: int = C.PIECE_BYTES) -> str:
    with pytest.raises(DataError) as e:
        documents(config, piece_bytes)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_bad_inputs_name_the_file(tmp_path):
    assert _data_error(DataConfig(source="text", paths=[str(tmp_path / "*.txt")])) == \
        f"{tmp_path}/*.txt: no file matches this pattern"
    assert _data_error(DataConfig(source="text", paths=[str(tmp_path / "gone.txt")])) == \
        f"{tmp_path}/gone.txt: file not found"
    assert "is a directory" in _data_error(DataConfig(source="text", paths=[str(tmp_path)]))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert _data_error(DataConfig(source="text", paths=[str(empty)])).startswith(f"{empty}: empty file (0 bytes)")

    binary = tmp_path / "x.txt"
    binary.write_bytes(b"hello world!" + b"\xff\xfe rest")
    assert _data_error(DataConfig(source="text", paths=[str(binary)])) == \
        f"{binary}: not UTF-8 text (byte 0xff at offset 12); convert the file to UTF-8 or remove it from data.paths"


def test_a_bad_byte_deep_in_a_large_file_is_named_by_its_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "READ_BYTES", 1000)
    path = tmp_path / "big.txt"
    good = "a paragraph of text\n\n".encode() * 3000  # 63,000 bytes
    path.write_bytes(good + b"caf\xe9 au lait\n\n" + good)
    for piece_bytes in (C.PIECE_BYTES, 10_000):
        message = _data_error(DataConfig(source="text", paths=[str(path)]), piece_bytes)
        assert message.startswith(f"{path}: not UTF-8 text (byte 0xe9 at offset {len(good) + 3})"), message


def test_unreadable_vanished_and_changed_files(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("some text\n\nmore\n")
    config = DataConfig(source="text", paths=[str(path)])
    plan = C.Corpus.plan(config)
    real_open = open

    def no_permission(file, mode="r", *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_permission)
    with pytest.raises(DataError, match=r"a.txt: cannot read \(Permission denied\); fix its permissions"):
        list(plan.documents())
    monkeypatch.undo()

    path.unlink()
    with pytest.raises(DataError, match=r"a.txt: file not found \(removed while the corpus was being prepared\?\)"):
        list(plan.documents())

    path.write_text("some text\n\nmore\n")
    plan = C.Corpus.plan(config)
    path.write_text("some text\n\nmore!\n")  # another size after the plan
    with pytest.raises(DataError, match="a.txt: .*changed while"):
        list(plan.documents())


def test_bad_jsonl_and_parquet(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "a", "body": "x"}\n')
    message = _data_error(DataConfig(source="jsonl", paths=[str(path)]))
    assert message == f"{path} line 1: no column 'text' (set data.text_column); columns: title, body"
    path.write_text('{"text": "ok"}\n{"text": oops}\n')
    assert _data_error(DataConfig(source="jsonl", paths=[str(path)])).startswith(f"{path} line 2: not JSON")
    path.write_text('{"text": 3}\n')
    assert "holds int" in _data_error(DataConfig(source="jsonl", paths=[str(path)]))
    path.write_text('[1, 2]\n')
    assert _data_error(DataConfig(source="jsonl", paths=[str(path)])) == \
        f"{path} line 1: expected a JSON object, got list; fix the line or remove the file from data.paths"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    assert _data_error(DataConfig(source="jsonl", paths=[str(path)])).startswith(
        f"{path}: not UTF-8 text (byte 0xc3 at offset 25)")
    # a bad line deep in a file of many pieces is named by its line number in the whole file
    lines = [json.dumps({"text": f"line {i}"}) for i in range(500)]
    lines[377] = '{"text": "unterminated'
    path.write_text("\n".join(lines) + "\n")
    assert _data_error(DataConfig(source="jsonl", paths=[str(path)]), piece_bytes=1000).startswith(
        f"{path} line 378: not JSON")

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"], "n": [1]}), table)
    assert _data_error(DataConfig(source="parquet", paths=[str(table)])) == \
        f"{table}: no column 'text' (set data.text_column); columns: body, n"
    assert "holds int64, not text" in _data_error(DataConfig(source="parquet", paths=[str(table)], text_column="n"))
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    assert _data_error(DataConfig(source="parquet", paths=[str(fake)])).startswith(
        f"{fake}: not a readable Parquet file")


# --- documents longer than PART_CHARS ---------------------------------------------------------------


def test_a_long_document_is_cut_at_lines_else_blanks_else_the_bound(monkeypatch):
    assert C.PART_CHARS == 200_000  # the bound the README states
    works = C._embedded_works()
    assert max(map(len, works)) < C.PART_CHARS  # nothing embedded is cut: its tokenizer and blocks stay as they were
    assert C.cut_document("x" * C.PART_CHARS) == ["x" * C.PART_CHARS]
    assert C.cut_document("x" * (C.PART_CHARS + 1)) == ["x" * C.PART_CHARS, "x"]
    monkeypatch.setattr(C, "PART_CHARS", 10)
    assert C.cut_document("one two\nthree four five\nsix") == ["one two\n", "three ", "four five\n", "six"]
    assert C.cut_document("abcdefghijklmnopqrstuvwxy") == ["abcdefghij", "klmnopqrst", "uvwxy"]
    assert C.cut_document("a\tb c\fd e f g h i j") == ["a\tb c\fd e ", "f g h i j"]
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(["word", " ", "\n", "é", "longerword"]) for _ in range(rng.randint(1, 80)))
        parts = C.cut_document(text)
        assert "".join(parts) == text and all(len(p) <= 10 for p in parts) and all(parts)


@pytest.mark.parametrize("documents_mode", ["paragraph", "file"])
@pytest.mark.parametrize("read_bytes", [7, 64, 1000])
def test_long_documents_stream_in_the_parts_of_each_cut_whole(tmp_path, monkeypatch, documents_mode, read_bytes):
    """Random texts with paragraphs far longer than the bound, in one long line or many lines with no blank one,
    read a few bytes at a time: the same parts, with the same part numbers and digests, as cutting each document
    read whole; no text longer than the bound, nor any batch longer than the bound and one read."""
    monkeypatch.setattr(C, "PART_CHARS", 40)
    monkeypatch.setattr(C, "READ_BYTES", read_bytes)
    rng = random.Random(read_bytes)
    texts = []
    for i in range(5):
        line = lambda: " ".join(rng.choice(["ab", "cdé", "efghijklmnop", " ", "\t"]) for _ in range(rng.randint(1, 60)))
        text = rng.choice(["\n", "\r\n", "\n\n", " \n"]).join(line() for _ in range(rng.randint(1, 12)))
        texts.append(text)
        (tmp_path / f"{i}.txt").write_text(text, encoding="utf-8", newline="")
    config = DataConfig(source="text", paths=[str(tmp_path / f"{i}.txt") for i in range(5)], documents=documents_mode)
    plan = C.Corpus.plan(config, piece_bytes=150)
    whole = whole_file_paragraphs(texts) if documents_mode == "paragraph" else [t.strip() for t in texts]
    expected = [(part, j, C.digest(C.cut_document(d)[0])) for d in whole for j, part in enumerate(C.cut_document(d))]
    batches = list(plan.batches())
    assert [t for b in batches for t in zip(b.texts, b.parts, b.digests)] == expected
    assert any(j > 2 for _, j, _ in expected)  # several documents of several parts
    assert all(sum(map(len, b.texts)) <= 40 + 2 * read_bytes for b in batches if len(b.texts) > 1)
    assert list(plan.documents()) == whole  # the parts joined are the documents
    assert [len(list(C.Corpus.plan(dataclasses.replace(config, max_documents=n), 150).documents())) for n in (1, 3)] \
        == [1, 3]


def test_documents_in_memory_are_cut_too(monkeypatch):
    monkeypatch.setattr(C, "PART_CHARS", 10)
    corpus = C.Corpus.of_texts(["short", "one two three four five six"], DataConfig())
    [batch] = list(corpus.batches())
    assert batch.texts == ["short", "one two ", "three ", "four five ", "six"] and batch.parts == [0, 0, 1, 2, 3]
    assert batch.digests == [C.digest("short")] + [C.digest("one two ")] * 4 and batch.documents == 2
    assert list(corpus.documents()) == ["short", "one two three four five six"]
