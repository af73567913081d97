"""bertmath.viz.embed and `bertmath embed`: neighbours, analogies and contextual vectors equal what
torch computes from the same weights; the defaults work on the Shakespeare and bert-base-uncased vocabularies
and give the textbook answers on MiniLM; the command prints, plots, and gives one-line errors."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from bertmath.viz import embed as ex
from bertmath.cli import main
from bertmath.errors import ConfigError, InputError
from bertmath.pretrained import load_checkpoint_tokenizer

from helpers import assert_one_line_error, assert_png, minilm_dir

pytest.importorskip("matplotlib")

# float32 cosines of one implementation against another: rounding of D-term sums
ATOL_F32 = 1e-6
TINY_OPTIONS = dict(word="king", analogy=("king", "man", "cat"), context_word="the",
                    sentences=["the cat sat on the mat.", "the dog ran to the river."])  # all in the 200-piece vocab


@pytest.fixture(scope="module")
def space(tiny_run):
    return ex.EmbeddingSpace.from_pretrained(tiny_run)


def test_neighbours_and_analogy_equal_a_brute_force_search(space):
    E = space.E
    whole = [i for i, t in enumerate(space.tokens)
             if t and not t.startswith("##") and not (t.startswith("[") and t.endswith("]"))]
    king, man, cat = (space.tokenizer.token_to_id(w) for w in ("king", "man", "cat"))

    def brute_force(vector, exclude):
        scores = {i: float(F.cosine_similarity(E[i], vector, dim=0)) for i in whole if i not in exclude}
        return sorted(scores.items(), key=lambda item: -item[1])[:5]

    for found, (expected_id, expected_score) in zip(space.neighbours("king", 5), brute_force(E[king], {king})):
        assert found.token == space.tokens[expected_id]
        assert found.similarity == pytest.approx(expected_score, abs=ATOL_F32)
    answers = space.analogy("king", "man", "cat", 5)
    expected = brute_force(E[king] - E[man] + E[cat], {king, man, cat})
    assert [a.token for a in answers] == [space.tokens[i] for i, _ in expected]
    assert [a.similarity for a in answers] == pytest.approx([s for _, s in expected], abs=ATOL_F32)


def test_contextual_vectors_are_the_last_hidden_state_at_the_word(space):
    sentences = ["the cat sat on the mat.", "a dog ran to the river."]
    vectors = space.contextual_vectors("the", sentences)
    for sentence, vector in zip(sentences, vectors):
        encoding = space.tokenizer.encode(sentence)
        with torch.no_grad():
            h = space.model(torch.tensor([encoding.ids])).last_hidden_state[0]
        assert_close(vector, h[encoding.tokens.index("the")])


def test_pca_2d_projects_on_the_directions_of_largest_variance():
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 0] *= 5  # one direction of clearly largest variance
    coordinates = ex.pca_2d(x)
    assert coordinates.shape == (20, 2)
    assert_close(coordinates.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(float(coordinates[:, 0] @ coordinates[:, 1])) < 1e-9  # uncorrelated axes
    top_two = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)[:2]  # the covariance's two largest eigenvalues
    assert_close(coordinates.var(0), top_two, atol=1e-10, rtol=1e-10)
    assert (coordinates.gather(0, coordinates.abs().argmax(0, keepdim=True)) > 0).all()  # signs fixed
    assert_close(ex.pca_2d(-x), coordinates)  # the same picture whatever signs the SVD picks


def test_report_and_plot(space, tmp_path):
    report = ex.explore(space, top_k=4, **TINY_OPTIONS)
    assert len(report.neighbours) == len(report.answers) == 4
    assert report.context_similarity.shape == (2, 2)
    assert_close(report.context_similarity.diagonal(), torch.ones(2))
    assert {"king", "man", "cat", report.answers[0].token} <= set(report.projection)
    text = report.to_text()
    assert "nearest neighbours of 'king'" in text and "king − man + cat" in text and "[2] the dog ran" in text
    assert_png(ex.plot_report(report, tmp_path / "embed.png"))


def test_words_that_are_not_one_token_are_errors(space):
    with pytest.raises(InputError, match=r"word 'woman' is not a single whole-word token .* \(WordPiece gives: w ##o"):
        space.neighbours("woman", 3)
    with pytest.raises(InputError, match="word 'king queen' is not a single"):
        space.neighbours("king queen", 3)
    with pytest.raises(InputError, match=r"sentence 2 'a dog ran\.' does not contain 'cat'"):
        space.contextual_vectors("cat", ["the cat sat.", "a dog ran."])
    with pytest.raises(ConfigError, match="at least two sentences"):
        ex.explore(space, **{**TINY_OPTIONS, "sentences": ["the cat sat."]})
    with pytest.raises(ConfigError, match="top_k"):
        ex.explore(space, top_k=0, **TINY_OPTIONS)


@pytest.mark.slow
def test_defaults_are_single_tokens_in_both_vocabularies(shakespeare_tokenizer):
    words = {ex.DEFAULT_WORD, *ex.DEFAULT_ANALOGY, ex.DEFAULT_CONTEXT_WORD}
    for tokenizer in (shakespeare_tokenizer, load_checkpoint_tokenizer(minilm_dir())):
        for word in words:
            assert tokenizer.encode(word, add_special_tokens=False).tokens == [word]
        for sentence in ex.DEFAULT_SENTENCES:
            assert ex.DEFAULT_CONTEXT_WORD in tokenizer.encode(sentence).tokens


def test_minilm_gives_the_textbook_answers():
    report = ex.explore(ex.EmbeddingSpace.from_pretrained(minilm_dir()))
    assert "queen" in [n.token for n in report.neighbours[:3]]
    assert report.answers[0].token == "queen"  # king − man + woman
    # the animal (sentences 1, 2) and the verb (3, 4): each closer to its own sense than to the other
    similarity = report.context_similarity
    assert similarity[0, 1] > 0.85 and similarity[2, 3] > 0.7
    assert similarity[:2, 2:].max() < min(similarity[0, 1], similarity[2, 3])


# --- the command line -------------------------------------------------------------------------------------


def test_cli_embed(tiny_run, tmp_path, capsys):
    out = tmp_path / "embed.png"
    argv = ["embed", str(tiny_run), "--out", str(out), "--word", "king", "--analogy", "king", "man", "cat",
            "--context-word", "the", "--sentence", "the cat sat on the mat.", "--sentence", "a dog saw the river.",
            "--top-k", "3"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "nearest neighbours of 'king'" in lines[1] and lines[-1] == f"wrote {out}"
    assert sum(line.startswith(("   1.", "   2.", "   3.")) for line in lines) == 6  # 3 neighbours, 3 answers
    assert_png(out)


def test_cli_embed_errors(tiny_run, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "e.png")
    assert main(["embed", str(tmp_path / "nowhere"), "--out", out]) == 1
    assert_one_line_error(capsys, "embed", str(tmp_path / "nowhere"), "checkpoint not found")
    assert main(["embed", str(tiny_run), "--out", out, "--word", "zebra"]) == 1  # default analogy: "woman" too
    assert_one_line_error(capsys, "embed", "word 'zebra' is not a single whole-word token", "WordPiece gives")
    assert main(["embed", str(tiny_run), "--out", out]) == 1  # defaults: "woman" is not in the tiny vocabulary
    assert_one_line_error(capsys, "embed", "word 'woman'")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert main(["embed", str(tiny_run), "--out", out]) == 1
    assert_one_line_error(capsys, "embed", "matplotlib", "pip install 'bertmath[plot]'")
    assert not (tmp_path / "e.png").exists()
