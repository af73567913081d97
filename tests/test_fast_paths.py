"""Every fast path that scripts/bench.py measures gives the plain path's numbers.

The plain path is bertmath's default: from-scratch ops (fused=False), separate Q/K/V matmuls, full logits,
fp32, eager, no activation checkpointing. Each switch, and each combination of the model switches, is
compared with it on the same weights and batch: loss, logits at the labelled positions, every gradient.

Tolerances (stated once, here):
  fp32 fast paths: logits atol 1e-5 / rtol 1e-5; loss and gradients atol 1e-6 / rtol 1e-4 — float32
    rounding of a different evaluation order (fused kernels, a concatenated QKV matmul, torch.compile's
    generated kernels), as in tests/test_model.py.
  bf16 autocast vs fp32: matmuls in bfloat16 (8-bit mantissa, relative rounding 2⁻⁹ ≈ 0.2% per product):
    loss within 2% relative; logits within 5% of their largest magnitude; each gradient within 5% in
    relative L2 norm plus 0.1% of the whole gradient's norm
    (‖g_bf16 − g_fp32‖ ≤ 0.05·‖g_fp32‖ + 1e-3·‖G_fp32‖; the floor is for gradients that are zero in exact math, e.g. the key bias, to which softmax is invariant).
    Measured on the tiny model: loss 0.04%, logits 0.7%, gradients 1.3%.
"""

import dataclasses
import itertools

import pytest
import torch
from torch.testing import assert_close

from bertmath import BertForMaskedLM
from bertmath.model import flops_per_token
from bertmath.masking import prediction_slots, static_slot_count

LOGIT_ATOL, LOGIT_RTOL = 1e-5, 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-4
BF16_LOSS_RTOL, BF16_LOGIT_FRACTION, BF16_GRAD_REL_L2, BF16_GRAD_FLOOR = 2e-2, 5e-2, 5e-2, 1e-3


def batch(cfg, seed=1, B=3, T=12, rate=0.3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.vocab_size, (B, T), generator=g)
    chosen = torch.rand(ids.shape, generator=g) < rate
    chosen[0, 0] = True
    return ids, torch.where(chosen, ids, torch.full_like(ids, -100))


def run(model, ids, labels, precision="fp32", compile=False):
    """(loss, logits at labelled positions (M, V), {name: grad}) of one train-mode forward and backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    forward = torch.compile(model) if compile else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        out = forward(ids, labels=labels)
    out.loss.backward()
    logits = out.logits if out.logits.dim() == 2 else out.logits[labels != -100]  # sparse gives (M, V) already
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.loss.detach(), logits.detach().float(), grads


def plain_and(cfg, **switches):
    """The plain model and a copy with `switches` set, holding the same weights."""
    torch.manual_seed(0)
    plain = BertForMaskedLM(cfg)
    fast = BertForMaskedLM(dataclasses.replace(cfg, **switches))
    fast.load_state_dict(plain.state_dict())
    return plain, fast


SWITCHES = [dict(zip(("fused", "fused_qkv", "sparse_mlm"), values))
            for values in itertools.product([False, True], repeat=3) if any(values)]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(k for k, v in s.items() if v))
def test_model_switches_equal_plain_path(tiny_config, switches):
    plain, fast = plain_and(tiny_config(), **switches)
    ids, labels = batch(plain.config)
    loss0, logits0, grads0 = run(plain, ids, labels)
    loss1, logits1, grads1 = run(fast, ids, labels)
    assert_close(logits1, logits0, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    assert_close(loss1, loss0, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    assert grads1.keys() == grads0.keys()
    for name in grads0:
        assert_close(grads1[name], grads0[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=name)


def test_activation_checkpointing_with_all_switches_equals_plain_path(tiny_config):
    plain, fast = plain_and(tiny_config(), fused=True, fused_qkv=True, sparse_mlm=True)
    fast.set_activation_checkpointing(True)
    ids, labels = batch(plain.config)
    loss0, logits0, grads0 = run(plain, ids, labels)
    loss1, logits1, grads1 = run(fast, ids, labels)
    assert_close(logits1, logits0, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    assert_close(loss1, loss0, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    for name in grads0:
        assert_close(grads1[name], grads0[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=name)


@pytest.mark.parametrize("switches", [{}, dict(fused=True, fused_qkv=True, sparse_mlm=True)], ids=["plain", "all"])
def test_bf16_autocast_close_to_fp32(tiny_config, switches):
    """bf16 autocast against the fp32 plain path, with the looser bf16 tolerances of the module docstring."""
    plain, fast = plain_and(tiny_config(initializer_range=0.1), **switches)
    ids, labels = batch(plain.config)
    loss0, logits0, grads0 = run(plain, ids, labels)
    loss1, logits1, grads1 = run(fast, ids, labels, precision="bf16")
    assert_close(loss1, loss0, atol=0, rtol=BF16_LOSS_RTOL)
    assert (logits1 - logits0).abs().max() <= BF16_LOGIT_FRACTION * logits0.abs().max()
    norm = torch.linalg.vector_norm
    total = norm(torch.cat([g.flatten() for g in grads0.values()]))
    for name in grads0:
        error = norm(grads1[name] - grads0[name])
        assert error <= BF16_GRAD_REL_L2 * norm(grads0[name]) + BF16_GRAD_FLOOR * total, name


@pytest.mark.slow
@pytest.mark.parametrize("switches", [dict(fused=True), dict(fused=True, fused_qkv=True, sparse_mlm=True)],
                         ids=["fused", "all"])
def test_torch_compile_equals_plain_path(tiny_config, switches):
    """torch.compile (inductor, CPU) of the fast model: the plain path's loss, logits and gradients. One layer:
    a second would be the same kernels again, and compiling costs ~20% more CPU per layer with a cold cache."""
    torch._dynamo.reset()
    plain, fast = plain_and(tiny_config(num_layers=1), **switches)
    ids, labels = batch(plain.config)
    loss0, logits0, grads0 = run(plain, ids, labels)
    loss1, logits1, grads1 = run(fast, ids, labels, compile=True)
    assert_close(logits1, logits0, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    assert_close(loss1, loss0, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    for name in grads0:
        assert_close(grads1[name], grads0[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=name)


def test_static_sparse_mlm_traces_as_one_graph(tiny_config):
    """With static prediction slots the whole training forward is one torch.compile graph (no host sync, no
    break); taking the masked rows by a boolean mask instead has a data-dependent shape and breaks it."""
    torch._dynamo.reset()
    model = BertForMaskedLM(tiny_config(fused=True, fused_qkv=True, sparse_mlm=True)).train()
    ids, labels = batch(model.config)
    positions, slot_labels = prediction_slots(labels, static_slot_count(labels.numel(), 0.3))
    static = torch._dynamo.explain(lambda i, y, p: model(i, labels=y, masked_positions=p).loss)(ids, slot_labels, positions)
    assert (static.graph_count, static.graph_break_count) == (1, 0), static.break_reasons
    boolean = torch._dynamo.explain(lambda i, y: model(i, labels=y).loss)(ids, labels)
    assert boolean.graph_break_count >= 1  # the check can fail: the exact-count path does break


def test_padded_batch_under_compile_stays_padded_and_one_graph(tiny_config):
    """Unpadding's real-token count N is a data-dependent shape, so under torch.compile the model keeps the
    padded layout: the forward of a padded batch traces as one graph with no break, and gives the eager
    (unpadded) model's logits at the real tokens."""
    torch._dynamo.reset()
    model = BertForMaskedLM(tiny_config(fused=True, unpad=True)).eval()
    ids, _ = batch(model.config)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 4:] = 0, 0
    traced = torch._dynamo.explain(lambda i, m: model(i, m).logits)(ids, mask)
    assert (traced.graph_count, traced.graph_break_count) == (1, 0), traced.break_reasons
    with torch.no_grad():
        eager = model(ids, mask).logits
        compiled = torch.compile(model, backend="eager")(ids, mask).logits
    real = mask.bool()
    assert_close(compiled[real], eager[real], atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    assert not torch.equal(compiled[~real], eager[~real])  # the compiled padding rows were computed, not zeros


# --- FLOPs -------------------------------------------------------------------------------------------------


def test_flops_per_token_counts_every_matmul_weight(tiny_config):
    """Forward FLOPs = 2 × (the elements of every Linear weight, the tied decoder included) + 4·L·T·D
    for attention; training is 3×; with r < 1 the head's share (dense + decoder) scales by r."""
    cfg = tiny_config()
    model = BertForMaskedLM(cfg)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = sum(m.weight.numel() for m in model.mlm_head.modules() if isinstance(m, torch.nn.Linear))
    T, L, D = 16, cfg.num_layers, cfg.hidden_size
    assert flops_per_token(cfg, T, training=False) == 2 * matmul + 4 * L * T * D
    assert flops_per_token(cfg, T, training=True) == 3 * (2 * matmul + 4 * L * T * D)
    assert flops_per_token(cfg, T, training=False, mlm_fraction=0.25) == 2 * (matmul - head) + 0.5 * head + 4 * L * T * D


def test_flops_per_token_bert_base():
    """BERT-base, T = 128: 6·N + 12·L·T·D with N = 84.9M encoder + 24.0M head matmul weights."""
    from bertmath.config import ModelConfig

    base = ModelConfig(activation="gelu")
    assert flops_per_token(base, 128) == 667_948_032
    assert flops_per_token(base, 128, training=False, mlm_fraction=0.15) == pytest.approx(181_797_120, rel=1e-9)
