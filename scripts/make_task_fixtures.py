"""Write the task fixtures of tests/fixtures/ that the project makes itself, from the embedded Shakespeare corpus
(bertmath/corpus/shakespeare.jsonl.gz), so that the QA tests and benchmarks run offline. Deterministic: the
same files byte for byte on every run (tests/test_qa.py checks it).

    python scripts/make_task_fixtures.py            # rewrites tests/fixtures/qa_train.json, qa_dev.json

QA (write_qa_fixtures): SQuAD v2.0 JSON. A passage is a run of consecutive speeches of one play ("SPEAKER.\n
lines..." blocks of the text; some runs long enough to need more than one 128-token window); its questions:
    Who says "<words of one speech>"?            -> the speaker's name, at that speech's heading
    What follows "<words>" in the passage?       -> the next words of the line, up to a punctuation mark
    Who says "<words from another passage>"?     -> no answer (is_impossible)
Train passages come from some plays, dev passages from others.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import random
import re
from pathlib import Path

QA_TRAIN_PLAYS = ["All's Well That Ends Well", "As You Like It", "Julius Caesar", "Macbeth", "The Tempest",
                  "Twelfth Night", "The Comedy of Errors", "Much Ado About Nothing"]
QA_DEV_PLAYS = ["Othello", "The Merchant of Venice"]
QA_SEED = 24
_HEADING = re.compile(r"[A-Z][A-Z' \-]*[A-Z]\.")  # a speech's first line: "FIRST CITIZEN."
_WORD = re.compile(r"\S+")


def corpus_texts() -> dict[str, str]:
    """{title: text} of the embedded corpus's plays."""
    resource = importlib.resources.files("bertmath").joinpath("corpus/shakespeare.jsonl.gz")
    with gzip.open(resource.open("rb"), "rt", encoding="utf-8") as handle:
        return {r["title"]: r["text"] for r in map(json.loads, handle) if r["kind"] == "play"}


def speeches(text: str) -> list[tuple[int, int, str]]:
    """(start, end, speaker) of each speech: a block between blank lines whose first line is an upper-case
    heading ending in '.' and whose other lines are not headings (the list of persons is not speeches)."""
    out = []
    for block in re.finditer(r"[^\n](?:.|\n(?!\s*\n))*", text):
        lines = block.group().split("\n")
        if len(lines) >= 2 and _HEADING.fullmatch(lines[0]) and not any(_HEADING.fullmatch(x) for x in lines[1:]):
            out.append((block.start(), block.end(), lines[0][:-1]))
    return out


def _phrase(rng: random.Random, context: str, start: int, end: int, words: int) -> tuple[str, int] | None:
    """`words` consecutive words of one line of context[start:end] (not its heading) that occur once in the
    context: (phrase, its offset), or None."""
    lines = [m for m in re.finditer(r"[^\n]+", context[start:end])][1:]
    lines = [m for m in lines if len(m.group().split()) >= words + 2 and not m.group().startswith("[")]
    for _ in range(6):
        if not lines:
            return None
        line = rng.choice(lines)
        tokens = list(_WORD.finditer(line.group()))
        i = rng.randrange(len(tokens) - words - 1)
        a, b = tokens[i].start(), tokens[i + words - 1].end()
        phrase = line.group()[a:b]
        if context.count(phrase) == 1:
            return phrase, start + line.start() + a
    return None


def _follows(context: str, phrase: str, at: int) -> tuple[str, int] | None:
    """The words after `phrase` on its line, up to (not with) the first punctuation mark, at most 4: (text,
    offset), or None when there is not one word."""
    rest = context[at + len(phrase):].split("\n")[0]
    match = re.match(r" ([A-Za-z']+(?: [A-Za-z']+){0,3})", rest)
    if not match or not match.group(1).strip("'"):
        return None
    return match.group(1), at + len(phrase) + 1


def qa_passages(text: str, rng: random.Random, count: int, long_share: float) -> list[tuple[str, list]]:
    """`count` passages of a play, each (context, speeches inside as (start, end, speaker) relative to it):
    runs of 2-4 consecutive speeches of at most 700 characters, or long_share of them 8-12 speeches of at
    900-1500 characters (more than one 128-token window); non-overlapping, in play order."""
    found = speeches(text)
    chosen, used = [], set()
    for _ in range(count * 20):
        if len(chosen) == count:
            break
        long = rng.random() < long_share
        n = rng.randint(8, 12) if long else rng.randint(2, 4)
        first = rng.randrange(len(found) - n)
        run = found[first:first + n]
        start, end = run[0][0], run[-1][1]
        size = end - start
        if not (900 <= size <= 1500 if long else size <= 700) or used & set(range(first, first + n)):
            continue
        used |= set(range(first, first + n))
        chosen.append((first, text[start:end], [(a - start, b - start, who) for a, b, who in run]))
    return [(context, inside) for _, context, inside in sorted(chosen)]


def qa_questions(rng: random.Random, context: str, inside: list, elsewhere: str) -> list[dict]:
    """Up to 3 questions on one passage (SQuAD v2.0 records without ids); `elsewhere`: another passage, the
    source of an unanswerable question."""
    out = []
    for start, end, speaker in rng.sample(inside, min(2, len(inside))):
        found = _phrase(rng, context, start, end, rng.randint(4, 6))
        if found is None:
            continue
        phrase, at = found
        if rng.random() < 0.5:
            out.append({"question": f'Who says "{phrase}"?',
                        "answers": [{"text": speaker, "answer_start": start}], "is_impossible": False})
            continue
        follows = _follows(context, phrase, at)
        if follows:
            out.append({"question": f'What follows "{phrase}" in the passage?',
                        "answers": [{"text": follows[0], "answer_start": follows[1]}], "is_impossible": False})
    other = speeches(elsewhere)
    if other and rng.random() < 0.2:
        start, end, _ = rng.choice(other)
        found = _phrase(rng, elsewhere, start, end, 5)
        if found and found[0] not in context:
            out.append({"question": f'Who says "{found[0]}"?', "answers": [], "is_impossible": True})
    return out


def qa_split(texts: dict[str, str], plays: list[str], passages_per_play: int, prefix: str,
             rng: random.Random) -> dict:
    """A SQuAD v2.0 tree: one article a play, its passages and their questions, ids <prefix>-0001, ..."""
    data, number = [], 0
    for title in plays:
        passages = qa_passages(texts[title], rng, passages_per_play, long_share=0.15)
        paragraphs = []
        for i, (context, inside) in enumerate(passages):
            qas = []
            for question in qa_questions(rng, context, inside, passages[i - 1][0]):
                number += 1
                qas.append({"id": f"{prefix}-{number:04d}", **question})
                for answer in question["answers"]:
                    assert context[answer["answer_start"]:][:len(answer["text"])] == answer["text"]
            if qas:
                paragraphs.append({"context": context, "qas": qas})
        data.append({"title": title, "paragraphs": paragraphs})
    return {"version": "v2.0", "data": data}


def write_qa_fixtures(out_dir: Path) -> list[Path]:
    """qa_train.json (8 plays) and qa_dev.json (2 other plays), SQuAD v2.0."""
    texts, rng = corpus_texts(), random.Random(QA_SEED)
    written = []
    for name, plays, per_play, prefix in (("qa_train.json", QA_TRAIN_PLAYS, 24, "train"),
                                         ("qa_dev.json", QA_DEV_PLAYS, 32, "dev")):
        path = out_dir / name
        path.write_text(json.dumps(qa_split(texts, plays, per_play, prefix, rng), indent=1, ensure_ascii=False)
                        + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write_qa_fixtures(args.out):
        print(f"{path}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
