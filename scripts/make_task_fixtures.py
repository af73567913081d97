"""Write the tagging fixtures tests/fixtures/tagging_{train,dev}.conll from the embedded Shakespeare corpus (a recipe).

    python scripts/make_task_fixtures.py                 # writes tests/fixtures/tagging_{train,dev}.conll
    python scripts/make_task_fixtures.py --out-dir DIR   # elsewhere (tests/test_make_task_fixtures.py: same bytes)

Sentences are verse lines of four plays (Hamlet, Julius Caesar, Macbeth, Romeo and Juliet) from
bertmath/corpus/shakespeare.jsonl.gz, cut into words by one regular expression (letters, an apostrophe and the
letters after it, or one other character: "Hamlet's" → "Hamlet", "'s"). Tags, IOB2 (BIO), by fixed rules: a run
of words equal to a name in PEOPLE is PER, in PLACES is LOC (the longest name first: "Julius Caesar" is one
entity); nothing else is tagged, so a name missing from the lists is an O (the data are noisy as real data are).
Kept, from each play's first "ACT I." on: every line with an entity and every sixth line without one; of those
every fourth goes to dev, the rest to train; each play gives an equal share of each file (SIZES / 4), sentences
spread evenly over the play.
Deterministic: no randomness, and the corpus is shipped with bertmath.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
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
    """{title: text} of the embedded corpus."""
    resource = importlib.resources.files("bertmath").joinpath(EMBEDDED_CORPUS)
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return {row["title"]: row["text"] for row in map(json.loads, f)}


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


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split, sentences in tagged_sentences().items():
        path = args.out_dir / f"tagging_{split}.conll"
        path.write_text(conll(sentences), encoding="utf-8")
        entities = sum(t.startswith("B-") for _, tags in sentences for t in tags)
        print(f"{path}: {len(sentences)} sentences, {sum(len(w) for w, _ in sentences)} words, {entities} entities")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
