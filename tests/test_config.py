"""bertmath.config: the shipped YAML files, defaults, `--set` overrides, one-line errors, frozen configs."""

import dataclasses
from pathlib import Path

import pytest
import yaml

import bertmath
from bertmath import Config, ConfigError, DataConfig, ModelConfig, TrainConfig, load_config
from bertmath.config import config_from_dict, config_to_yaml

ROOT = Path(__file__).resolve().parents[1]
def _small_yaml() -> dict:
    """configs/small.yaml read independently of bertmath.config."""
    return yaml.safe_load((ROOT / "configs/small.yaml").read_text())


SHIPPED = ["configs/small.yaml", "configs/base.yaml", "configs/large.yaml", "configs/modernbert_base.yaml"]


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path, overrides=()):
    """The ConfigError load_config raises; its message must be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


# --- shipped files and defaults -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads_every_value_from_the_file(name):
    """Every key in the YAML (read here with PyYAML directly) lands in the dataclass; the rest are defaults."""
    cfg = load_config(ROOT / name)
    raw = yaml.safe_load((ROOT / name).read_text())
    assert set(raw) <= {"model", "data", "train"}
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        values = raw.get(section) or {}
        obj = getattr(cfg, section)
        assert isinstance(obj, cls)
        for field in dataclasses.fields(cls):
            expected = values[field.name] if field.name in values else getattr(cls(), field.name)
            assert getattr(obj, field.name) == expected, f"{section}.{field.name}"


def test_shipped_sizes():
    small, base, large, modern = (load_config(ROOT / n).model for n in SHIPPED)
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (12, 768, 12, 3072)
    assert (large.num_layers, large.hidden_size, large.num_heads, large.intermediate_size) == (24, 1024, 16, 4096)
    assert base.vocab_size == large.vocab_size == 30522
    assert base.activation == large.activation == "gelu"
    assert small.hidden_size == _small_yaml()["model"]["hidden_size"] and small.num_layers == 3 and small.activation == "relu"
    assert isinstance(load_config(ROOT / "configs/base.yaml").train.lr, float)
    assert (modern.num_layers, modern.hidden_size, modern.intermediate_size, modern.local_attention) == (22, 768, 1152, 128)


@pytest.mark.parametrize("name", ["configs/base.yaml", "configs/large.yaml"])
def test_bert_configs_are_exactly_bert(name):
    """base.yaml and large.yaml stay BERT: every switch that came after it is at its default, BERT's."""
    m = load_config(ROOT / name).model
    assert (m.norm, m.ffn, m.bias, m.position_encoding, m.rope_style, m.local_attention, m.pooler, m.pooling,
            m.init_scheme, m.type_vocab_size) == ("post", "mlp", True, "learned", "interleaved", None, "tanh", "cls",
                                                  "bert", 2)


def test_defaults():
    cfg = load_config(None)
    assert cfg == Config() == config_from_dict({})
    m = cfg.model
    assert (m.vocab_size, m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (30522, 768, 12, 12, 3072)
    assert (m.max_position_embeddings, m.type_vocab_size, m.activation) == (512, 2, "relu")
    assert (m.hidden_dropout, m.attention_dropout, m.layer_norm_eps, m.initializer_range) == (0.1, 0.1, 1e-12, 0.02)
    assert m.tie_word_embeddings and not m.fused and not m.fused_qkv and not m.sparse_mlm
    assert m.head_size == 64
    assert cfg.data.mlm_probability == 0.15 and cfg.data.paths == []
    assert cfg.train.lr == 1e-4 and cfg.train.schedule == "linear"


def test_empty_file_is_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing here\n")) == Config()


def test_partial_section_keeps_other_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  hidden_size: 64\n  num_heads: 4\n"))
    assert cfg.model.hidden_size == 64 and cfg.model.num_heads == 4 and cfg.model.head_size == 16
    assert cfg.model.num_layers == 12 and cfg.train == TrainConfig() and cfg.data == DataConfig()


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    """YAML 1.1 (PyYAML) reads `3e-4` as a string; bertmath reads it as the float it means."""
    cfg = load_config(write(tmp_path, "train:\n  lr: 3e-4\n  adam_eps: 1E-8\nmodel:\n  layer_norm_eps: 1e-5\n"))
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.adam_eps == 1e-8
    assert cfg.model.layer_norm_eps == 1e-5


def test_int_is_accepted_for_float(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


# --- overrides --------------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_overrides():
    cfg = load_config(ROOT / "configs/small.yaml",
                      ["train.lr=3e-4", "model.activation=gelu", "data.source=text", "data.paths=[a.txt, b.txt]"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.activation == "gelu"
    assert cfg.data.paths == ["a.txt", "b.txt"]
    assert cfg.model.hidden_size == _small_yaml()["model"]["hidden_size"]  # the file's value where nothing overrides it


def test_override_precedence_cli_over_file_over_defaults(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.5\n  max_steps: 7\n")
    cfg = load_config(path, ["train.lr=0.25"])
    assert cfg.train.lr == 0.25  # --set beats the file
    assert cfg.train.max_steps == 7  # the file beats the default
    assert cfg.train.batch_size == TrainConfig().batch_size  # the default
    assert load_config(path, ["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2  # last --set wins


def test_override_values_parse_as_yaml_scalars():
    cfg = load_config(None, ["model.tie_word_embeddings=false", "model.num_layers=3", "data.source=text", "data.paths=one.txt",
                             "data.tokenizer=tok.json", "data.max_documents=null", "train.max_time_minutes=2"])
    assert cfg.model.tie_word_embeddings is False
    assert cfg.model.num_layers == 3
    assert cfg.data.paths == ["one.txt"]  # a single path is a list of one
    assert cfg.data.tokenizer == "tok.json" and cfg.data.max_documents is None
    assert cfg.train.max_time_minutes == 2.0


def test_override_errors():
    message = config_error(None, ["model.hidden_sise=3"])
    assert "model.hidden_sise" in message and "hidden_size" in message
    message = config_error(None, ["train.lr"])
    assert "train.lr" in message and "KEY=VALUE" in message
    message = config_error(None, ["train.lr=fast"])
    assert "train.lr" in message and "float" in message
    message = config_error(None, ["model.num_layers=[1, 2"])
    assert "model.num_layers" in message


def test_override_on_a_file_names_the_file(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 64\n  num_heads: 4\n")
    message = config_error(path, ["model.num_heads=5"])
    assert str(path) in message and "num_heads" in message


# --- errors: one line naming the file and the key path -----------------------------------------------------

ERRORS = {
    # id: (YAML, words the message must contain besides the file name)
    "unknown_key": ("model:\n  hidden_sise: 64\n", ["model.hidden_sise", "valid keys", "hidden_size", "num_heads"]),
    "unknown_section": ("modle:\n  hidden_size: 64\n", ["modle", "model", "data", "train"]),
    "section_not_mapping": ("model: 5\n", ["model", "mapping"]),
    "wrong_type_int": ("model:\n  hidden_size: big\n", ["model.hidden_size", "int", "big"]),
    "wrong_type_float": ("train:\n  lr: fast\n", ["train.lr", "float"]),
    "wrong_type_list": ("data:\n  paths: {a: 1}\n", ["data.paths", "list"]),
    "wrong_type_str_in_list": ("data:\n  paths: [1, 2]\n", ["data.paths", "str"]),
    "bool_for_int": ("model:\n  num_layers: true\n", ["model.num_layers", "int"]),
    "bool_for_float": ("train:\n  lr: yes\n", ["train.lr", "float"]),
    "int_for_bool": ("model:\n  fused: 1\n", ["model.fused", "bool"]),
    "float_for_int": ("train:\n  batch_size: 32.5\n", ["train.batch_size", "int"]),
    "unknown_activation": ("model:\n  activation: swish\n", ["model.activation", "relu", "gelu", "gelu_tanh", "swish"]),
    "unknown_schedule": ("train:\n  schedule: step\n", ["train.schedule", "cosine"]),
    "heads_do_not_divide": ("model:\n  hidden_size: 768\n  num_heads: 5\n", ["model.hidden_size", "768", "5"]),
    "zero_layers": ("model:\n  num_layers: 0\n", ["model.num_layers", "positive"]),
    "negative_hidden": ("model:\n  hidden_size: -8\n  num_heads: 1\n", ["model.hidden_size", "positive"]),
    "zero_vocab": ("model:\n  vocab_size: 0\n", ["model.vocab_size"]),
    "zero_batch": ("train:\n  batch_size: 0\n", ["train.batch_size", "positive"]),
    "negative_lr": ("train:\n  lr: -1.0e-4\n", ["train.lr", "positive"]),
    "zero_eps": ("model:\n  layer_norm_eps: 0\n", ["model.layer_norm_eps", "positive"]),
    "dropout_above_one": ("model:\n  hidden_dropout: 1.5\n", ["model.hidden_dropout", "[0, 1]"]),
    "dropout_below_zero": ("model:\n  attention_dropout: -0.1\n", ["model.attention_dropout", "[0, 1]"]),
    "mlm_probability": ("data:\n  mlm_probability: 2\n", ["data.mlm_probability", "[0, 1]"]),
    "beta_above_one": ("train:\n  adam_beta2: 1.01\n", ["train.adam_beta2", "[0, 1]"]),
    "mask_plus_random": ("data:\n  mask_token_probability: 0.9\n  random_token_probability: 0.2\n",
                         ["data.random_token_probability"]),
    "pad_outside_vocab": ("model:\n  vocab_size: 10\n  pad_token_id: 10\n", ["model.pad_token_id"]),
    "text_without_paths": ("data:\n  source: text\n", ["data.paths"]),
    "paths_with_embedded_source": ("data:\n  paths: [a.txt]\n", ["data.paths", "embedded"]),
    "top_level_list": ("- model\n- data\n", ["sections"]),
    "unknown_precision": ("train:\n  precision: int8\n", ["train.precision", "auto", "bf16"]),
    "unknown_positions": ("model:\n  position_encoding: sinusoidal\n", ["model.position_encoding", "alibi", "rope"]),
    "rope_odd_head_size": ("model:\n  position_encoding: rope\n  hidden_size: 15\n  num_heads: 5\n",
                           ["model.position_encoding", "even", "15/5 = 3"]),
    "decay_fraction_zero": ("train:\n  decay_fraction: 0\n", ["train.decay_fraction", "(0, 1]"]),
    "time_horizon_without_budget": ("train:\n  schedule_horizon: time\n", ["train.schedule_horizon", "max_time_minutes"]),
    # the switches of issue 23 (ModernBERT's parts)
    "rope_half_odd_head_size": ("model:\n  position_encoding: rope\n  rope_style: half\n  hidden_size: 15\n"
                                "  num_heads: 5\n", ["model.rope_style", "half", "even", "15/5 = 3"]),
    "rope_style_without_rope": ("model:\n  rope_style: half\n", ["model.rope_style", "rotary", "learned"]),
    "window_beyond_positions": ("model:\n  local_attention: 1024\n", ["model.local_attention", "max_position_embeddings",
                                                                       "512", "1024"]),
    "window_too_small": ("model:\n  local_attention: 1\n", ["model.local_attention", "between 2"]),
    "global_every_zero": ("model:\n  local_attention: 128\n  global_every: 0\n", ["model.global_every", "at least 1"]),
    "local_base_without_window": ("model:\n  position_encoding: rope\n  local_rope_base: 10000\n",
                                  ["model.local_rope_base", "model.local_attention"]),
    "local_base_without_rope": ("model:\n  local_attention: 128\n  local_rope_base: 10000\n",
                                ["model.local_rope_base", "rotary"]),
    "unknown_norm": ("model:\n  norm: sandwich\n", ["model.norm", "post", "pre"]),
    "unknown_ffn": ("model:\n  ffn: swiglu\n", ["model.ffn", "mlp", "glu"]),
    "mean_pooling_with_tanh": ("model:\n  pooling: mean\n", ["model.pooling", "act_norm", "tanh"]),
    "negative_type_vocab": ("model:\n  type_vocab_size: -1\n", ["model.type_vocab_size", ">= 0"]),
}


@pytest.mark.parametrize("text,words", list(ERRORS.values()), ids=list(ERRORS))
def test_config_errors_are_one_line_naming_file_and_key(tmp_path, text, words):
    path = write(tmp_path, text)
    message = config_error(path)
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)


def test_boundary_values_are_accepted(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  hidden_dropout: 0\n  attention_dropout: 1\n  num_layers: 1\n"
                                      "  hidden_size: 7\n  num_heads: 7\n"))
    assert cfg.model.hidden_dropout == 0.0 and cfg.model.attention_dropout == 1.0
    assert cfg.model.head_size == 1


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert str(path) in message and "not found" in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 64\n  num_heads: [4\ntrain:\n  lr: 1\n")
    message = config_error(path)
    assert str(path) in message and "line" in message
    line = int(message.split("line", 1)[1].split(":")[0])
    assert 3 <= line <= 4  # the unclosed bracket (PyYAML reports where it noticed: the next line at most)


def test_yaml_syntax_error_on_the_first_line(tmp_path):
    message = config_error(write(tmp_path, "model: {hidden_size: 64\n"))
    assert "line" in message


def test_top_level_list_with_overrides_is_a_config_error(tmp_path):
    message = config_error(write(tmp_path, "- 1\n- 2\n"), ["train.lr=0.1"])
    assert "sections" in message


def test_validation_applies_to_direct_construction_and_replace():
    """ModelConfig validates in __post_init__, so dataclasses.replace cannot make an invalid config."""
    with pytest.raises(ConfigError, match="num_heads"):
        ModelConfig(hidden_size=768, num_heads=5)
    with pytest.raises(ConfigError, match="model.num_layers"):
        dataclasses.replace(ModelConfig(), num_layers=0)
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=0.0)
    assert issubclass(ConfigError, bertmath.BertmathError)


def test_configs_are_frozen():
    cfg = load_config(ROOT / "configs/small.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden_size = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = ModelConfig()
    assert cfg.model.hidden_size == _small_yaml()["model"]["hidden_size"]


@pytest.mark.parametrize("name", SHIPPED)
def test_yaml_round_trip(tmp_path, name):
    """config_to_yaml writes a file that load_config reads back to the same config."""
    cfg = load_config(ROOT / name, ["data.source=text", "data.paths=[x.txt]", "data.tokenizer=t.json", "train.max_time_minutes=1.5"])
    assert load_config(write(tmp_path, config_to_yaml(cfg))) == cfg
