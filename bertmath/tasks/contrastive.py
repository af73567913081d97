"""The losses that train sentence embeddings, as pure functions of the embeddings, and GradCache, which computes
the in-batch loss's gradients in mini-batches.

    in-batch negatives   L = −(1/B) Σ_i log softmax_j(s·cos(a_i, c_j))_i,   c = [p_1 … p_B, n_1 … n_kB]
    (mnrl)               symmetric: (L + L′)/2, L′ = −(1/B) Σ_i log softmax_j(s·cos(a_j, p_i))_i
    CoSENT               L = log(1 + Σ_{(i, j): y_i > y_j} exp(λ(cos_j − cos_i))),   cos_i = cos(u_i, v_i)

In-batch negatives is InfoNCE (van den Oord et al. 2018) with the other rows' positives as negatives (Henderson et
al. 2017), sentence-transformers' MultipleNegativesRankingLoss (symmetric: its directions query_to_doc and
doc_to_query, partition_mode per_direction). CoSENT (Su 2022) is sentence-transformers' CoSENTLoss. GradCache
(Gao et al. 2021) is its CachedMultipleNegativesRankingLoss: the same loss, the memory of one mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .. import functional as BF


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """C_ij = â_i · b̂_j, x̂ = x / ‖x‖₂: every row of a against every row of b. (M, D) with (N, D) → (M, N)."""
    return BF.l2_normalize(a) @ BF.l2_normalize(b).T


def paired_cosine(u: Tensor, v: Tensor) -> Tensor:
    """cos_i = û_i · v̂_i: each row of u against the same row of v. (B, D) with (B, D) → (B,)."""
    return (BF.l2_normalize(u) * BF.l2_normalize(v)).sum(-1)


def in_batch_negatives_loss(anchors: Tensor, candidates: Tensor, scale: float = 20.0,
                            symmetric: bool = False) -> Tensor:
    """L = −(1/B) Σ_i log softmax_j(s · cos(a_i, c_j))_i: the CE of anchor i's similarities to every candidate
    against its own positive c_i. candidates: the B positives, then any hard negatives (k·B rows, k ≥ 0).
    symmetric: (L + L′)/2 with L′ = −(1/B) Σ_i log softmax_j(s · cos(a_j, p_i))_i, each positive against every
    anchor. s = 1/τ, the temperature's inverse (20: τ = 0.05). (B, D) with ((k+1)·B, D) → (), in their dtype
    (the shape hands it float32: bf16's 8 bits of mantissa would blur cosines 20 times magnified)."""
    B = anchors.shape[0]
    logits = scale * cosine_matrix(anchors, candidates)  # (B, (k+1)·B)
    own = torch.arange(B, device=anchors.device)
    loss = BF.cross_entropy(logits, own)
    if symmetric:
        loss = (loss + BF.cross_entropy(logits[:, :B].T, own)) / 2  # column i: positive i against every anchor
    return loss


def cosent_loss(u: Tensor, v: Tensor, scores: Tensor, scale: float = 20.0) -> Tensor:
    """L = log(1 + Σ_{(i, j): y_i > y_j} exp(λ(cos_j − cos_i))), cos_i = cos(u_i, v_i): every pair scored higher
    than another should have the higher cosine; only the order of the scores matters. λ = scale (20; Su 2022).
    log(1 + Σ e^x) = logsumexp([0, x…]): no overflow. (B, D), (B, D), (B,) → ()."""
    cos = paired_cosine(u, v)  # (B,)
    differences = scale * (cos[None, :] - cos[:, None])  # [i, j] = λ(cos_j − cos_i)
    ordered = scores[:, None] > scores[None, :]  # y_i > y_j
    terms = differences[ordered]
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


@dataclass
class RandomState:
    """The generators dropout draws from (the CPU's, and the device's on CUDA): captured before a forward pass and
    restored before its replay, the replay draws the same masks (sentence-transformers' RandContext)."""

    cpu: Tensor
    cuda: Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> "RandomState":
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)

    def restore(self, device: torch.device) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)


def grad_cache_backward(embed: Callable[[dict[str, Tensor]], Tensor], columns: Sequence[dict[str, Tensor]],
                        loss_of: Callable[[list[Tensor]], Tensor], mini_batch_size: int,
                        backward: Callable[[Tensor], None], device: torch.device) -> Tensor:
    """GradCache (Gao et al. 2021): ∇θ L(e_1 … e_N) for a batch too large to back-propagate at once, in three
    passes; returns L (detached). By the chain rule ∇θ L = Σ_n (∂L/∂e_n) · ∂e_n/∂θ, so

        1. e_n = f_θ(x_n) for every mini-batch of every column, without a graph (the RNG state kept per mini-batch)
        2. g_n = ∂L/∂e_n: the loss on the embeddings as leaves, back-propagated to them alone
        3. per mini-batch, with its RNG state restored: e_n = f_θ(x_n) again, with a graph; backward(Σ_n g_n · e_n)

    adds up exactly ∇θ L: the replay draws the same dropout masks, so step 3's e_n are step 1's. Memory: one
    mini-batch's activations and the (N, D) embeddings. columns: each a dict of (B, T) model inputs (anchors,
    positives, …); embed(inputs) → (b, D); loss_of([e per column]) → (); backward: the grad scaler's."""
    batches = [[{k: v[i:i + mini_batch_size] for k, v in column.items()}
                for i in range(0, len(next(iter(column.values()))), mini_batch_size)] for column in columns]
    states = [[None] * len(column) for column in batches]
    with torch.no_grad():  # 1.
        embeddings = []
        for c, column in enumerate(batches):
            parts = []
            for m, inputs in enumerate(column):
                states[c][m] = RandomState.capture(device)
                parts.append(embed(inputs))
            embeddings.append(torch.cat(parts).requires_grad_())
    after = RandomState.capture(device)
    with torch.enable_grad():  # 2.
        loss = loss_of(embeddings)
        grads = torch.autograd.grad(loss, embeddings)
    for c, column in enumerate(batches):  # 3.
        start = 0
        for m, inputs in enumerate(column):
            states[c][m].restore(device)
            e = embed(inputs)
            backward((e * grads[c][start:start + len(e)]).sum())
            start += len(e)
    after.restore(device)  # the stream goes on as after one forward pass of the batch
    return loss.detach()
