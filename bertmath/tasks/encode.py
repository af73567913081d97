"""Sentence embeddings from an encoder checkpoint: one vector per text, compared by cosine similarity.

    e = pool(h),  h = BertModel([CLS] text [SEP] cut to L tokens);  ê = e / ‖e‖₂ when normalising
    cos(a, b) = ê_a · ê_b                                              Reimers & Gurevych 2019 (Sentence-BERT)

    embedder = Embedder.from_pretrained("all-MiniLM-L6-v2/")   # sentence-transformers folder, bertmath run, ...
    vectors = embedder.encode(["A man is eating.", "Someone eats food."])   # (2, 384) float32

How a checkpoint pools, whether it normalises and its L come from the checkpoint (pretrained.SentenceEncoding:
a sentence-transformers folder's modules, a bertmath run fine-tuned with task.kind embedding, else
sentence-transformers' defaults for a plain encoder: mean pooling, no normalisation, said in one log line).
Texts are batched by token length (batching.length_batches: at most `batch_size` texts and MAX_TOKENS padded
positions a batch, at most 10% of them padding), so that the encoder computes little padding without taking it
out (model.Unpadded's gather and scatter cost more on a CPU than such padding: `unpad` turns them on); a batch
of equal lengths runs with no mask at all. The vectors come back in input order and equal those of one text at a time
(tests/test_tasks_encode.py: sentence-transformers' `encode` on the same folder within 1e-5).
The training side of task.kind embedding (its TaskShape) is another module's; this one is inference.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from .. import functional as BF
from ..batching import MAX_TOKENS, mask_if_padded, predict_in_batches
from ..errors import ConfigError, InputError
from ..hardware import resolve_device
from ..inference import Precision
from ..model import BertForSentenceEmbedding
from ..pretrained import SentenceEncoding, build_from_state, checkpoint_identity, read_sentence_encoder
from ..tokenizer import lowercasing, special_tokens
from .encoding import Encoded, collate, encode

log = logging.getLogger(__name__)

BATCH_SIZE = 32  # texts per forward pass at most: sentence-transformers' encode default


class Embedder:
    """A BertForSentenceEmbedding with its tokenizer and SentenceEncoding; `encode` gives one vector per text."""

    def __init__(self, model: BertForSentenceEmbedding, tokenizer: Tokenizer, encoding: SentenceEncoding,
                 device: torch.device | str = "cpu", identity: str = "", precision: Precision | None = None):
        assert not model.normalize, "the embedder normalises, per call"
        self.model, self.encoding, self.device = model.eval(), encoding, torch.device(device)
        self.precision = precision or Precision.of("fp32", self.device)
        self.tokenizer = lowercasing(tokenizer) if encoding.lowercase else tokenizer
        self.pad_id = special_tokens(tokenizer).pad
        self.identity = identity  # what the vectors depend on: the checkpoint's files and the encoding

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", pooling: str | None = None,
                        normalize: bool | None = None, max_seq_len: int | None = None,
                        unpad: bool = False, precision: str = "fp32") -> "Embedder":
        """A sentence-transformers folder (Transformer → Pooling → Normalize; BERT, RoFormer or ModernBERT), a
        bertmath run or step directory (fine-tuned with task.kind embedding, or any other: then mean pooling),
        or a transformers BERT, RoFormer or ModernBERT directory. pooling, normalize, max_seq_len: instead of
        what the checkpoint says (max_seq_len at most its positions). The model runs torch's fused kernels
        (model.fused, tested equal to functional.py's from-scratch ops), in float32.
        unpad: take a batch's padding out inside the encoder (model.config.unpad). Off: length batches hold
        little padding (2.5% of 2,000 corpus sentences in batches of 32), and on a CPU the gather and scatter
        around each attention cost more than computing it (docs/benchmarks.md, sentence embeddings).
        precision: fp32, bf16, int8 or auto (inference.Precision; a ConfigError where the hardware lacks bf16 or int8
        instructions); the vectors are returned in float32 whatever it is."""
        device = resolve_device(device)
        precision = Precision.of(precision, device)  # first: a CPU without the instructions is told at once
        if pooling is not None and pooling not in BF.POOLING:
            raise ConfigError(f"pooling: {pooling!r} is not one of {', '.join(BF.POOLING)}")
        if max_seq_len is not None and max_seq_len < 2:
            raise ConfigError(f"max_seq_len: must be at least 2 ([CLS] and [SEP]), got {max_seq_len}")
        directory, config, state, tokenizer, encoding = read_sentence_encoder(path)
        if encoding.source == "default" and pooling is None:
            log.info("%s records no pooling (not a sentence-transformers folder nor a task.kind embedding run): "
                     "sentence-transformers' defaults, mean pooling%s", directory,
                     "" if normalize else ", no normalisation")
        changes = {k: v for k, v in (("pooling", pooling), ("normalize", normalize)) if v is not None}
        if max_seq_len is not None:
            changes["max_seq_len"] = min(max_seq_len, config.max_position_embeddings)
        encoding = dataclasses.replace(encoding, **changes)
        config = dataclasses.replace(config, **precision.switches(), unpad=unpad)
        model = precision.prepare(build_from_state(BertForSentenceEmbedding, config, state, str(directory),
                                                   pooling=encoding.pooling, normalize=False))
        identity = (f"{checkpoint_identity(directory)}:{encoding.pooling}:{encoding.max_seq_len}:{encoding.lowercase}:"
                    f"{precision.name}")
        return cls(model.to(device), tokenizer, encoding, device, identity, precision)

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts: list[str]) -> Encoded:
        """[CLS] text [SEP] ids of each text, cut to L tokens (Encoded.truncated counts the cut ones)."""
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts to encode must be strings; text {n} is a {type(text).__name__}")
        return encode(self.tokenizer, [(text,) for text in texts], self.encoding.max_seq_len)

    def encode(self, texts: list[str] | str, batch_size: int = BATCH_SIZE, normalize: bool | None = None,
               max_tokens: int = MAX_TOKENS) -> Tensor:
        """(N, D) float32: e (or ê, when `normalize`, by default the checkpoint's choice) of each text, in input
        order. A text longer than L tokens is cut to its first L (sentence-transformers' truncation); how many
        were cut is logged once."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("no input text")
        encoded = self.tokenize(texts)
        self.warn_truncated(encoded.truncated, len(texts))
        return self.embed(encoded, batch_size, normalize, max_tokens)

    def warn_truncated(self, truncated: int, count: int) -> None:
        if truncated:
            log.warning("%d of %d texts were longer than %d tokens ([CLS] and [SEP] included) and were cut to their "
                        "first %d", truncated, count, self.encoding.max_seq_len, self.encoding.max_seq_len)

    def embed(self, encoded: Encoded, batch_size: int = BATCH_SIZE, normalize: bool | None = None,
              max_tokens: int = MAX_TOKENS) -> Tensor:
        """(N, D) float32 vectors of tokenised texts (`tokenize`), in their order."""
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
        lengths = [len(ids) for ids in encoded.ids]
        out = torch.empty(len(encoded), self.dimension)
        for batch, result in predict_in_batches(self.model, lengths, lambda b: self._inputs(encoded, b), batch_size,
                                                self.device, self.precision.autocast, max_tokens):
            out[batch] = result.embeddings.float().cpu()
        normalize = self.encoding.normalize if normalize is None else normalize
        return BF.l2_normalize(out) if normalize else out

    def _inputs(self, encoded: Encoded, batch: list[int]) -> dict[str, Tensor]:
        """The batch padded to its longest text; with no padding at all, no attention mask (the faster path)."""
        inputs = collate(encoded, batch, self.pad_id)
        inputs["attention_mask"] = mask_if_padded(inputs["attention_mask"])
        return inputs

    def describe(self) -> str:
        """"mean pooling, normalised, L 256 (sentence-transformers)": how the vectors are made."""
        e = self.encoding
        return (f"{e.pooling} pooling, {'normalised' if e.normalize else 'not normalised'}, at most {e.max_seq_len} "
                f"tokens ({e.source})")
