"""Export to and import from transformers' RoFormer and ModernBERT directories (bertmath.pretrained through
hf_format's layouts): a rope checkpoint (the main job's kind) exports as RoFormerForMaskedLM, which
`transformers.pipeline("fill-mask")` loads with bertmath fill-mask's top-5; a ModernBERT-shaped checkpoint as
ModernBertForMaskedLM; transformers' own saves of either are read by fill-mask, classify and finetune, and
exported back tensor for tensor; settings no twin holds are refused in one line naming them."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from bertmath import BertForMaskedLM, BertForSequenceClassification
from bertmath.tasks.classify import Classifier
from bertmath.cli import main
from bertmath.config import load_config
from bertmath.errors import CheckpointError, ConfigError
from bertmath.fill_mask import FillMask
from bertmath.tasks.finetune import finetune
from bertmath.hf_format import config_from_hf
from bertmath.io import read_safetensors
from bertmath.pretrained import export_checkpoint, load_checkpoint_tokenizer, resolve_checkpoint
from helpers import assert_one_line_error, assert_pipeline_matches_fill_mask, make_bertmath_run, sentences

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-5  # float32 logits of the same weights in two implementations
TEXTS = ["The cat sat on the [MASK].", "[MASK] old man found a red door.", "The teacher walked to the city [MASK]",
         "A small bird [MASK] over the window yesterday."]
README_TEXTS = ["to be or not to be, that is the [MASK].", "my [MASK] is king of england."]  # the README's first command
# A tiny ModernBERT: 3 layers (0 global, 1 and 2 local with a window of 8), no biases, GeGLU, rotary in halves.
MODERN = dict(type_vocab_size=0, position_encoding="rope", rope_style="half", rope_base=160000.0, norm="pre",
              ffn="glu", bias=False, num_layers=3, local_attention=8, global_every=3, local_rope_base=10000.0,
              pooler="act_norm", layer_norm_eps=1e-5, init_scheme="modernbert", initializer_range=0.3)
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]


def batch(tokenizer, texts):
    encodings = [tokenizer.encode(t).ids for t in texts]
    T = max(len(e) for e in encodings)
    ids = torch.zeros(len(texts), T, dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, :len(e)] = torch.tensor(e)
    return ids, (ids != 0).long()


def resave_with_transformers(exported: Path, out: Path, cls_name: str) -> Path:
    """What a user of transformers has: the model loaded from `exported` and saved by save_pretrained (its own
    config.json and weight names), with the tokenizer files next to it."""
    getattr(transformers, cls_name).from_pretrained(exported).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(exported / name, out / name)
    return out


# --- RoFormer: the main job's kind of checkpoint ---------------------------------------------------------


@pytest.fixture(scope="module")
def rope_run_and_export(tmp_path_factory):
    """A rope checkpoint shaped as configs/small.yaml's (post-LN, rope in interleaved pairs, ReLU, tied), tiny
    and random (helpers.tiny_model_config: peaked predictions, no near-ties), and its export."""
    root = tmp_path_factory.mktemp("roformer")
    run = make_bertmath_run(root / "run", seed=3, position_encoding="rope", activation="relu",
                            max_position_embeddings=512)
    return run, export_checkpoint(run, root / "exported")


def test_rope_export_is_a_roformer_directory(rope_run_and_export):
    run, out = rope_run_and_export
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "roformer" and config["architectures"] == ["RoFormerForMaskedLM"]
    assert config["rotary_value"] is False and config["embedding_size"] == config["hidden_size"]
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizerFast"
    weights = read_safetensors(out / "model.safetensors")
    assert weights["roformer.encoder.embed_positions.weight"].shape == (512, 8)
    assert not any(".pooler." in name for name in weights)


def test_rope_export_logits_match_roformer(rope_run_and_export):
    """transformers.AutoModelForMaskedLM loads the export as RoFormerForMaskedLM, every tensor used (its sinusoidal
    table equal to the one it would build), with bertmath's logits at every real token of a padded batch."""
    run, out = rope_run_and_export
    theirs, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert type(theirs).__name__ == "RoFormerForMaskedLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = BertForMaskedLM.from_pretrained(run)
    ids, mask = batch(load_checkpoint_tokenizer(resolve_checkpoint(run)[1]), sentences(8) + TEXTS)
    real = mask.bool()
    with torch.no_grad():
        assert_close(theirs.eval()(input_ids=ids, attention_mask=mask).logits[real], ours(ids, mask).logits[real],
                     atol=ATOL, rtol=ATOL)


def test_rope_export_tokenizer_loads_offline_as_bert_wordpiece(rope_run_and_export):
    """RoFormer's own tokenizer class wants jieba (Chinese word segmentation); the export names BERT's WordPiece
    tokenizer in tokenizer_config.json, which AutoTokenizer then loads offline from tokenizer.json."""
    run, out = rope_run_and_export
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))
    assert "Bert" in type(theirs).__name__
    ours = load_checkpoint_tokenizer(resolve_checkpoint(run)[1])
    for text in sentences(10) + TEXTS:
        assert theirs(text)["input_ids"] == ours.encode(text).ids


@pytest.mark.smoke
def test_rope_export_pipeline_matches_fill_mask(rope_run_and_export):
    run, out = rope_run_and_export
    assert_pipeline_matches_fill_mask(run, out, TEXTS + README_TEXTS)


def test_roformer_directory_is_read_and_exported_back_exactly(rope_run_and_export, tmp_path):
    """A RoFormer directory as transformers saves it: bertmath fill-mask reads it (the run's predictions), and its
    export holds the same tensors, name for name (the round trip is exact)."""
    run, out = rope_run_and_export
    saved = resave_with_transformers(out, tmp_path / "saved", "RoFormerForMaskedLM")
    assert json.loads((saved / "config.json").read_text())["model_type"] == "roformer"
    assert [r.to_dict() for r in FillMask.from_pretrained(saved).predict(TEXTS)] == \
        [r.to_dict() for r in FillMask.from_pretrained(run).predict(TEXTS)]
    again = export_checkpoint(saved, tmp_path / "again")
    a, b = read_safetensors(saved / "model.safetensors"), read_safetensors(again / "model.safetensors")
    assert set(a) <= set(b)  # transformers leaves out the tied decoder bias' second name; bertmath writes both
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_rope_classifier_exports_as_roformer_sequence_classification(rope_run_and_export, tmp_path):
    """Fine-tuned with task.pooler act (RoFormer's head: act(W Drop(h_[CLS]) + b), not BERT's tanh), a rope
    checkpoint exports as RoFormerForSequenceClassification with its label names and bertmath classify's logits;
    with the default tanh pooler the export is refused in one line naming model.pooler."""
    run, _ = rope_run_and_export
    tuned = finetuned(tmp_path, run, pooler="act")
    out = export_checkpoint(tuned, tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["RoFormerForSequenceClassification"]
    assert config["id2label"] == {"0": "rotten", "1": "fresh"}
    assert_classifier_logits_match(tuned, out)
    plain = finetuned(tmp_path / "tanh", run)
    with pytest.raises(CheckpointError, match="model.pooler is 'tanh'.*RoFormerForSequenceClassification"):
        export_checkpoint(plain, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def finetuned(tmp_path: Path, init: Path, **task) -> Path:
    """A classifier fine-tuned from `init` for 3 steps on the Rotten Tomatoes fixture (labels rotten, fresh)."""
    tree = {"task": {"init": str(init), "max_seq_len": 48, "train_file": str(FIXTURES / "rotten_train.csv"),
                     "eval_file": str(FIXTURES / "rotten_dev.tsv"), "text_columns": ["text"], "num_labels": 2,
                     "label_names": ["rotten", "fresh"], **task},
            "train": {"out_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 8, "eval_every": 3,
                      "save_every": 3, "warmup_steps": 1, "lr": 3e-3, "precision": "fp32", "plot": False}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    finetune(load_config(tmp_path / "c.yaml"))
    return tmp_path / "run"


def assert_classifier_logits_match(checkpoint, exported):
    """transformers' AutoModelForSequenceClassification on the export = bertmath's classifier (and classify's
    probabilities) on a padded batch."""
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    ours = BertForSequenceClassification.from_pretrained(checkpoint)
    texts = ["A gorgeous, witty, seductive movie.", "Dull.", "The plot is a mess and the acting is worse than bad."]
    ids, mask = batch(load_checkpoint_tokenizer(resolve_checkpoint(checkpoint)[1]), texts)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        assert_close(ours(ids, mask).logits, expected, atol=ATOL, rtol=ATOL)
    predictions = Classifier.from_pretrained(checkpoint)(texts)
    assert [p.to_dict()["label"] for p in predictions] == [theirs.config.id2label[int(i)] for i in expected.argmax(-1)]


# --- ModernBERT ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modern_dirs(tmp_path_factory):
    """A ModernBERT-shaped bertmath run, its export, and transformers' own save of that export."""
    root = tmp_path_factory.mktemp("modernbert")
    run = make_bertmath_run(root / "run", seed=4, **MODERN)
    exported = export_checkpoint(run, root / "exported")
    saved = resave_with_transformers(exported, root / "saved", "ModernBertForMaskedLM")
    return run, exported, saved


def test_modern_export_is_a_modernbert_directory(modern_dirs):
    run, exported, saved = modern_dirs
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["architectures"] == ["ModernBertForMaskedLM"]
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    assert (config["local_attention"], config["norm_bias"], config["mlp_bias"]) == (8, False, False)
    tokenizer = load_checkpoint_tokenizer(resolve_checkpoint(run)[1])
    assert (config["cls_token_id"], config["sep_token_id"]) == (tokenizer.token_to_id("[CLS]"),
                                                                tokenizer.token_to_id("[SEP]"))
    weights = read_safetensors(exported / "model.safetensors")
    assert weights["model.layers.1.attn.Wqkv.weight"].shape == (3 * 32, 32)
    assert weights["model.layers.1.mlp.Wi.weight"].shape == (2 * 64, 32)
    assert "model.layers.0.attn_norm.weight" not in weights and "model.final_norm.weight" in weights


def test_modern_export_logits_and_pipeline_match(modern_dirs):
    run, exported, _ = modern_dirs
    theirs, info = transformers.AutoModelForMaskedLM.from_pretrained(exported, output_loading_info=True)
    assert type(theirs).__name__ == "ModernBertForMaskedLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = BertForMaskedLM.from_pretrained(run)
    long_text = " ".join(sentences(6))  # ~50 tokens: beyond the local layers' window of 8
    ids, mask = batch(load_checkpoint_tokenizer(resolve_checkpoint(run)[1]), TEXTS + [long_text])
    real = mask.bool()
    with torch.no_grad():
        assert_close(theirs.eval()(input_ids=ids, attention_mask=mask).logits[real], ours(ids, mask).logits[real],
                     atol=ATOL, rtol=ATOL)
    assert_pipeline_matches_fill_mask(run, exported, TEXTS)


def test_modernbert_directory_is_read_and_exported_back_exactly(modern_dirs, tmp_path):
    """transformers' save of a ModernBERT: its config reads back as the run's, fill-mask predicts as on the
    run, and the export back holds transformers' tensors exactly."""
    run, _, saved = modern_dirs
    hf = json.loads((saved / "config.json").read_text())
    assert "transformers_version" in hf and "layer_types" in hf
    assert config_from_hf(hf) == load_config(resolve_checkpoint(run)[1] / "config.yaml").model
    assert [r.to_dict() for r in FillMask.from_pretrained(saved).predict(TEXTS)] == \
        [r.to_dict() for r in FillMask.from_pretrained(run).predict(TEXTS)]
    again = export_checkpoint(saved, tmp_path / "again")
    a, b = read_safetensors(saved / "model.safetensors"), read_safetensors(again / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_modernbert_directory_fine_tunes_classifies_and_exports(modern_dirs, tmp_path):
    """finetune starts from a transformers ModernBERT directory (its act_norm pooler: ModernBERT's head), classify
    reads the run, and the run exports as ModernBertForSequenceClassification with the same logits; classify
    reads that transformers directory too."""
    _, _, saved = modern_dirs
    tuned = finetuned(tmp_path, saved)
    assert load_config(resolve_checkpoint(tuned)[1] / "config.yaml").model.pooler == "act_norm"
    out = export_checkpoint(tuned, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ModernBertForSequenceClassification"]
    assert_classifier_logits_match(tuned, out)
    texts = ["Dull.", "A gorgeous, witty, seductive movie."]
    assert [p.to_dict() for p in Classifier.from_pretrained(out)(texts)] == \
        [p.to_dict() for p in Classifier.from_pretrained(tuned)(texts)]


# --- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,words", [
    (dict(norm="pre"), ["model.position_encoding is 'learned'", "pre-LN", "ModernBERT"]),
    (dict(position_encoding="rope", rope_base=500.0), ["model.rope_base is 500.0", "RoFormer", "10000"]),
    (dict(position_encoding="rope", ffn="glu"), ["model.ffn is 'glu'", "RoFormer"]),
    (dict(position_encoding="rope", bias=False), ["model.bias is False", "RoFormer"]),
    (dict(position_encoding="rope", rope_style="half"), ["model.rope_style is 'half'", "RoFormer", "interleaved"]),
    (dict(position_encoding="rope", local_attention=16), ["model.local_attention is 16", "global attention"]),
    (dict(type_vocab_size=0), ["model.type_vocab_size is 0", "BERT", "segment"]),
    (dict(MODERN, rope_style="interleaved"), ["model.rope_style is 'interleaved'", "ModernBERT", "half"]),
    (dict(MODERN, ffn="mlp"), ["model.ffn is 'mlp'", "ModernBERT", "glu"]),
    (dict(MODERN, type_vocab_size=2), ["model.type_vocab_size is 2", "ModernBERT"]),
], ids=["pre_ln_learned", "rope_base", "rope_glu", "rope_no_bias", "rope_half", "rope_window", "bert_no_segments",
        "modern_interleaved", "modern_mlp", "modern_segments"])
def test_export_refuses_what_no_twin_holds_in_one_line(tmp_path, capsys, changes, words):
    run = make_bertmath_run(tmp_path / "run", **changes)
    assert main(["export", str(run), str(tmp_path / "out")]) == 1
    assert_one_line_error(capsys, "export", *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change,words", [
    ({"embedding_size": 16}, ["embedding_size 16", "hidden_size 32"]),
    ({"rotary_value": True}, ["rotary_value"]),
    ({"is_decoder": True}, ["is_decoder"]),
], ids=["embedding_size", "rotary_value", "decoder"])
def test_roformer_import_refuses_what_bertmath_cannot_reproduce(rope_run_and_export, tmp_path, capsys, change, words):
    _, out = rope_run_and_export
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, **change}))
    assert main(["fill-mask", str(broken), "The [MASK] sat."]) == 1
    assert_one_line_error(capsys, "fill-mask", str(broken), *words)


@pytest.mark.parametrize("change,words", [
    ({"mlp_bias": True}, ["norm_bias False", "mlp_bias True", "model.bias"]),
    ({"decoder_bias": False}, ["decoder_bias is false"]),
    ({"classifier_activation": "relu"}, ["classifier_activation 'relu'", "hidden_activation 'gelu'"]),
    ({"layer_types": ["full_attention", "full_attention", "sliding_attention"]}, ["layer_types", "global_every"]),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}, ["rope_type 'yarn'"]),
    ({"local_attention": 4096}, ["model.local_attention", "max_position_embeddings"]),
], ids=["mixed_biases", "no_decoder_bias", "head_activation", "layer_pattern", "scaled_rope", "window"])
def test_modernbert_import_refuses_what_bertmath_cannot_reproduce(modern_dirs, tmp_path, capsys, change, words):
    _, _, saved = modern_dirs
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, **change}))
    assert main(["fill-mask", str(broken), "The [MASK] sat."]) in (1, 2)
    assert_one_line_error(capsys, "fill-mask", *words)


def test_finetune_task_pooler_mean_needs_act_norm(rope_run_and_export, tmp_path):
    run, _ = rope_run_and_export
    with pytest.raises(ConfigError, match="model.pooling"):
        finetuned(tmp_path, run, pooling="mean")
