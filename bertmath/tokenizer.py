"""BERT's WordPiece tokenizer, with `tokenizers`: train one on a corpus, or load tokenizer.json / vocab.txt.

Pipeline (as bert-base-uncased): BertNormalizer (clean text, CJK spacing, optional lowercase + accent
stripping) → BertPreTokenizer (whitespace and punctuation) → WordPiece (longest match, "##" continuations)
→ "[CLS] A [SEP]" template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Encoding, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .errors import DataError, InputError
from .io import atomic_write_text

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4 in a trained vocabulary


@dataclass(frozen=True)
class SpecialTokens:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.pad, self.unk, self.cls, self.sep, self.mask)


def special_tokens(tokenizer: Tokenizer, where: str = "tokenizer") -> SpecialTokens:
    """The ids of [PAD] [UNK] [CLS] [SEP] [MASK]; a DataError naming the missing one otherwise."""
    ids = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise DataError(f"{where}: has no {token} token (BERT needs {' '.join(SPECIAL_TOKENS)})")
        ids[token.strip("[]").lower()] = token_id
    return SpecialTokens(**ids)


def _bert_pipeline(tokenizer: Tokenizer, lowercase: bool) -> Tokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=None, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _add_template(tokenizer: Tokenizer) -> Tokenizer:
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def train_tokenizer(texts: Iterable[str | list[str]], vocab_size: int, lowercase: bool = True,
                    show_progress: bool = False) -> Tokenizer:
    """Train a BERT WordPiece vocabulary of `vocab_size` entries (special tokens first) on `texts`: strings
    or lists of strings, iterated twice (a list, a dataset column, or a re-iterable object; not a generator).

    The same texts always give the same vocabulary and ids. tokenizers' trainer alone does not: it numbers
    the "##c" continuation pieces in hash-map order and breaks ties between equally frequent merges by those
    numbers (huggingface/tokenizers#1794). So a first pass collects the alphabet and every "##c" is declared
    up front, in sorted order; and the final ids are renumbered: special tokens 0..4, then the rest sorted."""
    if iter(texts) is texts:
        raise TypeError("train_tokenizer iterates the texts twice: pass a list or a re-iterable, not a generator")
    pipeline = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")), lowercase)
    continuations = [f"##{c}" for c in _alphabet(texts, pipeline.normalizer)]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + continuations,
                                        continuing_subword_prefix="##", show_progress=show_progress)
    pipeline.train_from_iterator(texts, trainer=trainer)
    vocab = pipeline.get_vocab()
    ordered = SPECIAL_TOKENS + sorted(token for token in vocab if token not in SPECIAL_TOKENS)
    wordpiece = models.WordPiece({token: i for i, token in enumerate(ordered)}, unk_token="[UNK]",
                                 continuing_subword_prefix="##")
    tokenizer = _bert_pipeline(Tokenizer(wordpiece), lowercase)  # the "##c" were special only for the trainer
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return _add_template(tokenizer)


def _alphabet(texts: Iterable[str | list[str]], normalizer) -> list[str]:
    """The sorted non-space characters of the normalised texts."""
    chars: set[str] = set()
    for item in texts:
        for text in [item] if isinstance(item, str) else item:
            chars.update(normalizer.normalize_str(text))
    return sorted(c for c in chars if not c.isspace())


def load_tokenizer(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """Load `tokenizer.json` or a BERT `vocab.txt` (a file, or a directory holding either one).
    `lowercase` applies to vocab.txt only; tokenizer.json carries its own normaliser."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.json", "vocab.txt"):
            if (path / name).is_file():
                return load_tokenizer(path / name, lowercase)
        raise DataError(f"{path}: no tokenizer.json or vocab.txt in this directory")
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found")
    try:
        if path.suffix == ".txt":
            vocab = models.WordPiece.read_file(str(path))
            tokenizer = _add_template(_bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")), lowercase))
            tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])  # never split "[MASK]"
        else:
            tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()  # bertmath pads and truncates itself; shipped files often enable both
        tokenizer.no_truncation()
    except Exception as e:  # tokenizers raises plain Exception subclasses for malformed files
        raise DataError(f"{path}: not a readable tokenizer ({str(e).splitlines()[0][:200]})") from None
    special_tokens(tokenizer, where=str(path))
    return tokenizer


def encode_for_model(tokenizer: Tokenizer, text: str, max_tokens: int) -> Encoding:
    """tokenizer.encode(text), "[CLS] text [SEP]"; an InputError naming the text if it has no token or more
    than `max_tokens` (the model's max_position_embeddings) with [CLS] and [SEP]."""
    encoding = tokenizer.encode(text)
    if not any(is_special == 0 for is_special in encoding.special_tokens_mask):
        raise InputError(f"{preview(text)} has no tokens; give some text")
    check_length(len(encoding.ids), text, max_tokens)
    return encoding


def lowercasing(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` that lowercases the text first (Lowercase before its own normaliser), as
    sentence-transformers does for do_lower_case: idempotent on a tokenizer that lowercases already."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    steps = [normalizers.Lowercase()] + ([copy.normalizer] if copy.normalizer is not None else [])
    copy.normalizer = normalizers.Sequence(steps)
    return copy


def check_length(length: int, text: str, max_tokens: int, where: str = "", fix: str = "shorten it") -> None:
    """An InputError naming `text` (after `where`) and saying `fix` if its `length` tokens ([CLS] and [SEP]
    included) are more than `max_tokens`, the model's max_position_embeddings."""
    if length > max_tokens:
        raise InputError(f"{where}{preview(text)} is {length} tokens long ([CLS] and [SEP] included), more than the "
                         f"model's limit of {max_tokens} (max_position_embeddings); {fix}")


def preview(text: str, limit: int = 60) -> str:
    """How an error names an input text: repr(text), cut to `limit` characters."""
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Write tokenizer.json atomically (temporary name, fsync, rename)."""
    atomic_write_text(Path(path), tokenizer.to_str())


def continuation_mask(tokenizer: Tokenizer) -> list[bool]:
    """For each id, whether the token continues a word ("##ing"): whole-word masking keeps these with
    the piece before them."""
    vocab = tokenizer.get_vocab()
    mask = [False] * tokenizer.get_vocab_size()
    for token, token_id in vocab.items():
        if token.startswith("##") and token_id < len(mask):
            mask[token_id] = True
    return mask
