"""bertmath.model: shapes, parity with transformers' BERT, padding, loss, sparse MLM, tying, init,
parameter counts, activation checkpointing. Tiny seeded configs; everything runs on CPU in seconds."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import bertmath
from bertmath import (BertForMaskedLM, BertForSequenceClassification, BertModel, hf_format, parameter_counts,
                      parameter_table)
from bertmath.masking import prediction_slots
from bertmath.model import BertForSentenceEmbedding, Unpadded

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
# float32 logits of a 2-layer model against transformers: rounding differences of a few 1e-7
PARITY_ATOL_F32, PARITY_RTOL_F32 = 1e-5, 1e-5
PARITY_ATOL_F64, PARITY_RTOL_F64 = 1e-10, 1e-10
# loss / gradients of two evaluation orders of the same float32 math
GRAD_ATOL_F32, GRAD_RTOL_F32 = 1e-6, 1e-4
F64_ATOL, F64_RTOL = 1e-12, 1e-10  # the same float64 math in two evaluation orders: rounding only

BERT_BASE_MLM, BERT_LARGE_MLM = 109_514_298, 335_174_458  # Devlin et al.'s ≈110M / ≈340M, tied decoder
BERT_BASE_POOLER, BERT_LARGE_POOLER = 109_482_240, 335_141_888  # transformers' BertModel (with pooler)

FUSED = [pytest.param(False, id="scratch"), pytest.param(True, id="fused")]
UNPAD = [pytest.param(False, id="padded"), pytest.param(True, id="unpadded")]
POSITIONS = ["learned", "alibi", "rope"]


def hf_config(cfg):
    return transformers.BertConfig(**hf_format.config_to_hf(cfg))


def randomize(hf_model, seed=0):
    """Perturb every parameter: transformers' init leaves biases 0 and LayerNorm γ 1, which would hide a
    mix-up of bias or LayerNorm names."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return hf_model


def hf_mlm(cfg, seed=0):
    torch.manual_seed(seed)
    return randomize(transformers.BertForMaskedLM(hf_config(cfg)).eval(), seed)


def from_hf(cls, cfg, hf_model, **kwargs):
    """A bertmath model holding `hf_model`'s weights (strict: every name must map)."""
    model = cls(cfg, **kwargs)
    model.load_state_dict(hf_format.state_dict_from_hf(hf_model.state_dict()), strict=True)
    return model.eval()


def batch(cfg, seed=1, B=3, T=9, lengths=(9, 5, 2)):
    """input_ids, attention_mask (1 = real token), token_type_ids; element b has lengths[b] real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.vocab_size, (B, T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
    types = (torch.arange(T)[None, :] >= 3).long().expand(B, T) * mask
    return ids, mask, types


def compared_rows(x, mask, unpad):
    """What parity covers: every position of a padded model; the real tokens' rows of an unpadded one (its
    padding rows are not computed: zeros in the hidden states)."""
    return x[mask.bool()] if unpad else x


def mlm_labels(ids, mask, seed=2, rate=0.3):
    g = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(ids.shape, generator=g) < rate) & (mask == 1)
    chosen[0, 0] = True  # at least one
    return torch.where(chosen, ids, torch.full_like(ids, -100))


# --- shapes ---------------------------------------------------------------------------------------


def test_shapes(tiny_config):
    cfg = tiny_config()
    ids, mask, types = batch(cfg)
    B, T = ids.shape
    out = BertForMaskedLM(cfg).eval()(ids, mask, types)
    assert out.logits.shape == (B, T, cfg.vocab_size)
    assert out.loss is None
    enc = BertModel(cfg).eval()(ids, mask, types)
    assert enc.last_hidden_state.shape == (B, T, cfg.hidden_size)
    assert enc.pooler_output.shape == (B, cfg.hidden_size)
    assert BertModel(cfg, add_pooler=False)(ids).pooler_output is None


def test_no_mask_and_no_token_types_mean_all_ones_and_zeros(tiny_config):
    cfg = tiny_config()
    ids, _, _ = batch(cfg, lengths=(9, 9, 9))
    model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        assert_close(model(ids).logits, model(ids, torch.ones_like(ids), torch.zeros_like(ids)).logits,
                     atol=0, rtol=0)


def test_too_long_sequence_raises(tiny_config):
    cfg = tiny_config()
    model = BertForMaskedLM(cfg).eval()
    model(torch.ones(1, cfg.max_position_embeddings, dtype=torch.long))  # exactly the limit is fine
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, cfg.max_position_embeddings + 1, dtype=torch.long))


# --- parity with transformers ------------------------------------------------------------------------


@pytest.mark.smoke
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("fused_qkv", [False, True], ids=["qkv3", "qkv1"])
@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("unpad", UNPAD)
def test_mlm_logits_match_transformers(tiny_config, unpad, fused, fused_qkv, activation):
    cfg = tiny_config(activation=activation, fused=fused, fused_qkv=fused_qkv, unpad=unpad)
    hf = hf_mlm(cfg)
    ours = from_hf(BertForMaskedLM, cfg, hf)
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types).logits
    assert_close(compared_rows(got, mask, unpad), compared_rows(expected, mask, unpad),
                 atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    real = mask.bool()
    assert torch.equal(got.argmax(-1)[real], expected.argmax(-1)[real])


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("unpad", UNPAD)
def test_mlm_logits_match_transformers_float64(tiny_config, unpad, fused):
    cfg = tiny_config(fused=fused, unpad=unpad)
    hf = hf_mlm(cfg).double()
    ours = from_hf(BertForMaskedLM, cfg, hf).double()
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, mask, types).logits
    assert got.dtype == torch.float64
    assert_close(compared_rows(got, mask, unpad), compared_rows(expected, mask, unpad),
                 atol=PARITY_ATOL_F64, rtol=PARITY_RTOL_F64)


@pytest.mark.parametrize("fused", FUSED)
def test_mlm_loss_matches_transformers(tiny_config, fused):
    cfg = tiny_config(fused=fused)
    hf = hf_mlm(cfg)
    ours = from_hf(BertForMaskedLM, cfg, hf)
    ids, mask, types = batch(cfg)
    labels = mlm_labels(ids, mask)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        got = ours(ids, mask, types, labels=labels).loss
    assert_close(got, expected, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)


@pytest.mark.parametrize("fused", FUSED)
def test_untied_mlm_matches_transformers(tiny_config, fused):
    cfg = tiny_config(fused=fused, tie_word_embeddings=False)
    hf = hf_mlm(cfg)
    head = hf.cls.predictions
    assert head.decoder.weight is not hf.bert.embeddings.word_embeddings.weight
    # transformers 5 unties the decoder bias too; its forward uses decoder.bias, not `cls.predictions.bias`
    assert head.bias is head.decoder.bias or not torch.equal(head.bias, head.decoder.bias)
    ours = from_hf(BertForMaskedLM, cfg, hf)
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        got, expected = ours(ids, mask, types).logits, hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()
    assert_close(got[real], expected[real], atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("unpad", UNPAD)
def test_bert_model_matches_transformers(tiny_config, unpad, fused):
    cfg = tiny_config(fused=fused, unpad=unpad)
    torch.manual_seed(3)
    hf = randomize(transformers.BertModel(hf_config(cfg)).eval())
    ours = from_hf(BertModel, cfg, hf)
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    assert_close(compared_rows(got.last_hidden_state, mask, unpad),
                 compared_rows(expected.last_hidden_state, mask, unpad), atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert_close(got.pooler_output, expected.pooler_output, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    if unpad:
        assert (got.last_hidden_state[~mask.bool()] == 0).all()


def test_bert_model_without_pooler_matches_transformers(tiny_config):
    cfg = tiny_config()
    torch.manual_seed(4)
    hf = randomize(transformers.BertModel(hf_config(cfg), add_pooling_layer=False).eval())
    ours = from_hf(BertModel, cfg, hf, add_pooler=False)
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        got = ours(ids, mask, types).last_hidden_state
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    real = mask.bool()
    assert_close(got[real], expected[real], atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("fused_qkv", [False, True], ids=["qkv3", "qkv1"])
@pytest.mark.parametrize("fused", FUSED)
def test_padding_does_not_change_other_positions(tiny_config, fused, fused_qkv, positions):
    """A padded batch gives, at every real position, what each sequence gives when run alone."""
    cfg = tiny_config(fused=fused, fused_qkv=fused_qkv, position_encoding=positions)
    torch.manual_seed(5)
    model = BertForMaskedLM(cfg).eval()
    lengths = (9, 5, 2)
    ids, mask, types = batch(cfg, lengths=lengths)
    ids[1, 5:] = 7  # padding content must not matter either (not only the pad id)
    with torch.no_grad():
        padded = model(ids, mask, types).logits
        for b, n in enumerate(lengths):
            alone = model(ids[b:b + 1, :n], mask[b:b + 1, :n], types[b:b + 1, :n]).logits
            assert_close(padded[b:b + 1, :n], alone, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert torch.isfinite(padded).all()  # padding rows too


def test_unpadded_packs_the_real_rows_and_unpacks_with_zeros(tiny_config):
    ids, mask, _ = batch(tiny_config(), lengths=(9, 5, 2))
    unpadded = Unpadded.of(mask)
    assert unpadded.index.tolist() == [b * 9 + t for b, n in enumerate((9, 5, 2)) for t in range(n)]
    x = torch.randn(3, 9, 4)
    packed = unpadded.pack(x)
    assert packed.shape == (16, 4)
    assert torch.equal(packed, x[mask.bool()])
    restored = unpadded.unpack(packed)
    assert torch.equal(restored, x * mask[..., None])  # the real rows back in place, zeros at the padding
    assert Unpadded.of(None) is None and Unpadded.of(torch.ones_like(mask)) is None  # nothing to take out


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("fused_qkv", [False, True], ids=["qkv3", "qkv1"])
@pytest.mark.parametrize("fused", FUSED)
def test_unpadding_trains_as_the_padded_model(tiny_config, fused, fused_qkv, positions):
    """config.unpad changes no result: in training, with dropout and one seed, the MLM loss, the logits at real
    tokens and every gradient equal the padded model's (float64: rounding only). Dropout masks are drawn for
    the padded batch either way, so both drop the same elements."""
    results = {}
    for unpad in (False, True):
        cfg = tiny_config(fused=fused, fused_qkv=fused_qkv, position_encoding=positions, unpad=unpad,
                          hidden_dropout=0.2, attention_dropout=0.2)
        torch.manual_seed(9)
        model = BertForMaskedLM(cfg).double().train()
        ids, mask, types = batch(cfg)
        torch.manual_seed(10)
        results[unpad] = _loss_and_grads(model, ids, mask, types, mlm_labels(ids, mask))
    (padded, padded_grads), (unpadded, unpadded_grads) = results[False], results[True]
    real = mask.bool()
    assert_close(unpadded.loss, padded.loss, atol=F64_ATOL, rtol=F64_RTOL)
    assert_close(unpadded.logits[real], padded.logits[real], atol=F64_ATOL, rtol=F64_RTOL)
    for name, grad in padded_grads.items():
        assert_close(unpadded_grads[name], grad, atol=F64_ATOL, rtol=F64_RTOL, msg=name)
    torch.manual_seed(11)
    assert not torch.allclose(_loss_and_grads(model, ids, mask, types, mlm_labels(ids, mask))[0].loss,
                              unpadded.loss)  # another seed, other dropout masks: the comparison can fail


@pytest.mark.parametrize("fused", FUSED)
def test_model_respects_its_fused_switch(tiny_config, fused, monkeypatch):
    """`model.fused`, chosen at construction, picks the kernels everywhere in the model; the numbers stay the same
    with the other choice (the same weights in a model built with it)."""
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = tiny_config(fused=fused)
    model = BertForMaskedLM(cfg).eval()
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        own = model(ids, mask, types).logits
        assert bool(calls) == fused
        calls.clear()
        other_model = BertForMaskedLM(tiny_config(fused=not fused)).eval()
        other_model.load_state_dict(model.state_dict())
        other = other_model(ids, mask, types).logits
        assert bool(calls) == (not fused)
    assert_close(own, other, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)


# --- loss, sparse MLM, activation checkpointing -----------------------------------------------------


@pytest.mark.parametrize("fused", FUSED)
def test_loss_is_cross_entropy_over_labelled_positions(tiny_config, fused):
    cfg = tiny_config(fused=fused)
    torch.manual_seed(6)
    model = BertForMaskedLM(cfg).eval()
    ids, mask, types = batch(cfg)
    labels = mlm_labels(ids, mask)
    with torch.no_grad():
        out = model(ids, mask, types, labels=labels)
    V = cfg.vocab_size
    expected = F.cross_entropy(out.logits.reshape(-1, V), labels.reshape(-1))  # ignore_index=-100
    assert out.logits.shape == (*ids.shape, V)
    assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
    # by hand: mean of -log p(label) over the labelled positions only
    chosen = labels != -100
    by_hand = -torch.log_softmax(out.logits[chosen].double(), -1).gather(-1, labels[chosen][:, None]).mean()
    assert_close(out.loss.double(), by_hand, atol=1e-6, rtol=1e-6)


def _loss_and_grads(model, ids, mask, types, labels):
    model.zero_grad(set_to_none=True)
    out = model(ids, mask, types, labels=labels)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused", FUSED)
def test_sparse_mlm_equals_dense(tiny_config, fused):
    """sparse_mlm projects only the labelled rows in training: same loss and gradients as the dense head."""
    dense_cfg = tiny_config(fused=fused)
    torch.manual_seed(7)
    dense = BertForMaskedLM(dense_cfg).train()
    sparse = BertForMaskedLM(dataclasses.replace(dense_cfg, sparse_mlm=True)).train()
    sparse.load_state_dict(dense.state_dict())
    ids, mask, types = batch(dense_cfg)
    labels = mlm_labels(ids, mask)
    d_out, d_grads = _loss_and_grads(dense, ids, mask, types, labels)
    s_out, s_grads = _loss_and_grads(sparse, ids, mask, types, labels)
    M = int((labels != -100).sum())
    assert s_out.logits.shape == (M, dense_cfg.vocab_size)
    assert_close(s_out.logits, d_out.logits[labels != -100], atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert_close(s_out.loss, d_out.loss, atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32)
    assert d_grads.keys() == s_grads.keys()
    for name in d_grads:
        assert_close(s_grads[name], d_grads[name], atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32, msg=name)
    # in eval mode the sparse model returns full logits like the dense one
    sparse.eval()
    with torch.no_grad():
        assert sparse(ids, mask, types, labels=labels).logits.shape == (*ids.shape, dense_cfg.vocab_size)


@pytest.mark.parametrize("num_slots", [None, 64, 2], ids=["exact", "static", "overflow"])
@pytest.mark.parametrize("fused", FUSED)
def test_static_prediction_slots_equal_boolean_path(tiny_config, fused, num_slots):
    """Static-shape sparse MLM (masked_positions from masking.prediction_slots, padded with ignored slots) gives
    the dense head's loss and gradients and the logits of the labelled rows; with fewer slots than masked
    tokens ("overflow") it takes more slots rather than dropping a label."""
    cfg = tiny_config(fused=fused)
    torch.manual_seed(8)
    model = BertForMaskedLM(cfg).train()
    ids, mask, types = batch(cfg)
    labels = mlm_labels(ids, mask)
    chosen = labels != -100
    positions, slot_labels = prediction_slots(labels, num_slots)
    M = int(chosen.sum())
    assert len(positions) == (M if num_slots is None else max(num_slots, -(-M // 64) * 64))
    torch.manual_seed(9)  # the same dropout masks in both runs
    d_out, d_grads = _loss_and_grads(model, ids, mask, types, labels)
    torch.manual_seed(9)
    model.zero_grad(set_to_none=True)
    s_out = model(ids, mask, types, labels=slot_labels, masked_positions=positions)
    s_out.loss.backward()
    assert s_out.logits.shape == (len(positions), cfg.vocab_size)
    assert_close(s_out.logits[:M], d_out.logits[chosen], atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert_close(s_out.loss, d_out.loss, atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32)
    for name, param in model.named_parameters():
        assert_close(param.grad, d_grads[name], atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32, msg=name)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("fused", FUSED)
def test_batch_without_labelled_positions_gives_zero_loss(tiny_config, fused, sparse):
    """No position to predict: loss 0 with finite zero gradients (documented in functional.cross_entropy)."""
    cfg = tiny_config(fused=fused, sparse_mlm=sparse)
    model = BertForMaskedLM(cfg).train()
    ids, mask, types = batch(cfg)
    out, grads = _loss_and_grads(model, ids, mask, types, torch.full_like(ids, -100))
    assert out.loss.item() == 0.0
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in grads.values())


@pytest.mark.parametrize("fused", FUSED)
def test_activation_checkpointing_same_loss_and_grads(tiny_config, fused, monkeypatch):
    cfg = tiny_config(fused=fused)
    torch.manual_seed(8)
    model = BertForMaskedLM(cfg).train()
    ids, mask, types = batch(cfg)
    labels = mlm_labels(ids, mask)
    plain_out, plain_grads = _loss_and_grads(model, ids, mask, types, labels)

    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.set_activation_checkpointing(True)
    ckpt_out, ckpt_grads = _loss_and_grads(model, ids, mask, types, labels)
    assert len(calls) == cfg.num_layers  # each layer went through torch.utils.checkpoint
    assert_close(ckpt_out.loss, plain_out.loss, atol=0, rtol=0)
    for name in plain_grads:
        assert_close(ckpt_grads[name], plain_grads[name], atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32, msg=name)
    model.set_activation_checkpointing(False)
    calls.clear()
    _loss_and_grads(model, ids, mask, types, labels)
    assert not calls


def test_dropout_active_only_in_training(tiny_config):
    cfg = tiny_config(hidden_dropout=0.3, attention_dropout=0.3)
    model = BertForMaskedLM(cfg)
    ids, mask, types = batch(cfg)
    with torch.no_grad():
        model.eval()
        a, b = model(ids, mask, types).logits, model(ids, mask, types).logits
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(0)
        c = model(ids, mask, types).logits
    assert not torch.allclose(a, c)


# --- tying and init --------------------------------------------------------------------------------------


def test_tied_decoder_is_the_embedding_matrix(tiny_config):
    model = BertForMaskedLM(tiny_config(tie_word_embeddings=True))
    assert model.mlm_head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    # still tied after loading a state dict (load_state_dict copies into the shared tensor)
    model.load_state_dict(BertForMaskedLM(tiny_config()).state_dict())
    assert model.mlm_head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    # a gradient step on one is a step on the other
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[3, 0] = 42.0
    assert model.mlm_head.decoder.weight[3, 0].item() == 42.0


def test_untied_decoder_is_separate(tiny_config):
    model = BertForMaskedLM(tiny_config(tie_word_embeddings=False))
    dec, emb = model.mlm_head.decoder.weight, model.bert.embeddings.word_embeddings.weight
    assert dec is not emb and dec.data_ptr() != emb.data_ptr()
    assert not torch.equal(dec, emb)  # initialised independently


def test_init(tiny_config):
    """Weights ~ N(0, initializer_range²) (mean and std within 5 standard errors), biases 0, LN γ=1, β=0."""
    std = 0.05  # not the default, so a hard-coded 0.02 would fail
    cfg = tiny_config(hidden_size=64, intermediate_size=128, initializer_range=std, tie_word_embeddings=False)
    torch.manual_seed(9)
    for model in (BertForMaskedLM(cfg), BertModel(cfg)):
        seen = 0
        for name, p in model.named_parameters():
            p = p.detach().double()
            if name.endswith("norm.weight"):  # norm, attention_norm, output_norm
                assert (p == 1).all(), name
            elif name.endswith("bias"):
                assert (p == 0).all(), name
            else:
                n = p.numel()
                assert abs(p.mean().item()) < 5 * std / n ** 0.5, name
                assert abs(p.std().item() / std - 1) < 5 / (2 * n) ** 0.5, name
                seen += 1
        assert seen > 0


# --- parameter counts -----------------------------------------------------------------------------------

# Which parameters each row of `parameter_table` counts (by bertmath name, after "bert." for the MLM model).
TABLE_ROWS = [
    ("embeddings.word", r"embeddings\.word_embeddings\."),
    ("embeddings.position", r"embeddings\.position_embeddings\."),
    ("embeddings.token_type", r"embeddings\.token_type_embeddings\."),
    ("embeddings.layer_norm", r"embeddings\.norm\."),
    ("encoder.attention ", r"encoder\.layers\.\d+\.attention\."),
    ("encoder.attention_norm ", r"encoder\.layers\.\d+\.attention_norm\."),
    ("encoder.feed_forward ", r"encoder\.layers\.\d+\.feed_forward\."),
    ("encoder.output_norm ", r"encoder\.layers\.\d+\.output_norm\."),
    ("encoder.final_norm", r"encoder\.final_norm\."),
    ("mlm_head.dense", r"mlm_head\.dense\."),
    ("mlm_head.layer_norm", r"mlm_head\.norm\."),
    ("mlm_head.decoder.bias", r"mlm_head\.decoder\.bias$"),
    ("mlm_head.decoder.weight", r"mlm_head\.decoder\.weight$"),
]


def numel(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


def hf_numel(model):
    """Parameters a transformers model uses: an untied BertForMaskedLM also holds `cls.predictions.bias`,
    which its forward never reads (the decoder has its own bias), so that one is left out."""
    head = getattr(getattr(model, "cls", None), "predictions", None)
    unused = head.bias if head is not None and head.bias is not head.decoder.bias else None
    return sum(p.numel() for p in model.parameters() if p is not unused)


def build_on_meta(fn):
    """Build without allocating or initialising memory: shapes (and so counts) only; BERT-large in ms."""
    with torch.device("meta"):
        return fn()


COUNT_CONFIGS = {
    "tiny": dict(),
    "tiny_untied": dict(tie_word_embeddings=False),
    "odd_sizes": dict(vocab_size=101, hidden_size=24, num_layers=3, num_heads=3, intermediate_size=50,
                      max_position_embeddings=17, type_vocab_size=3),
}


@pytest.mark.parametrize("changes", list(COUNT_CONFIGS.values()), ids=list(COUNT_CONFIGS))
def test_parameter_counts_equal_built_models(tiny_config, changes):
    cfg = tiny_config(**changes)
    counts = parameter_counts(cfg)
    mlm = BertForMaskedLM(cfg)
    assert counts["bert_for_masked_lm"] == numel(mlm) == mlm.num_parameters()
    assert sum(n for _, n in parameter_table(cfg)) == numel(mlm)
    untied = BertForMaskedLM(dataclasses.replace(cfg, tie_word_embeddings=False))
    assert counts["bert_for_masked_lm_decoder_counted_separately"] == numel(untied)
    assert counts["encoder_with_pooler"] == numel(BertModel(cfg)) == BertModel(cfg).num_parameters()
    assert counts["encoder"] == numel(BertModel(cfg, add_pooler=False))
    # transformers' models built from the same config
    hf = hf_config(cfg)
    assert counts["bert_for_masked_lm"] == hf_numel(transformers.BertForMaskedLM(hf))
    assert counts["encoder_with_pooler"] == hf_numel(transformers.BertModel(hf))
    assert counts["encoder"] == hf_numel(transformers.BertModel(hf, add_pooling_layer=False))
    untied_hf = hf_config(dataclasses.replace(cfg, tie_word_embeddings=False))
    assert counts["bert_for_masked_lm_decoder_counted_separately"] == \
        hf_numel(transformers.BertForMaskedLM(untied_hf))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_parameter_table_rows_equal_the_parts(tiny_config, tie):
    """Each row equals the parameters of the part it names (a tied decoder weight counts 0: it is
    the embedding matrix, already counted)."""
    cfg = tiny_config(tie_word_embeddings=tie, num_layers=3)
    model = BertForMaskedLM(cfg)
    names = {name.removeprefix("bert."): p.numel() for name, p in model.named_parameters()}
    table = parameter_table(cfg)
    assert len(table) == len(TABLE_ROWS)
    claimed = set()
    for (row_name, count), (expected_name, pattern) in zip(table, TABLE_ROWS):
        assert row_name.startswith(expected_name.strip()), (row_name, expected_name)
        members = [n for n in names if re.match(pattern, n)]
        assert count == sum(names[n] for n in members), row_name
        claimed.update(members)
    assert claimed == set(names)  # every parameter is in some row


@pytest.mark.parametrize("path,mlm,with_pooler", [
    ("configs/base.yaml", BERT_BASE_MLM, BERT_BASE_POOLER),
    ("configs/large.yaml", BERT_LARGE_MLM, BERT_LARGE_POOLER),
])
def test_bert_base_and_large_counts(path, mlm, with_pooler):
    cfg = bertmath.load_config(ROOT / path).model
    counts = parameter_counts(cfg)
    assert counts["bert_for_masked_lm"] == mlm
    assert counts["encoder_with_pooler"] == with_pooler
    assert sum(n for _, n in parameter_table(cfg)) == mlm
    # the full-size models, built on the meta device (no memory, no init), agree
    assert numel(build_on_meta(lambda: BertForMaskedLM(cfg))) == mlm
    assert numel(build_on_meta(lambda: BertModel(cfg))) == with_pooler
    assert hf_numel(build_on_meta(lambda: transformers.BertForMaskedLM(hf_config(cfg)))) == mlm
    assert hf_numel(build_on_meta(lambda: transformers.BertModel(hf_config(cfg)))) == with_pooler
    untied = dataclasses.replace(cfg, tie_word_embeddings=False)
    assert numel(build_on_meta(lambda: BertForMaskedLM(untied))) == \
        counts["bert_for_masked_lm_decoder_counted_separately"] == mlm + cfg.vocab_size * cfg.hidden_size


# --- attention weights ------------------------------------------------------------------------------------

def reference_weights(layer, x, attention_mask, positions="learned", rope_base=10000.0):
    """softmax(QKᵀ/√d_k [+ B_alibi]) with -inf on padded keys, from the layer's own Linear weights and
    torch.softmax; rope rotates q and k as complex numbers, ALiBi's bias is −m_h·|i−j| from Press et al.'s
    slopes (both written independently of bertmath in tests/test_functional.py)."""
    from test_functional import _alibi_reference_slopes, _rotary_complex
    attn = layer.attention
    B, T, D = x.shape
    H = attn.num_heads
    q, k = (F.linear(x, m.weight, m.bias).view(B, T, H, D // H).transpose(1, 2)
            for m in (attn.query, attn.key))
    if positions == "rope":
        q, k = _rotary_complex(q, rope_base), _rotary_complex(k, rope_base)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D // H)
    if positions == "alibi":
        distance = (torch.arange(T)[None, :] - torch.arange(T)[:, None]).abs().to(x.dtype)
        scores = scores - torch.tensor(_alibi_reference_slopes(H), dtype=x.dtype)[:, None, None] * distance
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("fused", FUSED)
def test_attention_weights_are_softmax_of_scaled_scores(tiny_config, fused, positions):
    """BertModel.attention_weights: layer l's weights are softmax(Q_l K_lᵀ/√d_k + M) of its input x_l, and
    the x_l are those of forward (float64: rounding only); with rope and ALiBi as their papers write them."""
    torch.manual_seed(0)
    model = BertModel(tiny_config(fused=fused, position_encoding=positions)).double().eval()
    ids = torch.randint(5, 99, (2, 7))
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])  # the second sequence has 3 padding tokens
    with torch.no_grad():
        weights = model.attention_weights(ids, attention_mask)
        x = model.embeddings(ids)
        mask, _ = model.logit_masks(attention_mask, 7, ids.device)
        assert len(weights) == len(model.encoder.layers)
        for layer, w in zip(model.encoder.layers, weights):
            assert w.shape == (2, 4, 7, 7)
            assert_close(w, reference_weights(layer, x, attention_mask, positions), atol=F64_ATOL, rtol=F64_RTOL)
            x = layer(x, mask)
        real = attention_mask.bool()  # the model's forward takes the padding out (config.unpad)
        assert_close(x[real], model(ids, attention_mask).last_hidden_state[real], atol=F64_ATOL, rtol=F64_RTOL)
    assert (weights[0][1, :, :, 4:] == 0).all()  # padded keys get no attention


# --- position encodings: learned, alibi, rope ------------------------------------------------------------


@pytest.mark.parametrize("positions", POSITIONS)
def test_fused_and_from_scratch_paths_agree_for_every_position_encoding(tiny_config, positions):
    """The same weights on the from-scratch path (functional.py's formulas) and the fused one (torch's
    kernels; ALiBi's bias as SDPA's float mask): the same loss, logits and gradients (float32 rounding)."""
    cfg = tiny_config(position_encoding=positions)
    torch.manual_seed(3)
    scratch = BertForMaskedLM(cfg).train()
    fused = BertForMaskedLM(dataclasses.replace(cfg, fused=True, fused_qkv=True)).train()
    fused.load_state_dict(scratch.state_dict())
    ids, mask, types = batch(cfg)
    labels = mlm_labels(ids, mask)
    a, grads_a = _loss_and_grads(scratch, ids, mask, types, labels)
    b, grads_b = _loss_and_grads(fused, ids, mask, types, labels)
    assert_close(b.loss, a.loss, atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32)
    assert_close(b.logits, a.logits, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert_close(grads_b[name], grads_a[name], atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32, msg=name)


@pytest.mark.parametrize("positions", ["alibi", "rope"])
def test_alibi_and_rope_have_no_position_table_and_are_counted_right(tiny_config, positions):
    cfg = tiny_config(position_encoding=positions)
    model = BertForMaskedLM(cfg)
    assert model.bert.embeddings.position_embeddings is None
    assert not any("position" in name for name, _ in model.named_parameters())
    assert parameter_counts(cfg)["bert_for_masked_lm"] == numel(model)
    assert dict(parameter_table(cfg))["embeddings.position"] == 0
    learned = tiny_config()
    assert numel(model) == numel(BertForMaskedLM(learned)) - learned.max_position_embeddings * learned.hidden_size


@pytest.mark.parametrize("positions", ["alibi", "rope"])
def test_alibi_and_rope_extrapolate_beyond_max_position_embeddings(tiny_config, positions):
    """Relative positions work at any length (the design choice; learned positions raise instead): a
    sequence longer than max_position_embeddings runs, and its first tokens see what a short one sees
    when the rest is padding."""
    cfg = tiny_config(position_encoding=positions)
    torch.manual_seed(4)
    model = BertForMaskedLM(cfg).eval()
    T = cfg.max_position_embeddings + 16
    ids = torch.randint(5, cfg.vocab_size, (1, T))
    with torch.no_grad():
        long = model(ids).logits
        short = model(ids[:, :9]).logits
        padded = model(ids, torch.tensor([[1] * 9 + [0] * (T - 9)])).logits
    assert long.shape == (1, T, cfg.vocab_size) and torch.isfinite(long).all()
    assert_close(padded[:, :9], short, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)


def test_position_encodings_change_the_output(tiny_config):
    """A check that the switch reaches the model: the same weights give other logits under each encoding."""
    torch.manual_seed(5)
    ids, mask, types = batch(tiny_config())
    logits = {}
    for positions in POSITIONS:
        torch.manual_seed(5)
        with torch.no_grad():
            logits[positions] = BertForMaskedLM(tiny_config(position_encoding=positions)).eval()(ids, mask, types).logits
    assert not torch.allclose(logits["alibi"], logits["rope"])
    assert not torch.allclose(logits["learned"], logits["alibi"])


# --- sequence classification ---------------------------------------------------------------------------


def hf_classifier(cfg, num_labels, seed=0):
    torch.manual_seed(seed)
    hf_cfg = hf_config(cfg)
    hf_cfg.num_labels = num_labels
    return randomize(transformers.BertForSequenceClassification(hf_cfg).eval(), seed)


def class_labels(num_labels, B=3, seed=6):
    g = torch.Generator().manual_seed(seed)
    if num_labels == 1:
        return torch.rand(B, generator=g) * 5  # STS-B-like scores in [0, 5]
    return torch.randint(0, num_labels, (B,), generator=g)


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("num_labels", [1, 2, 3], ids=["regression", "binary", "three-way"])
@pytest.mark.parametrize("fused", FUSED)
def test_sequence_classification_matches_transformers(tiny_config, fused, num_labels, pairs):
    """Logits and loss (MSE for one label, CE otherwise) of transformers' BertForSequenceClassification with
    the same weights, on a padded batch of single sentences (segment 0) or pairs (segments 0 then 1)."""
    cfg = tiny_config(fused=fused)
    hf = hf_classifier(cfg, num_labels)
    ours = from_hf(BertForSequenceClassification, cfg, hf, num_labels=num_labels)
    ids, mask, types = batch(cfg)
    types = types if pairs else torch.zeros_like(types)
    labels = class_labels(num_labels)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = ours(ids, mask, types, labels=labels)
    assert got.logits.shape == (3, num_labels)
    assert_close(got.logits, expected.logits, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert_close(got.loss, expected.loss, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)


def test_sequence_classification_gradients_match_transformers(tiny_config):
    """Training mode without dropout: the loss's gradient reaches every parameter as in transformers."""
    cfg = tiny_config()
    hf = hf_classifier(cfg, 3).train()
    ours = from_hf(BertForSequenceClassification, cfg, hf, num_labels=3).train()
    ids, mask, types = batch(cfg)
    labels = class_labels(3)
    hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
    ours(ids, mask, types, labels=labels).loss.backward()
    theirs = hf_format.state_dict_from_hf({n: p.grad for n, p in hf.named_parameters()})
    for name, p in ours.named_parameters():
        assert_close(p.grad, theirs[name], atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32, msg=name)


@pytest.mark.parametrize("unpad", UNPAD)
@pytest.mark.parametrize("fused", FUSED)
def test_sequence_classification_trains_as_transformers_with_dropout(tiny_config, fused, unpad):
    """Training mode with dropout 0.2 and one seed: the same logits, loss and gradients as transformers'
    BertForSequenceClassification. bertmath applies dropout where BERT does, in its order, with torch's
    kernels' draws (the from-scratch path included), so one seed drops the same elements in both; a
    side-by-side fine-tune then stays equal, not merely close (scripts/bench_finetune.py)."""
    cfg = tiny_config(fused=fused, unpad=unpad, hidden_dropout=0.2, attention_dropout=0.2)
    hf = hf_classifier(cfg, 3).train()
    ours = from_hf(BertForSequenceClassification, cfg, hf, num_labels=3).train()
    ids, mask, types = batch(cfg)
    labels = class_labels(3)
    torch.manual_seed(12)
    expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
    expected.loss.backward()
    torch.manual_seed(12)
    got = ours(ids, mask, types, labels=labels)
    got.loss.backward()
    assert_close(got.logits, expected.logits, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert_close(got.loss, expected.loss, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    theirs = hf_format.state_dict_from_hf({n: p.grad for n, p in hf.named_parameters()})
    for name, p in ours.named_parameters():
        assert_close(p.grad, theirs[name], atol=GRAD_ATOL_F32, rtol=GRAD_RTOL_F32, msg=name)
    with torch.no_grad():
        undropped = hf.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert not torch.allclose(undropped, expected.logits, atol=1e-3)  # dropout was on: masks were compared


@pytest.mark.parametrize("num_labels", [1, 2], ids=["regression", "binary"])
@pytest.mark.parametrize("fused", FUSED)
def test_sequence_classification_padding_changes_nothing(tiny_config, fused, num_labels):
    """Each example's logits are the same alone and in a padded batch, whatever the padding holds."""
    cfg = tiny_config(fused=fused)
    torch.manual_seed(7)
    model = BertForSequenceClassification(cfg, num_labels=num_labels).eval()
    lengths = (9, 5, 2)
    ids, mask, types = batch(cfg, lengths=lengths)
    ids[1, 5:] = 7
    with torch.no_grad():
        padded = model(ids, mask, types).logits
        for b, n in enumerate(lengths):
            alone = model(ids[b:b + 1, :n], mask[b:b + 1, :n], types[b:b + 1, :n]).logits
            assert_close(padded[b:b + 1], alone, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)


def sentence_transformers_pooling(h: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' Pooling module's formulas (models/Pooling.py), written as it writes them."""
    m = mask.unsqueeze(-1).expand(h.size()).to(h.dtype)
    if mode == "mean":
        return (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    if mode == "max":
        return torch.where(m.bool(), h, torch.full_like(h, -1e9)).max(1).values
    return h[:, 0]


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("mode", ["mean", "max", "cls"])
@pytest.mark.parametrize("unpad", UNPAD)
def test_sentence_embedding_matches_transformers_hidden_states_pooled(tiny_config, mode, normalize, unpad):
    cfg = tiny_config(unpad=unpad)
    torch.manual_seed(8)
    hf = randomize(transformers.BertModel(hf_config(cfg), add_pooling_layer=False).eval())
    ours = from_hf(BertModel, cfg, hf, add_pooler=False)
    model = BertForSentenceEmbedding(cfg, pooling=mode, normalize=normalize).eval()
    model.bert.load_state_dict(ours.state_dict())
    ids, mask, types = batch(cfg, lengths=(9, 5, 2))
    with torch.no_grad():
        expected = sentence_transformers_pooling(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask, mode)
        got = model(ids, mask).embeddings
    if normalize:
        expected = torch.nn.functional.normalize(expected, dim=-1)
        assert_close(got.norm(dim=-1), torch.ones(3))
    assert got.shape == (3, cfg.hidden_size)
    assert_close(got, expected, atol=PARITY_ATOL_F32, rtol=PARITY_RTOL_F32)
    assert model.num_parameters() == parameter_counts(cfg)["encoder"]
    with pytest.raises(ValueError, match="pooling"):
        BertForSentenceEmbedding(cfg, pooling="sum")


def test_sequence_classification_counts_and_rejects_zero_labels(tiny_config):
    cfg = tiny_config()
    model = BertForSequenceClassification(cfg, num_labels=4)
    D = cfg.hidden_size
    assert model.num_parameters() == parameter_counts(cfg)["encoder_with_pooler"] + D * 4 + 4
    assert model.num_parameters() == sum(p.numel() for p in hf_classifier(cfg, 4).parameters())
    with pytest.raises(ValueError, match="num_labels"):
        BertForSequenceClassification(cfg, num_labels=0)
