"""`bertmath figures`: the math of BERT as pictures, each value computed by bertmath's own functions.

    file                        what it shows                                computed by
    01_exp.png                  e^x; it overflows float32 past x = 88.7      torch.exp, functional.softmax
    02_sigmoid.png              σ(x) = 1/(1 + e^{-x}), σ'(x) = σ(1 - σ)      functional.sigmoid
    03_relu_gelu.png            relu(x) = max(x, 0) vs gelu(x) = x Φ(x)      functional.relu, functional.gelu
    04_softmax_temperature.png  softmax(z/T) of one logit vector, four T     functional.softmax
    05_greedy_vs_top_k.png      greedy argmax vs sampling from the top k     fill_mask.sampling_support, draw
    06_one_hot_vs_dense.png     one-hot x ∈ {0,1}^V vs dense E[id] ∈ R^D     functional.cosine_similarity
    07_attention_scaling.png    softmax(QKᵀ/√d_k) vs softmax(QKᵀ), toy Q, K  functional.scaled_dot_product_attention
    08_masking.png              80/10/10 masking of a line of Hamlet         masking.mask_tokens
    09_wordpiece.png            a WordPiece vocabulary on rare words         tokenizer.train_tokenizer

Each `draw_*` function returns (figure, data): `data` holds the arrays the figure plots, so that tests can
check them against torch. `write_math_figures` draws them all into a directory. Figures 06, 08 and 09 need a
vocabulary: a checkpoint's tokenizer (and its embedding matrix E), or by default a WordPiece vocabulary of
8192 pieces trained on the embedded Shakespeare corpus (what configs/small.yaml trains; ~1 s) with E at
BERT's initialisation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from .. import functional as BF
from ..config import Config, DataConfig, ModelConfig
from ..data import train_corpus_tokenizer
from ..fill_mask import draw, sampling_support
from ..io import check_output
from ..masking import IGNORE_INDEX, mask_tokens
from ..model import BertModel
from ..pretrained import load_model_and_tokenizer
from ..tokenizer import special_tokens
from .plotting import checkpoint_name, heatmap, import_matplotlib, new_figure, save_png

SHAKESPEARE_VOCAB_SIZE = 8192  # configs/small.yaml's model.vocab_size
DENSE_SIZE = 128  # configs/small.yaml's hidden_size: the width of the random-init E when no checkpoint is given
SEED = 0  # every random draw in these figures comes from a generator seeded with this
HAMLET = ("To be, or not to be,--that is the question:-- Whether 'tis nobler in the mind to suffer "
          "The slings and arrows of outrageous fortune Or to take arms against a sea of troubles")  # III.1
EMBEDDING_WORDS = ["king", "queen", "man", "woman", "night", "day", "cat", "dog", "the", "a"]
LONG_WORDS = ["king", "kingdom", "unkindness", "tokenization", "transformers", "antidisestablishmentarianism",
              "honorificabilitudinitatibus"]  # the last: Love's Labour's Lost V.1, in the embedded corpus
OUTCOME_COLOURS = {"not chosen": "#eeeeee", "[MASK]": "#f4a6a6", "random token": "#f9d38c", "unchanged": "#a8dba8"}


@dataclass(frozen=True)
class Vocabulary:
    """What figures 06, 08 and 09 need of a model: its tokenizer and its token-embedding matrix."""

    tokenizer: Tokenizer
    word_embeddings: Tensor  # E (V, D): row v is token v's dense vector
    tokenizer_source: str  # where each comes from, for the figures' titles
    embeddings_source: str


def shakespeare_tokenizer(vocab_size: int = SHAKESPEARE_VOCAB_SIZE) -> Tokenizer:
    """A WordPiece vocabulary trained as `bertmath pretrain configs/small.yaml` trains it: on the train split
    of the embedded Shakespeare corpus (one document per paragraph), lowercased."""
    return train_corpus_tokenizer(Config(model=ModelConfig(vocab_size=vocab_size)))[0]


def load_vocabulary(checkpoint: str | Path | None = None) -> Vocabulary:
    """The tokenizer and E of a bertmath or transformers checkpoint; without one, `shakespeare_tokenizer()`
    with E ~ N(0, 0.02²) of width DENSE_SIZE (BERT's initialisation, seeded)."""
    if checkpoint is not None:
        model, tokenizer = load_model_and_tokenizer(BertModel, checkpoint)
        source = f"checkpoint {checkpoint_name(checkpoint)}"
        return Vocabulary(tokenizer, model.embeddings.word_embeddings.weight.detach(), source, f"E of {source}")
    tokenizer = shakespeare_tokenizer()
    generator = torch.Generator().manual_seed(SEED)
    E = torch.empty(tokenizer.get_vocab_size(), DENSE_SIZE)
    torch.nn.init.normal_(E, 0.0, ModelConfig().initializer_range, generator=generator)
    return Vocabulary(tokenizer, E, "trained on the embedded Shakespeare corpus", "E at BERT's init N(0, 0.02²)")


def write_math_figures(out_dir: str | Path, checkpoint: str | Path | None = None) -> list[Path]:
    """Draw every figure into `out_dir` (created if missing) as NN_name.png; returns the paths in order."""
    # Before the vocabulary: a missing matplotlib or an unusable out_dir fails at once, not after training one.
    import_matplotlib()
    check_output(out_dir, directory=True)
    vocabulary = load_vocabulary(checkpoint)
    drawings = {
        "01_exp.png": draw_exp,
        "02_sigmoid.png": draw_sigmoid,
        "03_relu_gelu.png": draw_relu_gelu,
        "04_softmax_temperature.png": draw_softmax_temperature,
        "05_greedy_vs_top_k.png": draw_greedy_vs_top_k,
        "06_one_hot_vs_dense.png": lambda: draw_one_hot_vs_dense(vocabulary),
        "07_attention_scaling.png": draw_attention_scaling,
        "08_masking.png": lambda: draw_masking(vocabulary.tokenizer),
        "09_wordpiece.png": lambda: draw_wordpiece(vocabulary),
    }
    return [save_png(drawing()[0], Path(out_dir) / name) for name, drawing in drawings.items()]


# --- 01-03: the elementwise functions ----------------------------------------------------------------


def draw_exp():
    """e^x on a linear axis (×e ≈ 2.718 per unit step) and on a log axis against the largest float32 and
    float16 numbers; beside it, functional.softmax of logits near 1000, where e^x alone overflows."""
    x = torch.linspace(-4, 4, 401, dtype=torch.float64)
    x_wide = torch.linspace(-20, 100, 601, dtype=torch.float64)
    large = torch.tensor([1000.0, 999.0, 998.0])
    naive = torch.exp(large) / torch.exp(large).sum()  # the textbook formula, in float32: inf / inf = NaN
    data = {"x": x, "exp": torch.exp(x), "x_wide": x_wide, "exp_wide": torch.exp(x_wide), "large_logits": large,
            "softmax_large": BF.softmax(large), "naive_softmax_large": naive,
            "overflow_at": {name: math.log(torch.finfo(dtype).max)
                            for name, dtype in (("float32", torch.float32), ("float16", torch.float16))}}

    fig = new_figure(13, 4.8)
    ax_lin, ax_log = fig.subplots(1, 2)
    ax_lin.plot(x, data["exp"], color="tab:blue", linewidth=2, label="$e^x$")
    for n in range(0, 5):
        ax_lin.plot(n, math.exp(n), "o", color="tab:blue")
        ax_lin.annotate(f"$e^{n}$ = {math.exp(n):.3g}", (n, math.exp(n)), textcoords="offset points",
                        xytext=(-60, 6), fontsize=9)
    ax_lin.set(title="$e^x$: positive everywhere, ×e ≈ 2.718 for every +1 in x", xlabel="x", ylabel="$e^x$")
    ax_lin.legend(loc="upper left")

    ax_log.semilogy(x_wide, data["exp_wide"], color="tab:blue", linewidth=2, label="$e^x$ (float64)")
    for (name, at), colour in zip(data["overflow_at"].items(), ("tab:red", "tab:orange")):
        ax_log.axhline(math.exp(at), color=colour, linestyle="--", linewidth=1,
                       label=f"largest {name} = {math.exp(at):.3g}: $e^x$ overflows for x > {at:.1f}")
    p = ", ".join(f"{v:.3f}" for v in data["softmax_large"].tolist())
    ax_log.text(0.02, 0.97, f"logits z = (1000, 999, 998), float32:\n"
                            f"  $e^z / \\Sigma e^z$ = {', '.join(f'{v:.0f}' for v in naive.tolist())} (inf/inf)\n"
                            f"  functional.softmax(z) = ({p})\n  (subtracts max z first: every exponent <= 0)",
                transform=ax_log.transAxes, va="top", fontsize=9, family="monospace",
                bbox=dict(facecolor="white", edgecolor="lightgray"))
    ax_log.set(title="$e^x$ on a log axis: a straight line, past every float's range", xlabel="x",
               ylabel="$e^x$ (log scale)")
    ax_log.legend(loc="lower right", fontsize=9)
    for ax in (ax_lin, ax_log):
        ax.grid(alpha=0.3)
    return fig, data


def _slope(f, x: Tensor) -> Tensor:
    """f'(x) by autograd through f itself (elementwise f): the derivative of bertmath's code, not a formula."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return grad


def draw_sigmoid():
    """σ(x) = 1/(1 + e^{-x}) (functional.sigmoid) and its slope σ'(x) = σ(x)(1 - σ(x)), by autograd."""
    x = torch.linspace(-8, 8, 801, dtype=torch.float64)
    data = {"x": x, "sigmoid": BF.sigmoid(x).detach(), "slope": _slope(BF.sigmoid, x)}
    flat = float(x[(data["slope"] >= 0.01)].max())  # beyond ±flat the slope is < 0.01

    fig = new_figure(13, 4.5)
    ax_f, ax_d = fig.subplots(1, 2)
    ax_f.plot(x, data["sigmoid"], color="tab:blue", linewidth=2, label="σ(x) = 1 / (1 + $e^{-x}$)")
    ax_f.axhline(0.5, color="gray", linewidth=0.8, linestyle=":")
    ax_f.plot(0, 0.5, "o", color="tab:blue")
    ax_f.annotate("σ(0) = 0.5", (0, 0.5), textcoords="offset points", xytext=(10, -15))
    ax_f.set(title="Sigmoid: any real number → a probability in (0, 1)", xlabel="x", ylabel="σ(x)")
    ax_d.plot(x, data["slope"], color="tab:red", linewidth=2, label="σ'(x) = σ(x)(1 − σ(x)) (autograd)")
    ax_d.plot(0, 0.25, "o", color="tab:red")
    ax_d.annotate("σ'(0) = 0.25, the largest slope", (0, 0.25), textcoords="offset points", xytext=(10, -4))
    for side in (-flat, flat):
        ax_d.axvline(side, color="gray", linestyle="--", linewidth=1)
    ax_d.text(flat + 0.2, 0.12, f"|x| > {flat:.1f}:\nσ'(x) < 0.01,\nsaturated: the\ngradient vanishes",
              fontsize=9)
    ax_d.set(title="Its derivative: small everywhere but near 0", xlabel="x", ylabel="σ'(x)")
    for ax in (ax_f, ax_d):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
    return fig, data


def draw_relu_gelu():
    """relu(x) = max(x, 0) vs gelu(x) = x Φ(x) (erf form) and its tanh approximation; their slopes by autograd."""
    x = torch.linspace(-4, 4, 801, dtype=torch.float64)
    gelu_tanh = functools.partial(BF.gelu, approximate="tanh")
    data = {"x": x, "relu": BF.relu(x), "gelu": BF.gelu(x), "gelu_tanh": gelu_tanh(x),
            "relu_slope": _slope(BF.relu, x), "gelu_slope": _slope(BF.gelu, x)}
    low = int(data["gelu"].argmin())

    fig = new_figure(13, 4.8)
    ax_f, ax_d = fig.subplots(1, 2)
    ax_f.plot(x, data["relu"], color="tab:gray", linewidth=2, label="relu(x) = max(x, 0)")
    ax_f.plot(x, data["gelu"], color="tab:blue", linewidth=2, label="gelu(x) = x Φ(x) = ½x(1 + erf(x/√2))")
    ax_f.plot(x, data["gelu_tanh"], color="tab:orange", linewidth=1, linestyle="--",
              label="gelu, tanh form ½x(1 + tanh(√(2/π)(x + 0.044715x³)))")
    ax_f.plot(x[low], data["gelu"][low], "o", color="tab:blue")
    ax_f.annotate(f"minimum gelu({float(x[low]):.2f}) = {float(data['gelu'][low]):.3f}", (x[low], data["gelu"][low]),
                  textcoords="offset points", xytext=(-110, 25), fontsize=9,
                  arrowprops=dict(arrowstyle="->", color="gray"))
    gap = float((data["gelu"] - data["gelu_tanh"]).abs().max())
    ax_f.text(0.02, 0.68, f"max |erf form − tanh form| = {gap:.1e}", transform=ax_f.transAxes, fontsize=9)
    ax_f.set(title="ReLU vs GELU: GELU is smooth and lets small negatives through", xlabel="x", ylabel="f(x)",
             ylim=(-0.6, 4.1))
    ax_d.plot(x, data["relu_slope"], color="tab:gray", linewidth=2, label="relu'(x): 0 or 1")
    ax_d.plot(x, data["gelu_slope"], color="tab:blue", linewidth=2, label="gelu'(x) (autograd)")
    top, bottom = int(data["gelu_slope"].argmax()), int(data["gelu_slope"].argmin())
    for i, dy in ((top, 8), (bottom, -16)):
        ax_d.annotate(f"{float(data['gelu_slope'][i]):.3f} at x = {float(x[i]):.2f}", (x[i], data["gelu_slope"][i]),
                      textcoords="offset points", xytext=(-30, dy), fontsize=9)
    ax_d.set(title="Slopes: ReLU's jumps from 0 to 1, GELU's is smooth",
             xlabel="x", ylabel="f'(x)", ylim=(-0.3, 1.3))
    for ax in (ax_f, ax_d):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
    return fig, data


# --- 04-05: softmax, temperature, sampling ----------------------------------------------------------


CANDIDATES = ["question", "point", "answer", "matter", "end", "truth", "way", "word"]  # "... that is the [MASK]"
TOY_LOGITS = [3.0, 1.8, 1.3, 0.9, 0.5, 0.0, -0.5, -1.0]


def draw_softmax_temperature(temperatures: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)):
    """p = softmax(z/T) (functional.softmax) of one logit vector at each temperature T, with the entropy
    H(p) = -Σ_i p_i log p_i (functional.log_softmax): T < 1 sharpens, T > 1 flattens, T → ∞ is uniform."""
    z = torch.tensor(TOY_LOGITS, dtype=torch.float64)
    t = torch.tensor(temperatures, dtype=torch.float64)[:, None]  # (n_T, 1)
    probs = BF.softmax(z / t)  # (n_T, V)
    entropy = -(probs * BF.log_softmax(z / t)).sum(-1)  # (n_T,)
    data = {"logits": z, "temperatures": t[:, 0], "probs": probs, "entropy": entropy}

    fig = new_figure(14, 4.6)
    axes = fig.subplots(1, len(temperatures), sharey=True)
    for ax, T, p, h in zip(axes, temperatures, probs, entropy):
        bars = ax.bar(range(len(z)), p.tolist(), color="tab:blue" if T == 1 else "tab:purple")
        ax.bar_label(bars, [f"{v:.2f}" for v in p.tolist()], fontsize=8)
        ax.set_xticks(range(len(z)), CANDIDATES, rotation=60, fontsize=9)
        ax.set_title(f"T = {T:g}{' (plain softmax)' if T == 1 else ''}\nentropy H = {float(h):.2f} nats")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set(ylabel="p = softmax(z / T)", ylim=(0, 1.05))
    fig.suptitle(f"softmax(z/T) of the logits z = ({', '.join(f'{v:g}' for v in TOY_LOGITS)}) for "
                 f"\"to be or not to be, that is the [MASK]\"  (max entropy log {len(z)} = {math.log(len(z)):.2f})")
    return fig, data


def draw_greedy_vs_top_k(top_k: int = 3, draws: int = 1000):
    """One distribution p = softmax(z): greedy always writes argmax p (fill_mask.sampling_support with k = 1);
    top-k sampling draws from q = p restricted to the k most probable tokens and renormalised
    (fill_mask.sampling_support, fill_mask.draw); plain sampling (k = V) draws from p itself. Frequencies
    of `draws` seeded draws sit beside q."""
    p = BF.softmax(torch.tensor(TOY_LOGITS, dtype=torch.float64))
    greedy, _ = sampling_support(p, top_k=1)
    generator = torch.Generator().manual_seed(SEED)
    data = {"probs": p, "greedy": int(greedy[0])}
    for name, k in (("top_k", top_k), ("full", len(p))):
        support, support_p = sampling_support(p, top_k=k)
        counts = torch.zeros(len(p))
        for _ in range(draws):
            counts[support[draw(support_p, generator)]] += 1
        q = torch.zeros_like(p)
        q[support] = support_p / support_p.sum()
        data[name] = {"k": k, "support": support, "q": q, "frequency": counts / draws}

    fig = new_figure(15, 4.6)
    axes = fig.subplots(1, 3, sharey=True)
    positions = list(range(len(p)))
    colours = ["tab:green" if i == data["greedy"] else "tab:gray" for i in range(len(p))]
    bars = axes[0].bar(positions, p.tolist(), color=colours)
    axes[0].bar_label(bars, [f"{v:.2f}" for v in p.tolist()], fontsize=8)
    axes[0].set_title(f"Greedy: always argmax p = \"{CANDIDATES[data['greedy']]}\"\n"
                      f"(the same word every time, chance {float(p.max()):.2f} of being right)")
    axes[0].set_ylabel("probability")
    for ax, name, label in ((axes[1], "top_k", f"Top-k sampling, k = {top_k}"),
                            (axes[2], "full", f"Plain sampling (k = V = {len(p)})")):
        q, frequency = data[name]["q"], data[name]["frequency"]
        bars = ax.bar([i - 0.2 for i in positions], q.tolist(), width=0.4, color="tab:blue",
                      label="q: p cut to the top k, renormalised")
        ax.bar([i + 0.2 for i in positions], frequency.tolist(), width=0.4, color="tab:orange",
               label=f"frequency in {draws} draws (seeded)")
        ax.bar_label(bars, [f"{v:.2f}" if v > 0 else "0" for v in q.tolist()], fontsize=8)
        ax.set_title(f"{label}: draw x ~ q\n(tokens outside the top k are never drawn)" if name == "top_k"
                     else f"{label}: draw x ~ p\n(rare words come out now and then)")
        ax.legend(loc="upper right", fontsize=8)
    for ax in axes:
        ax.set_xticks(positions, CANDIDATES, rotation=60, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.0)
    fig.suptitle("Choosing a word from p = softmax(z): greedy vs sampling "
                 "(bertmath fill-mask --strategy greedy | sample)")
    return fig, data


# --- 06-07: embeddings and attention ----------------------------------------------------------------


def single_token_words(tokenizer: Tokenizer, candidates: list[str], limit: int) -> list[tuple[str, int]]:
    """(word, id) for the first `limit` candidates that the tokenizer keeps as one token."""
    found = []
    for word in candidates:
        encoding = tokenizer.encode(word, add_special_tokens=False)
        if len(encoding.ids) == 1 and encoding.tokens[0] == word:
            found.append((word, encoding.ids[0]))
    return found[:limit]


def draw_one_hot_vs_dense(vocabulary: Vocabulary, words: int = 5):
    """A word w as a one-hot x ∈ {0,1}^V (x_v = 1 iff v = id(w)) and as its dense vector e = xE = E[id(w)] ∈ R^D
    (the lookup is the matrix product that skips the zeros). Cosine similarities (functional.cosine_similarity)
    between words: one-hot vectors are all orthogonal (cos = 0), dense ones can say which words are alike."""
    E = vocabulary.word_embeddings.double()
    chosen = single_token_words(vocabulary.tokenizer, EMBEDDING_WORDS, words)
    ids = torch.tensor([i for _, i in chosen])
    one_hot = torch.nn.functional.one_hot(ids, E.shape[0]).double()  # (n, V)
    dense = one_hot @ E  # (n, D): the lookup E[ids] written as a product
    data = {"words": [w for w, _ in chosen], "ids": ids, "one_hot": one_hot, "dense": dense,
            "lookup_gap": float((dense - E[ids]).abs().max()),
            "one_hot_cosine": BF.cosine_similarity(one_hot[:, None], one_hot[None]),
            "dense_cosine": BF.cosine_similarity(dense[:, None], dense[None])}

    fig = new_figure(14, 8)
    (ax_hot, ax_dense), (ax_hot_cos, ax_dense_cos) = fig.subplots(2, 2)
    word, word_id = chosen[0]
    ax_hot.vlines(word_id, 0, 1, color="tab:red", linewidth=2)
    ax_hot.plot(word_id, 1, "o", color="tab:red")
    ax_hot.axhline(0, color="tab:gray", linewidth=1)
    left_half = word_id < E.shape[0] / 2  # the note goes on the side with more room
    ax_hot.annotate(f"x[{word_id}] = 1 (\"{word}\")\nthe other {E.shape[0] - 1:,} entries are 0", (word_id, 1),
                    textcoords="offset points", xytext=(8 if left_half else -8, -24), fontsize=9,
                    ha="left" if left_half else "right")
    ax_hot.set(title=f"One-hot: \"{word}\" as x ∈ {{0,1}}^V, V = {E.shape[0]:,} numbers", xlabel="token id",
               ylabel="x", xlim=(0, E.shape[0]), ylim=(-0.1, 1.15))
    ax_dense.bar(range(E.shape[1]), dense[0].tolist(), color="tab:blue", width=1.0)
    ax_dense.set(title=f"Dense: e = xE = E[{word_id}] ∈ R^D, D = {E.shape[1]} numbers "
                       f"({vocabulary.embeddings_source})\n"
                       f"max |xE − E[id]| = {data['lookup_gap']:.1g}: the embedding lookup is this product",
                 xlabel="dimension", ylabel="e")
    names = data["words"]
    heatmap(ax_hot_cos, data["one_hot_cosine"], names, names, vmin=-1, vmax=1, cmap="RdBu_r", fontsize=9)
    ax_hot_cos.set_title("cos(x_a, x_b) of one-hot vectors: every pair of words orthogonal")
    image = heatmap(ax_dense_cos, data["dense_cosine"], names, names, vmin=-1, vmax=1, cmap="RdBu_r", fontsize=9)
    ax_dense_cos.set_title(f"cos(e_a, e_b) of dense vectors ({vocabulary.embeddings_source}):\n"
                           "random at init (≈ 0); training moves words used alike closer")
    fig.colorbar(image, ax=[ax_hot_cos, ax_dense_cos], shrink=0.8, label="cosine similarity")
    ax_dense.grid(alpha=0.3)
    return fig, data


def draw_attention_scaling(tokens: tuple[str, ...] = ("the", "cat", "sat", "on", "mat"), d_k: int = 64):
    """A = softmax(QKᵀ/√d_k) vs softmax(QKᵀ) for Q, K with i.i.d. N(0, 1) entries (functional.
    scaled_dot_product_attention; it divides by √d_k, so Q·√d_k gives the unscaled softmax(QKᵀ)). q·k then
    has variance d_k: unscaled, the softmax saturates towards one-hot as d_k grows (and its gradient
    vanishes); scaled, the logits keep variance 1 at every d_k. Right: the mean largest weight of a row."""
    generator = torch.Generator().manual_seed(SEED)
    q, k = (torch.randn(1, 1, len(tokens), d_k, generator=generator, dtype=torch.float64) for _ in range(2))
    _, scaled = BF.scaled_dot_product_attention(q, k, k, return_weights=True)
    _, unscaled = BF.scaled_dot_product_attention(q * math.sqrt(d_k), k, k, return_weights=True)
    sizes = [2 ** n for n in range(11)]
    peak = {"scaled": [], "unscaled": []}
    for size in sizes:  # 128 rows of 16 keys each
        qs, ks = (torch.randn(128, 1, 16, size, generator=generator) for _ in range(2))
        peak["scaled"].append(float(BF.scaled_dot_product_attention(qs, ks, ks, return_weights=True)[1]
                                    .amax(-1).mean()))
        peak["unscaled"].append(float(BF.scaled_dot_product_attention(qs * math.sqrt(size), ks, ks,
                                                                      return_weights=True)[1].amax(-1).mean()))
    data = {"q": q[0, 0], "k": k[0, 0], "scaled": scaled[0, 0], "unscaled": unscaled[0, 0], "d_k_sizes": sizes,
            "mean_max_weight": peak}

    fig = new_figure(16, 5.2)
    ax_scaled, ax_unscaled, ax_peak = fig.subplots(1, 3)
    labels = list(tokens)
    score_std = float((q @ k.transpose(-2, -1)).std())
    heatmap(ax_scaled, data["scaled"], labels, labels, fontsize=10)
    ax_scaled.set_title(f"softmax(QKᵀ/√d_k), d_k = {d_k}\n"
                        f"logits' std ≈ {score_std / math.sqrt(d_k):.1f}: weights spread")
    image = heatmap(ax_unscaled, data["unscaled"], labels, labels, fontsize=10)
    ax_unscaled.set_title(f"softmax(QKᵀ), no scaling\nlogits' std ≈ {score_std:.1f}: nearly one-hot")
    for ax in (ax_scaled, ax_unscaled):
        ax.set(xlabel="key (attended to)", ylabel="query (attending)")
    fig.colorbar(image, ax=[ax_scaled, ax_unscaled], shrink=0.8, label="attention weight")
    ax_peak.semilogx(sizes, peak["scaled"], "o-", base=2, color="tab:blue", label="softmax(QKᵀ/√d_k)")
    ax_peak.semilogx(sizes, peak["unscaled"], "o-", base=2, color="tab:red", label="softmax(QKᵀ)")
    ax_peak.axhline(1 / 16, color="gray", linestyle=":", label="uniform over 16 keys (1/16)")
    ax_peak.set(title="Mean largest weight per row, 16 keys, random Q, K", xlabel="d_k (head size)",
                ylabel="mean max_j A_ij", ylim=(0, 1.05))
    ax_peak.grid(alpha=0.3)
    ax_peak.legend(loc="center right", fontsize=9)
    return fig, data


# --- 08-09: masking and WordPiece -------------------------------------------------------------------


def _outcomes(original: Tensor, masked: Tensor, labels: Tensor, mask_id: int) -> dict[str, Tensor]:
    """Which corruption each position got, as boolean tensors: chosen (a label), and of those [MASK],
    a random token, or left unchanged (a random draw of the same token counts as unchanged: 1 in V)."""
    chosen = labels != IGNORE_INDEX
    return {"chosen": chosen, "[MASK]": chosen & (masked == mask_id),
            "random token": chosen & (masked != mask_id) & (masked != original),
            "unchanged": chosen & (masked == original)}


def draw_masking(tokenizer: Tokenizer, text: str = HAMLET, repeats: int = 4000, columns: int = 11):
    """masking.mask_tokens with BERT's defaults (data.mlm_probability 0.15; of the chosen: 80% [MASK], 10% a
    random token, 10% unchanged) on one line of Hamlet: what the model sees at each position and which
    positions it is scored on; right, the measured shares over `repeats` seeded draws of the same line."""
    specials, data_config = special_tokens(tokenizer), DataConfig()
    ids = torch.tensor([tokenizer.encode(text).ids])  # (1, T) with [CLS] ... [SEP]
    vocab_size = tokenizer.get_vocab_size()
    # The first seed whose single draw shows all three replacements, so that the example shows each.
    for seed in range(SEED, SEED + 1000):
        masked, labels = mask_tokens(ids, specials, vocab_size, data_config, torch.Generator().manual_seed(seed))
        outcome = _outcomes(ids, masked, labels, specials.mask)
        if all(outcome[name].any() for name in ("[MASK]", "random token", "unchanged")):
            break
    many = ids.expand(repeats, -1)
    many_masked, many_labels = mask_tokens(many, specials, vocab_size, data_config,
                                           torch.Generator().manual_seed(SEED))
    counts = {name: int(v.sum()) for name, v in _outcomes(many, many_masked, many_labels, specials.mask).items()}
    maskable = int((~torch.isin(many, torch.tensor(specials.ids))).sum())
    data = {"ids": ids[0], "masked": masked[0], "labels": labels[0], "seed": seed,
            "outcome": {name: v[0] for name, v in outcome.items()}, "counts": counts, "maskable": maskable}

    tokens = [tokenizer.id_to_token(int(i)) for i in ids[0]]
    seen = [tokenizer.id_to_token(int(i)) for i in masked[0]]
    rows = math.ceil(len(tokens) / columns)
    fig = new_figure(16, 1.0 + 0.62 * rows)
    ax_tokens, ax_shares = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3.2, 1]})
    for i, (token, shown) in enumerate(zip(tokens, seen)):
        row, col = divmod(i, columns)
        kind = next((n for n in ("[MASK]", "random token", "unchanged") if outcome[n][0, i]), "not chosen")
        ax_tokens.text(col + 0.5, -row + 0.12, token, ha="center", va="center", fontsize=9, family="monospace",
                       bbox=dict(boxstyle="round,pad=0.25", facecolor=OUTCOME_COLOURS[kind], edgecolor="gray"))
        if kind != "not chosen":
            ax_tokens.text(col + 0.5, -row - 0.25, f"→ {shown}", ha="center", va="center", fontsize=8,
                           family="monospace", color="black")
    ax_tokens.set(xlim=(0, columns), ylim=(-rows + 0.4, 0.6))
    ax_tokens.axis("off")
    handles = [_patch(colour, name) for name, colour in OUTCOME_COLOURS.items()]
    ax_tokens.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=9,
                     title="each box: the original token; below a chosen one, what the model sees instead. "
                           "The loss is computed at the chosen positions only (label = original token)",
                     title_fontsize=9)
    ax_tokens.set_title(f"Hamlet III.1, {len(tokens)} tokens, one draw (seed {seed}): "
                        f"{int(outcome['chosen'].sum())} of {len(tokens) - 2} maskable tokens chosen")

    chosen = counts["chosen"]
    shares = [100 * chosen / maskable] + [100 * counts[n] / max(chosen, 1) for n in ("[MASK]", "random token",
                                                                                      "unchanged")]
    bars = ax_shares.bar(range(4), shares, color=["tab:gray"] + [OUTCOME_COLOURS[n] for n in
                                                                 ("[MASK]", "random token", "unchanged")],
                         edgecolor="gray")
    ax_shares.bar_label(bars, [f"{v:.1f}%" for v in shares], fontsize=9)
    ax_shares.set_xticks(range(4), ["chosen\n(of all)", "[MASK]\n(of chosen)", "random\n(of chosen)",
                                    "unchanged\n(of chosen)"], fontsize=8)
    ax_shares.set(title=f"{repeats} draws: {maskable:,} tokens\n(BERT: 15%, then 80/10/10)", ylabel="%",
                  ylim=(0, 100))
    ax_shares.grid(axis="y", alpha=0.3)
    return fig, data


def _patch(colour: str, label: str):
    from matplotlib.patches import Patch
    return Patch(facecolor=colour, edgecolor="gray", label=label)


def draw_wordpiece(vocabulary: Vocabulary, words: list[str] = LONG_WORDS):
    """WordPiece (greedy longest match from the left; "##" marks a piece that continues a word) on words from
    common to rare: a frequent word is one token, a rare one is spelt with the pieces the vocabulary has."""
    tokenizer = vocabulary.tokenizer
    pieces = [tokenizer.encode(word, add_special_tokens=False).tokens for word in words]
    data = {"words": list(words), "pieces": pieces}

    fig = new_figure(10, 1.0 + 0.55 * len(words))
    ax = fig.subplots()
    renderer = fig.canvas.get_renderer()
    for row, word_pieces in enumerate(pieces):
        offset = 0.0  # points from the axes' left edge: independent of how the layout later sizes the axes
        for n, piece in enumerate(word_pieces):
            colour = "#a8c8f0" if n == 0 else "#d8e6f5"
            text = ax.annotate(piece, (0, row), xycoords=("axes fraction", "data"), xytext=(offset, 0),
                               textcoords="offset points", va="center", fontsize=11, family="monospace",
                               bbox=dict(boxstyle="round,pad=0.3", facecolor=colour, edgecolor="steelblue"))
            offset += text.get_window_extent(renderer).width * 72 / fig.dpi + 10
    ax.set_yticks(range(len(words)), [f"{w}  ({len(p)} piece{'s' if len(p) > 1 else ''})"
                                      for w, p in zip(words, pieces)], fontsize=10)
    ax.set_ylim(len(words) - 0.5, -0.5)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.suptitle(f"WordPiece: a vocabulary of {tokenizer.get_vocab_size():,} pieces {vocabulary.tokenizer_source}\n"
                 "greedy longest match from the left; \"##\" = the piece continues the word")
    return fig, data
