"""`bertmath attention`: heat maps of a checkpoint's attention weights, one per layer and head.

    A^{(l,h)} = softmax(Q Kᵀ / √d_k + M)   of head h in layer l, (T, T); row i sums to 1      Vaswani+17 §3.2.1

    bertmath attention CHECKPOINT "the cat sat on the mat" --out attention.png [--layer L] [--head H]

Row i of A^{(l,h)} is how token i (the query) spreads its attention over the tokens j (the keys) whose values
it mixes. The weights are the ones `functional.scaled_dot_product_attention` returns inside each layer's
`SelfAttention` (collected by `BertModel.attention_weights`), not recomputed here. Layers and heads are
numbered from 0, as in transformers; without --layer/--head every layer and head is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from ..errors import ConfigError
from ..io import check_output
from ..model import BertModel
from ..pretrained import load_model_and_tokenizer
from ..tokenizer import encode_for_model
from .plotting import checkpoint_name, heatmap, import_matplotlib, new_figure, save_png

MAX_VALUES = 16  # write the weights into the cells when at most this many tokens and 4 maps are drawn


@dataclass(frozen=True)
class AttentionMaps:
    """Every attention map of one text."""

    tokens: list[str]  # the T WordPiece tokens the model saw, [CLS] ... [SEP]
    weights: Tensor  # (L, H, T, T): weights[l, h, i, j] = attention of query token i to key token j


def attention_maps(model: BertModel, tokenizer: Tokenizer, text: str) -> AttentionMaps:
    """The weights of every layer and head of `model` (a BertModel) for `text` ([CLS] text [SEP]).
    InputError for an empty text or one longer than the model's positions."""
    encoding = encode_for_model(tokenizer, text, model.config.max_position_embeddings)
    device = next(model.parameters()).device
    with torch.inference_mode():
        weights = model.attention_weights(torch.tensor([encoding.ids], device=device))  # L × (1, H, T, T)
    return AttentionMaps(list(encoding.tokens), torch.stack([w[0] for w in weights]).float().cpu())


def check_index(name: str, value: int | None, count: int, where: str) -> list[int]:
    """[value] if it is a valid index below `count`, all of range(count) if None; a ConfigError otherwise."""
    if value is None:
        return list(range(count))
    if not 0 <= value < count:
        raise ConfigError(f"{name}: {value} is out of range; {where} has {count} {name}s, numbered 0 to {count - 1}")
    return [value]


def plot_attention(checkpoint: str | Path, text: str, out: str | Path, layer: int | None = None,
                   head: int | None = None) -> Path:
    """Draw the attention maps of `text` in `checkpoint` (a bertmath run/step directory or a transformers
    directory) for one layer/head, one layer's heads, one head across layers, or all; returns the PNG's path."""
    import_matplotlib()  # before loading the checkpoint: a missing matplotlib or a bad --out fails at once
    check_output(out)
    model, tokenizer = load_model_and_tokenizer(BertModel, checkpoint)
    layers = check_index("layer", layer, model.config.num_layers, str(checkpoint))
    heads = check_index("head", head, model.config.num_heads, str(checkpoint))
    maps = attention_maps(model, tokenizer, text)
    return save_png(draw_attention(maps, layers, heads, f"{checkpoint_name(checkpoint)}: {text!r}"), out)



def draw_attention(maps: AttentionMaps, layers: list[int], heads: list[int], title: str):
    """Heat maps of the chosen layers × heads, with a shared colour scale [0, 1]: one row per layer and one
    column per head when several of each are drawn, else the maps side by side, at most 4 to a row."""
    pairs = [(l, h) for l in layers for h in heads]
    columns = len(heads) if len(layers) > 1 and len(heads) > 1 else min(len(pairs), 4)
    rows = -(-len(pairs) // columns)
    T = len(maps.tokens)
    cell = min(max(2.4, 0.42 * T), 20 / columns, 14 / rows)  # inches per map: readable, never a huge PNG
    fig = new_figure(cell * columns + 1.2, cell * rows + 0.9)
    axes = fig.subplots(rows, columns, squeeze=False).flatten()
    values = len(pairs) <= 4 and T <= MAX_VALUES
    fontsize = max(4.0, min(10.0, 0.62 * cell * 72 / T))
    for n, (ax, (l, h)) in enumerate(zip(axes, pairs)):
        image = heatmap(ax, maps.weights[l, h], maps.tokens, maps.tokens, values=values, fontsize=fontsize)
        ax.set_title(f"layer {l}, head {h}", fontsize=min(10.0, fontsize + 2))
        if n + columns < len(pairs):  # a map below this one shows the key tokens
            ax.set_xticks([])
        if n % columns:
            ax.set_yticks([])
    for ax in axes[len(pairs):]:
        ax.axis("off")
    axes[(rows - 1) * columns].set(xlabel="key j (attended to)", ylabel="query i (attending)")
    fig.colorbar(image, ax=list(axes), shrink=0.6, aspect=30, label="attention weight A_ij")
    fig.suptitle(f"softmax(QKᵀ/√d_k) of {title}\nrow i: how token i spreads its attention (each row sums to 1)")
    return fig
