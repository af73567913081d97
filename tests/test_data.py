"""bertmath.data: documents from every local source, the fixed held-out split, packing, caching, order."""

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from bertmath import data as D
from bertmath.config import Config, DataConfig, ModelConfig
from bertmath.errors import DataError
from bertmath.tokenizer import special_tokens, train_tokenizer

VOCAB = 400


def make_config(vocab_size=VOCAB, **data) -> Config:
    return Config(model=ModelConfig(vocab_size=vocab_size), data=DataConfig(**data))


@pytest.fixture(scope="module")
def plays_sample():
    """The first 3000 speeches of the embedded corpus."""
    return list(D.load_documents(DataConfig(max_documents=3000))["text"])


@pytest.fixture(scope="module")
def tokenizer(plays_sample):
    return train_tokenizer(plays_sample, vocab_size=VOCAB)


# --- documents ------------------------------------------------------------------------------------


def test_embedded_corpus_plays_and_speeches():
    works = D.load_documents(DataConfig(documents="file"))
    assert len(works) == 42 and works.column_names == ["text"]
    assert works[0]["text"].startswith("ALL'S WELL THAT ENDS WELL")
    assert all("gutenberg" not in text.lower() for text in works["text"])
    speeches = D.load_documents(DataConfig())
    assert len(speeches) > 30_000
    assert all(text == text.strip() and "\n\n" not in text for text in speeches["text"][:2000])
    assert len(D.load_documents(DataConfig(max_documents=7))) == 7


def test_text_files_glob_and_document_modes(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n")
    (tmp_path / "a.txt").write_text("First para\nstill first.\n\n  \nSecond para.\r\n\r\nThird.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("nested\n")
    glob = str(tmp_path / "*.txt")
    paragraphs = D.load_documents(DataConfig(source="text", paths=[glob]))
    assert list(paragraphs["text"]) == ["First para\nstill first.", "Second para.", "Third.", "second file"]
    files = D.load_documents(DataConfig(source="text", paths=[glob], documents="file"))
    assert list(files["text"]) == ["First para\nstill first.\n\n  \nSecond para.\r\n\r\nThird.", "second file"]
    everything = D.load_documents(DataConfig(source="text", paths=[str(tmp_path / "**" / "*.txt"),
                                                                     str(tmp_path / "a.txt")], documents="file"))
    assert len(everything) == 3  # a.txt named twice, read once
    assert len(D.load_documents(DataConfig(source="text", paths=[glob], max_documents=2))) == 2


def test_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"body": "one", "id": 1}, {"body": None}, {"body": "  "}, {"body": "two"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    documents = D.load_documents(DataConfig(source="jsonl", paths=[str(path)], text_column="body"))
    assert list(documents["text"]) == ["one", "two"]


def test_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["alpha", None, "beta"], "n": [1, 2, 3]}), path)
    documents = D.load_documents(DataConfig(source="parquet", paths=[str(path)], text_column="content"))
    assert list(documents["text"]) == ["alpha", "beta"]


def _data_error(config: DataConfig) -> str:
    with pytest.raises(DataError) as e:
        D.load_documents(config)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_bad_inputs_name_the_file(tmp_path):
    assert _data_error(DataConfig(source="text", paths=[str(tmp_path / "*.txt")])) == \
        f"{tmp_path}/*.txt: no file matches this pattern"
    assert _data_error(DataConfig(source="text", paths=[str(tmp_path / "gone.txt")])) == \
        f"{tmp_path}/gone.txt: file not found"
    assert "is a directory" in _data_error(DataConfig(source="text", paths=[str(tmp_path)]))

    binary = tmp_path / "x.txt"
    binary.write_bytes(b"hello world!" + b"\xff\xfe rest")
    assert _data_error(DataConfig(source="text", paths=[str(binary)])) == \
        f"{binary}: not UTF-8 text (byte 0xff at offset 12)"

    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t\n")
    assert "has no text" in _data_error(DataConfig(source="text", paths=[str(blank)]))


def test_bad_jsonl_and_parquet(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"title": "a", "body": "x"}\n')
    message = _data_error(DataConfig(source="jsonl", paths=[str(path)]))
    assert message == f"{path} line 1: no column 'text' (set data.text_column); columns: title, body"
    path.write_text('{"text": "ok"}\n{"text": oops}\n')
    assert _data_error(DataConfig(source="jsonl", paths=[str(path)])).startswith(f"{path} line 2: not JSON")
    path.write_text('{"text": 3}\n')
    assert "holds int" in _data_error(DataConfig(source="jsonl", paths=[str(path)]))
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    assert _data_error(DataConfig(source="jsonl", paths=[str(path)])) == \
        f"{path}: not UTF-8 text (byte 0xc3 at offset 25)"

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


@pytest.mark.smoke
def test_hub_source_without_network(monkeypatch):
    """The hub path with `datasets.load_dataset` replaced by an in-memory dataset (tests never download)."""
    import datasets

    rows = {"content": ["first", "   ", "second", "third"], "id": [1, 2, 3, 4]}
    calls = []
    monkeypatch.setattr(D.datasets, "load_dataset",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or datasets.Dataset.from_dict(rows))
    config = DataConfig(source="hub", hub_dataset="someone/corpus", hub_config="en", text_column="content",
                        max_documents=3)
    documents = D.load_documents(config)
    assert calls == [(("someone/corpus", "en"), {"split": "train"})]
    assert documents.column_names == ["text"] and list(documents["text"]) == ["first", "second"]
    with pytest.raises(DataError, match="someone/corpus/en: no column 'body' .* columns: content, id"):
        D.load_documents(dataclasses.replace(config, text_column="body"))

    def offline(*args, **kwargs):
        raise ConnectionError("no internet\nmore lines")

    monkeypatch.setattr(D.datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"^someone/corpus/en: cannot load split 'train' \(no internet\)$"):
        D.load_documents(config)


# --- held-out split -------------------------------------------------------------------------------


def test_split_is_fixed_by_content_and_disjoint(plays_sample):
    split = D.split_documents(plays_sample, eval_fraction=0.1)
    train, held_out = set(split.train["text"]), set(split.eval["text"])
    assert not train & held_out
    assert train | held_out == set(plays_sample)
    assert 0.07 < len(split.eval) / len(plays_sample) < 0.13
    assert all(D.is_eval_document(t, 0.1) for t in held_out)

    shuffled = plays_sample[:]
    random.Random(1).shuffle(shuffled)
    assert set(D.split_documents(shuffled, 0.1).eval["text"]) == held_out  # order does not matter
    assert set(D.split_documents(plays_sample[:1500], 0.1).eval["text"]) == held_out & set(plays_sample[:1500])
    assert len(D.split_documents(plays_sample, 0.0).eval) == 0


def test_split_keeps_one_document_on_each_side():
    split = D.split_documents(["first document", "second document"], eval_fraction=1e-6)
    assert len(split.train) == 1 and len(split.eval) == 1
    split = D.split_documents(["first document", "second document"], eval_fraction=1.0)
    assert len(split.train) == 1 and len(split.eval) == 1
    assert len(D.split_documents(["only one"], eval_fraction=0.5).train) + \
        len(D.split_documents(["only one"], eval_fraction=0.5).eval) == 1


def test_eval_blocks_do_not_depend_on_seed(plays_sample, tokenizer, tmp_path):
    config = make_config(max_seq_len=32, eval_fraction=0.05)
    first = D.prepare_data(config, tokenizer, tmp_path / "a", plays_sample)
    reseeded = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=123))
    shuffled = plays_sample[:]
    random.Random(0).shuffle(shuffled)
    second = D.prepare_data(reseeded, tokenizer, tmp_path / "b", shuffled)
    assert len(first.eval) == len(second.eval) > 0
    # packing follows document order, so compare the multisets of word ids: only the dropped tails
    # (< one chunk of T - 2 = 30 ids each) may differ
    counts = [np.bincount(data.batch("eval", range(len(data.eval))).ravel(), minlength=VOCAB)[5:]
              for data in (first, second)]
    assert counts[0].sum() > 1000 and np.abs(counts[0] - counts[1]).sum() <= 2 * 30


# --- tokenizer resolution -------------------------------------------------------------------------


def test_get_tokenizer_trains_saves_and_reuses(plays_sample, tmp_path):
    config = make_config(vocab_size=300, eval_fraction=0.1)
    trained = D.get_tokenizer(config, tmp_path, plays_sample)
    assert trained.get_vocab_size() == 300 and (tmp_path / "tokenizer.json").is_file()
    assert special_tokens(trained).ids == (0, 1, 2, 3, 4)
    reused = D.get_tokenizer(config, tmp_path, documents=["unused"])  # no training: the saved file is read
    assert reused.to_str() == trained.to_str()

    with pytest.raises(DataError) as e:
        D.get_tokenizer(make_config(vocab_size=512), tmp_path)
    assert str(e.value) == (f"tokenizer vocab size 300 ({tmp_path / 'tokenizer.json'}) differs from "
                            "model.vocab_size 512; set model.vocab_size: 300")

    explicit = make_config(vocab_size=300, tokenizer=str(tmp_path / "tokenizer.json"))
    assert D.get_tokenizer(explicit, tmp_path / "elsewhere").to_str() == trained.to_str()


def test_get_tokenizer_corpus_too_small(tmp_path):
    with pytest.raises(DataError, match="too small for a 5000-token vocabulary") as e:
        D.get_tokenizer(make_config(vocab_size=5000), tmp_path, ["a tiny corpus", "of two documents"])
    assert "set model.vocab_size:" in str(e.value)
    assert not (tmp_path / "tokenizer.json").exists()


def test_train_documents_only(tmp_path, monkeypatch):
    """The vocabulary never sees held-out text."""
    seen = []
    real = D.train_tokenizer
    monkeypatch.setattr(D, "train_tokenizer", lambda texts, *a, **k: real(seen.extend(
        t for batch in texts for t in batch) or seen, *a, **k))
    documents = [f"document number {i} with words" for i in range(200)]
    D.get_tokenizer(make_config(vocab_size=60, eval_fraction=0.2), tmp_path, documents)
    held_out = set(D.split_documents(documents, 0.2).eval["text"])
    assert held_out and not held_out & set(seen) and len(seen) == 200 - len(held_out)


# --- tokenise, pack, cache ------------------------------------------------------------------------


def test_packing_layout_and_token_accounting(plays_sample, tokenizer, tmp_path):
    T = 24
    config = make_config(max_seq_len=T, eval_fraction=0.05)
    prepared = D.prepare_data(config, tokenizer, tmp_path, plays_sample)
    ids = special_tokens(tokenizer)
    blocks = prepared.batch("train", torch.arange(len(prepared.train)))
    assert blocks.shape == (len(prepared.train), T) and blocks.dtype == torch.long
    assert (blocks[:, 0] == ids.cls).all() and (blocks[:, -1] == ids.sep).all()
    assert ((blocks[:, 1:-1] == ids.sep).sum(dim=1) > 0).float().mean() > 0.2  # document boundaries inside
    assert not (blocks[:, 1:-1] == ids.cls).any() and not (blocks == ids.pad).any()

    # the block interiors are exactly the prefix of d_1 [SEP] d_2 [SEP] ...; the rest (< T-2 ids) is dropped
    train_docs = D.split_documents(plays_sample, 0.05).train["text"]
    stream = []
    for encoding in tokenizer.encode_batch(list(train_docs), add_special_tokens=False):
        stream += encoding.ids + [ids.sep]
    interior = blocks[:, 1:-1].reshape(-1).tolist()
    assert stream[:len(interior)] == interior
    assert 0 <= len(stream) - len(interior) < T - 2
    assert len(prepared.eval) > 0 and prepared.batch("eval", [0]).shape == (1, T)


def test_too_little_text_for_one_sequence(tokenizer, tmp_path):
    config = make_config(max_seq_len=64, eval_fraction=0.0)
    with pytest.raises(DataError) as e:
        D.prepare_data(config, tokenizer, tmp_path, ["to be or not to be"])
    assert str(e.value).startswith("train split: 7 tokens (1 documents and their [SEP]s), but one sequence needs 62")
    assert list(tmp_path.glob("*blocks*")) == []  # no half-written cache file


def test_no_eval_split(plays_sample, tokenizer, tmp_path):
    prepared = D.prepare_data(make_config(max_seq_len=32, eval_fraction=0.0), tokenizer, tmp_path, plays_sample)
    assert len(prepared.eval) == 0
    assert prepared.batch("eval", torch.arange(0)).shape == (0, 32)
    with pytest.raises(IndexError):
        prepared.batch("eval", [0])


def test_most_frequent_token(plays_sample, tokenizer, tmp_path):
    prepared = D.prepare_data(make_config(max_seq_len=32), tokenizer, tmp_path, plays_sample)
    ids = special_tokens(tokenizer)
    counts = torch.bincount(prepared.batch("train", range(len(prepared.train))).reshape(-1))
    counts[list(ids.ids)] = 0
    assert prepared.most_frequent_token(ids) == int(counts.argmax())
    assert tokenizer.id_to_token(prepared.most_frequent_token(ids)) in {",", ".", "the", "i", "and"}
    assert prepared.most_frequent_token(ids, max_blocks=500) == int(counts.argmax())  # a sample suffices


def test_vocab_size_must_match_model(plays_sample, tokenizer, tmp_path):
    with pytest.raises(DataError, match=f"tokenizer vocab size {VOCAB} .* set model.vocab_size: {VOCAB}"):
        D.prepare_data(make_config(vocab_size=VOCAB + 1), tokenizer, tmp_path, plays_sample)


@pytest.mark.smoke
def test_cache_reused_and_keyed_by_tokenizer_and_length(plays_sample, tokenizer, tmp_path, monkeypatch):
    config = make_config(max_seq_len=32, eval_fraction=0.05)
    first = D.prepare_data(config, tokenizer, tmp_path, plays_sample)
    tokens_files = sorted(tmp_path.glob("*-tokens-*.arrow"))
    blocks_files = sorted(tmp_path.glob("*-blocks-*.arrow"))
    assert len(tokens_files) == 2 and len(blocks_files) == 2  # train and eval

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(D, "tokenize_documents", no_tokenising)
    again = D.prepare_data(config, tokenizer, tmp_path, plays_sample)
    assert torch.equal(again.batch("train", range(50)), first.batch("train", range(50)))
    monkeypatch.undo()

    # another max_seq_len re-packs the cached token ids (no new tokens file)
    longer = D.prepare_data(dataclasses.replace(config, data=dataclasses.replace(config.data, max_seq_len=48)),
                            tokenizer, tmp_path, plays_sample)
    assert longer.batch("train", [0]).shape == (1, 48)
    assert sorted(tmp_path.glob("*-tokens-*.arrow")) == tokens_files

    # another tokenizer never reads the stale cache
    other = train_tokenizer(plays_sample[::-1][:1000], vocab_size=VOCAB)
    assert other.to_str() != tokenizer.to_str()
    changed = D.prepare_data(config, other, tmp_path, plays_sample)
    assert len(list(tmp_path.glob("*-tokens-*.arrow"))) == 4
    expected = other.encode(D.split_documents(plays_sample, 0.05).train[0]["text"], add_special_tokens=False).ids
    assert changed.batch("train", [0])[0, 1:1 + len(expected)].tolist() == expected[:30]


def test_truncating_tokenizer_is_not_truncated(plays_sample, tokenizer, tmp_path):
    truncating = train_tokenizer(plays_sample, vocab_size=VOCAB)
    truncating.enable_truncation(max_length=4)
    config = make_config(max_seq_len=32, eval_fraction=0.0)
    with_truncation = D.prepare_data(config, truncating, tmp_path / "a", plays_sample[:300])
    plain = D.prepare_data(config, tokenizer, tmp_path / "b", plays_sample[:300])
    assert len(with_truncation.train) == len(plain.train)
    assert truncating.truncation is not None  # the caller's tokenizer is left as it was


def test_auto_num_proc():
    assert D.auto_num_proc(DataConfig(), 1000) == 1
    assert 1 <= D.auto_num_proc(DataConfig(), 10**6) <= 4
    assert D.auto_num_proc(DataConfig(num_proc=3), 1000) == 3
    assert D.auto_num_proc(DataConfig(num_proc=3), 2) == 2


def test_parallel_tokenisation_matches_serial(plays_sample, tokenizer, tmp_path):
    config = make_config(max_seq_len=32, eval_fraction=0.05)
    serial = D.prepare_data(config, tokenizer, tmp_path / "a", plays_sample)
    parallel = D.prepare_data(dataclasses.replace(config, data=dataclasses.replace(config.data, num_proc=2)),
                              tokenizer, tmp_path / "b", plays_sample)
    assert torch.equal(serial.batch("train", range(len(serial.train))),
                       parallel.batch("train", range(len(parallel.train))))


@pytest.mark.slow
def test_small_config_on_embedded_corpus(tmp_path):
    """configs/small.yaml's data: the whole embedded corpus, an 8192-WordPiece vocabulary, T = 128."""
    config = make_config(vocab_size=8192, max_seq_len=128)
    tokenizer = D.get_tokenizer(config, tmp_path)
    prepared = D.prepare_data(config, tokenizer, tmp_path / "cache")
    assert len(prepared.train) > 9000 and len(prepared.eval) > 100
    assert prepared.batch("train", D.batch_indices(len(prepared.train), 32, 0, 0)).shape == (32, 128)


# --- order ----------------------------------------------------------------------------------------


def test_batch_indices_pure_permutation_per_epoch():
    N, B = 10, 3
    stream = torch.cat([D.batch_indices(N, B, m, seed=7) for m in range(10)])  # 30 positions: 3 epochs
    for epoch in range(3):
        assert sorted(stream[epoch * N:(epoch + 1) * N].tolist()) == list(range(N))
    assert not torch.equal(stream[:N], stream[N:2 * N])  # a new permutation every epoch
    assert torch.equal(D.batch_indices(N, B, 3, seed=7), stream[9:12])  # spans epochs 0 and 1; pure
    D._epoch_permutation.cache_clear()
    assert torch.equal(D.batch_indices(N, B, 3, seed=7), stream[9:12])  # no hidden state
    assert torch.equal(D.batch_indices(N, 30, 0, seed=7), stream)  # the same stream at any batch size
    assert not torch.equal(D.batch_indices(1000, 16, 0, seed=7), D.batch_indices(1000, 16, 0, seed=8))
    assert D.batch_indices(N, B, 0, 0).dtype == torch.long
    with pytest.raises(ValueError):
        D.batch_indices(0, B, 0, 0)


def test_preparing_data_never_has_datasets_pickle_a_table(plays_sample, tokenizer, tmp_path, monkeypatch):
    """datasets fingerprints an in-memory Dataset made without a fingerprint by pickling its whole table with
    dill: slow on a large corpus, and a PicklingError on some pyarrow installs. bertmath gives its own.
    (A memory-mapped file's fingerprint hashes only its path: allowed.)"""
    import datasets.arrow_dataset
    from datasets.table import InMemoryTable

    original = datasets.arrow_dataset.generate_fingerprint

    def refuse_in_memory(dataset):
        assert not isinstance(dataset._data, InMemoryTable), "datasets pickled an in-memory table to fingerprint it"
        return original(dataset)

    monkeypatch.setattr(datasets.arrow_dataset, "generate_fingerprint", refuse_in_memory)
    documents = D.load_documents(DataConfig(source="embedded", max_documents=40))
    prepared = D.prepare_data(make_config(max_seq_len=24, eval_fraction=0.0), tokenizer, tmp_path, documents)
    assert len(documents) == 40 and len(prepared.train) > 0 and len(prepared.eval) == 0
    assert len(D.prepare_data(make_config(max_seq_len=24), tokenizer, tmp_path / "b", plays_sample).eval) > 0
