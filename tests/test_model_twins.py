"""bertmath.model's switches against their transformers twins: RoFormer (rotary positions in interleaved pairs,
post-LN) and ModernBERT (pre-LN with a final norm, GeGLU, no biases, rotary in halves with a global and a local
base, sliding-window local layers, no segment embeddings). The same random weights give the same logits, loss
and gradients (fp32, ≤ 1e-5 for logits and loss), padded and unpadded, on inputs shorter and longer than the
local window; the switches' formulas are also checked on their own (gated FFN, pre-LN layer, window reach,
init scheme) and parameter counts against transformers' models built from the same config."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import bertmath
from bertmath import BertForMaskedLM, BertForSequenceClassification, BertModel, hf_format, parameter_counts
from bertmath.model import GatedFeedForward, PreNormEncoderLayer, parameter_table

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PARITY_ATOL, PARITY_RTOL = 1e-5, 1e-5  # float32 logits and loss: two evaluation orders of the same math
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-4  # float32 gradients (one more reduction than the values)
FUSED = [pytest.param(False, id="scratch"), pytest.param(True, id="fused")]
UNPAD = [pytest.param(False, id="padded"), pytest.param(True, id="unpadded")]
WINDOW = 16  # the local layers see |i - j| <= 8
LENGTHS = {"short": (12, (12, 7, 3)), "beyond_window": (40, (40, 23, 5))}  # T, real tokens per sequence


def modern_config(**changes):
    """A tiny ModernBERT: 4 layers (0 and 3 global, 1 and 2 local), D 32, 4 heads of 8, GeGLU F 48, vocab 99."""
    values = dict(vocab_size=99, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=48,
                  max_position_embeddings=128, type_vocab_size=0, activation="gelu", hidden_dropout=0.0,
                  attention_dropout=0.0, layer_norm_eps=1e-5, position_encoding="rope", rope_style="half",
                  rope_base=160000.0, norm="pre", ffn="glu", bias=False, local_attention=WINDOW, global_every=3,
                  local_rope_base=10000.0, pooler="act_norm", init_scheme="modernbert")
    values.update(changes)
    return bertmath.ModelConfig(**values)


def roformer_config(**changes):
    values = dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
                  max_position_embeddings=128, activation="gelu", hidden_dropout=0.0, attention_dropout=0.0,
                  position_encoding="rope", pooler="act")
    values.update(changes)
    return bertmath.ModelConfig(**values)


def hf_config(cfg, attn="eager", **extra):
    """transformers' config of cfg's twin, built from hf_format.config_to_hf (the export's config.json)."""
    hf = {k: v for k, v in hf_format.config_to_hf(cfg).items() if k not in ("architectures", "model_type")}
    hf.update(extra)
    if hf_format.family(cfg) is hf_format.MODERNBERT:
        hf.update(cls_token_id=1, sep_token_id=2, bos_token_id=1, eos_token_id=2)
        config = transformers.ModernBertConfig(**hf)
    else:
        config = transformers.RoFormerConfig(**hf)
    config._attn_implementation = attn
    return config


def randomize(model, seed=0):
    """Perturb every learned parameter, so that a mix-up of names, halves or biases shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:  # RoFormer's frozen sinusoidal table
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def hf_model(cls_name, cfg, attn="eager", seed=0, **extra):
    torch.manual_seed(seed)
    return randomize(getattr(transformers, cls_name)(hf_config(cfg, attn, **extra)).eval(), seed)


def ours_from(cls, cfg, hf, **kwargs):
    """A bertmath model holding `hf`'s weights (strict: every name maps, every stacked tensor splits)."""
    model = cls(cfg, **kwargs)
    layout = hf_format.family(cfg)
    kind = hf_format.kind_of_architectures({"architectures": [type(hf).__name__]})  # as config.json tells it
    model.load_state_dict(hf_format.state_dict_from_hf(hf.state_dict(), layout=layout, kind=kind), strict=True)
    return model.eval()


def batch(vocab, T, lengths, seed=1, pad=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


def mlm_labels(ids, mask, seed=2, rate=0.3):
    g = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(ids.shape, generator=g) < rate) & (mask == 1)
    chosen[0, 0] = True
    return torch.where(chosen, ids, torch.full_like(ids, -100))


def assert_same_step(ours, hf, inputs: dict, real=None, seed=None):
    """ours(**inputs) and hf(**inputs) (transformers' argument names) give the same logits (at the `real`
    positions, when given) and loss, and after backward the same gradient of every parameter. With `seed`,
    each forward starts from it (the same dropout draws)."""
    if seed is not None:
        torch.manual_seed(seed)
    expected = hf(**inputs)
    if seed is not None:
        torch.manual_seed(seed)
    got = ours(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), labels=inputs["labels"])
    pick = (lambda x: x) if real is None else (lambda x: x[real])
    assert_close(pick(got.logits), pick(expected.logits), atol=PARITY_ATOL, rtol=PARITY_RTOL)
    assert_close(got.loss, expected.loss, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    expected.loss.backward()
    got.loss.backward()
    theirs = hf_format.state_dict_from_hf({n: p.grad for n, p in hf.named_parameters() if p.grad is not None},
                                          layout=hf_format.family(ours.config))
    for name, p in ours.named_parameters():
        assert_close(p.grad, theirs[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=name)
    return expected


# --- ModernBERT ---------------------------------------------------------------------------------------------


def test_modern_config_is_modernberts_shape():
    """The tiny config's twin is ModernBERT with layers 0 and 3 global, 1 and 2 sliding (window 16 → 8 each way)."""
    config = hf_config(modern_config())
    assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert config.sliding_window == WINDOW // 2
    assert [bertmath.ModelConfig.is_local(modern_config(), i) for i in range(4)] == [False, True, True, False]
    model = BertForMaskedLM(modern_config())
    assert [type(layer) for layer in model.bert.encoder.layers] == [PreNormEncoderLayer] * 4
    assert isinstance(model.bert.encoder.layers[0].attention_norm, torch.nn.Identity)
    assert all(isinstance(layer.feed_forward, GatedFeedForward) for layer in model.bert.encoder.layers)
    assert not any(name.endswith(".bias") for name, _ in model.named_parameters() if name != "mlm_head.decoder.bias")


@pytest.mark.parametrize("length", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("unpad", UNPAD)
def test_modernbert_logits_match_transformers(unpad, fused, length):
    """ModernBertForMaskedLM's logits at every real token, with the same weights; padded batches, inputs shorter
    than the window and 2.5 windows long (the local layers then see only part of the sequence)."""
    cfg = modern_config(fused=fused, unpad=unpad)
    hf = hf_model("ModernBertForMaskedLM", cfg)
    ours = ours_from(BertForMaskedLM, cfg, hf)
    T, lengths = LENGTHS[length]
    ids, mask = batch(cfg.vocab_size, T, lengths)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask).logits
    real = mask.bool()
    assert_close(got[real], expected[real], atol=PARITY_ATOL, rtol=PARITY_RTOL)
    assert torch.equal(got.argmax(-1)[real], expected.argmax(-1)[real])


@pytest.mark.parametrize("unpad", UNPAD)
def test_modernbert_logits_match_transformers_sdpa_and_float64(unpad):
    """transformers' SDPA attention (its default) gives the same logits; and in float64 the two agree to 1e-8
    (transformers turns its rotary angles in float32 even in a float64 model: the rest is rounding). Its eager
    attention is not used in float64: a padding query with no key in its window gets NaN there (its float64
    mask turns to -inf in a float32 softmax), and NaN reaches the real tokens through the values."""
    cfg = modern_config(fused=True, unpad=unpad)
    ids, mask = batch(cfg.vocab_size, *LENGTHS["beyond_window"])
    real = mask.bool()
    for dtype, atol in ((torch.float32, PARITY_ATOL), (torch.float64, 1e-8)):
        hf = hf_model("ModernBertForMaskedLM", cfg, attn="sdpa").to(dtype)
        ours = ours_from(BertForMaskedLM, dataclasses.replace(cfg, fused=dtype == torch.float32), hf).to(dtype)
        with torch.no_grad():
            got, expected = ours(ids, mask).logits, hf(input_ids=ids, attention_mask=mask).logits
        assert got.dtype == dtype
        assert_close(got[real], expected[real], atol=atol, rtol=atol)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("unpad", UNPAD)
def test_modernbert_loss_and_gradients_match_transformers(unpad, fused):
    """Training mode, no dropout: the MLM loss and the gradient of every parameter (the stacked Wqkv and Wi
    split into bertmath's Q, K, V and W_in, W_gate) on a padded batch longer than the window."""
    cfg = modern_config(fused=fused, unpad=unpad)
    hf = hf_model("ModernBertForMaskedLM", cfg).train()
    ours = ours_from(BertForMaskedLM, cfg, hf).train()
    ids, mask = batch(cfg.vocab_size, *LENGTHS["beyond_window"])
    assert_same_step(ours, hf, dict(input_ids=ids, attention_mask=mask, labels=mlm_labels(ids, mask)), mask.bool())


@pytest.mark.parametrize("changes", [dict(bias=True), dict(tie_word_embeddings=False), dict(activation="relu"),
                                     dict(global_every=1), dict(local_attention=None, local_rope_base=None),
                                     dict(global_every=2, local_rope_base=None, rope_base=10000.0)],
                         ids=["biases", "untied", "relu", "all_global", "no_window", "every_2nd"])
def test_modernbert_variants_match_transformers(changes):
    """ModernBERT's flags as bertmath's switches: biases on (norm/attention/mlp/classifier_bias), an untied
    decoder, another activation, other layer patterns, one rotary base."""
    cfg = modern_config(fused=True, **changes)
    hf = hf_model("ModernBertForMaskedLM", cfg)
    ours = ours_from(BertForMaskedLM, cfg, hf)
    ids, mask = batch(cfg.vocab_size, *LENGTHS["beyond_window"])
    real = mask.bool()
    with torch.no_grad():
        assert_close(ours(ids, mask).logits[real], hf(input_ids=ids, attention_mask=mask).logits[real],
                     atol=PARITY_ATOL, rtol=PARITY_RTOL)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("num_labels", [1, 3], ids=["regression", "three-way"])
def test_modernbert_classifier_matches_transformers(num_labels, pooling):
    """ModernBertForSequenceClassification: head (dense, act, norm) on [CLS] or on the mean of the real tokens,
    then the classifier: logits, loss and gradients."""
    cfg = modern_config(fused=True, pooling=pooling)
    hf = hf_model("ModernBertForSequenceClassification", cfg, num_labels=num_labels).train()
    assert hf.config.classifier_pooling == pooling
    ours = ours_from(BertForSequenceClassification, cfg, hf, num_labels=num_labels).train()
    ids, mask = batch(cfg.vocab_size, *LENGTHS["beyond_window"])
    labels = torch.rand(3) * 5 if num_labels == 1 else torch.tensor([0, 2, 1])
    assert_same_step(ours, hf, dict(input_ids=ids, attention_mask=mask, labels=labels))


# --- RoFormer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [9, 100])
@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("unpad", UNPAD)
def test_roformer_logits_loss_and_gradients_match_transformers(unpad, fused, T):
    """RoFormerForMaskedLM is bertmath's post-LN model with rope positions: logits, loss and gradients."""
    cfg = roformer_config(fused=fused, unpad=unpad)
    hf = hf_model("RoFormerForMaskedLM", cfg).train()
    ours = ours_from(BertForMaskedLM, cfg, hf).train()
    ids, mask = batch(cfg.vocab_size, T, (T, T // 2, 3))
    types = (torch.arange(T)[None, :] >= 4).long().expand_as(ids) * mask
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=mlm_labels(ids, mask))
    assert_same_step(ours, hf, inputs, mask.bool())


@pytest.mark.parametrize("num_labels", [1, 3], ids=["regression", "three-way"])
def test_roformer_classifier_matches_transformers(num_labels):
    """RoFormerForSequenceClassification's head is not BERT's pooler: dropout, dense, the model's activation
    (not tanh), dropout, out_proj. bertmath's pooler 'act' is that head up to out_proj, its classifier out_proj.
    With dropout on and one seed, the same elements drop: training-mode logits and gradients agree too."""
    cfg = roformer_config(pooler="act", hidden_dropout=0.2)
    hf = hf_model("RoFormerForSequenceClassification", cfg, num_labels=num_labels).train()
    ours = ours_from(BertForSequenceClassification, cfg, hf, num_labels=num_labels).train()
    assert ours.bert.pooler.__class__.__name__ == "ActPooler"
    ids, mask = batch(cfg.vocab_size, 20, (20, 9, 4))
    labels = torch.rand(3) * 5 if num_labels == 1 else torch.tensor([0, 2, 1])
    expected = assert_same_step(ours, hf, dict(input_ids=ids, attention_mask=mask, labels=labels), seed=5)
    with torch.no_grad():
        assert not torch.allclose(hf.eval()(input_ids=ids, attention_mask=mask).logits, expected.logits, atol=1e-4)


@pytest.mark.parametrize("twin", ["RoFormerModel", "ModernBertModel"])
def test_bare_encoders_match_transformers(twin):
    """BertModel without pooler ↔ transformers' bare encoder (names without the "roformer."/"model." prefix);
    RoFormer's frozen sinusoidal table is the one hf_format.roformer_position_table builds."""
    cfg = roformer_config() if twin == "RoFormerModel" else modern_config()
    hf = hf_model(twin, cfg)
    ours = ours_from(BertModel, cfg, hf, add_pooler=False)
    theirs = hf_format.state_dict_to_hf(ours.state_dict(), hf_format.family(cfg))
    if twin == "RoFormerModel":
        assert torch.equal(hf.state_dict()["encoder.embed_positions.weight"], hf_format.roformer_position_table(cfg))
        theirs["encoder.embed_positions.weight"] = hf_format.roformer_position_table(cfg)
    assert theirs.keys() == hf.state_dict().keys()
    ids, mask = batch(cfg.vocab_size, *LENGTHS["beyond_window"])
    real = mask.bool()
    with torch.no_grad():
        assert_close(ours(ids, mask).last_hidden_state[real], hf(input_ids=ids, attention_mask=mask).last_hidden_state[real],
                     atol=PARITY_ATOL, rtol=PARITY_RTOL)


# --- the switches on their own -----------------------------------------------------------------------------


def test_gated_feed_forward_is_its_formula():
    """FFN(x) = (gelu(x W_in + b_in) ⊙ (x W_gate + b_gate)) W_out + b_out, by hand in float64."""
    torch.manual_seed(0)
    cfg = modern_config(bias=True)
    ffn = GatedFeedForward(cfg).double()
    x = torch.randn(5, cfg.hidden_size, dtype=torch.float64)
    a = x @ ffn.up.weight.T + ffn.up.bias
    gelu = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
    expected = (gelu * (x @ ffn.gate.weight.T + ffn.gate.bias)) @ ffn.down.weight.T + ffn.down.bias
    assert_close(ffn(x), expected, atol=1e-12, rtol=1e-10)


def test_pre_norm_layer_is_its_formula():
    """A pre-LN layer (not the first): h = x + Attn(LN₁(x)); y = h + FFN(LN₂(h)); the first skips LN₁."""
    torch.manual_seed(0)
    cfg = modern_config(bias=True, local_attention=None, local_rope_base=None)
    first, layer = (PreNormEncoderLayer(cfg, i).double().eval() for i in (0, 1))
    x = torch.randn(2, 6, cfg.hidden_size, dtype=torch.float64)

    def ln(norm, v):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + cfg.layer_norm_eps) * norm.weight + norm.bias

    h = x + layer.attention(ln(layer.attention_norm, x))
    assert_close(layer(x), h + layer.feed_forward(ln(layer.output_norm, h)), atol=1e-12, rtol=1e-10)
    h0 = x + first.attention(x)
    assert_close(first(x), h0 + first.feed_forward(ln(first.output_norm, h0)), atol=1e-12, rtol=1e-10)


def test_local_layers_see_half_a_window_each_way():
    """Layer 0 is always global; with global_every 2, layer 1 is local. Changing the input at distance d from
    position i changes the local layer's output at i exactly when d ≤ w/2 (w = 8: four tokens each way)."""
    torch.manual_seed(0)
    cfg = modern_config(num_layers=2, global_every=2, local_attention=8, hidden_dropout=0.0)
    model = BertModel(cfg, add_pooler=False).double().eval()
    local = model.encoder.layers[1]
    assert local.local and not model.encoder.layers[0].local
    T, i = 20, 10
    x = torch.randn(1, T, cfg.hidden_size, dtype=torch.float64)
    _, local_mask = model.logit_masks(None, T, x.device)
    base = local(x, local_mask)[0, i]
    for d in range(1, 8):
        y = x.clone()
        y[0, i + d] += torch.randn(cfg.hidden_size, dtype=torch.float64)  # not a constant: LN would remove it
        changed = not torch.allclose(local(y, local_mask)[0, i], base, atol=1e-12, rtol=0)
        assert changed == (d <= 4), d


@pytest.mark.parametrize("changes", [dict(), dict(bias=True, pooling="mean"), dict(unpad=False), dict(fused_qkv=True),
                                     dict(position_encoding="alibi", rope_style="interleaved", local_rope_base=None)],
                         ids=["modernbert", "biases_mean", "padded", "fused_qkv_no_bias", "alibi_local"])
def test_fused_and_from_scratch_paths_agree(changes):
    """Both paths of every new switch, in float64 (rounding only), padded and beyond the window."""
    torch.manual_seed(0)
    cfg = modern_config(**changes)
    scratch = BertForSequenceClassification(cfg, num_labels=2).double().eval()
    fused = BertForSequenceClassification(dataclasses.replace(cfg, fused=True), num_labels=2).double().eval()
    fused.load_state_dict(scratch.state_dict())
    ids, mask = batch(cfg.vocab_size, *LENGTHS["beyond_window"])
    with torch.no_grad():
        a, b = scratch.bert(ids, mask), fused.bert(ids, mask)
        real = mask.bool()
        assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=1e-12, rtol=1e-10)
        assert_close(scratch(ids, mask).logits, fused(ids, mask).logits, atol=1e-12, rtol=1e-10)


def test_padding_changes_no_real_token_with_local_layers():
    """Each sequence's hidden states are the same alone and in a padded batch, also beyond the window, and
    a padding query with no real key within its window stays finite (it sees itself)."""
    torch.manual_seed(0)
    for unpad in (False, True):
        model = BertModel(modern_config(fused=True, unpad=unpad), add_pooler=False).eval()
        T, lengths = LENGTHS["beyond_window"]
        ids, mask = batch(99, T, lengths)
        with torch.no_grad():
            padded = model(ids, mask).last_hidden_state
            assert torch.isfinite(padded).all()
            for b, n in enumerate(lengths):
                alone = model(ids[b:b + 1, :n]).last_hidden_state
                assert_close(padded[b:b + 1, :n], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["rope", "alibi"])
def test_attention_weights_of_local_layers_stay_in_the_window(positions):
    """BertModel.attention_weights of a pre-LN model with local layers: a local layer gives no weight to keys
    beyond w/2, a global one does; no layer gives weight to padding."""
    torch.manual_seed(0)
    rope = dict(rope_style="interleaved", local_rope_base=None) if positions == "alibi" else {}
    model = BertModel(modern_config(position_encoding=positions, **rope), add_pooler=False).double().eval()
    T, lengths = LENGTHS["beyond_window"]
    ids, mask = batch(99, T, lengths)
    with torch.no_grad():
        weights = model.attention_weights(ids, mask)
    far = ~bertmath.functional.sliding_window_mask(T, WINDOW)  # (T, T)
    for layer, w in zip(model.encoder.layers, weights):
        assert w.shape == (3, 4, T, T)
        assert bool((w[:, :, far] == 0).all()) == layer.local
        assert (w[1, :, :23, 23:] == 0).all()  # padding keys get no weight


def test_token_type_ids_are_ignored_without_segment_embeddings():
    torch.manual_seed(0)
    model = BertForMaskedLM(modern_config()).eval()
    assert model.bert.embeddings.token_type_embeddings is None
    ids, mask = batch(99, 10, (10, 6, 2))
    with torch.no_grad():
        assert torch.equal(model(ids, mask).logits, model(ids, mask, torch.ones_like(ids)).logits)


def test_modernbert_init_scheme():
    """Truncated normals at ±2σ: σ = initializer_range for embeddings and the matrices reading the residual
    stream, σ/√(2N) for those writing to it and the head's dense; norms 1 (ModernBERT's _init_weights)."""
    torch.manual_seed(0)
    cfg = modern_config(hidden_size=256, num_heads=4, intermediate_size=384, num_layers=8, vocab_size=1000,
                        bias=True)
    model = BertForMaskedLM(cfg)
    std, out = cfg.initializer_range, cfg.initializer_range / math.sqrt(2 * cfg.num_layers)
    truncated = 0.8796  # the std of a unit normal truncated at ±2
    layer = model.bert.encoder.layers[3]
    for w, s in [(model.bert.embeddings.word_embeddings.weight, std), (layer.attention.query.weight, std),
                 (layer.feed_forward.gate.weight, std), (layer.attention.output.weight, out),
                 (layer.feed_forward.down.weight, out), (model.mlm_head.dense.weight, out)]:
        assert w.abs().max() <= 2 * s
        assert abs(w.std().item() / (s * truncated) - 1) < 0.05
    assert torch.equal(layer.attention.query.bias, torch.zeros(cfg.hidden_size))
    assert torch.equal(layer.output_norm.weight, torch.ones(cfg.hidden_size))
    bert = BertForMaskedLM(dataclasses.replace(cfg, init_scheme="bert"))
    assert bert.bert.encoder.layers[3].attention.output.weight.abs().max() > 2 * std  # untruncated, σ everywhere


# --- parameter counts ---------------------------------------------------------------------------------------


def numel(model):
    return sum(p.numel() for p in model.parameters())


COUNT_VARIANTS = {"modernbert": dict(), "biases": dict(bias=True), "untied": dict(tie_word_embeddings=False),
                  "mean_pool": dict(pooling="mean")}


@pytest.mark.parametrize("changes", list(COUNT_VARIANTS.values()), ids=list(COUNT_VARIANTS))
def test_parameter_counts_equal_built_models_and_transformers(changes):
    cfg = modern_config(**changes)
    counts = parameter_counts(cfg)
    assert counts["bert_for_masked_lm"] == numel(BertForMaskedLM(cfg)) == sum(n for _, n in parameter_table(cfg))
    assert counts["encoder"] == numel(BertModel(cfg, add_pooler=False))
    assert counts["encoder_with_pooler"] == numel(BertModel(cfg))
    assert counts["bert_for_masked_lm"] == numel(hf_model("ModernBertForMaskedLM", cfg))
    assert counts["encoder"] == numel(hf_model("ModernBertModel", cfg))
    classifier = hf_model("ModernBertForSequenceClassification", cfg, num_labels=3)
    assert counts["encoder_with_pooler"] + 3 * cfg.hidden_size + 3 == numel(classifier)
    rcfg = roformer_config()
    assert parameter_counts(rcfg)["bert_for_masked_lm"] == numel(hf_model("RoFormerForMaskedLM", rcfg)) - \
        rcfg.max_position_embeddings * rcfg.head_size  # RoFormer's sinusoidal table is a parameter there, frozen
    assert parameter_counts(rcfg)["encoder_with_pooler"] + 3 * 32 + 3 == \
        numel(hf_model("RoFormerForSequenceClassification", rcfg, num_labels=3)) - 128 * 8


@pytest.mark.parametrize("ffn,norm", [("glu", "post"), ("mlp", "pre"), ("glu", "pre")])
def test_parameter_table_counts_every_switch(ffn, norm):
    cfg = bertmath.ModelConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=24,
                               ffn=ffn, norm=norm, bias=False, type_vocab_size=0)
    assert sum(n for _, n in parameter_table(cfg)) == numel(BertForMaskedLM(cfg)) == parameter_counts(cfg)["bert_for_masked_lm"]


def test_modernbert_base_params_equal_transformers(capsys):
    """`bertmath params configs/modernbert_base.yaml` prints exactly transformers' ModernBertForMaskedLM count
    for the same config (ModernBERT-base's shape; built on the meta device: no memory, no init)."""
    from bertmath.cli import main
    cfg = bertmath.load_config(ROOT / "configs/modernbert_base.yaml").model
    assert main(["params", str(ROOT / "configs/modernbert_base.yaml")]) == 0
    printed = capsys.readouterr().out
    with torch.device("meta"):
        theirs = numel(transformers.ModernBertForMaskedLM(hf_config(cfg, attn="sdpa")))
        ours = numel(BertForMaskedLM(cfg))
    with capsys.disabled():
        print(f"\nModernBERT-base: bertmath params {parameter_counts(cfg)['bert_for_masked_lm']:,}, "
              f"transformers' ModernBertForMaskedLM {theirs:,}")
    assert parameter_counts(cfg)["bert_for_masked_lm"] == theirs == ours == 149_655_232
    assert f"{theirs:,}" in printed
