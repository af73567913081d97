"""bertmath.viz.figures and `bertmath figures`: every figure is drawn from bertmath's functions, and the
numbers it plots equal torch's (float64 unless stated: tolerances below); the command writes nine PNGs and
gives one-line errors."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from bertmath.viz import figures as math_figures
from bertmath.cli import main
from bertmath.config import DataConfig
from bertmath.masking import mask_tokens
from bertmath.tokenizer import special_tokens

from helpers import assert_one_line_error, assert_png

pytest.importorskip("matplotlib")

F64 = dict(atol=1e-12, rtol=1e-10)  # from-scratch float64 formulas vs torch's kernels: rounding only
NAMES = ["01_exp.png", "02_sigmoid.png", "03_relu_gelu.png", "04_softmax_temperature.png", "05_greedy_vs_top_k.png",
         "06_one_hot_vs_dense.png", "07_attention_scaling.png", "08_masking.png", "09_wordpiece.png"]


@pytest.fixture(scope="module")
def vocabulary(tiny_run):
    return math_figures.load_vocabulary(tiny_run)


def test_exp_and_the_softmax_that_does_not_overflow():
    _, data = math_figures.draw_exp()
    assert_close(data["exp"], torch.exp(data["x"]), **F64)
    assert_close(data["softmax_large"], torch.softmax(data["large_logits"], -1))  # float32 defaults
    assert data["softmax_large"].isfinite().all() and data["naive_softmax_large"].isnan().all()
    at = data["overflow_at"]["float32"]
    assert torch.exp(torch.tensor(at - 0.01)).isfinite() and torch.exp(torch.tensor(at + 0.01)).isinf()
    assert at == pytest.approx(88.72, abs=0.01) and data["overflow_at"]["float16"] == pytest.approx(11.09, abs=0.01)


def test_sigmoid_and_its_slope():
    _, data = math_figures.draw_sigmoid()
    s = torch.sigmoid(data["x"])
    assert_close(data["sigmoid"], s, **F64)
    assert_close(data["slope"], s * (1 - s), **F64)
    assert float(data["slope"].max()) == pytest.approx(0.25)


def test_relu_gelu_and_their_slopes():
    _, data = math_figures.draw_relu_gelu()
    x = data["x"]
    assert_close(data["relu"], F.relu(x), **F64)
    assert_close(data["gelu"], F.gelu(x), **F64)
    assert_close(data["gelu_tanh"], F.gelu(x, approximate="tanh"), **F64)
    t = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(F.gelu(t).sum(), t)
    assert_close(data["gelu_slope"], reference, **F64)
    assert_close(data["relu_slope"], (x > 0).double(), **F64)
    assert float(data["gelu"].min()) == pytest.approx(-0.170, abs=1e-3)


def test_softmax_at_several_temperatures():
    _, data = math_figures.draw_softmax_temperature()
    z, T = data["logits"], data["temperatures"]
    assert_close(data["probs"], torch.softmax(z / T[:, None], dim=-1), **F64)
    assert_close(data["entropy"], torch.distributions.Categorical(probs=data["probs"]).entropy(), **F64)
    assert (data["entropy"].diff() > 0).all()  # hotter is flatter


def test_greedy_and_top_k_sampling_draw_from_the_right_distribution():
    _, data = math_figures.draw_greedy_vs_top_k(top_k=3, draws=1000)
    p = data["probs"]
    assert_close(p, torch.softmax(torch.tensor(math_figures.TOY_LOGITS, dtype=torch.float64), -1), **F64)
    assert data["greedy"] == int(p.argmax())
    top = data["top_k"]
    assert top["support"].tolist() == torch.topk(p, 3).indices.tolist()
    q = torch.zeros_like(p)
    q[top["support"]] = p[top["support"]] / p[top["support"]].sum()
    assert_close(top["q"], q, **F64)
    # 1000 seeded draws: each frequency within 0.05 of q (about 3.5 standard deviations), none outside the top k
    assert (top["frequency"].double() - q).abs().max() < 0.05
    assert top["frequency"][q == 0].sum() == 0 and top["frequency"].sum() == pytest.approx(1.0)
    assert (data["full"]["frequency"].double() - p).abs().max() < 0.05


def test_one_hot_times_E_is_the_embedding_lookup(vocabulary):
    _, data = math_figures.draw_one_hot_vs_dense(vocabulary)
    E = vocabulary.word_embeddings.double()
    assert data["words"] and data["ids"].tolist() == [vocabulary.tokenizer.token_to_id(w) for w in data["words"]]
    assert_close(data["dense"], E[data["ids"]], **F64)
    assert data["lookup_gap"] == 0
    n = len(data["words"])
    assert_close(data["one_hot_cosine"], torch.eye(n, dtype=torch.float64), **F64)
    assert_close(data["dense_cosine"], F.cosine_similarity(E[data["ids"]][:, None], E[data["ids"]][None], dim=-1),
                 **F64)


def test_attention_with_and_without_scaling():
    _, data = math_figures.draw_attention_scaling(d_k=64)
    scores = data["q"] @ data["k"].T
    assert_close(data["scaled"], torch.softmax(scores / 8, dim=-1), **F64)
    assert_close(data["unscaled"], torch.softmax(scores, dim=-1), **F64)
    peak = data["mean_max_weight"]
    assert peak["unscaled"][-1] > 0.9 and max(peak["scaled"]) < 0.3  # saturation without the √d_k


def test_masking_of_a_line_of_hamlet(vocabulary):
    from bertmath.corpus import _embedded_works

    assert " ".join(math_figures.HAMLET.split()[:8]) in " ".join(" ".join(_embedded_works()).split())
    tokenizer = vocabulary.tokenizer
    _, data = math_figures.draw_masking(tokenizer, repeats=2000)
    specials = special_tokens(tokenizer)
    ids = data["ids"][None]
    masked, labels = mask_tokens(ids, specials, tokenizer.get_vocab_size(), DataConfig(),
                                 torch.Generator().manual_seed(data["seed"]))
    assert torch.equal(data["masked"], masked[0]) and torch.equal(data["labels"], labels[0])
    outcome = data["outcome"]
    assert all(outcome[name].any() for name in ("[MASK]", "random token", "unchanged"))
    assert torch.equal(outcome["chosen"], outcome["[MASK]"] | outcome["random token"] | outcome["unchanged"])
    counts, chosen = data["counts"], data["counts"]["chosen"]
    assert chosen / data["maskable"] == pytest.approx(0.15, abs=0.01)
    assert counts["[MASK]"] / chosen == pytest.approx(0.8, abs=0.02)
    assert counts["random token"] / chosen == pytest.approx(0.1, abs=0.02)
    assert counts["unchanged"] / chosen == pytest.approx(0.1, abs=0.02)


def test_wordpiece_pieces_spell_the_word(vocabulary):
    _, data = math_figures.draw_wordpiece(vocabulary)
    for word, pieces in zip(data["words"], data["pieces"]):
        assert pieces == vocabulary.tokenizer.encode(word, add_special_tokens=False).tokens
        # the pieces spell the word, or (a letter the tiny vocabulary never saw) the word is [UNK] as a whole
        assert "".join(p.removeprefix("##") for p in pieces) == word or pieces == ["[UNK]"]
    assert any(len(pieces) > 2 for pieces in data["pieces"])


@pytest.mark.slow
def test_default_vocabulary_is_shakespeares(shakespeare_tokenizer, monkeypatch):
    monkeypatch.setattr(math_figures, "shakespeare_tokenizer", lambda: shakespeare_tokenizer)
    vocabulary = math_figures.load_vocabulary()
    assert vocabulary.word_embeddings.shape == (8192, math_figures.DENSE_SIZE)
    assert float(vocabulary.word_embeddings.std()) == pytest.approx(0.02, rel=0.05)
    assert [w for w, _ in math_figures.single_token_words(shakespeare_tokenizer, ["king", "queen", "unkindness"], 3)] \
        == ["king", "queen", "unkindness"]
    _, data = math_figures.draw_wordpiece(vocabulary)
    assert len(data["pieces"][data["words"].index("antidisestablishmentarianism")]) > 3


# --- the command line -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_figures_writes_nine_pngs(tiny_run, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["figures", "--out", str(out), "--checkpoint", str(tiny_run)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {out / name}" for name in NAMES]
    for name in NAMES:
        assert_png(out / name)
    assert sorted(p.name for p in out.iterdir()) == NAMES  # no temporary file left behind


def test_cli_figures_errors(tmp_path, capsys, monkeypatch):
    assert main(["figures", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "nowhere")]) == 1
    assert_one_line_error(capsys, "figures", str(tmp_path / "nowhere"), "not found")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert main(["figures", "--out", str(tmp_path / "figures")]) == 1
    assert_one_line_error(capsys, "figures", "matplotlib", "pip install 'bertmath[plot]'")
    assert not (tmp_path / "figures").exists()


def test_every_figure_is_in_the_docs():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "math.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"(figures/{name})" in docs, name
