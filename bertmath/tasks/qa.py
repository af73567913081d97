"""Extractive question answering (SQuAD): read the files, cut passages into windows, pick the best span, score.

    [CLS] q_1 … q_m [SEP] c_k … c_{k+L−1} [SEP]      segment ids 0 up to the first [SEP], 1 from c_k to the end
    L = max_seq_len − m − 3 context tokens a window; windows start at k = 0, L − stride, 2(L − stride), …, the
    last the first to reach the context's end (transformers' tokenizer with truncation="only_second", stride,
    return_overflowing_tokens: run_qa.py's features; the question cut to its first max_question_tokens first)

    answer = argmax over windows w and context tokens s ≤ e < s + max_answer_tokens of start_w[s] + end_w[e],
             the characters [offset(s).start, offset(e).end) of the context        (run_qa.py's post-processing)
    SQuAD v2.0: no answer ("") when the null score min_w (start_w[0] + end_w[0]) exceeds that best sum

Training targets are run_qa.py's `prepare_train_features`: the window tokens holding the first gold answer's
first and last characters, or the [CLS] position 0 for both when the answer is not wholly inside the window
(or the question has none). Scores are SQuAD's official evaluate-v2.0.py (which v1.1's agrees with on
answerable questions): exact match and token F1 of normalised text (lowercase, punctuation and the articles
a/an/the removed, whitespace collapsed), each the best over the gold answers, an unanswerable question's gold
being ""; reported as fractions in [0, 1] (the official script prints them × 100).

SQuAD files: {"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ...,
"question": ..., "answers": [{"text": ..., "answer_start": ...}], "is_impossible": ...}]}]}]}. A bad file stops
with one line naming the file, line and column of the offending question or answer, found by parsing the text
again with a parser that records where each object starts (the official files are one line long, hence the
column), only when something is wrong: the common case reads at the speed of the json module's C parser.
"""

from __future__ import annotations

import collections
import json
import json.decoder
import json.scanner
import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..batching import MAX_TOKENS, predict_in_batches
from ..config import ModelConfig, TaskConfig
from ..errors import ConfigError, InputError, TaskDataError
from ..io import read_text
from ..model import BertForQuestionAnswering, token_head_parameters
from ..tokenizer import special_tokens
from .encoding import Encoded, collate
from .shape import TaskShape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One SQuAD question with its passage; `answers`: the gold (text, answer_start) pairs, () when impossible."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    is_impossible: bool = False


@dataclass
class QASplit:
    """The questions of one file; `version_2`: SQuAD v2.0, whose questions may have no answer."""

    questions: list[Question]
    source: str
    version_2: bool = False

    def __len__(self) -> int:
        return len(self.questions)


# --- reading SQuAD JSON -------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A problem at a JSON path (("data", 0, "paragraphs", 1, ...)), turned into a TaskDataError with its line."""

    def __init__(self, keys: tuple, message: str):
        super().__init__(message)
        self.keys, self.message = keys, message


@dataclass
class _Located:
    """A JSON object or array and the character offset of its opening bracket in the text."""

    offset: int
    value: dict | list


def _located_parser() -> json.JSONDecoder:
    """json's pure-Python parser, but every object and array comes back as _Located(offset, value)."""
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, *args):
        value, end = json.decoder.JSONObject(s_and_end, *args)
        return _Located(s_and_end[1] - 1, value), end

    def parse_array(s_and_end, scan_once):
        value, end = json.decoder.JSONArray(s_and_end, scan_once)
        return _Located(s_and_end[1] - 1, value), end

    decoder.parse_object, decoder.parse_array = parse_object, parse_array
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder


def json_position(text: str, keys: tuple) -> tuple[int, int]:
    """(line, column), 1-based, where the value at the JSON path `keys` starts in `text`: the innermost object
    or array on the path (a string value is placed at its object)."""
    node = _located_parser().decode(text)
    offset = node.offset
    for key in keys:
        try:
            node = node.value[key]
        except (KeyError, IndexError, TypeError):
            break
        if not isinstance(node, _Located):
            break
        offset = node.offset
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _expect(value, kind: type | tuple, keys: tuple, name: str):
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        wanted = {dict: "an object", list: "a list", str: "text", int: "an integer"}.get(kind, "text")
        raise _Invalid(keys, f"{name} should be {wanted}, got {json.dumps(value)[:40]}")
    return value


def _field(node: dict, key: str, kind, keys: tuple, what: str):
    if key not in node:
        raise _Invalid(keys, f"{what} has no \"{key}\" (keys: {', '.join(node) or 'none'})")
    return _expect(node[key], kind, keys, f"\"{key}\"")


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _questions(tree, seen: dict[str, tuple]) -> tuple[list[Question], bool]:
    """The questions of a parsed file and whether it is v2.0; _Invalid at the first problem."""
    _expect(tree, dict, (), "the file")
    articles = _field(tree, "data", list, (), "the file")
    version_2 = str(tree.get("version", "")).startswith("v2")
    out = []
    for a, article in enumerate(articles):
        at = ("data", a)
        paragraphs = _field(_expect(article, dict, at, "an article"), "paragraphs", list, at, "the article")
        for p, paragraph in enumerate(paragraphs):
            at = ("data", a, "paragraphs", p)
            paragraph = _expect(paragraph, dict, at, "a paragraph")
            context = _field(paragraph, "context", str, at, "the paragraph")
            for n, qa in enumerate(_field(paragraph, "qas", list, at, "the paragraph")):
                at = ("data", a, "paragraphs", p, "qas", n)
                qa = _expect(qa, dict, at, "a question")
                qid = _field(qa, "id", (str, int), at, "the question")
                qid = str(qid)
                if qid in seen:
                    raise _Invalid(at, f"question id {qid!r} appears twice (also at data[{seen[qid][1]}]"
                                       f".paragraphs[{seen[qid][3]}].qas[{seen[qid][5]}])")
                seen[qid] = at
                text = _field(qa, "question", str, at, f"question {qid!r}")
                if not text.strip():
                    raise _Invalid(at, f"question {qid!r} is empty")
                if not context.strip():
                    raise _Invalid(at, f"question {qid!r} has an empty context")
                impossible = qa.get("is_impossible", False)
                version_2 = version_2 or "is_impossible" in qa
                _expect(impossible, bool, at, "\"is_impossible\"")
                answers = []
                for k, answer in enumerate(qa.get("answers", []) if impossible else
                                           _field(qa, "answers", list, at, f"question {qid!r}")):
                    where = (*at, "answers", k)
                    answer = _expect(answer, dict, where, "an answer")
                    answer_text = _field(answer, "text", str, where, f"an answer of question {qid!r}")
                    answer_start = _field(answer, "answer_start", int, where, f"an answer of question {qid!r}")
                    found = context[answer_start:answer_start + len(answer_text)] if answer_start >= 0 else ""
                    if not answer_text.strip():
                        raise _Invalid(where, f"question {qid!r}: an empty answer text")
                    if found != answer_text:
                        raise _Invalid(where, f"question {qid!r}: answer {_preview(answer_text)} does not match its "
                                              f"answer_start {answer_start} (the context there reads "
                                              f"{_preview(found) if found else 'nothing'}; answer_start counts "
                                              f"characters from 0)")
                    answers.append((answer_text, answer_start))
                if impossible and answers:
                    raise _Invalid(at, f"question {qid!r} is_impossible but has answers (give them as "
                                       f"\"plausible_answers\", or set is_impossible false)")
                if not impossible and not answers:
                    raise _Invalid(at, f"question {qid!r} has no answers (give one, or set \"is_impossible\": true "
                                       f"for SQuAD v2.0)")
                out.append(Question(qid, text, context, tuple(answers), impossible))
    return out, version_2


def read_squad(path: str | Path) -> QASplit:
    """The questions of a SQuAD v1.1 or v2.0 JSON file; a TaskDataError naming file:line:column otherwise."""
    path = Path(path)
    text = read_text(path, TaskDataError)
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}:{e.lineno}:{e.colno}: not JSON ({e.msg}); expected SQuAD's "
                            f"{{\"data\": [{{\"paragraphs\": [...]}}]}}") from None
    try:
        questions, version_2 = _questions(tree, {})
    except _Invalid as e:
        line, column = json_position(text, e.keys)
        raise TaskDataError(f"{path}:{line}:{column}: {e.message}") from None
    if not questions:
        raise TaskDataError(f"{path}: no questions (an empty split)")
    return QASplit(questions, str(path), version_2)


# --- windows ------------------------------------------------------------------------------------------------


@dataclass
class Tokens:
    """One question's tokens: the question's ids (cut to max_question_tokens), the context's ids and the
    character span [start, end) of each context token in the context."""

    question_ids: list[int]
    context_ids: list[int]
    context_offsets: list[tuple[int, int]]


@dataclass(frozen=True)
class Window:
    """Context tokens [first, stop) of question `example`, and the training targets: the window positions of
    the answer's first and last tokens, 0 ([CLS]) for both when no answer lies wholly inside."""

    example: int
    first: int
    stop: int
    start_position: int = 0
    end_position: int = 0


@dataclass
class Features:
    """The windows of a split and the tokens they are cut from; a window's ids are built when needed."""

    tokens: list[Tokens]
    windows: list[Window]
    cls: int
    sep: int

    def __len__(self) -> int:
        return len(self.windows)

    def context_start(self, w: int) -> int:
        """The window position of window w's first context token: after [CLS] q [SEP]."""
        return len(self.tokens[self.windows[w].example].question_ids) + 2

    def ids(self, w: int) -> list[int]:
        window = self.windows[w]
        t = self.tokens[window.example]
        return [self.cls, *t.question_ids, self.sep, *t.context_ids[window.first:window.stop], self.sep]

    def types(self, w: int) -> list[int]:
        window, start = self.windows[w], self.context_start(w)
        return [0] * start + [1] * (window.stop - window.first + 1)

    def length(self, w: int) -> int:
        window = self.windows[w]
        return self.context_start(w) + window.stop - window.first + 1

    def offsets(self, w: int) -> list[tuple[int, int] | None]:
        """Each window position's characters in the context, None outside the context (run_qa.py's
        offset_mapping of prepare_validation_features)."""
        window, start = self.windows[w], self.context_start(w)
        inside = self.tokens[window.example].context_offsets[window.first:window.stop]
        return [None] * start + list(inside) + [None]

    def by_example(self) -> dict[int, list[int]]:
        """Window indices of each example, in order."""
        out: dict[int, list[int]] = collections.defaultdict(list)
        for w, window in enumerate(self.windows):
            out[window.example].append(w)
        return out


def encode_tokens(tokenizer: Tokenizer, pairs: list[tuple[str, str]], max_question_tokens: int) -> list[Tokens]:
    """Question and context tokens of (question, context) pairs, without specials; a context shared by several
    questions is encoded once."""
    questions = tokenizer.encode_batch([q for q, _ in pairs], add_special_tokens=False)
    contexts = list(dict.fromkeys(c for _, c in pairs))
    encoded = dict(zip(contexts, tokenizer.encode_batch(contexts, add_special_tokens=False)))
    return [Tokens(q.ids[:max_question_tokens], encoded[c].ids, encoded[c].offsets)
            for q, (_, c) in zip(questions, pairs)]


def window_ranges(n_context: int, n_question: int, max_seq_len: int, doc_stride: int) -> list[tuple[int, int]]:
    """[first, stop) of each window over n_context tokens: L = max_seq_len − n_question − 3 a window, the next
    starting L − doc_stride after, the last the first to reach the end (tokenizers' Encoding.truncate)."""
    length = max_seq_len - n_question - 3
    if length <= doc_stride:
        raise ConfigError(f"task.doc_stride: {doc_stride} tokens of overlap leave no room to move on: a window of "
                          f"task.max_seq_len {max_seq_len} holds {max(length, 0)} context tokens after a question of "
                          f"{n_question} tokens and [CLS] [SEP] [SEP]; lower task.doc_stride or "
                          f"task.max_question_tokens, or raise task.max_seq_len")
    out, first = [], 0
    while True:
        stop = min(first + length, n_context)
        out.append((first, stop))
        if stop == n_context:
            return out
        first += length - doc_stride


def answer_positions(offsets: list[tuple[int, int]], first: int, stop: int, start_char: int, end_char: int,
                     context_start: int) -> tuple[int, int]:
    """Window positions of the tokens holding characters start_char and end_char − 1 among context tokens
    [first, stop), or (0, 0) when the answer is not wholly inside (run_qa.py's prepare_train_features). The
    start is the last token starting at or before start_char, the end the first ending at or after end_char.
    (run_qa.py's loop runs past the window when the answer starts in its last token and gives the [SEP]
    after it; here that token.)"""
    if not (offsets[first][0] <= start_char and offsets[stop - 1][1] >= end_char):
        return 0, 0
    s = first
    while s + 1 < stop and offsets[s + 1][0] <= start_char:
        s += 1
    e = stop - 1
    while e - 1 >= first and offsets[e - 1][1] >= end_char:
        e -= 1
    return context_start + s - first, context_start + e - first


def make_features(tokenizer: Tokenizer, questions: list[Question], max_seq_len: int, doc_stride: int,
                  max_question_tokens: int, targets: bool = True) -> Features:
    """The windows of every question (each knowing its training targets when `targets`)."""
    specials = special_tokens(tokenizer)
    tokens = encode_tokens(tokenizer, [(q.question, q.context) for q in questions], max_question_tokens)
    windows = []
    for n, (question, t) in enumerate(zip(questions, tokens)):
        if not t.context_ids:
            raise InputError(f"question {question.id!r}: its context {_preview(question.context)} has no tokens")
        context_start = len(t.question_ids) + 2
        for first, stop in window_ranges(len(t.context_ids), len(t.question_ids), max_seq_len, doc_stride):
            start = end = 0
            if targets and question.answers:
                text, start_char = question.answers[0]
                start, end = answer_positions(t.context_offsets, first, stop, start_char, start_char + len(text),
                                              context_start)
            windows.append(Window(n, first, stop, start, end))
    return Features(tokens, windows, specials.cls, specials.sep)



def collate_windows(features: Features, indices: list[int] | Tensor, pad_id: int,
                    targets: bool = False) -> dict[str, Tensor]:
    """input_ids, attention_mask, token_type_ids (B, T) of windows `indices`, padded to the longest; with
    `targets` also start_positions and end_positions (B,)."""
    indices = [int(i) for i in indices]
    batch = collate(Encoded([features.ids(w) for w in indices], [features.types(w) for w in indices]),
                    range(len(indices)), pad_id)
    if targets:
        batch["start_positions"] = torch.tensor([features.windows[w].start_position for w in indices])
        batch["end_positions"] = torch.tensor([features.windows[w].end_position for w in indices])
    return batch


def predict_span_logits(model, features: Features, batch_size: int, pad_id: int,
                        device: torch.device | str = "cpu", autocast=None,
                        max_tokens: int = MAX_TOKENS) -> tuple[list[Tensor], list[Tensor]]:
    """Start and end logits (float32, one (T_w,) tensor per window, in window order), computed in batches of
    windows of similar length (batching.length_batches)."""
    starts: list[Tensor | None] = [None] * len(features)
    ends: list[Tensor | None] = [None] * len(features)
    lengths = [features.length(w) for w in range(len(features))]
    for batch, out in predict_in_batches(model, lengths, lambda b: collate_windows(features, b, pad_id), batch_size,
                                         device, autocast, max_tokens):
        start, end = out.start_logits.float().cpu(), out.end_logits.float().cpu()
        for row, w in enumerate(batch):
            starts[w], ends[w] = start[row, :lengths[w]], end[row, :lengths[w]]
    return starts, ends


# --- the best span ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """An answer: context[start:end] == answer; `logit` = start_logit[s] + end_logit[e]; `score` its softmax
    probability among the example's n-best candidate spans."""

    answer: str
    start: int
    end: int
    score: float
    logit: float

    def to_dict(self) -> dict:
        return {"answer": self.answer, "start": self.start, "end": self.end, "score": self.score}


def _window_candidates(start: Tensor, end: Tensor, context_start: int, n: int, max_answer_tokens: int,
                       count: int) -> list[tuple[float, int, int]]:
    """(start[s] + end[e], s, e) of window positions s ≤ e < s + max_answer_tokens among the n context tokens
    from context_start: the `count` best, and any tied with the last of them (float64 sums)."""
    s = start[context_start:context_start + n].double()
    e = end[context_start:context_start + n].double()
    i = torch.arange(n)
    valid = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_tokens)  # (n, n): rows s, columns e
    sums = (s[:, None] + e[None, :]).masked_fill(~valid, -torch.inf).flatten()
    kth = sums.topk(min(count, int(valid.sum()))).values[-1]
    picked = (sums >= kth).nonzero()[:, 0].tolist()
    return [(float(sums[p]), context_start + p // n, context_start + p % n) for p in picked]


def best_spans(context: str, features: Features, windows: list[int], start_logits: list[Tensor],
               end_logits: list[Tensor], max_answer_tokens: int = 30, top_k: int = 1,
               n_best: int = 20) -> list[Span]:
    """The top_k character spans of `context` by start_logit[s] + end_logit[e] over the example's `windows`
    (their logits parallel to the list), s ≤ e context tokens at most max_answer_tokens apart inclusive, best
    first; a span found in several windows counts once, with its best sum. Ties go to the earlier window, then
    the earlier start, then the earlier end. score = softmax of the sums over the max(n_best, top_k) best spans
    (run_qa.py's probabilities over its n_best_size predictions; run_qa.py searches only the n_best_size highest
    starts × ends of each window, which finds this best span unless n_best_size logits outside the context, or
    spans too long, outrank it)."""
    count = max(n_best, top_k)
    found = []
    for order, (w, start, end) in enumerate(zip(windows, start_logits, end_logits)):
        window = features.windows[w]
        offsets = features.tokens[window.example].context_offsets
        context_start = features.context_start(w)
        for logit, s, e in _window_candidates(start, end, context_start, window.stop - window.first,
                                              max_answer_tokens, count):
            chars = (offsets[window.first + s - context_start][0], offsets[window.first + e - context_start][1])
            found.append((-logit, order, s, e, chars))
    found.sort(key=lambda c: c[:4])
    best: dict[tuple[int, int], float] = {}
    for negative, *_, chars in found:
        if chars not in best and len(best) < count:
            best[chars] = -negative
    probabilities = torch.softmax(torch.tensor(list(best.values()), dtype=torch.float64), 0).tolist()
    return [Span(context[a:b], a, b, p, logit) for ((a, b), logit), p in zip(best.items(), probabilities)][:top_k]


def null_logit(start_logits: list[Tensor], end_logits: list[Tensor]) -> float:
    """SQuAD v2.0's no-answer score: min over the windows of start[0] + end[0] (the [CLS] position)."""
    return min(float(s[0].double() + e[0].double()) for s, e in zip(start_logits, end_logits))


def predict_answers(questions: list[Question], features: Features, start_logits: list[Tensor],
                    end_logits: list[Tensor], max_answer_tokens: int, version_2: bool) -> list[str]:
    """Each question's predicted answer text: its best span, or "" under SQuAD v2.0 when the null score beats
    that span's sum (utils_qa.py's null_score_diff_threshold 0)."""
    out = []
    for n, windows in sorted(features.by_example().items()):
        starts, ends = [start_logits[w] for w in windows], [end_logits[w] for w in windows]
        best = best_spans(questions[n].context, features, windows, starts, ends, max_answer_tokens)[0]
        out.append("" if version_2 and null_logit(starts, ends) > best.logit else best.answer)
    return out


# --- scores -------------------------------------------------------------------------------------------------


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop string.punctuation, replace the words a/an/the by a space,
    collapse whitespace (evaluate-v2.0.py's normalize_answer, in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def gold_answers(question: Question) -> list[str]:
    """The texts a prediction is scored against: the gold answers that normalise to something, else [""]
    (an unanswerable question: the right prediction is no answer)."""
    return [text for text, _ in question.answers if normalize_answer(text)] or [""]


def exact_match(prediction: str, golds: list[str]) -> float:
    """EM = max over golds g of [normalize(prediction) = normalize(g)]."""
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: list[str]) -> float:
    """F1 = max over golds of 2·P·R/(P + R), P = common/|pred tokens|, R = common/|gold tokens|, common the
    multiset intersection of the normalised whitespace tokens; 1 when both are empty, 0 when one is."""
    def f1(gold: str) -> float:
        predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
        if not predicted or not wanted:
            return float(predicted == wanted)
        common = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
        return 0.0 if common == 0 else 2 * common / (len(predicted) + len(wanted))  # = 2PR/(P+R)
    return max(f1(g) for g in golds)


def squad_scores(predictions: list[str], questions: list[Question]) -> dict[str, float]:
    """Mean exact match and F1 of the predictions (one a question, "" for no answer), in [0, 1]."""
    golds = [gold_answers(q) for q in questions]
    n = max(len(questions), 1)
    return {"exact_match": sum(exact_match(p, g) for p, g in zip(predictions, golds)) / n,
            "f1": sum(token_f1(p, g) for p, g in zip(predictions, golds)) / n}


_SENTENCE = re.compile(r"\s*(.*?[.!?])(?=\s|$)", re.DOTALL)


def first_sentence(context: str) -> str:
    """The baseline's answer: the passage's text up to its first '.', '!' or '?' followed by whitespace or the
    end (the whole passage when there is none), outer whitespace removed."""
    match = _SENTENCE.match(context)
    return (match.group(1) if match else context).strip()


# --- fine-tuning --------------------------------------------------------------------------------------------


def span_losses(start_logits: list[Tensor], end_logits: list[Tensor], features: Features) -> float:
    """Mean over windows of (CE(start, start_position) + CE(end, end_position)) / 2, each softmax over the
    window's own tokens: BertForQuestionAnswering's loss, whatever batch the windows were padded in."""
    total = 0.0
    for w, (start, end) in enumerate(zip(start_logits, end_logits)):
        window = features.windows[w]
        total += float((start.double().logsumexp(0) - start[window.start_position].double() +
                        end.double().logsumexp(0) - end[window.end_position].double()) / 2)
    return total / max(len(features), 1)


class SpanShape(TaskShape):
    """A question and a passage → the answer's span: BertForQuestionAnswering over run_qa.py's windows of SQuAD
    v1.1/v2.0 files, trained on every window's start and end positions, scored by exact match and F1 of each
    question's best span over its windows (with the null answer for v2.0) next to the passage's first sentence.
    Rows (what batches index) are windows; eval examples are questions."""

    def __init__(self, task: TaskConfig):
        super().__init__(task)
        self.splits = {"train": read_squad(task.train_file), "eval": read_squad(task.eval_file)}
        self.version_2 = any(split.version_2 for split in self.splits.values())
        self.features: dict[str, Features] = {}
        self.pad_id: int | None = None
        questions = self.splits["eval"].questions
        self.baseline = squad_scores([first_sentence(q.context) for q in questions], questions)

    def model(self, config: ModelConfig) -> nn.Module:
        return BertForQuestionAnswering(config)

    def head_parameters(self, config: ModelConfig) -> int:
        """qa_outputs' 2·D + 2 (and ModernBERT's per-token transform before it)."""
        return token_head_parameters(config, 2)

    def encode(self, tokenizer: Tokenizer) -> None:
        self.pad_id = special_tokens(tokenizer).pad
        task = self.task
        self.features = {name: make_features(tokenizer, split.questions, task.max_seq_len, task.doc_stride,
                                             task.max_question_tokens) for name, split in self.splits.items()}
        for name, split in self.splits.items():
            many = sum(len(w) > 1 for w in self.features[name].by_example().values())
            if many:
                log.info("%s: %d of %d questions have passages longer than one window of %d tokens (%d windows "
                         "in all, overlapping by %d tokens)", split.source, many, len(split), task.max_seq_len,
                         len(self.features[name]), task.doc_stride)

    def examples(self, split: str) -> int:
        return len(self.features[split])

    def micro_batch(self, indices: list[int]) -> tuple[dict[str, Tensor], int]:
        return collate_windows(self.features["train"], indices, self.pad_id, targets=True), len(indices)

    def tokens(self, index: int) -> int:
        return self.features["train"].length(index)

    def evaluate(self, model, batch_size, device, autocast) -> tuple[dict, dict, int]:
        """F1 and exact match of each eval question's best span, and the mean loss over the eval windows."""
        features, questions = self.features["eval"], self.splits["eval"].questions
        starts, ends = predict_span_logits(model, features, batch_size, self.pad_id, device, autocast)
        predictions = predict_answers(questions, features, starts, ends, self.task.max_answer_tokens,
                                      self.version_2)
        scores = squad_scores(predictions, questions)
        model_scores = {"f1": scores["f1"], "exact_match": scores["exact_match"],
                        "loss": span_losses(starts, ends, features)}
        return model_scores, dict(self.baseline), len(questions)
