"""`bertmath embed`: what a checkpoint's vectors say about words, by cosine similarity
cos(a, b) = a·b / (‖a‖ ‖b‖) (functional.cosine_similarity).

    neighbours   the tokens v whose input embedding E[v] is closest to E[word]
    analogy      a − b + c: the tokens v closest to E[a] − E[b] + E[c] (3CosAdd, Mikolov et al. 2013),
                 a, b and c themselves excluded; king − man + woman ≈ queen
    context      h_t = BertModel(sentence)_t, the last hidden state at the word's position, for the same word
                 in several sentences: unlike E[word], it depends on the sentence (a river bank, a money bank)

A word must be ONE token of the checkpoint's WordPiece vocabulary (after its normaliser: lowercased for an
uncased model). A word split into pieces has no row of E of its own, and averaging its pieces would answer
a different question, so it is an InputError that names the pieces. Candidates for neighbours and analogies
are whole-word tokens: no "##" continuations and no bracketed special tokens ([CLS], [unused0], ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from .. import functional as BF
from ..errors import ConfigError, InputError
from ..io import check_output
from ..model import BertModel
from ..pretrained import load_model_and_tokenizer
from ..tokenizer import encode_for_model
from .plotting import checkpoint_name, heatmap, import_matplotlib, new_figure, save_png

DEFAULT_WORD = "king"
DEFAULT_ANALOGY = ("king", "man", "woman")
DEFAULT_CONTEXT_WORD = "bear"  # noun and verb: one token in bert-base-uncased and in the Shakespeare vocabulary
DEFAULT_SENTENCES = ("the bear ran into the forest.", "a wild bear attacked the man.",
                     "i cannot bear this pain.", "she could not bear to see him go.")


@dataclass(frozen=True)
class Neighbour:
    token: str
    similarity: float  # cosine similarity to the query vector


@dataclass(frozen=True)
class EmbeddingReport:
    """Everything `bertmath embed` prints and plots for one checkpoint."""

    checkpoint: str
    word: str
    neighbours: list[Neighbour]  # of E[word], best first
    analogy: tuple[str, str, str]  # (a, b, c): a − b + c
    answers: list[Neighbour]  # closest to E[a] − E[b] + E[c], best first
    context_word: str
    sentences: list[str]
    context_similarity: Tensor  # (S, S): cos(h_i, h_j) of the word's vector in sentences i and j
    projection: dict[str, tuple[float, float]]  # 2-D PCA of the E rows of the words above, for the plot

    def to_text(self) -> str:
        a, b, c = self.analogy
        lines = [f"{self.checkpoint}", f"nearest neighbours of {self.word!r} (cosine similarity of input embeddings):"]
        lines += _ranked(self.neighbours)
        lines.append(f"{a} − {b} + {c} ≈ (cosine similarity to E[{a}] − E[{b}] + E[{c}]; "
                     f"{a}, {b}, {c} excluded):")
        lines += _ranked(self.answers)
        lines.append(f"contextual vectors of {self.context_word!r} (last hidden state; cosine similarity):")
        lines += [f"  [{i}] {s}" for i, s in enumerate(self.sentences, 1)]
        n = len(self.sentences)
        lines.append("      " + "".join(f"{f'[{j}]':>7}" for j in range(1, n + 1)))
        for i, row in enumerate(self.context_similarity.tolist(), 1):
            lines.append(f"  {f'[{i}]':<4}" + "".join(f"{v:7.3f}" for v in row))
        return "\n".join(lines)


def _ranked(neighbours: list[Neighbour]) -> list[str]:
    width = max((len(n.token) for n in neighbours), default=0)
    return [f"  {rank:2d}. {n.token:<{width}}  {n.similarity:.3f}" for rank, n in enumerate(neighbours, 1)]


class EmbeddingSpace:
    """A BertModel's input embedding matrix E (V, D), its tokenizer, and its contextual vectors."""

    def __init__(self, model: BertModel, tokenizer: Tokenizer, name: str = "checkpoint"):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.E = model.embeddings.word_embeddings.weight.detach().float()  # (V, D)
        V = self.E.shape[0]
        self.tokens = [""] * V  # id → token; an id the tokenizer lacks stays "" and is never a candidate
        self.candidates = torch.zeros(V, dtype=torch.bool)  # (V,): whole-word tokens
        for token, i in tokenizer.get_vocab().items():
            if i < V:
                self.tokens[i] = token
                self.candidates[i] = not (token.startswith("##") or (token.startswith("[") and token.endswith("]")))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "EmbeddingSpace":
        model, tokenizer = load_model_and_tokenizer(BertModel, path)
        return cls(model, tokenizer, checkpoint_name(path))

    def token_id(self, word: str) -> int:
        """The id of `word` as one token; an InputError naming its WordPiece pieces otherwise."""
        encoding = self.tokenizer.encode(word, add_special_tokens=False)
        if len(encoding.ids) != 1 or encoding.ids[0] >= self.E.shape[0] or not self.candidates[encoding.ids[0]]:
            pieces = " ".join(encoding.tokens) or "none"
            raise InputError(f"word {word!r} is not a single whole-word token in the vocabulary of {self.name} "
                             f"(WordPiece gives: {pieces}); choose a word that is one token")
        return encoding.ids[0]

    def nearest(self, vector: Tensor, top_k: int, exclude: tuple[int, ...] = ()) -> list[Neighbour]:
        """The top_k whole-word tokens v by cos(E[v], vector), best first, `exclude` left out."""
        similarity = BF.cosine_similarity(self.E, vector)  # (V,)
        allowed = self.candidates.clone()
        allowed[list(exclude)] = False
        similarity = similarity.masked_fill(~allowed, float("-inf"))
        scores, ids = similarity.topk(min(top_k, int(allowed.sum())))
        return [Neighbour(self.tokens[i], float(s)) for s, i in zip(scores.tolist(), ids.tolist())]

    def neighbours(self, word: str, top_k: int) -> list[Neighbour]:
        i = self.token_id(word)
        return self.nearest(self.E[i], top_k, exclude=(i,))

    def analogy(self, a: str, b: str, c: str, top_k: int) -> list[Neighbour]:
        """argmax_v cos(E[v], E[a] − E[b] + E[c]) over v ∉ {a, b, c}, the top_k best."""
        ia, ib, ic = (self.token_id(w) for w in (a, b, c))
        return self.nearest(self.E[ia] - self.E[ib] + self.E[ic], top_k, exclude=(ia, ib, ic))

    def contextual_vectors(self, word: str, sentences: list[str]) -> Tensor:
        """h at the first position of `word` in each sentence: (S, D). InputError if a sentence lacks it."""
        word_id, vectors = self.token_id(word), []
        for n, sentence in enumerate(sentences, 1):
            encoding = encode_for_model(self.tokenizer, sentence, self.model.config.max_position_embeddings)
            if word_id not in encoding.ids:
                raise InputError(f"sentence {n} {sentence!r} does not contain {word!r} as a token "
                                 f"(its tokens: {' '.join(encoding.tokens[1:-1])})")
            with torch.inference_mode():
                h = self.model(torch.tensor([encoding.ids])).last_hidden_state[0]  # (T, D)
            vectors.append(h[encoding.ids.index(word_id)].float())
        return torch.stack(vectors)

    def projection(self, words: list[str]) -> dict[str, tuple[float, float]]:
        """2-D PCA coordinates of the words' rows of E (pca_2d over just these rows)."""
        coordinates = pca_2d(self.E[[self.token_id(w) for w in words]])
        return {w: (float(x), float(y)) for w, (x, y) in zip(words, coordinates.tolist())}


def pca_2d(x: Tensor) -> Tensor:
    """X → (X − mean) V₂: the projection on the two directions of largest variance, V₂ the first two right
    singular vectors of the centred X (N, D) → (N, 2). Each axis' sign is fixed so that its largest |value|
    is positive (the SVD's signs are arbitrary), so the same rows always give the same picture."""
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ vh[:2].T  # (N, 2)
    signs = torch.sign(coordinates.gather(0, coordinates.abs().argmax(dim=0, keepdim=True)))
    return coordinates * signs


def explore(space: EmbeddingSpace, word: str = DEFAULT_WORD, analogy: tuple[str, str, str] = DEFAULT_ANALOGY,
            context_word: str = DEFAULT_CONTEXT_WORD, sentences: tuple[str, ...] | list[str] = DEFAULT_SENTENCES,
            top_k: int = 8) -> EmbeddingReport:
    """Neighbours of `word`, the analogy a − b + c, and `context_word` in `sentences` (at least two)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k: must be an integer >= 1, got {top_k!r}")
    if len(sentences) < 2:
        raise ConfigError(f"sentence: give at least two sentences to compare {context_word!r} in, got {len(sentences)}")
    neighbours = space.neighbours(word, top_k)
    answers = space.analogy(*analogy, top_k)
    vectors = space.contextual_vectors(context_word, list(sentences))  # (S, D)
    shown = [word] + [n.token for n in neighbours]
    projection = space.projection(shown + [w for w in (*analogy, answers[0].token) if w not in shown])
    return EmbeddingReport(space.name, word, neighbours, tuple(analogy), answers, context_word, list(sentences),
                           BF.cosine_similarity(vectors[:, None], vectors[None]), projection)


def plot_report(report: EmbeddingReport, out: str | Path) -> Path:
    """Three panels: the word and its neighbours in a 2-D PCA of their E rows, the analogy's best answers,
    and the cosine similarities of the contextual vectors."""
    fig = new_figure(17, 5.6)
    ax_map, ax_analogy, ax_context = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 0.9, 1.1]})
    neighbour_tokens = {n.token for n in report.neighbours}
    for token, (x, y) in report.projection.items():
        colour = "tab:red" if token == report.word else "tab:blue" if token in neighbour_tokens else "tab:green"
        ax_map.scatter(x, y, color=colour, s=30)
        ax_map.annotate(token, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=9, color=colour)
    a, b, c = report.analogy
    for start, end in ((b, a), (c, report.answers[0].token)):  # answer ≈ a − b + c: both arrows are ≈ a − b
        (x0, y0), (x1, y1) = report.projection[start], report.projection[end]
        ax_map.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="tab:green", alpha=0.6))
    ax_map.set(title=f"'{report.word}' (red), its {len(report.neighbours)} nearest neighbours (blue)\n"
                     f"and the analogy words (green), 2-D PCA of their rows of E", xlabel="PC 1", ylabel="PC 2")
    ax_map.grid(alpha=0.3)

    answers = report.answers[::-1]  # best at the top
    bars = ax_analogy.barh(range(len(answers)), [n.similarity for n in answers], color="tab:green")
    ax_analogy.bar_label(bars, [f"{n.similarity:.3f}" for n in answers], fontsize=8, padding=2)
    ax_analogy.set_yticks(range(len(answers)), [n.token for n in answers])
    ax_analogy.set(title=f"{a} − {b} + {c} ≈ ?\ncos(E[v], E[{a}] − E[{b}] + E[{c}]), best first",
                   xlabel="cosine similarity", xlim=(min(0.0, min(n.similarity for n in answers)), 1.0))
    ax_analogy.grid(axis="x", alpha=0.3)

    labels = [f"[{i}] {s if len(s) <= 34 else s[:31] + '...'}" for i, s in enumerate(report.sentences, 1)]
    image = heatmap(ax_context, report.context_similarity, labels, [f"[{i}]" for i in range(1, len(labels) + 1)],
                    vmin=-1, vmax=1, cmap="RdBu_r", fontsize=9)
    fig.colorbar(image, ax=ax_context, shrink=0.8, label="cosine similarity")
    ax_context.set_title(f"'{report.context_word}' in context: cos(h_i, h_j) of its last hidden state\n"
                         f"(its input embedding E[{report.context_word}] is the same in every sentence: cos 1)")
    fig.suptitle(f"Embeddings of {report.checkpoint}")
    return save_png(fig, out)


def embed(checkpoint: str | Path, out: str | Path, **options) -> tuple[EmbeddingReport, Path]:
    """`bertmath embed`: explore(EmbeddingSpace.from_pretrained(checkpoint), **options), plotted to `out`."""
    import_matplotlib()  # before loading the checkpoint: a missing matplotlib or a bad --out fails at once
    check_output(out)
    report = explore(EmbeddingSpace.from_pretrained(checkpoint), **options)
    return report, plot_report(report, out)
