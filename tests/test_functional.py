"""bertmath.functional vs torch.nn.functional: values and gradients, both paths, float32 and float64.

Every function is checked on the from-scratch path (fused=False) and the fused path (fused=True) against
torch's own implementation, which is independent of the from-scratch code. Tolerances are named below.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from bertmath import functional as BF

# float64: the from-scratch formulas differ from torch's kernels only by rounding (~1e-16 relative).
ATOL_F64, RTOL_F64 = 1e-12, 1e-10
# float32: rounding (~6e-8 relative) accumulates over sums of a few dozen terms.
ATOL_F32, RTOL_F32 = 1e-5, 1e-5
# gradients in float32 go through one more reduction than values
GRAD_ATOL_F32, GRAD_RTOL_F32 = 1e-5, 1e-4

DTYPES = [torch.float32, torch.float64]
PATHS = [pytest.param(False, id="scratch"), pytest.param(True, id="fused")]


def tol(dtype, grad=False):
    if dtype == torch.float64:
        return dict(atol=ATOL_F64, rtol=RTOL_F64)
    return dict(atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32) if grad else dict(atol=ATOL_F32, rtol=RTOL_F32)


def randn(*shape, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def check_values_and_grads(ours, reference, inputs, dtype, seed=1):
    """ours(*inputs) ≈ reference(*inputs), and so are the gradients of Σ out·g for a random upstream g."""
    a_in = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    b_in = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    a, b = ours(*a_in), reference(*b_in)
    assert a.dtype == b.dtype == dtype
    assert_close(a, b, **tol(dtype))
    g = randn(*a.shape, dtype=dtype, seed=seed)
    diff_a = [t for t in a_in if t.requires_grad]
    diff_b = [t for t in b_in if t.requires_grad]
    grads_a = torch.autograd.grad((a * g).sum(), diff_a)
    grads_b = torch.autograd.grad((b * g).sum(), diff_b)
    for ga, gb in zip(grads_a, grads_b):
        assert torch.isfinite(ga).all()
        assert_close(ga, gb, **tol(dtype, grad=True))


# --- elementwise and row-wise functions -------------------------------------------------------------

# (id, ours(x, fused), reference(x)); x is (4, 5, 16) with entries ~ N(0, 3²)
UNARY = [
    ("relu", lambda x, f: BF.relu(x, fused=f), F.relu),
    ("sigmoid", lambda x, f: BF.sigmoid(x, fused=f), torch.sigmoid),
    ("gelu_erf", lambda x, f: BF.gelu(x, fused=f), F.gelu),
    ("gelu_erf_explicit", lambda x, f: BF.gelu(x, approximate="none", fused=f), lambda x: F.gelu(x, approximate="none")),
    ("gelu_tanh", lambda x, f: BF.gelu(x, approximate="tanh", fused=f), lambda x: F.gelu(x, approximate="tanh")),
    ("softmax_last", lambda x, f: BF.softmax(x, fused=f), lambda x: F.softmax(x, dim=-1)),
    ("softmax_dim1", lambda x, f: BF.softmax(x, dim=1, fused=f), lambda x: F.softmax(x, dim=1)),
    ("log_softmax_last", lambda x, f: BF.log_softmax(x, fused=f), lambda x: F.log_softmax(x, dim=-1)),
    ("log_softmax_dim0", lambda x, f: BF.log_softmax(x, dim=0, fused=f), lambda x: F.log_softmax(x, dim=0)),
]


@pytest.mark.smoke
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name,ours,reference", UNARY, ids=[u[0] for u in UNARY])
def test_unary_matches_torch(name, ours, reference, fused, dtype):
    x = randn(4, 5, 16, dtype=dtype, scale=3.0)
    check_values_and_grads(lambda x: ours(x, fused), reference, [x], dtype)


@pytest.mark.parametrize("fused", PATHS)
def test_gelu_rejects_unknown_approximation(fused):
    with pytest.raises(ValueError):
        BF.gelu(torch.zeros(3), approximate="sigmoid", fused=fused)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name,ours,reference", UNARY, ids=[u[0] for u in UNARY])
def test_unary_gradient_at_zero_matches_torch(name, ours, reference, fused):
    """x = 0 exactly is where abs/max/where have kinks; e.g. σ'(0) must be 1/4, relu'(0) torch's 0."""
    x = torch.tensor([[0.0, 0.0, 1.0, -1.0]], dtype=torch.float64)
    check_values_and_grads(lambda x: ours(x, fused), reference, [x], torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_layer_norm_matches_torch(eps, fused, dtype):
    x = randn(3, 7, 24, dtype=dtype, scale=2.0, seed=2) + 0.5
    w = randn(24, dtype=dtype, seed=3) + 1.0
    b = randn(24, dtype=dtype, seed=4)
    check_values_and_grads(lambda x, w, b: BF.layer_norm(x, w, b, eps, fused=fused),
                           lambda x, w, b: F.layer_norm(x, (24,), w, b, eps), [x, w, b], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_layer_norm_without_bias_matches_torch(fused, dtype):
    """ModernBERT's norms have no β (norm_bias: false): LN(x) = (x - μ)/√(σ² + ε) · γ."""
    x = randn(3, 7, 24, dtype=dtype, scale=2.0, seed=2) + 0.5
    w = randn(24, dtype=dtype, seed=3) + 1.0
    check_values_and_grads(lambda x, w: BF.layer_norm(x, w, None, 1e-5, fused=fused),
                           lambda x, w: F.layer_norm(x, (24,), w, None, 1e-5), [x, w], dtype)


def test_layer_norm_default_eps_is_berts():
    x, w, b = randn(2, 8, seed=5), torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    assert_close(BF.layer_norm(x, w, b), F.layer_norm(x, (8,), w, b, 1e-12), atol=ATOL_F64, rtol=RTOL_F64)


def test_linear_matches_formula():
    x, w, b = randn(3, 5, seed=6), randn(4, 5, seed=7), randn(4, seed=8)
    assert_close(BF.linear(x, w, b), x @ w.T + b, atol=ATOL_F64, rtol=RTOL_F64)
    assert_close(BF.linear(x, w), x @ w.T, atol=ATOL_F64, rtol=RTOL_F64)


# --- attention --------------------------------------------------------------------------------------

B, H, TQ, TK, DK, DV = 2, 3, 5, 7, 8, 6


def qkv(dtype, seed=10):
    return randn(B, H, TQ, DK, dtype=dtype, seed=seed), randn(B, H, TK, DK, dtype=dtype, seed=seed + 1), \
        randn(B, H, TK, DV, dtype=dtype, seed=seed + 2)


def key_mask(lengths=(TK, 4)):
    """(B, 1, 1, TK) boolean, True = attend: batch element b sees its first lengths[b] keys."""
    return (torch.arange(TK)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


def random_bool_mask(seed=20):
    """(B, H, TQ, TK) with at least one True per row (a row with no key is tested separately)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, H, TQ, TK, generator=g) < 0.6
    mask[..., 0] = True
    return mask


def additive(mask, dtype):
    """An independent additive version of a boolean mask: 0 where attended, -1e9 where hidden."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, -1e9)


MASKS = ["none", "key_padding", "bool_full", "additive"]


def make_mask(kind, dtype):
    return {"none": None, "key_padding": key_mask(), "bool_full": random_bool_mask(),
            "additive": additive(random_bool_mask(), dtype)}[kind]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("mask_kind", MASKS)
def test_attention_matches_torch(mask_kind, fused, dtype):
    q, k, v = qkv(dtype)
    mask = make_mask(mask_kind, dtype)
    check_values_and_grads(lambda q, k, v: BF.scaled_dot_product_attention(q, k, v, mask, fused=fused),
                           lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), [q, k, v], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", MASKS)
def test_attention_matches_explicit_formula(mask_kind, dtype):
    """softmax(QKᵀ/√d_k + M) V written out with torch.softmax, and the returned weights."""
    q, k, v = qkv(dtype)
    mask = make_mask(mask_kind, dtype)
    scores = q @ k.transpose(-2, -1) / math.sqrt(DK)
    if mask is not None:
        scores = scores + (additive(mask, dtype) if mask.dtype == torch.bool else mask)
    weights = torch.softmax(scores, dim=-1)
    out, w = BF.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert_close(w, weights, **tol(dtype))
    assert_close(out, weights @ v, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_attention_key_mask_equals_unpadded_sequence(fused, dtype):
    """Keys hidden by the mask change nothing: the real rows of a padded batch element equal the same
    sequence run alone, whatever junk the padding holds; the padding query rows stay finite."""
    q, k, v = qkv(dtype)
    lengths = (TK, 4)
    # make the padding loud: huge keys/values beyond length 4 in element 1
    k[1, :, 4:] = 1e3
    v[1, :, 4:] = -1e3
    out = BF.scaled_dot_product_attention(q, k, v, key_mask(lengths), fused=fused)
    alone = BF.scaled_dot_product_attention(q[1:], k[1:, :, :4], v[1:, :, :4], fused=fused)
    assert_close(out[1:], alone, **tol(dtype))
    # element 0 has no padding: equal to running it without any mask
    assert_close(out[:1], BF.scaled_dot_product_attention(q[:1], k[:1], v[:1], fused=fused), **tol(dtype))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_attention_padding_queries_are_finite(fused, dtype):
    """Self-attention over a padded sequence: the padding positions' own rows are finite."""
    x = randn(B, H, TK, DK, dtype=dtype, seed=30)
    x[1, :, 4:] = 0.0  # padding embeddings
    out = BF.scaled_dot_product_attention(x, x, x, key_mask(), fused=fused)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES + [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fused", PATHS)
def test_attention_row_with_every_key_masked_is_finite(fused, dtype):
    q, k, v = qkv(dtype)
    mask = key_mask((TK, 0))  # element 1 sees no key at all
    out = BF.scaled_dot_product_attention(q, k, v, mask, fused=fused)
    assert torch.isfinite(out).all()
    if dtype in DTYPES:  # the rest of the batch is unaffected
        assert_close(out[:1], F.scaled_dot_product_attention(q[:1], k[:1], v[:1]), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_row_with_every_key_masked_has_uniform_weights(dtype):
    """Documented: the mask term is finite (not -inf), so a row with no visible key averages V."""
    q, k, v = qkv(dtype)
    out, w = BF.scaled_dot_product_attention(q, k, v, key_mask((TK, 0)), return_weights=True)
    assert_close(w[1], torch.full_like(w[1], 1 / TK), **tol(dtype))
    assert_close(out[1], v[1].mean(dim=-2, keepdim=True).expand_as(out[1]), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("mask_kind", ["key_padding", "bool_full"])
def test_attention_return_weights(mask_kind, fused, dtype):
    q, k, v = qkv(dtype)
    mask = make_mask(mask_kind, dtype)
    out, w = BF.scaled_dot_product_attention(q, k, v, mask, return_weights=True, fused=fused)
    assert w.shape == (B, H, TQ, TK)
    assert_close(w.sum(-1), torch.ones(B, H, TQ, dtype=dtype), **tol(dtype))
    hidden = ~mask.expand(B, H, TQ, TK)
    assert (w[hidden] == 0).all()
    assert (w[~hidden] > 0).all()
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **tol(dtype))


def test_attention_bias():
    mask = torch.tensor([[True, False, True]])
    bias = BF.attention_bias(mask, torch.float32)
    assert bias.dtype == torch.float32
    assert bias.tolist() == [[0.0, torch.finfo(torch.float32).min, 0.0]]
    add = torch.tensor([[0.0, -5.0]], dtype=torch.float64)
    assert_close(BF.attention_bias(add, torch.float32), add.float())


@pytest.mark.parametrize("fused", PATHS)
def test_attention_dropout(fused):
    """Dropout on the weights: off in eval (= no dropout), on in training (output changes, stays finite);
    dropout_p = 0 in training is exact attention."""
    q, k, v = qkv(torch.float64)
    plain = F.scaled_dot_product_attention(q, k, v)
    assert_close(BF.scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False, fused=fused), plain,
                 atol=ATOL_F64, rtol=RTOL_F64)
    assert_close(BF.scaled_dot_product_attention(q, k, v, dropout_p=0.0, training=True, fused=fused), plain,
                 atol=ATOL_F64, rtol=RTOL_F64)
    torch.manual_seed(0)
    dropped = BF.scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True, fused=fused)
    assert torch.isfinite(dropped).all()
    assert not torch.allclose(dropped, plain)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_dropout_from_scratch_drops_what_the_fused_kernel_drops(dtype):
    """With one seed, softmax(QKᵀ/√d_k + M) with dropout on the weights, then times V, equals torch's SDPA
    with dropout_p: the from-scratch path draws the same masks (within rounding of two evaluation orders)."""
    q, k, v = qkv(dtype)
    torch.manual_seed(3)
    fused = BF.scaled_dot_product_attention(q, k, v, key_mask(), dropout_p=0.3, training=True, fused=True)
    torch.manual_seed(3)
    scratch = BF.scaled_dot_product_attention(q, k, v, key_mask(), dropout_p=0.3, training=True, fused=False)
    assert_close(scratch, fused, **tol(dtype))
    torch.manual_seed(3)
    undropped = BF.scaled_dot_product_attention(q, k, v, key_mask())
    assert not torch.allclose(scratch, undropped)


# --- cross-entropy ------------------------------------------------------------------------------------


def ce_targets(n, vocab, ignored_every=3, seed=40):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, vocab, (n,), generator=g)
    t[::ignored_every] = -100
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_cross_entropy_matches_torch(fused, dtype):
    logits = randn(12, 11, dtype=dtype, scale=3.0, seed=41)
    target = ce_targets(12, 11)
    check_values_and_grads(lambda z: BF.cross_entropy(z, target, fused=fused)[None],
                           lambda z: F.cross_entropy(z, target, ignore_index=-100)[None], [logits], dtype)


@pytest.mark.parametrize("fused", PATHS)
def test_cross_entropy_no_ignored_and_3d_logits(fused):
    """(B, T, V) logits with (B, T) targets are flattened; with nothing ignored it is the plain mean."""
    logits = randn(2, 5, 7, scale=2.0, seed=42)
    target = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(43))
    expected = F.cross_entropy(logits.reshape(10, 7), target.reshape(10))
    assert_close(BF.cross_entropy(logits, target, fused=fused), expected, atol=ATOL_F64, rtol=RTOL_F64)


@pytest.mark.parametrize("fused", PATHS)
def test_cross_entropy_other_ignore_index(fused):
    logits = randn(9, 6, seed=44)
    target = torch.randint(0, 6, (9,), generator=torch.Generator().manual_seed(45))
    target[[1, 4]] = 5
    expected = F.cross_entropy(logits, target, ignore_index=5)
    assert_close(BF.cross_entropy(logits, target, ignore_index=5, fused=fused), expected,
                 atol=ATOL_F64, rtol=RTOL_F64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_cross_entropy_all_ignored_is_zero_with_zero_grad(fused, dtype):
    """Documented: |S| = 0 gives exactly 0 and a zero gradient (F.cross_entropy gives NaN here)."""
    logits = randn(6, 5, dtype=dtype, seed=46).requires_grad_()
    target = torch.full((6,), -100)
    loss = BF.cross_entropy(logits, target, fused=fused)
    assert loss.dtype == dtype
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all()
    assert (grad == 0).all()


# --- extreme logits -----------------------------------------------------------------------------------

EXTREME = [[1e4, -1e4, 0.0, 1.0], [-1e4, -1e4, -1e4, 5.0], [1e4, 1e4, -3.0, 2.0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "sigmoid", "cross_entropy"])
def test_extreme_logits_are_finite_and_equal_torch(name, fused, dtype):
    x = torch.tensor(EXTREME, dtype=dtype)
    target = torch.tensor([1, 3, 2])  # element 1 picks a -1e4 logit: loss ≈ 2e4, still finite
    ours, reference = {
        "softmax": (lambda z: BF.softmax(z, fused=fused), lambda z: torch.softmax(z, -1)),
        "log_softmax": (lambda z: BF.log_softmax(z, fused=fused), lambda z: torch.log_softmax(z, -1)),
        "sigmoid": (lambda z: BF.sigmoid(z, fused=fused), torch.sigmoid),
        "cross_entropy": (lambda z: BF.cross_entropy(z, target, fused=fused)[None],
                          lambda z: F.cross_entropy(z, target)[None]),
    }[name]
    x_ours = x.clone().requires_grad_()
    out = ours(x_ours)
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.sum(), x_ours)
    assert torch.isfinite(grad).all()
    check_values_and_grads(ours, reference, [x], dtype)


# --- dropout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", PATHS)
def test_dropout_identity_when_not_training_or_p_zero(fused):
    x = randn(100, seed=50)
    assert torch.equal(BF.dropout(x, 0.5, training=False, fused=fused), x)
    assert torch.equal(BF.dropout(x, 0.0, training=True, fused=fused), x)
    assert torch.equal(BF.dropout(x, 0.0, training=True, generator=torch.Generator(), fused=fused), x)


@pytest.mark.parametrize("use_generator", [True, False])
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_one_minus_p_and_scales(p, fused, use_generator):
    """Each element is 0 or x/(1-p); the kept share is 1-p within 5 standard deviations (n = 200,000)."""
    n = 200_000
    x = torch.rand(n, generator=torch.Generator().manual_seed(51), dtype=torch.float64) + 0.5  # nonzero
    gen = torch.Generator().manual_seed(52) if use_generator else None
    if gen is None:
        torch.manual_seed(52)
    y = BF.dropout(x, p, training=True, generator=gen, fused=fused)
    kept = y != 0
    assert_close(y[kept], x[kept] / (1 - p), atol=ATOL_F64, rtol=RTOL_F64)
    share = kept.double().mean().item()
    assert abs(share - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # inverted dropout: the mean is unchanged (within 5 sd of the mean of y)
    assert abs(y.mean().item() - x.mean().item()) < 5 * y.std().item() / math.sqrt(n)


@pytest.mark.parametrize("fused", PATHS)
def test_dropout_p_one_drops_everything(fused):
    x = randn(50, seed=53).requires_grad_()
    torch.manual_seed(0)
    y = BF.dropout(x, 1.0, training=True, fused=fused)
    assert_close(y, F.dropout(x.detach(), 1.0, training=True))
    assert (y == 0).all()
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(grad).all() and (grad == 0).all()


@pytest.mark.parametrize("fused", PATHS)
def test_dropout_generator_is_deterministic(fused):
    x = randn(1000, seed=54)
    a = BF.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(7), fused=fused)
    b = BF.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(7), fused=fused)
    c = BF.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(8), fused=fused)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the generator alone decides: the global RNG state does not matter
    torch.manual_seed(123)
    d = BF.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(7), fused=fused)
    assert torch.equal(a, d)


@pytest.mark.parametrize("fused", PATHS)
def test_dropout_gradient_is_mask_over_keep(fused):
    p = 0.4
    x = randn(500, seed=55).requires_grad_()
    y = BF.dropout(x, p, True, generator=torch.Generator().manual_seed(9), fused=fused)
    g = randn(500, seed=56)
    (grad,) = torch.autograd.grad((y * g).sum(), x)
    mask = (y != 0).double()
    assert_close(grad, g * mask / (1 - p), atol=ATOL_F64, rtol=RTOL_F64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_from_scratch_drops_what_torch_drops(p, dtype):
    """The same seed gives the from-scratch path F.dropout's result, bit for bit: the same elements kept, the
    same scaling. So a model trains alike on either path, and alike to transformers' BERT."""
    x = randn(4, 7, 33, dtype=dtype, seed=57)
    torch.manual_seed(11)
    expected = F.dropout(x, p, training=True)
    torch.manual_seed(11)
    assert torch.equal(BF.dropout(x, p, training=True, fused=False), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dropout_keeps_dtype(dtype):
    x = torch.ones(64, dtype=dtype)
    assert BF.dropout(x, 0.5, True, generator=torch.Generator().manual_seed(0)).dtype == dtype


# --- gradcheck (float64, central differences) ----------------------------------------------------------


def _x(*shape, seed=60, shift=0.0):
    return (randn(*shape, seed=seed) + shift).requires_grad_()


def _relu_input():
    x = randn(3, 6, seed=61)
    x = torch.where(x.abs() < 0.1, x + 0.5, x)  # keep away from the kink at 0
    return x.requires_grad_()


GRADCHECKS = {
    "relu": (lambda f: lambda x: BF.relu(x, fused=f), lambda: (_relu_input(),)),
    "sigmoid": (lambda f: lambda x: BF.sigmoid(x, fused=f), lambda: (_x(3, 6, seed=62).mul(3).detach().requires_grad_(),)),
    "gelu_erf": (lambda f: lambda x: BF.gelu(x, fused=f), lambda: (_x(3, 6, seed=63),)),
    "gelu_tanh": (lambda f: lambda x: BF.gelu(x, "tanh", fused=f), lambda: (_x(3, 6, seed=64),)),
    "softmax": (lambda f: lambda x: BF.softmax(x, fused=f), lambda: (_x(3, 6, seed=65),)),
    "log_softmax": (lambda f: lambda x: BF.log_softmax(x, fused=f), lambda: (_x(3, 6, seed=66),)),
    "layer_norm": (lambda f: lambda x, w, b: BF.layer_norm(x, w, b, 1e-5, fused=f),
                   lambda: (_x(3, 6, seed=67), _x(6, seed=68, shift=1.0), _x(6, seed=69))),
    "dropout": (lambda f: lambda x: BF.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(1), fused=f),
                lambda: (_x(3, 6, seed=70),)),
    "attention_bool_mask": (lambda f: lambda q, k, v: BF.scaled_dot_product_attention(q, k, v, random_bool_mask()[:1, :1], fused=f),
                            lambda: (_x(1, 1, TQ, DK, seed=71), _x(1, 1, TK, DK, seed=72), _x(1, 1, TK, DV, seed=73))),
    "attention_additive_mask": (
        lambda f: lambda q, k, v: BF.scaled_dot_product_attention(
            q, k, v, additive(random_bool_mask()[:1, :1], torch.float64), fused=f),
        lambda: (_x(1, 1, TQ, DK, seed=74), _x(1, 1, TK, DK, seed=75), _x(1, 1, TK, DV, seed=76))),
    "cross_entropy": (lambda f: lambda z: BF.cross_entropy(z, ce_targets(8, 5), fused=f),
                      lambda: (_x(8, 5, seed=77),)),
}


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", list(GRADCHECKS))
def test_gradcheck(name, fused):
    make_fn, make_inputs = GRADCHECKS[name]
    assert torch.autograd.gradcheck(make_fn(fused), make_inputs(), eps=1e-6, atol=1e-7, rtol=1e-5)


# --- the fused switch ---------------------------------------------------------------------------------

# (function call with fused=<arg>, the torch kernel the fused path calls, where that kernel is looked up)
X = randn(2, 8, seed=80)
ONES, ZEROS = torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
Q4 = randn(1, 1, 3, 8, seed=81)
SWITCHED = {
    "relu": (lambda f: BF.relu(X, fused=f), F, "relu"),
    "sigmoid": (lambda f: BF.sigmoid(X, fused=f), torch, "sigmoid"),
    "gelu": (lambda f: BF.gelu(X, fused=f), F, "gelu"),
    "softmax": (lambda f: BF.softmax(X, fused=f), torch, "softmax"),
    "log_softmax": (lambda f: BF.log_softmax(X, fused=f), torch, "log_softmax"),
    "layer_norm": (lambda f: BF.layer_norm(X, ONES, ZEROS, fused=f), F, "layer_norm"),
    "dropout": (lambda f: BF.dropout(X, 0.5, True, fused=f), F, "dropout"),
    "attention": (lambda f: BF.scaled_dot_product_attention(Q4, Q4, Q4, fused=f), F, "scaled_dot_product_attention"),
    "cross_entropy": (lambda f: BF.cross_entropy(X, torch.tensor([1, -100]), fused=f), F, "cross_entropy"),
}


def spy(monkeypatch, owner, attr):
    calls = []
    real = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        calls.append(attr)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, wrapper)
    return calls


@pytest.mark.parametrize("name", list(SWITCHED))
def test_the_fused_argument_picks_the_kernel(name, monkeypatch):
    call, owner, attr = SWITCHED[name]
    calls = spy(monkeypatch, owner, attr)

    def takes_fused_path(fused_arg):
        calls.clear()
        call(fused_arg)
        return len(calls) > 0

    assert takes_fused_path(True) and not takes_fused_path(False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_fused_switch_gives_the_same_numbers(dtype):
    """The switch changes the kernels, not the math."""
    x = randn(4, 16, dtype=dtype, seed=82, scale=2.0)
    w, b = torch.ones(16, dtype=dtype), torch.zeros(16, dtype=dtype)
    a = BF.layer_norm(BF.gelu(BF.softmax(x, fused=False), fused=False), w, b, fused=False)
    c = BF.layer_norm(BF.gelu(BF.softmax(x, fused=True), fused=True), w, b, fused=True)
    assert_close(a, c, **tol(dtype))


# --- cosine similarity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_cosine_similarity_matches_torch(fused, dtype):
    a, b = randn(4, 5, 16, dtype=dtype, seed=2), randn(4, 5, 16, dtype=dtype, seed=3)
    check_values_and_grads(lambda x, y: BF.cosine_similarity(x, y, fused=fused),
                           lambda x, y: F.cosine_similarity(x, y, dim=-1), [a, b], dtype)
    check_values_and_grads(lambda x, y: BF.cosine_similarity(x, y, dim=1, fused=fused),
                           lambda x, y: F.cosine_similarity(x, y, dim=1), [a, b], dtype)


@pytest.mark.parametrize("fused", PATHS)
def test_cosine_similarity_broadcasts_and_handles_tiny_vectors(fused):
    table, query = randn(10, 8, seed=4), randn(8, seed=5)  # one vector against every row: (10,)
    assert_close(BF.cosine_similarity(table, query, fused=fused), F.cosine_similarity(table, query[None], dim=-1),
                 **tol(torch.float64))
    pairs = BF.cosine_similarity(table[:, None], table[None], fused=fused)  # all pairs: (10, 10)
    assert_close(pairs.diagonal(), torch.ones(10, dtype=torch.float64), **tol(torch.float64))
    assert_close(pairs, pairs.T, **tol(torch.float64))
    # below ε the norm is ε: a zero vector has similarity 0, a tiny one is not blown up to ±1
    tiny = torch.tensor([[1e-9, 0.0], [0.0, 0.0]], dtype=torch.float64)
    unit = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert_close(BF.cosine_similarity(tiny, unit, fused=fused), F.cosine_similarity(tiny, unit, dim=-1))
    assert BF.cosine_similarity(tiny, unit, fused=fused)[1] == 0


# --- sentence pooling and L2 normalisation -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_l2_normalize_matches_torch(fused, dtype):
    x = randn(4, 5, 16, dtype=dtype, seed=6)
    check_values_and_grads(lambda t: BF.l2_normalize(t, fused=fused), lambda t: F.normalize(t, dim=-1), [x], dtype)
    check_values_and_grads(lambda t: BF.l2_normalize(t, dim=1, fused=fused), lambda t: F.normalize(t, dim=1), [x],
                           dtype)
    zero = torch.zeros(2, 3, dtype=dtype)
    assert torch.equal(BF.l2_normalize(zero, fused=fused), zero)  # ε: a zero vector stays zero, no NaN


def _padded_rows(seed: int, dtype=torch.float64) -> tuple[Tensor, Tensor, list[int]]:
    """h (3, 6, 8) and a mask whose rows have 6, 2 and 4 real tokens (padding at the end, random values there)."""
    lengths = [6, 2, 4]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    return randn(3, 6, 8, dtype=dtype, seed=seed), mask, lengths


@pytest.mark.parametrize("mode", ["mean", "max", "cls"])
def test_pooling_reads_only_the_real_tokens(mode):
    """Each row pooled alone over its real tokens, written per row with torch's reductions."""
    h, mask, lengths = _padded_rows(7)
    reference = {"mean": lambda r: r.mean(0), "max": lambda r: r.amax(0), "cls": lambda r: r[0]}[mode]
    expected = torch.stack([reference(h[b, :n]) for b, n in enumerate(lengths)])
    check_values_and_grads(lambda t: BF.POOLING[mode](t, mask),
                           lambda t: torch.stack([reference(t[b, :n]) for b, n in enumerate(lengths)]), [h],
                           torch.float64)
    assert_close(BF.POOLING[mode](h, mask), expected, **tol(torch.float64))
    # no mask: every token is real
    assert_close(BF.POOLING[mode](h), torch.stack([reference(h[b]) for b in range(3)]), **tol(torch.float64))


def test_max_pooling_ignores_padding_larger_than_every_real_value():
    h, mask, _ = _padded_rows(8)
    h = h.masked_fill(mask[:, :, None] == 0, 1e6)  # padding that would win every max
    assert (BF.max_pool(h, mask) < 1e6).all()
    assert (BF.mean_pool(h, mask).abs() < 1e3).all()


# --- positions: ALiBi's bias and RoPE's rotation, against formulas written another way ---------------------


def _alibi_reference_slopes(n: int) -> list[float]:
    """ALiBi's slopes as Press et al.'s reference code writes them: for a power of two n, the geometric
    sequence start·ratio^i with start = ratio = 2^(-2^-(log2 n - 3)); otherwise the slopes of the closest
    lower power of two, then every other slope of twice that."""
    def power_of_two(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_two(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_two(closest) + _alibi_reference_slopes(2 * closest)[0::2][:n - closest]


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 12, 16])
def test_alibi_slopes_match_the_reference_code(heads):
    assert_close(BF.alibi_slopes(heads), torch.tensor(_alibi_reference_slopes(heads), dtype=torch.float32))
    if heads == 8:  # the paper's example: 1/2, 1/4, ..., 1/256
        assert_close(BF.alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))


def test_alibi_bias_is_minus_slope_times_distance():
    H, T = 4, 7
    bias = BF.alibi_bias(H, T)
    slopes = _alibi_reference_slopes(H)
    expected = torch.tensor([[[-slopes[h] * abs(i - j) for j in range(T)] for i in range(T)] for h in range(H)])
    assert bias.shape == (H, T, T)
    assert_close(bias, expected)


def _rotary_complex(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as RoFormer's §3.2 states it: each pair (x_2i, x_2i+1) as the complex number x_2i + i·x_2i+1,
    multiplied by e^{i·t·θ_i}."""
    T, d = x.shape[-2:]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rotation = torch.polar(torch.ones(T, d // 2, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * theta)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * rotation).reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("base", [10000.0, 100.0])
def test_rotary_equals_complex_multiplication(fused, dtype, base):
    x = torch.randn(2, 3, 11, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert_close(BF.rotary(x, base, fused=fused), _rotary_complex(x, base),
                 atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("layout", ["heads of a (B, T, D) projection", "odd offset", "strided pairs"])
def test_rotary_fused_equals_the_real_form_in_values_and_gradients(layout):
    """The complex product reads q and k where the model leaves them (a head-transposed view of the projection),
    and copies only a layout that cannot be read as complex numbers."""
    B, T, H, Dh = 2, 9, 3, 8
    source = torch.randn(B, T, H * Dh + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if layout == "heads of a (B, T, D) projection":
        view = lambda s: s[..., :H * Dh].view(B, T, H, Dh).transpose(1, 2)
    elif layout == "odd offset":
        view = lambda s: s[..., 1:].view(B, T, H, Dh).transpose(1, 2)
    else:
        view = lambda s: s[..., :H * Dh].view(B, T, H, Dh).transpose(1, 2).transpose(-1, -2).contiguous().transpose(-1, -2)
    results = []
    for fused in (False, True):
        leaf = source.clone().requires_grad_()
        y = BF.rotary(view(leaf), 100.0, fused=fused)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y, leaf.grad))
    assert_close(results[1][0], results[0][0], atol=1e-12, rtol=1e-10)
    assert_close(results[1][1], results[0][1], atol=1e-12, rtol=1e-10)


def _rotary_half_loop(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE on the halves, written out with one float64 2x2 rotation matrix per position and pair (x_i, x_i+d/2)."""
    T, d = x.shape[-2:]
    out = torch.empty(x.shape, dtype=torch.float64)
    xd = x.double()
    for t in range(T):
        for i in range(d // 2):
            angle = t * base ** (-2 * i / d)
            rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                                    dtype=torch.float64)
            pair = torch.stack([xd[..., t, i], xd[..., t, i + d // 2]], dim=-1)  # (..., 2)
            turned = pair @ rotation.T
            out[..., t, i], out[..., t, i + d // 2] = turned[..., 0], turned[..., 1]
    return out.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("base", [10000.0, 160000.0])
def test_rotary_half_equals_a_rotation_of_each_pair_of_halves(dtype, base):
    x = torch.randn(2, 3, 11, 8, dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert_close(BF.rotary_half(x, base), _rotary_half_loop(x, base), atol=1e-6 if dtype == torch.float32 else 1e-12,
                 rtol=1e-5 if dtype == torch.float32 else 1e-10)


def test_rotary_half_is_rotary_on_permuted_dimensions():
    """The halves layout pairs (x_i, x_i+d/2) where the interleaved one pairs (x_2i, x_2i+1): the same rotations
    after the permutation that interleaves the halves."""
    x = torch.randn(3, 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    interleave = torch.stack([torch.arange(4), torch.arange(4) + 4], dim=-1).flatten()  # [0, 4, 1, 5, 2, 6, 3, 7]
    assert_close(BF.rotary_half(x)[..., interleave], BF.rotary(x[..., interleave]), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("rotate", [BF.rotary, BF.rotary_half], ids=["interleaved", "half"])
def test_rotary_makes_dot_products_depend_only_on_the_offset(rotate):
    """q_s·k_t after rotation is a function of s − t: shifting both positions by the same amount changes nothing."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(16, dtype=torch.float64, generator=g), torch.randn(16, dtype=torch.float64, generator=g)
    T = 12
    # the same vector at every position; scores (T, T): score of the query at s with the key at t
    scores = rotate(q.expand(T, 16).clone(), 500.0) @ rotate(k.expand(T, 16).clone(), 500.0).T
    for offset in range(-T + 1, T):
        diagonal = torch.diagonal(scores, offset)
        assert_close(diagonal, diagonal[:1].expand_as(diagonal), atol=1e-10, rtol=1e-10)
    assert not torch.allclose(torch.diagonal(scores, 0)[:1], torch.diagonal(scores, 3)[:1])  # but the offset matters


def test_rotary_angles_are_transformers_float32_angles():
    """t·θ_i rounded as transformers' ModernBERT computes it: inv_freq = 1/base^(2i/d) in float32, then the
    float32 product with t (bit for bit: at t ~ 500 one ulp of the angle is ~3e-5 radians)."""
    T, d, base = 600, 16, 160000.0
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    expected = torch.arange(T).float()[:, None] * inv_freq
    assert torch.equal(BF.rotary_angles(T, d, base, torch.empty(0)), expected)
    assert BF.rotary_angles(T, d, base, torch.empty(0, dtype=torch.float64)).dtype == torch.float64


def _window_loop(T: int, window: int) -> torch.Tensor:
    """The local-attention mask by its definition, one (i, j) at a time in float64: 0 where key j is within half
    a window of query i, -inf elsewhere (transformers: abs(q_idx - kv_idx) <= local_attention // 2)."""
    half = window / 2.0
    out = torch.zeros(T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(T):
            if abs(float(i) - float(j)) > math.floor(half):
                out[i, j] = -math.inf
    return out


@pytest.mark.parametrize("T,window", [(1, 2), (7, 2), (9, 4), (12, 5), (20, 128), (150, 128), (300, 64)])
def test_sliding_window_mask_equals_a_float64_loop(T, window):
    mask = BF.sliding_window_mask(T, window)
    assert mask.shape == (T, T) and mask.dtype == torch.bool
    assert torch.equal(BF.attention_bias(mask, torch.float64).masked_fill(~mask, -math.inf), _window_loop(T, window))
    assert mask.diagonal().all() and torch.equal(mask, mask.T)  # every query sees itself; symmetric
    assert int(mask[T // 2].sum()) == min(T, T // 2 + 1 + window // 2) - max(0, T // 2 - window // 2)


def test_sliding_window_mask_equals_transformers_definition():
    masking_utils = pytest.importorskip("transformers.masking_utils")
    T, window = 40, 10
    inner = masking_utils.sliding_window_bidirectional_overlay(window // 2)
    expected = torch.tensor([[bool(inner(0, 0, i, j)) for j in range(T)] for i in range(T)])
    assert torch.equal(BF.sliding_window_mask(T, window), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fused", PATHS)
def test_mse_loss_matches_torch(fused, dtype):
    prediction, target = randn(10, dtype=dtype, scale=2.0, seed=60), randn(10, dtype=dtype, scale=2.0, seed=61)
    check_values_and_grads(lambda p: BF.mse_loss(p, target, fused=fused)[None],
                           lambda p: F.mse_loss(p, target)[None], [prediction], dtype)
