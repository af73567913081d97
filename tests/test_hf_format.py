"""bertmath.hf_format: the one name mapping between bertmath and transformers, and the config translation."""

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from bertmath import BertForMaskedLM, BertModel, CheckpointError, ModelConfig, load_config
from bertmath.hf_format import (MODERNBERT, bertmath_to_hf_name, config_from_hf, config_to_hf, hf_to_bertmath_name,
                                state_dict_from_hf, state_dict_to_hf)

transformers = pytest.importorskip("transformers")


def hf_config(cfg):
    return transformers.BertConfig(**config_to_hf(cfg))


def bertmath_models(cfg):
    """(id, model) for every bertmath model shape: MLM tied/untied, encoder with/without pooler."""
    untied = dataclasses.replace(cfg, tie_word_embeddings=False)
    return [("mlm_tied", BertForMaskedLM(cfg)), ("mlm_untied", BertForMaskedLM(untied)),
            ("encoder_pooler", BertModel(cfg)), ("encoder", BertModel(cfg, add_pooler=False))]


def hf_models(cfg):
    """The transformers counterparts, same order as `bertmath_models`."""
    untied = dataclasses.replace(cfg, tie_word_embeddings=False)
    return [transformers.BertForMaskedLM(hf_config(cfg)), transformers.BertForMaskedLM(hf_config(untied)),
            transformers.BertModel(hf_config(cfg)), transformers.BertModel(hf_config(cfg), add_pooling_layer=False)]


def test_bertmath_names_round_trip(tiny_config):
    cfg = tiny_config(num_layers=3)
    for model_id, model in bertmath_models(cfg):
        names = list(model.state_dict())  # includes the tied decoder weight's second name
        assert names
        hf_names = [bertmath_to_hf_name(n) for n in names]
        assert len(set(hf_names)) == len(names), model_id  # one-to-one
        for name, hf_name in zip(names, hf_names):
            assert hf_to_bertmath_name(hf_name) == name, (model_id, name, hf_name)


def test_mapped_names_are_transformers_names(tiny_config):
    """bertmath's names map exactly onto transformers' parameter names (buffers aside), and back."""
    cfg = tiny_config()
    for (model_id, ours), theirs in zip(bertmath_models(cfg), hf_models(cfg)):
        hf_keys = {k for k in theirs.state_dict() if not k.endswith("position_ids")}
        our_keys = set(ours.state_dict())
        assert {bertmath_to_hf_name(n) for n in our_keys} <= hf_keys, model_id
        mapped = {hf_to_bertmath_name(k) for k in hf_keys} - {None}
        assert mapped == our_keys, model_id
        # the only transformers keys that map to nothing: the decoder bias' second name
        assert {k for k in hf_keys if hf_to_bertmath_name(k) is None} <= {"cls.predictions.decoder.bias"}


@pytest.mark.parametrize("name", ["bert.embeddings.position_ids", "embeddings.position_ids"])
def test_position_ids_buffer_is_ignored(name):
    assert hf_to_bertmath_name(name) is None


@pytest.mark.parametrize("hf,ours", [
    ("bert.embeddings.LayerNorm.gamma", "bert.embeddings.norm.weight"),
    ("bert.embeddings.LayerNorm.beta", "bert.embeddings.norm.bias"),
    ("embeddings.LayerNorm.gamma", "embeddings.norm.weight"),
    ("bert.encoder.layer.3.attention.output.LayerNorm.beta", "bert.encoder.layers.3.attention_norm.bias"),
    ("bert.encoder.layer.11.output.LayerNorm.gamma", "bert.encoder.layers.11.output_norm.weight"),
    ("cls.predictions.transform.LayerNorm.gamma", "mlm_head.norm.weight"),
    ("cls.predictions.transform.LayerNorm.beta", "mlm_head.norm.bias"),
])
def test_legacy_layer_norm_names(hf, ours):
    assert hf_to_bertmath_name(hf) == ours


@pytest.mark.parametrize("hf,ours", [
    ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layers.0.attention.query.weight"),
    ("bert.encoder.layer.10.intermediate.dense.bias", "bert.encoder.layers.10.feed_forward.up.bias"),
    ("bert.encoder.layer.2.output.dense.weight", "bert.encoder.layers.2.feed_forward.down.weight"),
    ("encoder.layer.1.attention.output.dense.weight", "encoder.layers.1.attention.output.weight"),
    ("pooler.dense.weight", "pooler.dense.weight"),
    ("cls.predictions.bias", "mlm_head.decoder.bias"),
    ("cls.predictions.decoder.weight", "mlm_head.decoder.weight"),
])
def test_some_names_by_hand(hf, ours):
    assert hf_to_bertmath_name(hf) == ours


def test_unknown_names():
    for name in ["cls.seq_relationship.weight", "cls.seq_relationship.bias"]:  # next-sentence head: known, skipped
        assert hf_to_bertmath_name(name) is None
    for name in ["classifier.dense.weight", "bert.encoder.layer.0.crossattention.self.query.weight",
                 "bert.encoder.layer.x.output.dense.weight"]:
        assert hf_to_bertmath_name(name) is None
    unknown = []
    state = {"classifier.dense.weight": torch.zeros(2, 2), "cls.seq_relationship.bias": torch.zeros(2),
             "bert.embeddings.position_ids": torch.arange(3), "pooler.dense.bias": torch.ones(2),
             "classifier.weight": torch.zeros(2, 2)}
    out = state_dict_from_hf(state, unknown)
    assert unknown == ["classifier.dense.weight"]  # ignored-by-design names are not reported
    assert set(out) == {"pooler.dense.bias", "classifier.weight"}  # BertForSequenceClassification's head maps
    with pytest.raises(KeyError):
        bertmath_to_hf_name("bert.encoder.layers.0.attention.qkv.weight")


@pytest.mark.smoke
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_state_dict_round_trip_and_export_loads_into_transformers(tiny_config, tie):
    """bertmath → transformers names → strict load into transformers' model: same logits."""
    cfg = tiny_config(tie_word_embeddings=tie)
    torch.manual_seed(0)
    ours = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():  # biases and LayerNorm too, so a swapped name shows
            p.add_(torch.randn_like(p) * 0.05)
    hf_state = state_dict_to_hf(ours.state_dict())
    back = state_dict_from_hf(hf_state)
    assert back.keys() == ours.state_dict().keys()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back[name], tensor), name
    theirs = transformers.BertForMaskedLM(hf_config(cfg)).eval()
    theirs.load_state_dict(hf_state, strict=True)
    ids = torch.randint(1, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_import_uses_the_bias_transformers_applies(tiny_config):
    """An untied transformers model holds two vocabulary biases and its forward adds `decoder.bias`:
    that one must be imported, not the unused `cls.predictions.bias`."""
    cfg = tiny_config(tie_word_embeddings=False)
    torch.manual_seed(0)
    theirs = transformers.BertForMaskedLM(hf_config(cfg)).eval()
    head = theirs.cls.predictions
    with torch.no_grad():
        head.decoder.bias.copy_(torch.linspace(-1, 1, cfg.vocab_size))
    ours = BertForMaskedLM(cfg).eval()
    ours.load_state_dict(state_dict_from_hf(theirs.state_dict()), strict=True)
    ids = torch.randint(1, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    # a file with only the legacy name still loads it
    legacy = {k: v for k, v in theirs.state_dict().items() if k != "cls.predictions.decoder.bias"}
    assert torch.equal(state_dict_from_hf(legacy)["mlm_head.decoder.bias"], head.bias)


# --- config translation -------------------------------------------------------------------------------------

CONFIG_VARIANTS = {
    "tiny_gelu": dict(),
    "relu": dict(activation="relu"),
    "gelu_tanh": dict(activation="gelu_tanh"),
    "untied_odd": dict(tie_word_embeddings=False, pad_token_id=3, type_vocab_size=4, layer_norm_eps=1e-5,
                       initializer_range=0.05, hidden_dropout=0.2, attention_dropout=0.3),
}


@pytest.mark.parametrize("changes", list(CONFIG_VARIANTS.values()), ids=list(CONFIG_VARIANTS))
def test_config_round_trip(tiny_config, changes):
    cfg = tiny_config(**changes)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    # through transformers' own BertConfig (its to_dict is what config.json holds)
    assert config_from_hf(hf_config(cfg).to_dict()) == cfg


def test_config_to_hf_fields(tiny_config):
    cfg = tiny_config(activation="gelu_tanh")
    hf = hf_config(cfg)
    assert (hf.vocab_size, hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.intermediate_size) == \
        (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size)
    assert hf.max_position_embeddings == cfg.max_position_embeddings
    assert hf.hidden_act == "gelu_pytorch_tanh"


def test_config_from_hf_defaults_and_aliases():
    hf = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 20, "hidden_act": "gelu_new", "pad_token_id": None}
    cfg = config_from_hf(hf)
    assert cfg.activation == "gelu_tanh" and cfg.pad_token_id == 0
    assert cfg.max_position_embeddings == 512 and cfg.type_vocab_size == 2 and cfg.tie_word_embeddings
    assert cfg == ModelConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=20,
                              activation="gelu_tanh")


@pytest.mark.parametrize("change,drop,word", [
    ({"position_embedding_type": "relative_key"}, None, "position_embedding_type"),
    ({"hidden_act": "swish"}, None, "hidden_act"),
    ({}, "vocab_size", "vocab_size"),
    ({}, "num_hidden_layers", "num_hidden_layers"),
])
def test_config_from_hf_errors(tiny_config, change, drop, word):
    hf = config_to_hf(tiny_config())
    hf.update(change)
    hf.pop(drop, None)
    with pytest.raises(CheckpointError, match=word) as info:
        config_from_hf(hf, where="some/config.json")
    assert "some/config.json" in str(info.value)


# --- RoFormer and ModernBERT --------------------------------------------------------------------------------

# answerdotai/ModernBERT-base's config.json as transformers 4.47 wrote it (the keys of the Hub's file): the
# legacy global_attn_every_n_layers, global_rope_theta and local_rope_theta instead of layer_types and
# rope_parameters, and a position_embedding_type that ModernBERT ignores.
MODERNBERT_BASE_HUB = {
    "architectures": ["ModernBertForMaskedLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 50281, "classifier_activation": "gelu", "classifier_bias": False, "classifier_dropout": 0.0,
    "classifier_pooling": "mean", "cls_token_id": 50281, "decoder_bias": True, "deterministic_flash_attn": False,
    "embedding_dropout": 0.0, "eos_token_id": 50282, "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
    "gradient_checkpointing": False, "hidden_activation": "gelu", "hidden_size": 768, "initializer_cutoff_factor": 2.0,
    "initializer_range": 0.02, "intermediate_size": 1152, "layer_norm_eps": 1e-05, "local_attention": 128,
    "local_rope_theta": 10000.0, "max_position_embeddings": 8192, "mlp_bias": False, "mlp_dropout": 0.0,
    "model_type": "modernbert", "norm_bias": False, "norm_eps": 1e-05, "num_attention_heads": 12,
    "num_hidden_layers": 22, "pad_token_id": 50283, "position_embedding_type": "absolute", "sep_token_id": 50282,
    "tie_word_embeddings": True, "torch_dtype": "float32", "transformers_version": "4.47.0.dev0", "vocab_size": 50368,
}


def test_modernbert_base_hub_config_is_configs_modernbert_base():
    """The Hub's ModernBERT-base config reads as configs/modernbert_base.yaml's model (its pooling, mean, and its
    pad id aside), and transformers reads the same layer pattern and rotary bases from it."""
    ours = config_from_hf(MODERNBERT_BASE_HUB)
    shipped = load_config(Path(__file__).resolve().parents[1] / "configs/modernbert_base.yaml").model
    assert ours == dataclasses.replace(shipped, pooling="mean", pad_token_id=50283, fused=False)
    theirs = transformers.ModernBertConfig(**MODERNBERT_BASE_HUB)
    assert theirs.layer_types == ["sliding_attention" if ours.is_local(i) else "full_attention" for i in range(22)]
    assert theirs.rope_parameters["full_attention"]["rope_theta"] == ours.rope_base
    assert theirs.rope_parameters["sliding_attention"]["rope_theta"] == ours.local_rope_base
    assert theirs.sliding_window == ours.local_attention // 2


@pytest.mark.parametrize("changes", [
    dict(position_encoding="rope", pooler="act", max_position_embeddings=1536),
    dict(position_encoding="rope", rope_style="half", rope_base=160000.0, norm="pre", ffn="glu", bias=False,
         type_vocab_size=0, local_attention=16, global_every=3, local_rope_base=10000.0, pooler="act_norm",
         pooling="mean", init_scheme="modernbert", hidden_dropout=0.0, attention_dropout=0.0, layer_norm_eps=1e-5),
    dict(position_encoding="rope", rope_style="half", norm="pre", ffn="glu", type_vocab_size=0, pooler="act_norm",
         init_scheme="modernbert"),
], ids=["roformer", "modernbert", "modernbert_biases_all_global"])
def test_twin_config_round_trip(tiny_config, changes):
    """config_from_hf(config_to_hf(c)) == c for RoFormer and ModernBERT configs, also through transformers' own
    config class (its to_dict is what save_pretrained writes)."""
    cfg = tiny_config(**changes)
    hf = config_to_hf(cfg)
    assert config_from_hf(hf) == cfg
    cls = transformers.RoFormerConfig if hf["model_type"] == "roformer" else transformers.ModernBertConfig
    extra = {} if hf["model_type"] == "roformer" else dict(bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    assert config_from_hf(cls(**hf, **extra).to_dict()) == cfg


@pytest.mark.parametrize("hf,ours", [
    ("model.layers.3.attn.Wqkv.weight", ("bert.encoder.layers.3.attention.query.weight",
                                         "bert.encoder.layers.3.attention.key.weight",
                                         "bert.encoder.layers.3.attention.value.weight")),
    ("model.layers.0.mlp.Wi.bias", ("bert.encoder.layers.0.feed_forward.up.bias",
                                    "bert.encoder.layers.0.feed_forward.gate.bias")),
    ("model.layers.2.mlp_norm.weight", "bert.encoder.layers.2.output_norm.weight"),
    ("model.final_norm.weight", "bert.encoder.final_norm.weight"),
    ("layers.1.attn.Wo.weight", "encoder.layers.1.attention.output.weight"),  # a bare ModernBertModel
    ("model.embeddings.tok_embeddings.weight", "bert.embeddings.word_embeddings.weight"),
    ("decoder.bias", "mlm_head.decoder.bias"),
    ("head.norm.weight", "mlm_head.norm.weight"),
])
def test_modernbert_names_by_hand(hf, ours):
    assert hf_to_bertmath_name(hf, MODERNBERT) == ours
    first = ours[0] if isinstance(ours, tuple) else ours
    assert bertmath_to_hf_name(first, MODERNBERT) == hf


def test_modernbert_head_names_depend_on_the_head():
    """ModernBERT names both heads' dense + LN `head`: the MLM head's transform, or a classifier's pooler."""
    assert hf_to_bertmath_name("head.dense.weight", MODERNBERT, "mlm") == "mlm_head.dense.weight"
    assert hf_to_bertmath_name("head.dense.weight", MODERNBERT, "classifier") == "bert.pooler.dense.weight"
    state = {"model.final_norm.weight": torch.ones(2), "head.dense.weight": torch.eye(2),
             "classifier.weight": torch.zeros(3, 2), "classifier.bias": torch.zeros(3)}
    assert set(state_dict_from_hf(state, layout=MODERNBERT)) == {"bert.encoder.final_norm.weight",
                                                                 "bert.pooler.dense.weight", "classifier.weight",
                                                                 "classifier.bias"}
