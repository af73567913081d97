"""FillMask (bertmath/fill_mask.py) and `bertmath fill-mask`: output shapes, each strategy against an
independent computation on the model's logits, and user errors through the CLI (one line, no traceback).

Model: a tiny random-init checkpoint written by tests/helpers.py (initializer_range 0.5, so predictions
are peaked and rankings have no near-ties).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from bertmath import CheckpointError, ConfigError
from bertmath.cli import main
from bertmath.fill_mask import FillMask, FillMaskError, FillMaskResult, sampling_support

from helpers import make_bertmath_run

TEXTS = ["The cat sat on the [MASK].", "[MASK] old man found a red door yesterday.",
         "My sister [MASK] at the [MASK] in the [MASK]!", "The teacher walked to the city [MASK]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_bertmath_run(tmp_path_factory.mktemp("fill") / "run", seed=0)


@pytest.fixture(scope="module")
def fill(run_dir) -> FillMask:
    return FillMask.from_pretrained(run_dir)


def reference_probs(fill: FillMask, text: str) -> tuple[list[int], torch.Tensor]:
    """Independently: encode one text alone (no padding), full BertForMaskedLM forward, torch.softmax.
    Returns the mask positions and p (n_masks, V)."""
    ids = fill.tokenizer.encode(text).ids
    masks = [i for i, t in enumerate(ids) if t == fill.tokenizer.token_to_id("[MASK]")]
    with torch.no_grad():
        logits = fill.model(torch.tensor([ids])).logits[0]  # (T, V)
    return masks, torch.softmax(logits[masks].double(), dim=-1)


# --- output shape (transformers' pipeline) --------------------------------------------------------------


@pytest.mark.smoke
def test_output_shapes_mirror_the_pipeline(fill):
    one = fill("The cat sat on the [MASK].", top_k=3)
    assert isinstance(one, list) and len(one) == 3
    assert all(set(d) == {"score", "token", "token_str", "sequence"} for d in one)
    assert "[MASK]" not in one[0]["sequence"] and one[0]["token_str"].lstrip("#") in one[0]["sequence"]

    several = fill("My sister [MASK] at the [MASK].", top_k=2)
    assert len(several) == 2 and all(len(row) == 2 and isinstance(row[0], dict) for row in several)
    assert several[0][0]["sequence"].count("[MASK]") == 1  # the other mask stays visible

    batch = fill(["a [MASK]", "[MASK] and [MASK]"], top_k=4)
    assert len(batch) == 2 and isinstance(batch[0][0], dict) and isinstance(batch[1][0], list)
    assert fill(["a [MASK]"], top_k=4) == [fill("a [MASK]", top_k=4)]  # a list of one stays a list


def test_predict_gives_structured_results(fill):
    result = fill.predict("My sister [MASK] at the [MASK].", top_k=3)[0]
    assert isinstance(result, FillMaskResult) and len(result.masks) == 2
    assert "[MASK]" not in result.filled
    for mask in result.masks:
        assert mask.chosen.token_str.lstrip("#") in result.filled
    record = json.loads(json.dumps(result.to_dict()))
    assert record["masks"][0]["candidates"][0]["token"] == result.masks[0].chosen.token


# --- strategies --------------------------------------------------------------------------------------


def test_greedy_is_argmax_of_an_independent_softmax(fill):
    """Batched (padded) greedy = per text, unpadded forward + torch.softmax: same top-5 tokens, scores
    within 1e-5 (fp32 logits up to ~10 summed in another order: ~1.5e-6 seen), filled token = argmax."""
    results = fill.predict(TEXTS, top_k=5)
    for text, result in zip(TEXTS, results):
        masks, p = reference_probs(fill, text)
        assert [m.index for m in result.masks] == masks
        for mask, row in zip(result.masks, p):
            scores, tokens = row.topk(5)
            assert [c.token for c in mask.candidates] == tokens.tolist()
            torch.testing.assert_close(torch.tensor([c.score for c in mask.candidates], dtype=torch.float64),
                                       scores, atol=1e-5, rtol=0)
            assert mask.chosen.token == int(row.argmax())


def test_batch_equals_one_at_a_time(fill):
    together = fill(TEXTS, top_k=3)
    alone = [fill(t, top_k=3) for t in TEXTS]
    assert [[d["token"] for d in _flat(x)] for x in together] == [[d["token"] for d in _flat(x)] for x in alone]
    small_batches = fill(TEXTS, top_k=3, batch_size=1)
    assert [[d["token"] for d in _flat(x)] for x in small_batches] == [[d["token"] for d in _flat(x)] for x in together]


@pytest.mark.parametrize("strategy", ["greedy", "iterative"])
def test_length_batching_returns_input_order_and_one_at_a_time_results(fill, strategy):
    """Many texts of different lengths, batched by length (several batches, padded and unpadded ones): each
    result equals that text's result alone (the same tokens, scores to 1e-5), in input order."""
    words = "the old man walked to the city and found a red door in the wall".split()
    texts = [" ".join(words[:n]) + " [MASK] ." for n in range(1, 15)] + TEXTS
    texts += [" ".join(words[:n]) + " [MASK] and [MASK]" for n in (3, 9)]
    batched = fill.predict(texts, top_k=4, strategy=strategy, max_tokens=64)
    assert [r.text for r in batched] == texts
    for text, result in zip(texts, batched):
        alone = fill.predict(text, top_k=4, strategy=strategy)[0]
        assert result.filled == alone.filled
        for got, want in zip(result.masks, alone.masks):
            assert (got.index, got.step) == (want.index, want.step)
            assert [c.token for c in got.candidates] == [c.token for c in want.candidates]
            assert [c.score for c in got.candidates] == pytest.approx([c.score for c in want.candidates], abs=1e-5)


def test_loaded_model_runs_fused_kernels_with_the_from_scratch_results(fill):
    """from_pretrained picks torch's fused kernels (speed); the from-scratch ops give the same candidates."""
    import dataclasses

    from bertmath import BertForMaskedLM

    assert fill.model.config.fused
    scratch = BertForMaskedLM(dataclasses.replace(fill.model.config, fused=False))
    scratch.load_state_dict(fill.model.state_dict())
    reference = FillMask(scratch, fill.tokenizer)
    for got, want in zip(fill.predict(TEXTS, top_k=4), reference.predict(TEXTS, top_k=4)):
        for a, b in zip(got.masks, want.masks):
            assert [c.token for c in a.candidates] == [c.token for c in b.candidates]
            assert [c.score for c in a.candidates] == pytest.approx([c.score for c in b.candidates], abs=1e-5)


def test_sample_draws_do_not_depend_on_the_batching(fill):
    texts = TEXTS + ["the [MASK] of the king", "a [MASK] [MASK] [MASK] of words that is longer than the rest"]
    kwargs = dict(strategy="sample", temperature=2.0, top_k=30, seed=11)
    one_batch = fill.predict(texts, **kwargs)
    many_batches = fill.predict(texts, batch_size=1, **kwargs)
    assert [[m.chosen.token for m in r.masks] for r in one_batch] == [[m.chosen.token for m in r.masks]
                                                                       for r in many_batches]


def _flat(rows):
    return [d for row in rows for d in (row if isinstance(row, list) else [row])]


def test_iterative_fills_the_most_confident_mask_first(fill):
    """Step 0 fills the mask whose max probability is highest (from an independent pass over the original
    text); step 1's candidates equal an independent pass over the text with that token written in."""
    text = "My sister [MASK] at the [MASK] in the [MASK]!"
    result = fill.predict(text, strategy="iterative", top_k=3)[0]
    assert sorted(m.step for m in result.masks) == [0, 1, 2]
    assert "[MASK]" not in result.filled

    masks, p = reference_probs(fill, text)
    first = int(p.amax(dim=-1).argmax())
    by_step = {m.step: m for m in result.masks}
    assert by_step[0].index == masks[first]
    assert by_step[0].chosen.token == int(p[first].argmax())

    ids = fill.tokenizer.encode(text).ids
    ids[masks[first]] = by_step[0].chosen.token
    rest = [pos for pos in masks if pos != masks[first]]
    with torch.no_grad():
        q = torch.softmax(fill.model(torch.tensor([ids])).logits[0, rest].double(), dim=-1)
    second = int(q.amax(dim=-1).argmax())
    assert by_step[1].index == rest[second]
    assert [c.token for c in by_step[1].candidates] == q[second].topk(3).indices.tolist()


def test_iterative_with_one_mask_equals_greedy(fill):
    text = "The cat sat on the [MASK]."
    assert fill(text, strategy="iterative") == fill(text, strategy="greedy")


def test_sample_is_reproducible_with_a_seed(fill):
    kwargs = dict(strategy="sample", temperature=3.0, top_k=20, top_p=0.95)
    texts = TEXTS * 5
    a, b = fill(texts, seed=7, **kwargs), fill(texts, seed=7, **kwargs)
    assert a == b
    c = fill(texts, seed=8, **kwargs)
    assert [d["token"] for x in a for d in _flat(x)] != [d["token"] for x in c for d in _flat(x)]


def test_sample_with_top_k_1_or_tiny_top_p_is_greedy(fill):
    greedy = [[m.chosen.token for m in r.masks] for r in fill.predict(TEXTS)]
    for kwargs in (dict(top_k=1), dict(top_p=1e-6)):
        for seed in range(3):
            sampled = fill.predict(TEXTS, strategy="sample", seed=seed, **kwargs)
            assert [[m.chosen.token for m in r.masks] for r in sampled] == greedy


def test_sample_draws_from_the_truncated_tempered_distribution(fill):
    """2000 draws for one mask (one batch of identical texts) vs q = softmax(z/T) cut to the top-k and the
    nucleus, renormalised (computed independently here): every draw lies in the support, frequencies
    within 0.05 of q (> 4 binomial standard deviations, sd <= 0.011)."""
    text, T, k, top_p = "The cat sat on the [MASK].", 2.0, 6, 0.8
    ids = fill.tokenizer.encode(text).ids
    pos = ids.index(fill.tokenizer.token_to_id("[MASK]"))
    with torch.no_grad():
        p = torch.softmax(fill.model(torch.tensor([ids])).logits[0, pos].double() / T, dim=-1)
    order = p.argsort(descending=True)
    support = []
    for token in order.tolist()[:k]:  # the smallest prefix with mass >= top_p, at most k tokens
        support.append(token)
        if p[support].sum() >= top_p:
            break
    assert 1 < len(support)  # the test needs a real choice
    q = p[support] / p[support].sum()

    n = 2000
    results = fill.predict([text] * n, strategy="sample", temperature=T, top_k=k, top_p=top_p, seed=0, batch_size=n)
    counts = Counter(r.masks[0].chosen.token for r in results)
    assert set(counts) <= set(support)
    for token, expected in zip(support, q.tolist()):
        assert abs(counts[token] / n - expected) < 0.05, (token, counts[token] / n, expected)
    candidates = results[0].masks[0].candidates  # the support, scores p (not renormalised)
    assert sorted(c.token for c in candidates) == sorted(support)
    for c in candidates:
        assert abs(c.score - float(p[c.token])) < 1e-5


def test_sampling_support_is_top_k_intersected_with_the_nucleus():
    p = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15], dtype=torch.float64)
    assert sampling_support(p, 1)[0].tolist() == [1]  # greedy
    assert sampling_support(p, 3)[0].tolist() == [1, 3, 4]
    assert sampling_support(p, 5, top_p=0.7)[0].tolist() == [1, 3]  # 0.4 + 0.3 >= 0.7
    assert sampling_support(p, 5, top_p=0.71)[0].tolist() == [1, 3, 4]
    assert sampling_support(p, 1, top_p=0.9)[1].tolist() == [0.4]


def test_temperature_sharpens_and_flattens(fill):
    text = "The cat sat on the [MASK]."
    top = {T: fill(text, strategy="sample", temperature=T, top_k=1, seed=0)[0]["score"] for T in (0.5, 1.0, 2.0)}
    assert top[0.5] > top[1.0] > top[2.0]
    assert abs(top[1.0] - fill(text, top_k=1)[0]["score"]) < 1e-6  # T = 1: the plain softmax
    cold = fill(text, strategy="sample", temperature=1e-300, top_k=5, seed=0)  # T → 0: greedy, no NaN
    assert len(cold) == 1 and cold[0]["score"] == 1.0 and cold[0]["token"] == fill(text)[0]["token"]


# --- user errors (API) -------------------------------------------------------------------------------


def test_input_errors(fill):
    with pytest.raises(FillMaskError,
                       match=r"no \[MASK\] in 'hello' \(write \[MASK\] where a word should be predicted\)"):
        fill("hello")
    with pytest.raises(FillMaskError, match=r"input 2: no \[MASK\]"):
        fill(["a [MASK]", "b"])
    long_text = "the cat [MASK] " + "sat on the mat " * 30
    n = len(fill.tokenizer.encode(long_text).ids)
    with pytest.raises(FillMaskError, match=rf"is {n} tokens long .* limit of 64"):
        fill(long_text)
    result = fill.predict(long_text, truncate=True)[0]
    assert result.truncated_tokens == n - 64 and len(result.masks) == 1
    with pytest.raises(FillMaskError, match=r"would cut 1 of its 2 \[MASK\]"):
        fill(long_text + " [MASK]", truncate=True)


@pytest.mark.parametrize("kwargs, key", [
    (dict(strategy="beam"), "strategy"), (dict(top_k=0), "top_k"), (dict(temperature=0.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_p=1.5), "top_p"), (dict(top_p=0.0), "top_p"),
])
def test_option_errors(fill, kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        fill("a [MASK]", **kwargs)


def test_vocab_txt_checkpoint_with_case_kept(tmp_path, run_dir):
    """A transformers-style dir with vocab.txt (no tokenizer.json): do_lower_case from tokenizer_config.json."""
    from bertmath.pretrained import export_checkpoint

    out = export_checkpoint(run_dir, tmp_path / "hf")
    (out / "tokenizer.json").unlink()
    lower = FillMask.from_pretrained(out)
    assert lower("THE CAT SAT ON THE [MASK].") == lower("the cat sat on the [MASK].")
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    cased = FillMask.from_pretrained(out)
    assert cased.tokenizer.encode("THE").ids != cased.tokenizer.encode("the").ids


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        FillMask.from_pretrained(tmp_path / "nope")


# --- CLI (exit status, stderr, no traceback) -------------------------------------------------------------
# Two tests run `python -m bertmath` as a user does (a subprocess); the rest call the same `main` in-process
# (`run_main`), which saves the ~2 s of imports a subprocess spends each, on a slow CPU.


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "bertmath", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.fixture
def run_main(capsys, monkeypatch):
    """run_cli's twin in this process: `main(ARGS)` with `stdin`, its exit status (argparse's SystemExit
    included) and output shaped like a subprocess's. Log records go to stderr as the CLI's own
    logging.basicConfig sends them in a fresh process (pytest's log capture would otherwise take them)."""
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        capsys.readouterr()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root, level = logging.getLogger(), logging.getLogger().level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)
    return run


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_cli_prints_candidates_and_filled_sentence(run_dir, fill):
    texts = ["The cat sat on the [MASK].", "My sister [MASK] at the [MASK]!"]
    proc = run_cli("fill-mask", run_dir, *texts, "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    expected = fill.predict(texts, top_k=3)
    blocks = proc.stdout.split("\n\n")  # one block per input: text, per mask a header and 3 ranked rows, filled
    assert len(blocks) == 2
    for block, result in zip(blocks, expected):
        lines = block.strip("\n").splitlines()
        assert lines[0] == result.text and lines[-1] == f"  filled: {result.filled}"
        rows = [line.split() for line in lines if line.strip()[:2] in {"1.", "2.", "3."}]
        want = [(c.token_str, round(c.score, 4)) for m in result.masks for c in m.candidates]
        assert [r[1] for r in rows] == [token for token, _ in want]
        assert [float(r[2]) for r in rows] == pytest.approx([score for _, score in want], abs=1.1e-4)
    assert proc.stdout.count("[MASK] #") == 3


def test_cli_stdin_and_json(run_dir, fill, run_main):
    proc = run_main("fill-mask", run_dir, "-", "--json", "--strategy", "sample", "--seed", "3", "--top-k", "4",
                    "--temperature", "1.5", "--top-p", "0.9", stdin="The cat sat on the [MASK].\n\n[MASK] dog ran.\n")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in records] == ["The cat sat on the [MASK].", "[MASK] dog ran."]
    expected = fill.predict([r["text"] for r in records], strategy="sample", seed=3, top_k=4, temperature=1.5,
                            top_p=0.9)
    for record, result in zip(records, expected):
        assert record["filled"] == result.filled
        got = [(c["token"], c["score"]) for m in record["masks"] for c in m["candidates"]]
        want = [(c.token, c.score) for m in result.masks for c in m.candidates]
        assert [t for t, _ in got] == [t for t, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)


def test_cli_reads_texts_from_files_in_order(run_dir, fill, tmp_path, capsys):
    from bertmath.cli import main

    many = tmp_path / "many.txt"
    many.write_text("the old [MASK] walked to the city\n\n[MASK] .\nMy sister [MASK] at the [MASK] in the park!\n",
                    encoding="utf-8")
    # options anywhere, also between the checkpoint and the texts (argparse's optional-positional trap)
    assert main(["fill-mask", str(run_dir), "--json", "first [MASK]", "--file", str(many)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    texts = ["first [MASK]", "the old [MASK] walked to the city", "[MASK] .", "My sister [MASK] at the [MASK] in the park!"]
    assert [r["text"] for r in records] == texts
    assert [r["filled"] for r in records] == [r.filled for r in fill.predict(texts)]


def test_cli_truncate(run_dir, run_main):
    long_text = "the cat [MASK] " + "sat on the mat " * 30
    assert_one_line_error(run_main("fill-mask", run_dir, long_text), "tokens long", "limit of 64", "--truncate")
    proc = run_main("fill-mask", run_dir, long_text, "--truncate", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["truncated_tokens"] > 0


def test_cli_no_mask(run_dir, run_main):
    assert_one_line_error(run_main("fill-mask", run_dir, "hello"), "no [MASK] in 'hello'")


def test_cli_missing_checkpoint(tmp_path, run_main):
    assert_one_line_error(run_main("fill-mask", tmp_path / "missing", "a [MASK]"), "missing", "not found")


def test_cli_corrupted_weights_name_the_file(tmp_path, run_dir):
    step = tmp_path / "step"
    shutil.copytree(sorted(run_dir.glob("step-*"))[-1], step)
    weights = step / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    assert_one_line_error(run_cli("fill-mask", step, "a [MASK]"), str(weights))


def test_cli_config_that_does_not_match_the_weights(tmp_path, run_dir, run_main):
    step = tmp_path / "step"
    shutil.copytree(sorted(run_dir.glob("step-*"))[-1], step)
    config = step / "config.yaml"
    config.write_text(config.read_text().replace("hidden_size: 32", "hidden_size: 48"))
    line = assert_one_line_error(run_main("fill-mask", step, "a [MASK]"), str(step))
    shapes = r"tensor 'bert\.[\w.]+' has shape \((32,|\d+, 32)\) in the checkpoint but \((48,|\d+, 48)\)"
    assert re.search(shapes, line), line


@pytest.mark.parametrize("args, fragment", [
    (["--strategy", "beam"], "invalid choice: 'beam'"),
    (["--top-k", "0"], "top_k"),
    (["--temperature", "0"], "temperature"),
    (["--top-p", "1.5"], "top_p"),
])
def test_cli_bad_options(run_dir, args, fragment, run_main):
    proc = run_main("fill-mask", run_dir, "a [MASK]", *args)
    assert_one_line_error(proc, fragment)
    assert proc.returncode == 2


def test_cli_export(tmp_path, run_dir, run_main):
    proc = run_main("export", run_dir, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "vocab.txt").is_file()
    assert_one_line_error(run_main("export", tmp_path / "missing", tmp_path / "out2"), "not found")
