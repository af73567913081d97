"""bertmath.data: documents from every local source, the fixed held-out split, packing, caching, order."""

import dataclasses
import errno
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bertmath import data as D
from bertmath.corpus import Corpus, load_documents
from bertmath.config import Config, DataConfig, ModelConfig
from bertmath.distributed import DistInfo
from bertmath.errors import DataError
from bertmath.tokenizer import special_tokens, train_tokenizer

VOCAB = 400


def make_config(vocab_size=VOCAB, **data) -> Config:
    return Config(model=ModelConfig(vocab_size=vocab_size), data=DataConfig(**data))


@pytest.fixture(scope="module")
def plays_sample():
    """The first 3000 speeches of the embedded corpus."""
    return list(load_documents(DataConfig(max_documents=3000))["text"])


@pytest.fixture(scope="module")
def tokenizer(plays_sample):
    return train_tokenizer(plays_sample, vocab_size=VOCAB)


# --- held-out split -------------------------------------------------------------------------------


def test_split_is_fixed_by_content_and_disjoint(plays_sample):
    split = D.split_documents(plays_sample, eval_fraction=0.1)
    train, held_out = set(split.train), set(split.eval)
    assert not train & held_out
    assert train | held_out == set(plays_sample)
    assert 0.07 < len(split.eval) / len(plays_sample) < 0.13
    assert all(D.is_eval_document(t, 0.1) for t in held_out)

    shuffled = plays_sample[:]
    random.Random(1).shuffle(shuffled)
    assert set(D.split_documents(shuffled, 0.1).eval) == held_out  # order does not matter
    assert set(D.split_documents(plays_sample[:1500], 0.1).eval) == held_out & set(plays_sample[:1500])
    assert len(D.split_documents(plays_sample, 0.0).eval) == 0


def test_split_keeps_one_document_on_each_side():
    split = D.split_documents(["first document", "second document"], eval_fraction=1e-6)
    assert len(split.train) == 1 and len(split.eval) == 1
    split = D.split_documents(["first document", "second document"], eval_fraction=1.0)
    assert len(split.train) == 1 and len(split.eval) == 1
    for copies in (["only one"], ["only one"] * 3):  # nothing to hold out: refused, saying how to go on
        with pytest.raises(DataError, match=r"^held-out split: the corpus is (one document|3 copies of one document), "
                                            r"not longer than one part .* nothing can be held out for "
                                            r"data.eval_fraction 0.5: .* set data.eval_fraction: 0"):
            D.split_documents(copies, eval_fraction=0.5)
    assert D.split_documents(["only one"], eval_fraction=0.0) == D.DocumentSplit(["only one"], [])


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
    held_out = set(D.split_documents(documents, 0.2).eval)
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
    train_docs = D.split_documents(plays_sample, 0.05).train
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
    piece_files = sorted(tmp_path.glob("pieces/*.arrow"))
    blocks_files = sorted(tmp_path.glob("*-blocks-*.arrow"))
    assert len(piece_files) == 1 and len(blocks_files) == 2  # one in-memory piece; train and eval blocks

    monkeypatch.setattr(D, "tokenize_piece", lambda *a, **k: pytest.fail("tokenised again despite the cache"))
    monkeypatch.setattr(D, "_pack", lambda *a, **k: pytest.fail("packed again despite the cache"))
    again = D.prepare_data(config, tokenizer, tmp_path, plays_sample)
    assert torch.equal(again.batch("train", range(50)), first.batch("train", range(50)))
    monkeypatch.undo()

    # another max_seq_len re-packs the cached token ids (no new piece file)
    monkeypatch.setattr(D, "tokenize_piece", lambda *a, **k: pytest.fail("tokenised again despite the cache"))
    longer = D.prepare_data(dataclasses.replace(config, data=dataclasses.replace(config.data, max_seq_len=48)),
                            tokenizer, tmp_path, plays_sample)
    assert longer.batch("train", [0]).shape == (1, 48)
    assert sorted(tmp_path.glob("pieces/*.arrow")) == piece_files
    monkeypatch.undo()

    # another tokenizer never reads the stale cache
    other = train_tokenizer(plays_sample[::-1][:1000], vocab_size=VOCAB)
    assert other.to_str() != tokenizer.to_str()
    changed = D.prepare_data(config, other, tmp_path, plays_sample)
    assert len(list(tmp_path.glob("pieces/*.arrow"))) == 2
    expected = other.encode(D.split_documents(plays_sample, 0.05).train[0], add_special_tokens=False).ids
    assert changed.batch("train", [0])[0, 1:1 + len(expected)].tolist() == expected[:30]


def write_files(directory, texts: list[str], files: int) -> str:
    """`texts` as paragraphs of `files` text files; the glob naming them."""
    directory.mkdir(parents=True, exist_ok=True)
    share = -(-len(texts) // files)
    for i in range(files):
        (directory / f"part-{i:02d}.txt").write_text("\n\n".join(texts[i * share:(i + 1) * share]) + "\n",
                                                     encoding="utf-8")
    return str(directory / "*.txt")


def files_config(pattern: str, **data) -> Config:
    return make_config(**{"source": "text", "paths": [pattern], "max_seq_len": 32, "eval_fraction": 0.05, **data})


def plan(config: Config, piece_bytes: int = 20_000) -> Corpus:
    return Corpus.plan(config.data, piece_bytes)


def all_blocks(prepared: D.PretrainingData) -> tuple[torch.Tensor, torch.Tensor]:
    return prepared.batch("train", range(len(prepared.train))), prepared.batch("eval", range(len(prepared.eval)))


def test_files_in_pieces_pack_as_the_documents_in_memory(plays_sample, tokenizer, tmp_path):
    """Many files, many pieces each: the same blocks as the same documents handed over as one list."""
    config = files_config(write_files(tmp_path / "corpus", plays_sample, 5))
    corpus = plan(config)
    assert len(corpus.pieces) > 10
    from_files = D.prepare_data(config, tokenizer, tmp_path / "a", corpus)
    from_memory = D.prepare_data(config, tokenizer, tmp_path / "b", plays_sample)
    for a, b in zip(all_blocks(from_files), all_blocks(from_memory)):
        assert len(a) > 0 and torch.equal(a, b)


def test_a_second_run_reads_no_text(plays_sample, tokenizer, tmp_path, monkeypatch):
    config = files_config(write_files(tmp_path / "corpus", plays_sample, 3))
    first = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    monkeypatch.setattr(Corpus, "read", lambda *a, **k: pytest.fail("read the corpus despite the cache"))
    monkeypatch.setattr(D, "read_piece", lambda *a, **k: pytest.fail("read the tokens despite the blocks"))
    again = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    assert all(torch.equal(a, b) for a, b in zip(all_blocks(first), all_blocks(again)))


def test_a_changed_added_or_removed_file_reprepares_only_its_pieces(plays_sample, tokenizer, tmp_path, monkeypatch):
    pattern = write_files(tmp_path / "corpus", plays_sample, 3)
    config = files_config(pattern)
    D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    tokenised = []
    real = D.tokenize_piece
    monkeypatch.setattr(D, "tokenize_piece", lambda corpus, piece, *a, **k: tokenised.append(piece.name) or
                        real(corpus, piece, *a, **k))

    def prepared_anew() -> set[str]:
        """The files whose pieces the next run tokenises; its blocks are checked against a fresh preparation."""
        tokenised.clear()
        result = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
        names = {Path(name).name for name in tokenised}
        fresh = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
        reference = D.prepare_data(config, tokenizer, fresh, list(load_documents(config.data)["text"]))
        assert all(torch.equal(a, b) for a, b in zip(all_blocks(result), all_blocks(reference)))  # nothing stale
        return names

    changed = tmp_path / "corpus" / "part-01.txt"
    changed.write_text(changed.read_text() + "\n\nA new last paragraph.\n")
    assert prepared_anew() == {"part-01.txt"}
    (tmp_path / "corpus" / "part-03.txt").write_text("An added file.\n\nWith two paragraphs.\n")
    assert prepared_anew() == {"part-03.txt"}
    (tmp_path / "corpus" / "part-00.txt").unlink()
    assert prepared_anew() == set()  # the others' pieces are all cached: only the blocks are packed anew


def test_pieces_and_blocks_are_memory_mapped(plays_sample, tokenizer, tmp_path):
    import pyarrow as pa

    config = files_config(write_files(tmp_path / "corpus", plays_sample, 2))
    prepared = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    for blocks in (prepared.train, prepared.eval):
        assert [Path(f["filename"]).parent for f in blocks.cache_files] == [tmp_path / "cache"]
    allocated = pa.total_allocated_bytes()
    tables = [D.read_piece(path) for path in sorted((tmp_path / "cache" / "pieces").glob("*.arrow"))]
    assert sum(t.nbytes for t in tables) > 500_000
    assert pa.total_allocated_bytes() - allocated < 10_000  # the ids are the file's pages, not copies


def test_max_documents_reads_only_the_pieces_it_needs(plays_sample, tokenizer, tmp_path, monkeypatch):
    config = files_config(write_files(tmp_path / "corpus", plays_sample, 4), max_documents=900)
    tokenised = []
    real = D.tokenize_piece
    monkeypatch.setattr(D, "tokenize_piece", lambda corpus, piece, *a, **k: tokenised.append(piece) or
                        real(corpus, piece, *a, **k))
    corpus = plan(config)
    prepared = D.prepare_data(config, tokenizer, tmp_path / "cache", corpus)
    assert 0 < len(tokenised) < len(corpus.pieces) / 2
    reference = D.prepare_data(config, tokenizer, tmp_path / "b", plays_sample[:900])
    assert all(torch.equal(a, b) for a, b in zip(all_blocks(prepared), all_blocks(reference)))


def test_sharded_preparation_makes_the_blocks_of_one_process(plays_sample, tokenizer, tmp_path):
    """Processes 1 and 0 of 2 (as under torchrun, one after the other here) each tokenise their pieces; process
    0 packs. Process 1 alone finds no blocks: what it says when data.cache_dir is not shared."""
    config = files_config(write_files(tmp_path / "corpus", plays_sample, 3))
    single = D.prepare_data(config, tokenizer, tmp_path / "single", plan(config))
    with pytest.raises(DataError, match="shared storage"):
        D.prepare_data(config, tokenizer, tmp_path / "shared", plan(config), DistInfo(rank=1, world_size=2))
    pieces = sorted((tmp_path / "shared" / "pieces").glob("*.arrow"))
    assert 0 < len(pieces) < len(plan(config).pieces)  # process 1's share only
    sharded = D.prepare_data(config, tokenizer, tmp_path / "shared", plan(config), DistInfo(rank=0, world_size=2))
    assert len(list((tmp_path / "shared" / "pieces").glob("*.arrow"))) == len(plan(config).pieces)
    for a, b in zip(all_blocks(single), all_blocks(sharded)):
        assert torch.equal(a, b)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "single").glob("*blocks*"))] == \
        [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "shared").glob("*blocks*"))]


def test_a_full_disk_is_one_line_and_keeps_what_was_prepared(plays_sample, tokenizer, tmp_path, monkeypatch):
    config = files_config(write_files(tmp_path / "corpus", plays_sample, 3))
    real = D.encode
    calls = []

    def disk_fills(*args):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(D, "encode", disk_fills)
    with pytest.raises(DataError) as e:
        D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    assert "no space left on the device" in str(e.value) and "\n" not in str(e.value)
    written = sorted((tmp_path / "cache" / "pieces").iterdir())
    assert written and all(not p.name.startswith(".") for p in written)  # whole pieces only, no temporary
    kept = {p: p.read_bytes() for p in written}
    monkeypatch.undo()

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(D.ArrowWriter, "write_table", disk_full)  # the pieces fit, the blocks do not
    with pytest.raises(DataError, match="no space left on the device while writing the train blocks"):
        D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    assert not list((tmp_path / "cache").glob("*blocks*")) and not list((tmp_path / "cache").glob(".*"))
    monkeypatch.undo()
    prepared = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))  # space again: it finishes
    assert all(p.read_bytes() == b for p, b in kept.items())
    reference = D.prepare_data(config, tokenizer, tmp_path / "fresh", plan(config))
    assert all(torch.equal(a, b) for a, b in zip(all_blocks(prepared), all_blocks(reference)))


def test_truncating_tokenizer_is_not_truncated(plays_sample, tokenizer, tmp_path):
    truncating = train_tokenizer(plays_sample, vocab_size=VOCAB)
    truncating.enable_truncation(max_length=4)
    config = make_config(max_seq_len=32, eval_fraction=0.0)
    with_truncation = D.prepare_data(config, truncating, tmp_path / "a", plays_sample[:300])
    plain = D.prepare_data(config, tokenizer, tmp_path / "b", plays_sample[:300])
    assert len(with_truncation.train) == len(plain.train)
    assert truncating.truncation is not None  # the caller's tokenizer is left as it was


@pytest.mark.slow
def test_small_config_on_embedded_corpus(tmp_path, shakespeare_tokenizer):
    """configs/small.yaml's data: the whole embedded corpus, an 8192-WordPiece vocabulary, T = 128. The vocabulary
    is the session's (tests/conftest.py), trained once as get_tokenizer trains it for this config."""
    config = make_config(vocab_size=8192, max_seq_len=128)
    assert shakespeare_tokenizer.get_vocab_size() == config.model.vocab_size
    prepared = D.prepare_data(config, shakespeare_tokenizer, tmp_path / "cache")
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
    documents = load_documents(DataConfig(source="embedded", max_documents=40))
    prepared = D.prepare_data(make_config(max_seq_len=24, eval_fraction=0.0), tokenizer, tmp_path, documents)
    assert len(documents) == 40 and len(prepared.train) > 0 and len(prepared.eval) == 0
    assert len(D.prepare_data(make_config(max_seq_len=24), tokenizer, tmp_path / "b", plays_sample).eval) > 0


KILLED_PREPARATION = r'''
import os, signal, sys
from bertmath import data as D
from bertmath.config import Config, DataConfig, ModelConfig
from bertmath.corpus import Corpus
from tokenizers import Tokenizer

pattern, tokenizer_path, cache, where = sys.argv[1:5]
config = Config(model=ModelConfig(vocab_size=400), data=DataConfig(source="text", paths=[pattern], max_seq_len=32,
                                                                   eval_fraction=0.05))
calls = []

def kill_on_third(real):
    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapped

if where == "tokenising":
    D.encode = kill_on_third(D.encode)
else:
    D.ArrowWriter.write_table = kill_on_third(D.ArrowWriter.write_table)
D.prepare_data(config, Tokenizer.from_file(tokenizer_path), cache, Corpus.plan(config.data, 20_000))
'''


@pytest.mark.slow
@pytest.mark.parametrize("where", ["tokenising", "packing"])
def test_a_killed_preparation_leaves_nothing_half_written_and_a_later_run_finishes_it(
        plays_sample, tokenizer, tmp_path, where):
    import signal
    import subprocess
    import sys

    pattern = write_files(tmp_path / "corpus", plays_sample, 3)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    cache = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_PREPARATION, pattern, str(tmp_path / "tokenizer.json"),
                             str(cache), where], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    pieces = {p.name: p.read_bytes() for p in (cache / "pieces").glob("*.arrow")}
    temporaries = list(cache.rglob(".*.tmp-*"))
    assert temporaries, "the kill should have caught a file being written"
    if where == "tokenising":
        assert 0 < len(pieces) < len(plan(files_config(pattern)).pieces)
    assert not list(cache.glob("*-blocks-*.arrow"))

    config = files_config(pattern)
    finished = D.prepare_data(config, tokenizer, cache, plan(config))
    fresh = D.prepare_data(config, tokenizer, tmp_path / "fresh", plan(config))
    assert all(torch.equal(a, b) for a, b in zip(all_blocks(finished), all_blocks(fresh)))
    for name, content in pieces.items():  # what the killed run had left in view was whole
        assert (tmp_path / "fresh" / "pieces" / name).read_bytes() == content
    assert not list(cache.rglob(".*.tmp-*"))  # the killed writer's temporary is cleared away


def test_the_tokenizer_learns_from_a_bounded_sample_spread_over_the_corpus(plays_sample, tmp_path, monkeypatch):
    """A corpus larger than data.tokenizer_sample_bytes: the vocabulary is trained on about that many bytes
    of train documents, drawn from every file; twice the corpus, the same cost; the same vocabulary again."""
    real = D.train_tokenizer
    seen: list[str] = []

    def recording(texts, *args, **kwargs):
        seen.clear()
        seen.extend(text for batch in texts for text in batch)
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(D, "train_tokenizer", recording)
    budget = 60_000

    def sample(files: int, copies: int) -> tuple[list[str], str]:
        pattern = write_files(tmp_path / f"corpus-{files}", plays_sample * copies, files)
        config = dataclasses.replace(files_config(pattern, tokenizer_sample_bytes=budget), model=ModelConfig(vocab_size=300))
        tokenizer, documents = D.train_corpus_tokenizer(config, plan(config, piece_bytes=30_000))
        assert documents == len(seen)
        return list(seen), tokenizer.to_str()

    once, vocabulary = sample(4, 1)
    size = sum(len(t) + 2 for t in once)
    assert 0.7 * budget < size < 1.3 * budget
    for i in range(4):  # every file gives its share
        assert set(once) & set((tmp_path / "corpus-4" / f"part-{i:02d}.txt").read_text().split("\n\n"))
    assert not any(D.is_eval_document(t, 0.05) for t in once)  # train documents only
    twice, _ = sample(8, 2)
    assert 0.7 * size < sum(len(t) + 2 for t in twice) < 1.3 * size  # the same cost from twice the text
    assert sample(4, 1) == (once, vocabulary)  # deterministic


# --- documents longer than the bound: cut, tokenised a part at a time, packed back to back ------------


def long_document(plays_sample, layout: str) -> str:
    """One document of ~60,000 characters: speeches one a line with no blank line, or all on one line."""
    speeches = [" ".join(t.split()) for t in plays_sample[:400]]
    return ("\n" if layout == "lines" else " ").join(speeches)


@pytest.mark.parametrize("layout", ["lines", "one line"])
def test_a_long_document_tokenises_as_a_whole_and_packs_contiguously(plays_sample, tokenizer, tmp_path, monkeypatch,
                                                                     layout):
    from bertmath import corpus as C

    monkeypatch.setattr(C, "PART_CHARS", 2_000)
    text = long_document(plays_sample, layout)
    (tmp_path / "one.txt").write_text(text + "\n", encoding="utf-8")
    config = files_config(str(tmp_path / "one.txt"), eval_fraction=0.0)
    prepared = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config, piece_bytes=10**6))
    [piece] = [D.read_piece(p) for p in (tmp_path / "cache" / "pieces").glob("*.arrow")]
    assert piece.column("part").to_pylist() == list(range(piece.num_rows)) and piece.num_rows >= len(text) // 2_000
    whole = tokenizer.encode(text, add_special_tokens=False).ids
    assert [i for ids in piece.column("input_ids").to_pylist() for i in ids] == whole  # cut at blanks: the same ids
    interior = prepared.batch("train", range(len(prepared.train)))[:, 1:-1].reshape(-1).tolist()
    sep = special_tokens(tokenizer).sep
    assert interior == (whole + [sep])[:len(interior)] and len(whole) + 1 - len(interior) < 30  # no [SEP] between parts


def test_one_document_is_split_at_its_parts_and_says_so(plays_sample, tokenizer, tmp_path, monkeypatch, caplog):
    from bertmath import corpus as C

    monkeypatch.setattr(C, "PART_CHARS", 2_000)
    text = long_document(plays_sample, "lines")
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    config = files_config(str(tmp_path / "one.txt"), eval_fraction=0.1)
    with caplog.at_level("INFO", logger="bertmath"):
        prepared = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config, piece_bytes=10**6))
    notes = [r.getMessage() for r in caplog.records if "held-out split" in r.getMessage()]
    parts = D.read_piece(next((tmp_path / "cache" / "pieces").glob("*.arrow"))).num_rows
    assert len(notes) == 1 and notes[0].startswith(f"held-out split: 1 document, too few for data.eval_fraction "
                                                   f"0.1: split at their {parts} parts instead")
    assert len(prepared.eval) > 0 and len(prepared.train) > 5 * len(prepared.eval)
    whole = np.bincount(tokenizer.encode(text, add_special_tokens=False).ids, minlength=VOCAB)[5:]
    packed = sum(np.bincount(blocks.ravel(), minlength=VOCAB)[5:] for blocks in all_blocks(prepared))
    assert (packed <= whole).all() and whole.sum() - packed.sum() < 2 * 30  # each part on one side, once
    again = D.split_documents([text], 0.1)
    assert again.train and again.eval and sorted(again.train + again.eval, key=text.index) == C.cut_document(text)


def test_nothing_to_hold_out_is_refused(plays_sample, tokenizer, tmp_path):
    text = long_document(plays_sample, "lines")  # one document, shorter than the bound: one part
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    config = files_config(str(tmp_path / "one.txt"))
    with pytest.raises(DataError, match=r"^held-out split: the corpus is one document, not longer than one part "
                                        r"\(200,000 characters\), so nothing can be held out for data.eval_fraction "
                                        r"0.05: .* or set data.eval_fraction: 0 to train without a held-out measurement$"):
        D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    assert not list((tmp_path / "cache").glob("*blocks*"))
    no_eval = D.prepare_data(files_config(str(tmp_path / "one.txt"), eval_fraction=0.0), tokenizer, tmp_path / "cache",
                             plan(config))
    assert len(no_eval.train) > 0 and len(no_eval.eval) == 0


# --- damaged cache files ------------------------------------------------------------------------------


DAMAGES = {"truncated": lambda data: data[:len(data) // 2], "emptied": lambda data: b"",
           "garbled": lambda data: random.Random(0).randbytes(len(data))}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("kind", ["piece", "train blocks", "eval blocks"])
def test_a_damaged_cache_file_is_named_removed_and_made_again(plays_sample, tokenizer, tmp_path, caplog, kind, damage):
    """Every kind of cache file, damaged after it was written: the next run warns naming it, makes it again, and
    ends with the blocks of a clean run. A piece is read only when blocks are packed: here for another
    max_seq_len."""
    config = files_config(write_files(tmp_path / "corpus", plays_sample[:1500], 3))
    D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    if kind == "piece":
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, max_seq_len=24))
        victim = sorted((tmp_path / "cache" / "pieces").glob("*.arrow"))[1]
    else:
        victim = next((tmp_path / "cache").glob(f"{kind.split()[0]}-blocks-*.arrow"))
    whole = victim.read_bytes()
    victim.write_bytes(DAMAGES[damage](whole))
    with caplog.at_level("WARNING", logger="bertmath"):
        again = D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{victim}: damaged cache file (") \
        and warnings[0].endswith("): removed; it is made again from its source"), warnings
    assert victim.read_bytes() == whole  # made again, the same
    clean = D.prepare_data(config, tokenizer, tmp_path / "clean", plan(config))
    assert all(len(a) and torch.equal(a, b) for a, b in zip(all_blocks(again), all_blocks(clean)))
    caplog.clear()
    D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # whole again: no warning


def test_what_the_size_record_and_the_framing_catch(plays_sample, tokenizer, tmp_path):
    config = files_config(write_files(tmp_path / "corpus", plays_sample[:500], 1))
    D.prepare_data(config, tokenizer, tmp_path / "cache", plan(config))
    piece = next((tmp_path / "cache" / "pieces").glob("*.arrow"))
    record = piece.with_name(piece.name + ".size")
    assert D.cache_damage(piece) is None and int(record.read_text()) == piece.stat().st_size
    whole = piece.read_bytes()
    piece.write_bytes(whole + b"\0")
    assert D.cache_damage(piece) == f"{len(whole) + 1:,} bytes where {len(whole):,} were written"
    piece.write_bytes(whole[:8] + bytes(len(whole) - 8))  # the same size, the framing zeroed
    assert D.cache_damage(piece).startswith("not readable as Arrow")
    piece.write_bytes(whole)
    record.unlink()  # e.g. a file made by hand, or a copy without its record
    assert D.cache_damage(piece) == f"no record of its size in {record.name}"


def test_a_damaged_piece_whose_source_is_gone_is_one_line_naming_both(plays_sample, tokenizer, tmp_path):
    config = files_config(write_files(tmp_path / "corpus", plays_sample[:1500], 3))
    corpus = plan(config)
    D.prepare_data(config, tokenizer, tmp_path / "cache", corpus)
    victim = D.CachePaths.of(tmp_path / "cache", corpus, tokenizer, config.data).pieces[-1]
    victim.write_bytes(b"")
    source = Path(corpus.pieces[-1].name)
    source.unlink()
    repacked = dataclasses.replace(config, data=dataclasses.replace(config.data, max_seq_len=24))
    with pytest.raises(DataError) as e:
        D.prepare_data(repacked, tokenizer, tmp_path / "cache", corpus)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{victim}: damaged (0 bytes where ")
    assert f"and removed; it cannot be made again: {source}: file not found" in message


def test_documents_too_few_for_the_fraction_are_split_at_their_parts(plays_sample, monkeypatch):
    """Two long documents and a fraction no document's hash falls under: not one whole document (half the corpus)
    held out, but one part."""
    from bertmath import corpus as C

    monkeypatch.setattr(C, "PART_CHARS", 2_000)
    texts = [long_document(plays_sample[:200], "lines"), long_document(plays_sample[200:400], "lines")]
    split = D.split_documents(texts, eval_fraction=0.0001)
    parts = [p for t in texts for p in C.cut_document(t)]
    assert len(split.eval) == 1 and len(split.train) == len(parts) - 1 > 20
    assert sorted(split.train + split.eval) == sorted(parts)
