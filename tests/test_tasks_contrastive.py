"""bertmath.tasks.contrastive: the embedding losses against hand-computed values and against sentence-transformers'
loss modules on the same embeddings (float64, 1e-12), and GradCache's gradients against the plain loss's."""

import math

import pytest
import torch
from torch import nn

from bertmath.model import BertForSentenceEmbedding
from bertmath.tasks import contrastive
from bertmath.tasks.contrastive import cosent_loss, grad_cache_backward, in_batch_negatives_loss
from helpers import tiny_model_config

TIGHT = dict(atol=1e-12, rtol=0)  # the same float64 formula, summed in another order


def cos(x, y):
    return sum(a * b for a, b in zip(x, y)) / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))


def test_in_batch_negatives_by_hand():
    """B = 2, one hard negative each: L = mean_i −log(e^{s·c_ii} / Σ_j e^{s·c_ij}) over 4 candidates."""
    a, p, n = [[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [-1.0, 1.0]], [[0.0, -1.0], [3.0, 0.5]]
    s = 20.0
    candidates = p + n
    expected = 0.0
    for i in range(2):
        logits = [s * cos(a[i], c) for c in candidates]
        expected -= (logits[i] - math.log(sum(math.exp(z) for z in logits))) / 2
    got = in_batch_negatives_loss(torch.tensor(a, dtype=torch.float64), torch.tensor(candidates, dtype=torch.float64), s)
    assert float(got) == pytest.approx(expected, abs=1e-12)
    # symmetric: the mean with each positive's CE over the anchors
    backward = 0.0
    for i in range(2):
        logits = [s * cos(a[j], p[i]) for j in range(2)]
        backward -= (logits[i] - math.log(sum(math.exp(z) for z in logits))) / 2
    got = in_batch_negatives_loss(torch.tensor(a, dtype=torch.float64), torch.tensor(candidates, dtype=torch.float64),
                                  s, symmetric=True)
    assert float(got) == pytest.approx((expected + backward) / 2, abs=1e-12)


def test_cosent_by_hand():
    """Scores 1 > 0.5 = 0.5 > 0: the pairs (0,1), (0,2), (0,3), (1,3), (2,3) count, the tie (1,2) does not."""
    u = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, -0.5]]
    v = [[1.0, 0.2], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]
    y = [1.0, 0.5, 0.5, 0.0]
    c = [cos(x, z) for x, z in zip(u, v)]
    terms = [math.exp(20 * (c[j] - c[i])) for i in range(4) for j in range(4) if y[i] > y[j]]
    assert len(terms) == 5
    got = cosent_loss(torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64),
                      torch.tensor(y, dtype=torch.float64))
    assert float(got) == pytest.approx(math.log(1 + sum(terms)), abs=1e-12)


@pytest.fixture(scope="module")
def st_losses():
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    holder = nn.Linear(1, 1)  # the modules want a model; compute_loss_from_embeddings does not use it
    return {"mnrl": losses.MultipleNegativesRankingLoss(holder, scale=20.0),
            "symmetric": losses.MultipleNegativesRankingLoss(holder, scale=20.0,
                                                             directions=("query_to_doc", "doc_to_query"),
                                                             partition_mode="per_direction"),
            "cosent": losses.CoSENTLoss(holder, scale=20.0)}


@pytest.mark.parametrize("negatives", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [False, True])
def test_in_batch_negatives_equals_sentence_transformers(st_losses, negatives, symmetric):
    g = torch.Generator().manual_seed(negatives)
    B, D = 7, 16
    columns = [torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(2 + negatives)]
    theirs = st_losses["symmetric" if symmetric else "mnrl"].compute_loss_from_embeddings(columns, None)
    ours = in_batch_negatives_loss(columns[0], torch.cat(columns[1:]), 20.0, symmetric)
    torch.testing.assert_close(ours, theirs, **TIGHT)


def test_cosent_equals_sentence_transformers(st_losses):
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, 8, generator=g, dtype=torch.float64), torch.randn(12, 8, generator=g, dtype=torch.float64)
    scores = torch.tensor([0, 0.2, 0.2, 1, 0.8, 0.4, 0.4, 0.4, 0.6, 0, 1, 0.5], dtype=torch.float64)  # with ties
    torch.testing.assert_close(cosent_loss(u, v, scores), st_losses["cosent"].compute_loss_from_embeddings(
        [u, v], scores), **TIGHT)


# --- GradCache ------------------------------------------------------------------------------------------------


def tiny_model(dropout: float) -> BertForSentenceEmbedding:
    torch.manual_seed(0)
    config = tiny_model_config(60, hidden_dropout=dropout, attention_dropout=dropout, initializer_range=0.1)
    return BertForSentenceEmbedding(config, "mean", normalize=True).double().train()


def columns(B: int = 7, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """anchor, positive and negative inputs of B rows of 3..12 tokens, padded per column."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        lengths = torch.randint(3, 13, (B,), generator=g)
        T = int(lengths.max())
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        ids = torch.randint(5, 60, (B, T), generator=g) * mask
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})
    return out


def loss_of(embeddings):
    return 3.0 * in_batch_negatives_loss(embeddings[0], torch.cat(embeddings[1:]), 20.0, symmetric=True)


def grads(model) -> dict[str, torch.Tensor]:
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def cached(model, inputs, mini_batch_size: int) -> torch.Tensor:
    return grad_cache_backward(lambda x: model(**x).embeddings, inputs, loss_of, mini_batch_size,
                               lambda loss: loss.backward(), torch.device("cpu"))


def assert_same_grads(a: dict, b: dict, atol: float = 1e-10) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-8, msg=name)


def test_grad_cache_equals_the_plain_loss_without_dropout():
    """Dropout 0: the whole batch through the model at once, loss, backward = GradCache in mini-batches of 3
    (float64; mini-batches pad differently, which changes no result)."""
    model, inputs = tiny_model(0.0), columns()
    plain = loss_of([model(**x).embeddings for x in inputs])
    plain.backward()
    expected = grads(model)
    loss = cached(model, inputs, mini_batch_size=3)
    torch.testing.assert_close(loss, plain.detach(), atol=1e-12, rtol=0)
    assert_same_grads(grads(model), expected)


def minibatch_reference(model, inputs, size: int) -> torch.Tensor:
    """The plain loss over the same mini-batch forwards, in GradCache's order, in one graph (same dropout draws)."""
    embeddings = [torch.cat([model(**{k: v[i:i + size] for k, v in x.items()}).embeddings
                             for i in range(0, len(x["input_ids"]), size)]) for x in inputs]
    loss = loss_of(embeddings)
    loss.backward()
    return loss.detach()


def test_grad_cache_replays_dropout_exactly():
    """Dropout 0.1: each mini-batch's replay draws the masks of its first pass, so the gradients are those of the
    plain loss over the same forwards; and the random stream ends where one pass leaves it."""
    model, inputs = tiny_model(0.1), columns()
    torch.manual_seed(7)
    reference_loss = minibatch_reference(model, inputs, 3)
    expected, state_after = grads(model), torch.get_rng_state()
    torch.manual_seed(7)
    loss = cached(model, inputs, mini_batch_size=3)
    torch.testing.assert_close(loss, reference_loss, atol=1e-12, rtol=0)
    assert_same_grads(grads(model), expected)
    assert torch.equal(torch.get_rng_state(), state_after)


def test_grad_cache_without_replay_differs(monkeypatch):
    """The check above can fail: a replay that draws new masks gives other gradients."""
    model, inputs = tiny_model(0.1), columns()
    torch.manual_seed(7)
    minibatch_reference(model, inputs, 3)
    expected = grads(model)
    monkeypatch.setattr(contrastive.RandomState, "restore", lambda self, device: None)
    torch.manual_seed(7)
    cached(model, inputs, mini_batch_size=3)
    got = grads(model)
    assert max(float((got[k] - expected[k]).abs().max()) for k in got) > 1e-4
