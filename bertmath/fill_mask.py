"""Fill-mask: predict the tokens hidden behind [MASK] with a BertForMaskedLM and its tokenizer.

    p(x_t = v | x_masked) = softmax(z_t)_v,  z_t = MLMHead(BertModel(x_masked))_t ∈ R^V     Devlin et al. 2019, §3.1

    fill = FillMask.from_pretrained("checkpoints/run")       # bertmath run/step dir or transformers dir
    fill("The cat sat on the [MASK].")                        # → 5 candidates, best first
    fill.predict(["a [MASK] b [MASK]"], strategy="iterative")  # → [FillMaskResult(masks=..., filled=...)]

Three strategies decide which token is written into each mask (see `greedy`, `iterative`, `sample`);
the candidates reported for a mask are always those of the distribution it was filled from.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from . import functional as BF
from .batching import MAX_BATCH, MAX_TOKENS, length_batches, mask_if_padded
from .errors import CheckpointError, ConfigError, InputError
from .inference import Precision, load_for_inference
from .model import BertForMaskedLM
from .tokenizer import check_length, preview, special_tokens

STRATEGIES = ("greedy", "iterative", "sample")

# A fill-mask input that cannot be used (no [MASK] in it, longer than the model's positions) is an InputError,
# as every command's; the old name stays for callers that catch it.
FillMaskError = InputError


@dataclass(frozen=True)
class Candidate:
    """One proposal for one mask: the keys of transformers' fill-mask pipeline."""

    score: float  # probability of `token` at this mask: softmax(z) (softmax(z/T) for strategy "sample")
    token: int  # token id
    token_str: str  # tokenizer.decode([token]); a word piece keeps its "##", a special token its brackets
    sequence: str  # the text the model saw for this prediction with this mask replaced by `token`

    def to_dict(self) -> dict:
        return {"score": self.score, "token": self.token, "token_str": self.token_str, "sequence": self.sequence}


@dataclass(frozen=True)
class MaskPrediction:
    """The candidates for one [MASK]; `candidates[0]` is the token written into the filled sentence."""

    index: int  # position in the token sequence ([CLS] is 0)
    step: int  # forward pass that filled it: 0 for greedy and sample; 0, 1, ... in iterative order
    candidates: list[Candidate]

    @property
    def chosen(self) -> Candidate:
        return self.candidates[0]

    def to_dict(self) -> dict:
        return {"index": self.index, "step": self.step, "candidates": [c.to_dict() for c in self.candidates]}


@dataclass(frozen=True)
class FillMaskResult:
    """Everything predicted for one input text."""

    text: str  # the input as given
    masks: list[MaskPrediction]  # one per [MASK], left to right
    filled: str  # the (normalised, decoded) text with every mask replaced by its chosen token
    truncated_tokens: int = 0  # tokens cut from the end (truncate=True), 0 otherwise
    strategy: str = "greedy"

    def to_dict(self) -> dict:
        return {"text": self.text, "filled": self.filled, "strategy": self.strategy,
                "truncated_tokens": self.truncated_tokens, "masks": [m.to_dict() for m in self.masks]}

    def pipeline_format(self) -> list[dict] | list[list[dict]]:
        """transformers' shape: one mask → [candidate dicts]; several → one such list per mask."""
        rows = [[c.to_dict() for c in m.candidates] for m in self.masks]
        return rows[0] if len(rows) == 1 else rows

    def to_text(self, mask_token: str = "[MASK]") -> str:
        """Human-readable report: the input, per mask its candidates with probabilities, the filled text."""
        lines = [self.text]
        if self.truncated_tokens:
            lines.append(f"  (truncated: last {self.truncated_tokens} tokens dropped)")
        for number, mask in enumerate(self.masks, 1):
            iterative = self.strategy == "iterative" and len(self.masks) > 1
            order = f", filled {_ordinal(mask.step + 1)}" if iterative else ""
            lines.append(f"  {mask_token} #{number} (token {mask.index}{order}):")
            width = max(len(c.token_str) for c in mask.candidates)
            for rank, c in enumerate(mask.candidates, 1):
                marker = "*" if rank == 1 and self.strategy == "sample" else " "
                lines.append(f"   {marker}{rank:2d}. {c.token_str:<{width}}  {c.score:.4f}")
        lines.append(f"  filled: {self.filled}")
        return "\n".join(lines)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def validate_options(top_k: int = 5, strategy: str = "greedy", temperature: float = 1.0, top_p: float = 1.0) -> None:
    """ConfigError (one line, naming the option) for values `FillMask` cannot use."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k: must be an integer >= 1, got {top_k!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature: must be a positive number, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ConfigError(f"top_p: must be in (0, 1], got {top_p!r}")


@dataclass
class _Input:
    """One tokenised input while it is being filled."""

    text: str
    ids: list[int]  # [CLS] ... [SEP], after truncation; masks are overwritten as they are filled
    masks: list[int]  # positions of [MASK], left to right
    truncated: int = 0
    predictions: dict[int, MaskPrediction] = field(default_factory=dict)  # position → prediction


class FillMask:
    """Fill [MASK] tokens with a BertForMaskedLM; `__call__` mirrors transformers' fill-mask pipeline.

    Output of `fill(texts, ...)` (as `pipeline("fill-mask")`):
      - `texts` a str with one [MASK]   → list of `top_k` dicts {score, token, token_str, sequence};
      - `texts` a str with n > 1 masks  → list of n such lists, masks left to right;
      - `texts` a list of str           → list with one of the above per input (also for a list of one,
                                          where the pipeline would unwrap it).
    Within each list the first dict is the token written into the filled text; for "greedy" and
    "iterative" the list is sorted by score; for "sample" the drawn token comes first, then the rest of
    the sampling support by score (so it may hold fewer than `top_k` dicts). `sequence` is the text the
    model saw for that prediction with this mask replaced by the candidate: with one mask, the
    pipeline's string (special tokens dropped); with several, the other masks stay "[MASK]" (filled in
    for masks that "iterative" filled earlier) and, unlike the pipeline, [CLS]/[SEP] are not shown.
    `predict` returns the same information as `FillMaskResult`s, with the filled sentence.
    """

    def __init__(self, model, tokenizer: Tokenizer, device: str | torch.device = "cpu", precision: Precision | None = None):
        self.device = torch.device(device)
        self.precision = precision or Precision.of("fp32", self.device)
        self.model = self.precision.prepare(model.to(self.device).eval())
        self.tokenizer = tokenizer
        self.special = special_tokens(tokenizer)
        self.mask_token = tokenizer.id_to_token(self.special.mask)
        self.max_len = model.config.max_position_embeddings
        if tokenizer.get_vocab_size() > model.config.vocab_size:
            raise CheckpointError(f"tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocab_size "
                                  f"is {model.config.vocab_size}")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> "FillMask":
        """Model (BertForMaskedLM) and tokenizer from a bertmath run/step directory or a transformers
        directory: tokenizer.json, or vocab.txt lowercased per tokenizer_config.json's do_lower_case.
        The model runs torch's fused kernels (model.fused, tested equal to functional.py's from-scratch ops):
        the same predictions, about twice as fast. precision: fp32, bf16, int8 or auto (inference.Precision; a
        ConfigError where the hardware lacks bf16 or int8 instructions)."""
        _, _, model, tokenizer, precision = load_for_inference(BertForMaskedLM, path, device, precision)
        return cls(model, tokenizer, precision.device, precision)

    def __call__(self, texts: str | list[str], top_k: int = 5, strategy: str = "greedy", temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, truncate: bool = False, batch_size: int = MAX_BATCH,
                 max_tokens: int = MAX_TOKENS):
        """Candidates per mask in transformers' pipeline shape (see the class docstring)."""
        single = isinstance(texts, str)
        results = self.predict([texts] if single else texts, top_k=top_k, strategy=strategy, temperature=temperature,
                               top_p=top_p, seed=seed, truncate=truncate, batch_size=batch_size, max_tokens=max_tokens)
        formatted = [r.pipeline_format() for r in results]
        return formatted[0] if single else formatted

    def predict(self, texts: str | list[str], top_k: int = 5, strategy: str = "greedy", temperature: float = 1.0,
                top_p: float = 1.0, seed: int | None = None, truncate: bool = False,
                batch_size: int = MAX_BATCH, max_tokens: int = MAX_TOKENS) -> list[FillMaskResult]:
        """One `FillMaskResult` per input text (masks with candidates, and the filled sentence).

        top_k: candidates per mask (and the top-k cut of "sample"); temperature, top_p: "sample" only;
        seed: makes "sample" reproducible (None: a fresh random seed); truncate: cut a text longer than
        max_position_embeddings at the end (error if that would cut a [MASK]); batch_size, max_tokens: at most
        that many texts and padded positions per forward pass. The texts are batched by length
        (`batching.length_batches`: little padding, none in a batch of equal lengths); the results come back
        in input order and equal those of one text at a time."""
        validate_options(top_k, strategy, temperature, top_p)
        if isinstance(texts, str):
            texts = [texts]
        inputs = [self._encode(text, n, len(texts), truncate) for n, text in enumerate(texts, 1)]
        base_seed = seed if seed is not None else torch.Generator().seed()  # a fresh nondeterministic seed
        for batch in length_batches([len(item.ids) for item in inputs], max_tokens, batch_size):
            chunk = [inputs[i] for i in batch]
            if strategy == "greedy":
                self.greedy(chunk, top_k)
            elif strategy == "iterative":
                self.iterative(chunk, top_k)
            else:
                self.sample(chunk, top_k, temperature, top_p, [input_generator(base_seed, i) for i in batch])
        return [self._result(item, strategy) for item in inputs]

    # --- strategies -------------------------------------------------------------------------------------

    def greedy(self, inputs: list[_Input], top_k: int) -> None:
        """x̂_m = argmax_v p_m(v), p_m = softmax(z_m), every mask m from the same single forward pass
        (each mask is filled independently of the others' predictions). Candidates: top-k of p_m."""
        seen = [list(item.ids) for item in inputs]
        probs = BF.softmax(self._mask_logits(inputs, [item.masks for item in inputs]), dim=-1)  # (M, V)
        row = 0
        for item, ids in zip(inputs, seen):
            for pos in item.masks:
                scores, tokens = probs[row].topk(min(top_k, probs.shape[-1]))
                item.predictions[pos] = self._prediction(ids, pos, tokens.tolist(), scores.tolist(), step=0)
                row += 1
        self._fill(inputs)

    def iterative(self, inputs: list[_Input], top_k: int) -> None:
        """Repeat until no mask is left: one forward pass over the current text; among the remaining masks
        take m* = argmax_m max_v p_m(v), p_m = softmax(z_m); write x̂_{m*} = argmax_v p_{m*}(v) into the
        text. Later masks are thus conditioned on the earlier fills (one pass per mask). Candidates of m*:
        top-k of p_{m*} in the pass that filled it."""
        step = 0
        while True:
            active = [item for item in inputs if len(item.predictions) < len(item.masks)]
            if not active:
                return
            remaining = [[pos for pos in item.masks if pos not in item.predictions] for item in active]
            probs = BF.softmax(self._mask_logits(active, remaining), dim=-1)  # (M, V)
            row = 0
            for item, positions in zip(active, remaining):
                p = probs[row:row + len(positions)]  # (m, V)
                row += len(positions)
                best = int(p.amax(dim=-1).argmax())  # the most confident mask; ties → the leftmost
                scores, tokens = p[best].topk(min(top_k, p.shape[-1]))
                pos = positions[best]
                item.predictions[pos] = self._prediction(item.ids, pos, tokens.tolist(), scores.tolist(), step)
                item.ids[pos] = int(tokens[0])
            step += 1

    def sample(self, inputs: list[_Input], top_k: int, temperature: float, top_p: float,
               generators: list[torch.Generator]) -> None:
        """x̂_m ~ q_m, every mask from the same single forward pass, with
        p_m = softmax(z_m / T); sort p_m descending as p_(1) >= p_(2) >= ...;
        S_m = the first n = min(k, n_p) tokens, n_p = min{n : Σ_{i<=n} p_(i) >= top_p} (the nucleus:
        the smallest set holding top_p of the mass; top-k and nucleus are both prefixes of this order,
        so S_m is their intersection); q_m(v) = p_m(v) / Σ_{u∈S_m} p_m(u) on S_m, 0 elsewhere.
        T < 1 sharpens, T > 1 flattens; top_k = 1 is greedy. Each input's masks are drawn left to right with
        its own generator (CPU; `input_generator`), so a seed gives the same draws on any device and whatever
        the batching. Candidates: S_m with the drawn token first, scores p_m (not renormalised)."""
        seen = [list(item.ids) for item in inputs]
        logits = self._mask_logits(inputs, [item.masks for item in inputs]).double().cpu()  # (M, V)
        # softmax((z - max z)/T) = softmax(z/T), but no T > 0 makes inf - inf = NaN (float64: as Python's T)
        probs = BF.softmax((logits - logits.amax(dim=-1, keepdim=True)) / temperature, dim=-1)  # (M, V)
        row = 0
        for item, ids, generator in zip(inputs, seen, generators):
            for pos in item.masks:
                support, support_p = sampling_support(probs[row], top_k, top_p)
                drawn = draw(support_p, generator)
                ranked = [drawn] + [i for i in range(len(support)) if i != drawn]
                item.predictions[pos] = self._prediction(ids, pos, [int(support[i]) for i in ranked],
                                                      [float(support_p[i]) for i in ranked], step=0)
                row += 1
        self._fill(inputs)

    # --- helpers -----------------------------------------------------------------------------------------

    def _encode(self, text: str, number: int, count: int, truncate: bool) -> _Input:
        if not isinstance(text, str):
            raise TypeError(f"fill-mask inputs must be strings, got {type(text).__name__}")
        where = f"input {number}: " if count > 1 else ""
        ids = self.tokenizer.encode(text).ids
        masks = [i for i, t in enumerate(ids) if t == self.special.mask]
        if not masks:
            raise InputError(f"{where}no {self.mask_token} in {preview(text)} "
                             f"(write {self.mask_token} where a word should be predicted)")
        truncated = 0
        if len(ids) > self.max_len:
            if not truncate:
                check_length(len(ids), text, self.max_len, where, "shorten it or truncate (truncate=True, --truncate)")
            cut = [m for m in masks if m >= self.max_len - 1]
            if cut:
                raise InputError(f"{where}truncating {preview(text)} from {len(ids)} to {self.max_len} tokens "
                                 f"would cut {len(cut)} of its {len(masks)} {self.mask_token} (at token {cut[0]}); "
                                 f"move it earlier or shorten the text")
            truncated = len(ids) - self.max_len
            ids = ids[:self.max_len - 1] + [self.special.sep]
        return _Input(text, ids, masks, truncated)

    @torch.inference_mode()
    def _mask_logits(self, inputs: list[_Input], positions: list[list[int]]) -> Tensor:
        """z at the given positions of each input, from one forward pass padded to the longest: (Σ len(positions), V).
        The vocabulary projection runs only at these positions (same values as full logits there)."""
        T = max(len(item.ids) for item in inputs)
        ids = torch.full((len(inputs), T), self.special.pad, dtype=torch.long)
        attention = torch.zeros(len(inputs), T, dtype=torch.long)
        for b, item in enumerate(inputs):
            ids[b, :len(item.ids)] = torch.tensor(item.ids)
            attention[b, :len(item.ids)] = 1
        attention = mask_if_padded(attention)
        rows = torch.tensor([b for b, p in enumerate(positions) for _ in p], dtype=torch.long)
        cols = torch.tensor([t for p in positions for t in p], dtype=torch.long)
        with self.precision.autocast():
            h = self.model.bert(ids.to(self.device), attention if attention is None else attention.to(self.device)
                                ).last_hidden_state
            return self.model.mlm_head(h[rows.to(self.device), cols.to(self.device)]).float()  # (M, V)

    def _prediction(self, ids: list[int], pos: int, tokens: list[int], scores: list[float],
                    step: int) -> MaskPrediction:
        candidates = []
        for token, score in zip(tokens, scores):
            filled = list(ids)
            filled[pos] = token
            token_str = self.tokenizer.decode([token], skip_special_tokens=False)  # as transformers' decode([p])
            candidates.append(Candidate(float(score), int(token), token_str, self._decode(filled)))
        return MaskPrediction(pos, step, candidates)

    def _fill(self, inputs: list[_Input]) -> None:
        for item in inputs:
            for pos in item.masks:
                item.ids[pos] = item.predictions[pos].chosen.token

    def _decode(self, ids: list[int]) -> str:
        """Text of `ids` without [CLS]/[SEP]/[PAD]/[UNK] but with any remaining [MASK]."""
        drop = set(self.special.ids) - {self.special.mask}
        return self.tokenizer.decode([t for t in ids if t not in drop], skip_special_tokens=False)

    def _result(self, item: _Input, strategy: str) -> FillMaskResult:
        return FillMaskResult(item.text, [item.predictions[pos] for pos in item.masks], self._decode(item.ids),
                              item.truncated, strategy)


def sampling_support(probs: Tensor, top_k: int, top_p: float = 1.0) -> tuple[Tensor, Tensor]:
    """S = the first n = min(k, n_p) tokens of p sorted descending, p_(1) >= p_(2) >= ..., with
    n_p = min{n : Σ_{i<=n} p_(i) >= top_p}: top-k ∩ nucleus (both are prefixes of this order).
    probs (V,) → (token ids (n,), their p (n,)), most probable first; top_k = 1 is greedy, the argmax."""
    sorted_p, order = probs.sort(descending=True)
    mass_before = sorted_p.cumsum(0) - sorted_p  # Σ_{j<i} p_(j)
    n = min(top_k, max(1, int((mass_before < top_p).sum())))
    return order[:n], sorted_p[:n]


def input_generator(seed: int, index: int) -> torch.Generator:
    """The generator of input `index` (from 0) in a call with `seed`: seeded by a hash of both, so each input
    has its own stream of draws whatever batch it lands in."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)  # a seed below 2**63


def draw(support_p: Tensor, generator: torch.Generator) -> int:
    """i ~ q, q_i = p_i / Σ_j p_j: one index into the support, drawn with `generator` from p renormalised."""
    return int(torch.multinomial(support_p / support_p.sum(), 1, generator=generator))
