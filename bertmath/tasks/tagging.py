"""Token tagging (named entities): tagged sentences → WordPieces labelled on each word's first piece → a tag per
token; entity-level scores as CoNLL defines them; a text's entities grouped as transformers' pipeline groups them.

    word w_i → pieces p_i1 … p_ik     label y_i on p_i1; −100 (no loss) on p_i2 … p_ik, [CLS] and [SEP]
    L = mean over labelled pieces of CE(z(p_i1), y_i)                 (model.BertForTokenClassification)
    predicted tag of w_i = argmax_l z(p_i1)_l                         (transformers' run_ner.py, label_all_tokens off)

    entity = a chunk of consecutive words (type, first word, end) by the conlleval rules: B- starts a chunk, I-
             continues one of its type (and starts one after O or another type: IOB1), O ends it
    P = |pred ∩ true| / |pred|,   R = |pred ∩ true| / |true|,   F1 = 2PR / (P + R)    (micro: every type pooled)

Tjong Kim Sang & De Meulder 2003 (CoNLL-2003, conlleval); equal to `seqeval`'s default mode, 1e-12
(tests/test_tagging.py). Task files: CoNLL columns (token first, tag last, a blank line between sentences,
`-DOCSTART-` lines skipped) or .jsonl objects with `tokens` and `tags` lists; bad lines stop the run with one
line naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tokenizers import Encoding, Tokenizer
from torch import Tensor, nn

from ..batching import MAX_BATCH, MAX_TOKENS, predict_in_batches
from ..config import ModelConfig, TaskConfig
from ..errors import ConfigError, InputError, TaskDataError
from ..inference import Precision, load_for_inference
from ..io import decode_utf8, parse_json_object
from ..model import BertForTokenClassification, token_head_parameters
from ..pretrained import classifier_label_names
from ..tokenizer import special_tokens
from .encoding import Encoded, collate
from .shape import TaskShape

log = logging.getLogger(__name__)

OUTSIDE = "O"  # the tag of words in no entity; the baseline predicts it for every word
IGNORE = -100  # the label of pieces that carry no loss (cross_entropy's ignore_index)


# --- task files -----------------------------------------------------------------------------------------------


@dataclass
class TaggedSplit:
    """A split's sentences: words and their tags (names in label_names), and the file they came from."""

    words: list[list[str]]
    tags: list[list[str]]
    source: str

    def __len__(self) -> int:
        return len(self.words)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, a BOM before the first dropped (else it sticks to the first word, or
    hides a -DOCSTART- line); a line that is not UTF-8 is a TaskDataError naming it."""
    try:
        handle = open(path, "rb")
    except OSError as e:
        raise TaskDataError(f"{path}: cannot read task file ({e.strerror or e})") from None
    with handle:
        offset = 0
        for number, raw in enumerate(handle, 1):
            yield number, decode_utf8(raw, f"{path}:{number}", offset, TaskDataError)
            offset += len(raw)


def _check_tag(tag, label_names: Sequence[str], where: str) -> str:
    """A tag's name: a name in label_names, or (jsonl) its index."""
    if isinstance(tag, str) and tag in label_names:
        return tag
    if isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag < len(label_names):
        return label_names[tag]
    raise TaskDataError(f"{where}: tag {tag!r} is not in task.label_names ({', '.join(label_names)}); "
                        f"add it there or fix the tag")


def _conll_sentences(path: Path, label_names: Sequence[str]) -> Iterator[tuple[list[str], list[str]]]:
    words: list[str] = []
    tags: list[str] = []
    for number, line in _lines(path):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                yield words, tags
            words, tags = [], []
            continue
        if len(columns) < 2:
            raise TaskDataError(f"{path}:{number}: no tag after the token {columns[0]!r} (a line holds a token "
                                f"and its tag, separated by whitespace, e.g. 'Hamlet B-PER')")
        words.append(columns[0])
        tags.append(_check_tag(columns[-1], label_names, f"{path}:{number}"))
    if words:
        yield words, tags


def _jsonl_sentences(path: Path, label_names: Sequence[str]) -> Iterator[tuple[list[str], list[str]]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        row = parse_json_object(line, where, TaskDataError)
        for key in ("tokens", "tags"):
            if key not in row:
                raise TaskDataError(f"{where}: no key '{key}' (this line has: {', '.join(row) or 'nothing'}; "
                                    f"expected lists 'tokens' and 'tags')")
            if not isinstance(row[key], list):
                raise TaskDataError(f"{where}: '{key}' holds {type(row[key]).__name__}, not a list")
        words, tags = row["tokens"], row["tags"]
        if len(words) != len(tags):
            raise TaskDataError(f"{where}: {len(words)} tokens but {len(tags)} tags (one tag per token)")
        for word in words:
            if not isinstance(word, str) or not word.strip():
                raise TaskDataError(f"{where}: token {word!r} is not a word (tokens are non-empty strings)")
        if words:
            yield list(words), [_check_tag(tag, label_names, where) for tag in tags]


def read_tagged(path: str | Path, label_names: Sequence[str]) -> TaggedSplit:
    """The tagged sentences of one task file: .jsonl (objects with `tokens` and `tags`, tags as names or
    indices into label_names), else CoNLL columns. Sentences with no words are skipped."""
    path = Path(path)
    read = _jsonl_sentences if path.suffix.lower() == ".jsonl" else _conll_sentences
    split = TaggedSplit([], [], str(path))
    for words, tags in read(path, label_names):
        split.words.append(words)
        split.tags.append(tags)
    if not split.words:
        raise TaskDataError(f"{path}: no tagged sentences (an empty split)")
    return split


# --- WordPieces and labels ------------------------------------------------------------------------------------


@dataclass
class EncodedTags:
    """Sentences as model inputs: [CLS] pieces [SEP] ids, the label of each position (IGNORE but on first
    pieces), and for each word the position of its first piece (−1: the word has no piece, or was cut off)."""

    ids: list[list[int]]
    labels: list[list[int]]
    first_pieces: list[list[int]]
    truncated: int = 0  # sentences cut to max_seq_len

    def __len__(self) -> int:
        return len(self.ids)


def encode_tagged(tokenizer: Tokenizer, split: TaggedSplit, label_names: Sequence[str],
                  max_seq_len: int) -> EncodedTags:
    """WordPieces of every sentence (its words as given, each split by the tokenizer's pre-tokenizer and
    WordPiece), cut to max_seq_len with [CLS] and [SEP]; how many were cut is said once, here."""
    specials = special_tokens(tokenizer)
    index = {name: i for i, name in enumerate(label_names)}
    budget = max_seq_len - 2
    out = EncodedTags([], [], [])
    pieces = tokenizer.encode_batch(split.words, is_pretokenized=True, add_special_tokens=False) if split.words else []
    for encoding, tags in zip(pieces, split.tags):
        word_ids = encoding.word_ids[:budget]
        out.truncated += len(encoding.ids) > budget
        labels = [IGNORE] * (len(word_ids) + 2)
        first = [-1] * len(tags)
        for position, word in enumerate(word_ids, 1):
            if word is not None and first[word] < 0:
                first[word] = position
                labels[position] = index[tags[word]]
        out.ids.append([specials.cls, *encoding.ids[:budget], specials.sep])
        out.labels.append(labels)
        out.first_pieces.append(first)
    if out.truncated:
        lost = sum(p < 0 for first in out.first_pieces for p in first)
        log.warning("%s: %d of %d sentences are longer than task.max_seq_len (%d tokens) and were truncated; "
                    "%d words without a piece are scored as %s", split.source, out.truncated, len(out),
                    max_seq_len, lost, OUTSIDE)
    return out


def word_tags(first_pieces: Sequence[int], predicted: Sequence[int], label_names: Sequence[str]) -> list[str]:
    """Each word's tag: the label predicted at its first piece, OUTSIDE for a word without a piece."""
    return [label_names[predicted[p]] if p >= 0 else OUTSIDE for p in first_pieces]


# --- scores ---------------------------------------------------------------------------------------------------


def _prefix_and_type(tag: str) -> tuple[str, str]:
    """'B-PER' → ('B', 'PER'); 'O' → ('O', '_'): the first character, and what follows the first '-'."""
    return tag[0], tag[1:].split("-", 1)[-1] or "_"


def _chunk_ends(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    """conlleval's endOfChunk: a chunk ends between the previous word and this one."""
    return (prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O"))
            or (prev not in ("O", ".") and prev_type != type_))


def _chunk_starts(prev: str, prev_type: str, tag: str, type_: str) -> bool:
    """conlleval's startOfChunk: a chunk starts at this word (an I- after O or another type starts one)."""
    return (tag in ("B", "S") or (prev in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The chunks (type, start, end) of a tag sequence, end exclusive: conlleval's rules (IOB1, IOB2/BIO and
    IOBES tags), which seqeval's default mode follows."""
    chunks = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, OUTSIDE]):
        tag, type_ = _prefix_and_type(tag)
        if _chunk_ends(prev, prev_type, tag, type_):
            chunks.append((prev_type, begin, i))
        if _chunk_starts(prev, prev_type, tag, type_):
            begin = i
        prev, prev_type = tag, type_
    return chunks


def entity_scores(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall, F1 and the share of words tagged right ("accuracy"). The
    sentences are read as one stream with an O between them, as conlleval and seqeval read them; a score with
    a zero denominator is 0 (no predicted entity: precision 0)."""
    if len(true_tags) != len(predicted_tags) or any(len(a) != len(b) for a, b in zip(true_tags, predicted_tags)):
        raise ValueError("entity_scores: the true and predicted tags differ in shape")
    true = set(entities([t for sentence in true_tags for t in [*sentence, OUTSIDE]]))
    predicted = set(entities([t for sentence in predicted_tags for t in [*sentence, OUTSIDE]]))
    hits = len(true & predicted)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    words = sum(len(sentence) for sentence in true_tags)
    right = sum(a == b for x, y in zip(true_tags, predicted_tags) for a, b in zip(x, y))
    return {"f1": f1, "precision": precision, "recall": recall, "accuracy": right / words if words else 0.0}


def baseline_tags(tags: Sequence[Sequence[str]]) -> list[list[str]]:
    """The trivial baseline: every word tagged OUTSIDE (no entity at all)."""
    return [[OUTSIDE] * len(sentence) for sentence in tags]


# --- a text's words and entities ------------------------------------------------------------------------------


@dataclass
class Entity:
    """An entity of a text: its type (the label without B-/I-), the decoded pieces, the characters
    text[start:end] it spans, and the mean probability of its pieces' labels."""

    label: str
    word: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return {"label": self.label, "word": self.word, "start": self.start, "end": self.end, "score": self.score}


@dataclass
class TaggedWord:
    """A word of a text (as the tokenizer's pre-tokenizer splits it) with the label of its first piece."""

    word: str
    start: int
    end: int
    label: str
    score: float


def _bio(label: str) -> tuple[str, str]:
    """transformers' get_tag: 'B-PER' → ('B', 'PER'), 'I-PER' → ('I', 'PER'), any other label → ('I', label)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_entities(tokenizer: Tokenizer, text: str, encoding: Encoding, probabilities: torch.Tensor,
                   label_names: Sequence[str]) -> list[Entity]:
    """The entities of `text` as transformers' TokenClassificationPipeline(aggregation_strategy="simple")
    finds them: every piece (special tokens skipped) takes its argmax label; consecutive pieces of one type
    merge unless the later one is B-; a group's label is its first label without the B-/I- prefix, its word
    the pieces decoded ([UNK] shown as its characters), its score the mean probability; O groups are dropped.
    `probabilities`: (T, L) softmax of the logits at the encoding's T positions."""
    unk = tokenizer.token_to_id("[UNK]")
    best, where = probabilities.float().max(dim=-1)
    pieces = []  # (label, score, piece, start, end)
    for i, (token_id, special) in enumerate(zip(encoding.ids, encoding.special_tokens_mask)):
        if special:
            continue
        start, end = encoding.offsets[i]
        piece = text[start:end] if token_id == unk else tokenizer.id_to_token(token_id)
        pieces.append((label_names[int(where[i])], float(best[i]), piece, start, end))
    groups: list[list[tuple]] = []
    for piece in pieces:
        bi, type_ = _bio(piece[0])
        if groups and bi != "B" and type_ == _bio(groups[-1][-1][0])[1]:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    out = []
    for group in groups:
        label = group[0][0].split("-", 1)[-1]
        if label == OUTSIDE:
            continue
        tokens = [p[2] for p in group]
        word = tokenizer.decoder.decode(tokens) if tokenizer.decoder is not None else " ".join(tokens)
        out.append(Entity(label, word, group[0][3], group[-1][4], sum(p[1] for p in group) / len(group)))
    return out


def tagged_words(text: str, encoding: Encoding, probabilities: torch.Tensor,
                 label_names: Sequence[str]) -> list[TaggedWord]:
    """Each word of `text` (the tokenizer's pre-tokenizer words) with the most probable label of its first
    piece and that probability; its characters run from its first piece's start to its last piece's end."""
    best, where = probabilities.float().max(dim=-1)
    words: dict[int, TaggedWord] = {}
    for i, word in enumerate(encoding.word_ids):
        if word is None or encoding.special_tokens_mask[i]:
            continue
        start, end = encoding.offsets[i]
        if word not in words:
            words[word] = TaggedWord("", start, end, label_names[int(where[i])], float(best[i]))
        words[word].end = end
    for word in words.values():
        word.word = text[word.start:word.end]
    return list(words.values())



# --- fine-tuning ----------------------------------------------------------------------------------------------


def pad_labels(rows: Sequence[Sequence[int]], T: int) -> Tensor:
    """(B, T) labels, IGNORE after each row's end."""
    out = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def token_logits(model: nn.Module, ids: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                 device: torch.device | str = "cpu", autocast: Callable | None = None,
                 max_tokens: int = MAX_TOKENS) -> list[Tensor]:
    """Each sequence's (T_n, L) float32 logits, in input order; computed in batches of similar length
    (batching.length_batches), each padded to its longest with an attention mask (padding changes nothing)."""
    encoded = Encoded([list(row) for row in ids], [[0] * len(row) for row in ids])
    out: list[Tensor | None] = [None] * len(ids)
    for batch, result in predict_in_batches(model, [len(row) for row in ids], lambda b: collate(encoded, b, pad_id),
                                            batch_size, device, autocast, max_tokens):
        logits = result.logits.float().cpu()  # (B, T, L)
        for row, n in enumerate(batch):
            out[n] = logits[row, :len(ids[n])]
    return out


class TaggingShape(TaskShape):
    """A sentence → a tag per word: BertForTokenClassification on CoNLL or jsonl files, scored by entity-level
    F1 (precision, recall, and word accuracy beside it) next to the all-O baseline."""

    def __init__(self, task: TaskConfig):
        super().__init__(task)
        if task.hub_dataset is not None:
            raise ConfigError("task.hub_dataset: a tagging task reads task files (task.train_file, task.eval_file)")
        if OUTSIDE not in task.label_names:
            raise ConfigError(f"task.label_names: a tagging task needs the tag {OUTSIDE} (words in no entity) "
                              f"among its tags, got {task.label_names}")
        self.splits = {"train": read_tagged(task.train_file, task.label_names),
                       "eval": read_tagged(task.eval_file, task.label_names)}
        self.encoded: dict[str, EncodedTags] = {}
        self.pad_id: int | None = None

    def model(self, config: ModelConfig) -> nn.Module:
        return BertForTokenClassification(config, self.task.num_labels)

    def head_parameters(self, config: ModelConfig) -> int:
        return token_head_parameters(config, self.task.num_labels)

    def encode(self, tokenizer: Tokenizer) -> None:
        self.pad_id = special_tokens(tokenizer).pad
        self.encoded = {name: encode_tagged(tokenizer, split, self.task.label_names, self.task.max_seq_len)
                        for name, split in self.splits.items()}

    def examples(self, split: str) -> int:
        return len(self.encoded[split])

    def micro_batch(self, indices: list[int]) -> tuple[dict[str, Tensor], int]:
        """input_ids, attention_mask, token_type_ids and labels (IGNORE on padding), and the labelled tokens."""
        train = self.encoded["train"]
        inputs = collate(Encoded(train.ids, [[0] * len(row) for row in train.ids]), indices, self.pad_id)
        labels = pad_labels([train.labels[i] for i in indices], inputs["input_ids"].shape[1])
        return {**inputs, "labels": labels}, int((labels != IGNORE).sum())

    def tokens(self, index: int) -> int:
        return len(self.encoded["train"].ids[index])

    def predict(self, model, batch_size: int, device, autocast=None) -> tuple[list[Tensor], list[list[str]]]:
        """Each eval sentence's (T, L) logits and its words' predicted tags (their first pieces' argmax)."""
        encoded = self.encoded["eval"]
        logits = token_logits(model, encoded.ids, batch_size, self.pad_id, device, autocast)
        return logits, [word_tags(first, z.argmax(-1).tolist(), self.task.label_names)
                        for first, z in zip(encoded.first_pieces, logits)]

    def scores(self, logits: list[Tensor], predicted: list[list[str]]) -> dict[str, float]:
        """Entity F1/precision/recall and word accuracy of the predicted tags, and the mean CE over the eval
        split's labelled pieces ("loss")."""
        labels = torch.tensor([y for row in self.encoded["eval"].labels for y in row])
        loss = torch.nn.functional.cross_entropy(torch.cat(logits), labels, ignore_index=IGNORE)
        return {**entity_scores(self.splits["eval"].tags, predicted), "loss": float(loss)}

    def evaluate(self, model, batch_size, device, autocast) -> tuple[dict, dict, int]:
        """The model's scores; the baseline's are those of tagging every word O."""
        tags = self.splits["eval"].tags
        return self.scores(*self.predict(model, batch_size, device, autocast)), \
            entity_scores(tags, baseline_tags(tags)), len(tags)


# --- tagging texts with a fine-tuned model --------------------------------------------------------------------


@dataclass
class TaggedText:
    """A text's words with their labels, and its entities (as transformers' pipeline with aggregation "simple")."""

    text: str
    words: list[TaggedWord] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"text": self.text, "entities": [e.to_dict() for e in self.entities],
                "words": [dataclasses.asdict(w) for w in self.words]}

    def to_text(self) -> str:
        """One line per word (word, label, probability), then the entities: "PER Hamlet 0:6 0.981"."""
        lines = [f"{w.word}\t{w.label}\t{w.score:.4f}" for w in self.words]
        lines.append("entities: " + ("; ".join(f"{e.label} {self.text[e.start:e.end]!r} {e.start}:{e.end} "
                                               f"{e.score:.3f}" for e in self.entities) or "none"))
        return "\n".join(lines)


class Tagger:
    """A fine-tuned BertForTokenClassification with its tokenizer and tag names.

        tagger = Tagger.from_pretrained("runs/ner")
        tagger(["Hamlet sails from Elsinore to England."])[0].entities
        # [Entity(label='PER', word='hamlet', start=0, end=6, ...), Entity(label='LOC', word='elsinore', ...), ...]

    Texts are cut to the model's max_position_embeddings tokens, [CLS] and [SEP] included, as transformers'
    tokenizer cuts them in its pipeline (truncation=True); how many were cut is said once."""

    def __init__(self, model: BertForTokenClassification, tokenizer: Tokenizer, label_names: list[str],
                 device: torch.device | str = "cpu", precision: Precision | None = None):
        self.device = torch.device(device)
        self.precision = precision or Precision.of("fp32", self.device)
        self.model = self.precision.prepare(model.eval())
        self.label_names = label_names or [f"LABEL_{i}" for i in range(model.num_labels)]
        self.max_tokens = model.config.max_position_embeddings
        self.pad_id = special_tokens(tokenizer).pad
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy that truncates, leaving the caller's alone
        self.tokenizer.enable_truncation(self.max_tokens)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> "Tagger":
        """A bertmath tagging run or step directory, or a transformers BertForTokenClassification directory
        (tag names from config.json's id2label). The model runs torch's fused kernels (model.fused)."""
        directory, config, model, tokenizer, precision = load_for_inference(
            BertForTokenClassification, path, device, precision)
        names = classifier_label_names(directory, model.num_labels) or []
        return cls(model, tokenizer, names, precision.device, precision)

    def __call__(self, texts: Sequence[str], batch_size: int = MAX_BATCH) -> list[TaggedText]:
        if not texts:
            raise InputError("no input text")
        encodings = self.tokenizer.encode_batch(list(texts))
        cut = sum(bool(e.overflowing) for e in encodings)
        if cut:
            log.warning("%d of %d inputs were longer than %d tokens and were truncated (their end is not tagged)",
                        cut, len(encodings), self.max_tokens)
        logits = token_logits(self.model, [e.ids for e in encodings], batch_size, self.pad_id, self.device,
                              self.precision.autocast)
        out = []
        for text, encoding, z in zip(texts, encodings, logits):
            probabilities = torch.softmax(z, dim=-1)
            out.append(TaggedText(text, tagged_words(text, encoding, probabilities, self.label_names),
                                  group_entities(self.tokenizer, text, encoding, probabilities, self.label_names)))
        return out
