"""bertmath.tasks.search and `bertmath search`: exact cosine top-k over document vectors kept beside the documents.

The oracle is brute force: every document embedded by Embedder.encode, cosine similarity against every query,
sorted (torch.topk). The vectors are computed once per (documents file, checkpoint) and reused; a changed file
gets new ones. Under torchrun (marked slow) 2 processes write the vectors 1 process writes, byte for byte (the one
process of a job: torchrun's environment, in the test's own process)."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from bertmath.cli import main
from bertmath.distributed import DistInfo
from bertmath.errors import DataError
from bertmath.tasks import search as S
from bertmath.tasks.encode import Embedder
from helpers import assert_one_line_error, make_bertmath_run, sentences

REPO = Path(__file__).resolve().parents[1]
DOCS = sentences(120)
QUERIES = ["The cat sat on the mat.", "a bird in the garden", DOCS[17]]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_bertmath_run(tmp_path_factory.mktemp("search") / "run", seed=2)


def write_docs(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def brute_force(run: Path, docs: list[str], queries: list[str], k: int):
    embedder = Embedder.from_pretrained(run)
    d = torch.nn.functional.normalize(embedder.encode(docs), dim=1)
    q = torch.nn.functional.normalize(embedder.encode(queries), dim=1)
    return (q @ d.T).topk(k, dim=1)


def test_hits_are_the_brute_force_cosine_top_k(run, tmp_path):
    lines = DOCS[:60] + ["", "   "] + DOCS[60:]  # blank lines are no documents, but count as lines
    docs = write_docs(tmp_path / "docs.txt", lines)
    searcher = S.Searcher.from_pretrained(run, docs, chunk_size=7, batch_size=5)
    hits = searcher(QUERIES, top_k=4)
    scores, indices = brute_force(run, DOCS, QUERIES, 4)
    for query_hits, s, i in zip(hits, scores, indices):
        assert [DOCS.index(h.text) for h in query_hits] == i.tolist()
        assert_close(torch.tensor([h.score for h in query_hits]), s, atol=1e-5, rtol=0)
        assert all(lines[h.line - 1] == h.text for h in query_hits)
    assert hits[2][0].text == DOCS[17] and abs(hits[2][0].score - 1) < 1e-5  # a document finds itself
    assert len(searcher(QUERIES[0], top_k=1000)[0]) == len(DOCS)


def test_nearest_scores_in_blocks_with_a_running_top_k():
    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(1000, 16, generator=g), dim=1).numpy()
    vectors[500] = vectors[3]  # a tie: the lower index first
    queries = vectors[[3, 10, 999]] + 0.01
    expected_scores = queries @ vectors.T
    read = []

    class Recording:  # what nearest reads of the (memory-mapped) vectors
        def __len__(self):
            return len(vectors)

        def __getitem__(self, rows):
            read.append(rows.stop - rows.start)
            return vectors[rows]

    for rows in (1, 64, 100_000):
        read.clear()
        scores, indices = S.nearest(Recording(), queries, 5, rows=rows)
        assert max(read) <= rows
        order = np.lexsort((np.arange(1000)[None].repeat(3, 0), -expected_scores), axis=1)[:, :5]
        assert (indices == order).all()
        assert_close(torch.from_numpy(scores), torch.from_numpy(np.take_along_axis(expected_scores, order, 1)))
    assert indices[0, :2].tolist() == [3, 500]


def test_vectors_are_kept_beside_the_documents_and_reused(run, tmp_path, monkeypatch):
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    first = S.Searcher.from_pretrained(run, docs)
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "docs.txt")
    assert len(kept) == 2 and kept[0].startswith("docs.txt.bertmath-") and kept[0].endswith(".lines.npy")
    vectors = np.load(tmp_path / kept[1])
    assert vectors.dtype == np.float32 and vectors.shape == (len(DOCS), 32)
    assert_close(torch.from_numpy(vectors).norm(dim=1), torch.ones(len(DOCS)), atol=1e-6, rtol=0)
    assert isinstance(first.vectors, np.memmap)

    embedded = []
    monkeypatch.setattr(Embedder, "embed", lambda self, encoded, *a, **k: embedded.append(len(encoded)) or
                        torch.nn.functional.normalize(torch.randn(len(encoded), 32), dim=1))
    again = S.Searcher.from_pretrained(run, docs)
    assert embedded == []  # the documents were not embedded again
    again(QUERIES[:1])
    assert embedded == [1]  # one query
    write_docs(docs, DOCS + ["A new line."])  # a changed file: new vectors, the stale ones gone
    S.Searcher.from_pretrained(run, docs, chunk_size=50)
    assert embedded[1:] == [50, 50, 21]
    now = sorted(p.name for p in tmp_path.iterdir() if p.name != "docs.txt")
    assert len(now) == 2 and not set(now) & set(kept)


def test_search_command_text_and_json(run, tmp_path, capsys):
    docs = write_docs(tmp_path / "docs.txt", DOCS)
    assert main(["search", str(run), "--docs", str(docs), "--query", QUERIES[2], "--query", QUERIES[0],
                 "--top-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in rows] == [QUERIES[2], QUERIES[0]]
    assert rows[0]["hits"][0]["line"] == 18 and rows[0]["hits"][0]["text"] == DOCS[17] and len(rows[1]["hits"]) == 2
    assert main(["search", str(run), "--docs", str(docs), "--query", QUERIES[2], "--top-k", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == QUERIES[2] and out[1].startswith("   1. 1.0000  line 18: ")


@pytest.mark.parametrize("content, words", [
    (b"", ["no documents", "empty"]),
    (b"\n  \n\n", ["no documents"]),
    (b"text\n\x89PNG\r\n\x1a\n\xff\xfe", ["not UTF-8", "offset 5"]),
    (b"text\0with a NUL\n", ["binary", "offset 4"]),
])
def test_documents_that_are_no_text_are_one_line_errors(run, tmp_path, capsys, content, words):
    docs = tmp_path / "docs.bin"
    docs.write_bytes(content)
    with pytest.raises(DataError):
        S.scan_documents(docs)
    assert main(["search", str(run), "--docs", str(docs), "--query", "q"]) == 1
    assert_one_line_error(capsys, "search", "docs.bin", *words)
    assert [p.name for p in tmp_path.iterdir()] == ["docs.bin"]


SEARCH = ["--query", QUERIES[2], "--top-k", "1", "--chunk-size", "16", "--batch-size", "4"]


def _torchrun(processes: int, run: Path, docs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
               "-m", "bertmath", "search", str(run), "--docs", str(docs), *SEARCH]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _as_the_one_process_of_a_torchrun_job(run: Path, docs: Path, monkeypatch, capsys, caplog
                                           ) -> subprocess.CompletedProcess:
    """`bertmath search` in this process with the environment torchrun gives the one process of a job (rank 0 of
    world size 1, a free port on this host): it joins a Gloo group of one, as under `torchrun --nproc_per_node 1`,
    without the seconds a job's processes spend starting. Its output shaped like _torchrun's."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    for name, value in {"RANK": 0, "LOCAL_RANK": 0, "WORLD_SIZE": 1, "LOCAL_WORLD_SIZE": 1,
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, str(value))
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="bertmath"):
        code = main(["search", str(run), "--docs", str(docs), *SEARCH])
    assert not torch.distributed.is_initialized()  # the group is left again
    captured = capsys.readouterr()
    return subprocess.CompletedProcess("search", code, captured.out, captured.err + caplog.text)


@pytest.mark.slow
def test_two_processes_write_the_vectors_one_process_writes(run, tmp_path, monkeypatch, capsys, caplog):
    """Each of 2 processes embeds its half of the chunks (50 documents, chunks of 16: rank 0 lines 1-32, rank 1
    33-50) into the one memory-mapped file: the same bytes as 1 process, and rank 0 alone answers."""
    outputs = {}
    for processes in (1, 2):
        (tmp_path / f"p{processes}").mkdir()
        docs = write_docs(tmp_path / f"p{processes}" / "docs.txt", DOCS[:50])
        job = (_torchrun(processes, run, docs) if processes > 1 else
               _as_the_one_process_of_a_torchrun_job(run, docs, monkeypatch, capsys, caplog))
        assert job.returncode == 0, job.stderr[-3000:]
        assert job.stdout.count(QUERIES[2]) == 2 and "line 18" in job.stdout  # the query and its one hit, once
        assert "50 documents: embedding them into" in job.stderr
        assert "(2 processes)" in job.stderr if processes == 2 else "processes)" not in job.stderr
        [vectors] = [p for p in docs.parent.iterdir() if p.name.endswith(".npy") and not p.name.endswith("lines.npy")]
        outputs[processes] = vectors.read_bytes()
        assert [p.name for p in docs.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert outputs[1] == outputs[2]
    assert S.chunk_share(50, 16, DistInfo(0, 2)) == [(0, 16), (16, 32)]
    assert S.chunk_share(50, 16, DistInfo(1, 2)) == [(32, 48), (48, 50)]
