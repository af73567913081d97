"""Write the task fixtures of tests/fixtures/ that the project makes itself, from the embedded Shakespeare corpus
(bertmath/corpus/shakespeare.jsonl.gz), so that the tagging and QA tests and benchmarks run offline.
Deterministic: the same files byte for byte on every run (tests/test_make_task_fixtures.py, tests/test_qa.py).

    python scripts/make_task_fixtures.py                 # rewrites tests/fixtures/tagging_{train,dev}.conll, qa_*.json
    python scripts/make_task_fixtures.py --out-dir DIR   # elsewhere

Tagging (write_tagging_fixtures): sentences are verse lines of four plays (Hamlet, Julius Caesar, Macbeth, Romeo
and Juliet), cut into words by one regular expression (letters, an apostrophe and the letters after it, or one
other character: "Hamlet's" → "Hamlet", "'s"). Tags, IOB2 (BIO), by fixed rules: a run of words equal to a name
in PEOPLE is PER, in PLACES is LOC (the longest name first: "Julius Caesar" is one entity); nothing else is
tagged, so a name missing from the lists is an O (the data are noisy as real data are). Kept, from each play's
first "ACT I." on: every line with an entity and every sixth line without one; of those every fourth goes to
dev, the rest to train; each play gives an equal share of each file (SIZES / 4), sentences spread evenly.

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

from bertmath.corpus import EMBEDDED_CORPUS

PLAYS = ["Hamlet", "Julius Caesar", "Macbeth", "Romeo and Juliet"]
PEOPLE = ["Hamlet", "Horatio", "Ophelia", "Polonius", "Laertes", "Claudius", "Gertrude", "Fortinbras", "Rosencrantz",
          "Guildenstern", "Yorick", "Marcellus", "Bernardo", "Reynaldo", "Osric", "Priam", "Hecuba", "Pyrrhus",
          "Julius Caesar", "Caesar", "Brutus", "Cassius", "Mark Antony", "Antony", "Portia", "Calpurnia", "Casca",
          "Cinna", "Decius Brutus", "Decius", "Caius Ligarius", "Marcus Brutus", "Caius Cassius", "Publius",
          "Metellus Cimber", "Metellus", "Trebonius", "Ligarius", "Lucius", "Octavius", "Titinius",
          "Messala", "Lepidus", "Pompey", "Cicero", "Macbeth", "Banquo", "Duncan", "Macduff", "Malcolm", "Fleance",
          "Donalbain", "Lennox", "Ross", "Angus", "Seyton", "Siward", "Hecate", "Cawdor", "Glamis", "Romeo", "Juliet",
          "Tybalt", "Mercutio", "Benvolio", "Capulet", "Montague", "County Paris", "Friar Lawrence", "Friar John",
          "Lawrence", "Queen Mab", "Rosaline", "Balthasar", "Peter", "Sampson", "Gregory", "Abraham", "Nurse"]
PLACES = ["Denmark", "Norway", "England", "France", "Elsinore", "Wittenberg", "Poland", "Rome", "Sardis", "Philippi",
          "Tiber", "Capitol", "Scotland", "Ireland", "Inverness", "Dunsinane", "Birnam wood", "Birnam", "Forres", "Fife",
          "Colmekill", "Saint Peter 's Church", "Peter 's Church", "Verona", "Mantua", "Italy", "Troy", "Greece",
          "Egypt", "Asia", "Africa", "Europe", "Spain", "Parthia", "Nervii"]
PARIS = {"Hamlet": "LOC", "Romeo and Juliet": "PER"}  # the city in Hamlet, the County in Romeo and Juliet
SIZES = {"train": 480, "dev": 160}  # sentences per file, an equal share from each play
PLAIN_EVERY = 6  # keep every sixth line without an entity
WORD = re.compile(r"[A-Za-z]+|'[A-Za-z]+|[^\sA-Za-z]")


def works() -> dict[str, str]:
    """{title: text} of the embedded corpus's plays."""
    resource = importlib.resources.files("bertmath").joinpath(EMBEDDED_CORPUS)
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return {row["title"]: row["text"] for row in map(json.loads, f) if row["kind"] == "play"}


def verse_lines(text: str) -> list[str]:
    """Lines of speech from "ACT I." on: 4 to 24 words, not a speaker's name ("Ham."), stage direction ("[Exit.]")
    or heading (a word in capitals: "ACT II", "SCENE")."""
    out = []
    for line in text[text.index("\nACT I."):].splitlines():
        line = line.strip()
        words = line.split()
        if not 4 <= len(words) <= 24 or line.startswith("[") or any(w.isupper() and len(w) > 2 for w in words):
            continue
        out.append(line)
    return out


def tag(words: list[str], names: list[tuple[list[str], str]]) -> list[str]:
    """IOB2 tags: at each word the longest name (a list of words) that starts there, B- then I-; else O."""
    tags = ["O"] * len(words)
    i = 0
    while i < len(words):
        for name, label in names:
            if words[i:i + len(name)] == name:
                tags[i:i + len(name)] = [f"B-{label}"] + [f"I-{label}"] * (len(name) - 1)
                i += len(name)
                break
        else:
            i += 1
    return tags


def tagged_sentences() -> dict[str, list[tuple[list[str], list[str]]]]:
    """{"train": sentences, "dev": sentences} of (words, tags)."""
    texts = works()
    splits = {"train": [], "dev": []}
    for play in PLAYS:
        names = [(n.split(), "PER") for n in PEOPLE] + [(n.split(), "LOC") for n in PLACES]
        names += [(["Paris"], PARIS[play])] if play in PARIS else []
        names.sort(key=lambda entry: -len(entry[0]))  # longest first; stable otherwise
        kept, plain = [], 0
        for line in verse_lines(texts[play]):
            words = WORD.findall(line)
            tags = tag(words, names)
            if any(t != "O" for t in tags) or (plain := plain + 1) % PLAIN_EVERY == 0:
                kept.append((words, tags))
        for split, part in (("train", [s for n, s in enumerate(kept) if n % 4 != 3]), ("dev", kept[3::4])):
            share = SIZES[split] // len(PLAYS)
            splits[split] += [part[i * len(part) // share] for i in range(share)]
    return splits


def conll(sentences: list[tuple[list[str], list[str]]]) -> str:
    """-DOCSTART-, then one "word TAG" line per word and a blank line after each sentence."""
    blocks = ["-DOCSTART- O\n"] + ["".join(f"{w} {t}\n" for w, t in zip(words, tags)) for words, tags in sentences]
    return "\n".join(blocks)



# --- question answering --------------------------------------------------------------------------------------

QA_TRAIN_PLAYS = ["All's Well That Ends Well", "As You Like It", "Julius Caesar", "Macbeth", "The Tempest",
                  "Twelfth Night", "The Comedy of Errors", "Much Ado About Nothing"]
QA_DEV_PLAYS = ["Othello", "The Merchant of Venice"]
QA_SEED = 24
_HEADING = re.compile(r"[A-Z][A-Z' \-]*[A-Z]\.")  # a speech's first line: "FIRST CITIZEN."
_WORD = re.compile(r"\S+")


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
    texts, rng = works(), random.Random(QA_SEED)
    written = []
    for name, plays, per_play, prefix in (("qa_train.json", QA_TRAIN_PLAYS, 24, "train"),
                                         ("qa_dev.json", QA_DEV_PLAYS, 32, "dev")):
        path = out_dir / name
        path.write_text(json.dumps(qa_split(texts, plays, per_play, prefix, rng), indent=1, ensure_ascii=False)
                        + "\n", encoding="utf-8")
        written.append(path)
    return written



def write_tagging_fixtures(out_dir: Path) -> list[Path]:
    """tagging_train.conll and tagging_dev.conll."""
    written = []
    for split, sentences in tagged_sentences().items():
        path = out_dir / f"tagging_{split}.conll"
        path.write_text(conll(sentences), encoding="utf-8")
        entities = sum(t.startswith("B-") for _, tags in sentences for t in tags)
        print(f"{path}: {len(sentences)} sentences, {sum(len(w) for w, _ in sentences)} words, {entities} entities")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = write_tagging_fixtures(args.out_dir)
    for path in write_qa_fixtures(args.out_dir):
        print(f"{path}: {path.stat().st_size:,} bytes")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
