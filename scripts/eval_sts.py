"""Semantic textual similarity of a sentence-embedding checkpoint: Spearman's ρ between cos(e_1, e_2) and the gold
scores of an STS file, as sentence-transformers' EmbeddingSimilarityEvaluator computes it (scipy's spearmanr of the
cosine scores against the gold scores), with bertmath's Embedder and, for comparison, sentence-transformers' own
encode of the same folder.

    python scripts/get_tasks.py                                              # data/tasks/stsb/{train,dev,test}.jsonl
    python scripts/eval_sts.py CHECKPOINT --file data/tasks/stsb/test.jsonl  # e.g. all-MiniLM-L6-v2's folder

all-MiniLM-L6-v2 on the STS-B test set: MTEB publishes 0.8203 (cosine Spearman); docs/benchmarks.md records
what this script gives.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from bertmath.tasks.encode import Embedder


def read_pairs(path: Path) -> tuple[list[str], list[str], list[float]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], [float(r["score"]) for r in rows]


def cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return torch.nn.functional.cosine_similarity(a, b, dim=1).tolist()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="sentence-transformers folder, bertmath run or transformers directory")
    p.add_argument("--file", default="data/tasks/stsb/test.jsonl", help="jsonl of sentence1, sentence2, score")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-sentence-transformers", action="store_true", help="bertmath's figure only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from scipy.stats import pearsonr, spearmanr

    first, second, gold = read_pairs(Path(args.file))
    embedder = Embedder.from_pretrained(args.checkpoint)
    report = {"file": args.file, "pairs": len(gold), "checkpoint": str(args.checkpoint), "rows": []}
    systems = {"bertmath": lambda texts: embedder.encode(texts, batch_size=args.batch_size)}
    if not args.no_sentence_transformers:
        from sentence_transformers import SentenceTransformer

        theirs = SentenceTransformer(str(args.checkpoint), device="cpu")
        systems["sentence-transformers"] = lambda texts: torch.from_numpy(theirs.encode(
            texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False))
    for name, encode in systems.items():
        scores = cosines(encode(first), encode(second))
        report["rows"].append({"system": name, "spearman": float(spearmanr(scores, gold).statistic),
                               "pearson": float(pearsonr(scores, gold).statistic)})
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['pairs']} pairs of {report['file']}, cosine similarity of {report['checkpoint']}")
        for row in report["rows"]:
            print(f"  {row['system']:<22} Spearman {row['spearman']:.4f}  Pearson {row['pearson']:.4f}")
    return report


if __name__ == "__main__":
    main()
