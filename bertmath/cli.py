"""`bertmath` command line: a thin shell that parses arguments and calls the Python API.

A `BertmathError` becomes one line on stderr and exit status 2 (config) or 1 (other); bugs keep their traceback.
A reader that stops reading (`bertmath fill-mask ... | head -1`) ends any command quietly, with status 141.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from .distributed import process_label
from .errors import BertmathError
from .fill_mask import STRATEGIES
from .hardware import keep_freed_memory


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (sections model:, data:, train:)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")


def _add_precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), default="auto",
                        help="auto (default): bf16 where the hardware computes it natively (avx512_bf16, AMX, a CUDA "
                             "GPU), else fp32; int8 quantises the encoder's matrices (x86 CPUs: 8-bit weights with "
                             "VNNI or AMX, 7-bit on AVX2); bf16 where it would be emulated is an error")


def _summary(args, count: int, noun: str, precision) -> None:
    """The command's closing line, on stderr (stdout holds only results): how many inputs, at which precision."""
    print(f"bertmath {args.command}: {count} {noun}, {precision.describe()}", file=sys.stderr)


def cmd_params(args) -> int:
    from .config import load_config
    from .model import parameter_counts, parameter_report, parameter_table

    config = load_config(args.config, args.overrides).model
    if args.json:
        print(json.dumps({"parts": dict(parameter_table(config)), "totals": parameter_counts(config)}, indent=2))
    else:
        print(parameter_report(config))
    return 0


def load_config_args(args):
    """CONFIG with its --set overrides."""
    from .config import load_config

    return load_config(args.config, args.overrides)


def _run_config(args):
    """CONFIG with its --set overrides; --resume: resuming is required (an error if there is no checkpoint)."""
    from .config import load_config

    return load_config(args.config, list(args.overrides) + (["train.resume=required"] if args.resume else []))


def cmd_pretrain(args) -> int:
    from .distributed import is_main_process
    from .trainer import train

    summary = train(_run_config(args))
    if not is_main_process():  # under torchrun, rank 0 alone reports
        return 0
    held_out = "no held-out measurement (data.eval_fraction: 0)"  # every run ends with this line, evaluated or not
    if summary.get("final_mask_accuracy") is not None:
        held_out = (f"held-out [MASK] accuracy {summary['final_mask_accuracy']:.1%} (best "
                    f"{summary['best_mask_accuracy']:.1%} at step {summary['best_mask_step']}), "
                    f"{summary['final_mask_accuracy'] / max(summary['baseline_mask_accuracy'], 1e-9):.1f}x the unigram "
                    f"baseline {summary['baseline_mask_accuracy']:.1%}; accuracy over all chosen tokens "
                    f"{summary['final_eval_accuracy']:.1%}")
    print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['time_s']:.0f} s "
          f"({summary['tokens_per_s'] or 0:,.0f} tokens/s, {summary['precision']}); {held_out}; checkpoint: "
          f"{summary['out_dir']}")
    return 0


def cmd_prepare(args) -> int:
    from . import distributed
    from .data import prepare
    from .io import check_writable

    config = load_config_args(args)
    check_writable(config.train.out_dir)
    dist = distributed.join("cpu", "ddp", config.train.timeout_minutes) if distributed.launched_by_torchrun() else \
        distributed.DistInfo()
    if not dist.is_main:
        logging.getLogger("bertmath").setLevel(logging.WARNING)
    prepared = prepare(config, dist=dist)
    if dist.is_main:
        print("\n".join(prepared.summary()))
    distributed.barrier(dist)
    distributed.cleanup(dist)
    return 0


def cmd_finetune(args) -> int:
    from .tasks.finetune import describe_scores, finetune

    config = _run_config(args)
    summary = finetune(config)
    task = replace(config.task, metric=summary["metric"])  # as the run resolved it (embedding: by the eval file)
    if summary.get("scores"):
        print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['time_s']:.0f} s "
              f"({summary['tokens_per_s'] or 0:,.0f} tokens/s, {summary['precision']}); on "
              f"{summary['eval_examples']:,} eval examples: "
              f"{describe_scores(summary['scores'], summary['baseline'], task)}; best {summary['metric']} "
              f"{summary['best_metric']:.3f} at step {summary['best_step']}; checkpoint: {summary['out_dir']}")
    return 0


def cmd_classify(args) -> int:
    from .tasks.classify import Classifier
    from .errors import DataError

    if args.files and args.texts:
        raise DataError("give TEXT [TEXT2] or --file, not both")
    if args.files:
        examples = []
        for path in args.files:
            lines = _input_lines(path)
            if args.pairs:
                bad = next((n for n, line in enumerate(lines, 1) if len(line.split("\t")) != 2), None)
                if bad is not None:
                    raise DataError(f"{path}: example {bad} is not two tab-separated texts (--pairs)")
            examples += [tuple(line.split("\t")) if args.pairs else line for line in lines]
        if not examples:
            raise DataError(f"{', '.join(args.files)}: no examples (empty input)")
    elif args.texts:
        if len(args.texts) > 2:
            raise DataError(f"expected TEXT or TEXT TEXT2, got {len(args.texts)} texts (use --file for many)")
        examples = [tuple(args.texts)]
    else:
        raise DataError("no input: give TEXT [TEXT2], or --file FILE ('-' for stdin) with one example per line")
    classifier = Classifier.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    for prediction in classifier(examples):
        print(json.dumps(prediction.to_dict(), ensure_ascii=False) if args.json else prediction.to_text())
    _summary(args, len(examples), "examples", classifier.precision)
    return 0


def cmd_answer(args) -> int:
    from .tasks.answer import Answerer, read_examples_file
    from .errors import DataError
    from .io import read_text

    if args.file is not None:
        if args.questions or args.context is not None or args.context_file is not None:
            raise DataError("give --file, or --question with --context/--context-file, not both")
        examples = read_examples_file(args.file)
    else:
        if not args.questions or (args.context is None) == (args.context_file is None):
            raise DataError("give --question Q and one of --context C or --context-file F (or --file FILE of JSON "
                            "lines with question and context)")
        if "-" in args.questions and args.context_file == "-":
            raise DataError("stdin ('-') can hold the questions or the passage, not both")
        questions = _read_texts(args.questions)
        if not questions:
            raise DataError("no question: stdin was empty")
        context = args.context if args.context is not None else \
            sys.stdin.read() if args.context_file == "-" else read_text(Path(args.context_file))
        examples = [(question, context) for question in questions]
    answerer = Answerer.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    answers = answerer(examples, top_k=args.top_k, max_answer_tokens=args.max_answer_tokens)
    for n, answer in enumerate(answers):
        if args.json:
            print(json.dumps(answer.to_dict(), ensure_ascii=False))
        else:
            print(("\n" if n and args.top_k > 1 else "") + answer.to_text())
    _summary(args, len(examples), "questions", answerer.precision)
    return 0


def _input_lines(source: str) -> list[str]:
    """The non-empty lines of stdin ("-") or of a UTF-8 file: one input per line."""
    from .io import read_text

    if source == "-":
        return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    return [line for line in read_text(Path(source)).splitlines() if line.strip()]


def _read_texts(texts: list[str], files: list[str] = ()) -> list[str]:
    """The TEXT arguments, each "-" replaced by the non-empty lines of stdin, then the non-empty lines of each
    --file (UTF-8; "-": stdin): one input per line."""
    out = []
    for text in texts:
        out += _input_lines(text) if text == "-" else [text]
    for path in files:
        out += _input_lines(path)
    return out


def cmd_fill_mask(args) -> int:
    from .errors import DataError
    from .fill_mask import FillMask, validate_options

    validate_options(args.top_k, args.strategy, args.temperature, args.top_p)  # before the (slow) load
    texts = _read_texts(args.texts, args.files)
    if not texts:
        raise DataError("no input text: give TEXT, '-' for stdin or --file (stdin and the files were empty)")
    fill = FillMask.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    results = fill.predict(texts, top_k=args.top_k, strategy=args.strategy, temperature=args.temperature,
                           top_p=args.top_p, seed=args.seed, truncate=args.truncate)
    for n, result in enumerate(results):
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print(("\n" if n else "") + result.to_text(fill.mask_token))
    _summary(args, len(texts), "texts", fill.precision)
    return 0


def cmd_tag(args) -> int:
    from .errors import DataError
    from .tasks.tagging import Tagger

    texts = _read_texts(args.texts, args.files)
    if not texts:
        raise DataError("no input text: give TEXT, '-' for stdin or --file (stdin and the files were empty)")
    tagger = Tagger.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    for n, tagged in enumerate(tagger(texts)):
        print(json.dumps(tagged.to_dict(), ensure_ascii=False) if args.json else ("\n" if n else "") + tagged.to_text())
    _summary(args, len(texts), "texts", tagger.precision)
    return 0


def cmd_encode(args) -> int:
    from .errors import DataError
    from .io import atomic_save_npy, check_output
    from .tasks.encode import Embedder

    if args.out is not None:
        check_output(args.out)  # before the (slow) load
    texts = _read_texts(args.texts, args.files)
    if not texts:
        raise DataError("no input text: give TEXT, '-' for stdin or --file (stdin and the files were empty)")
    embedder = Embedder.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    vectors = embedder.encode(texts, batch_size=args.batch_size, normalize=args.normalize)
    _summary(args, len(texts), "texts", embedder.precision)
    if args.out is not None:
        atomic_save_npy(vectors.numpy(), Path(args.out))
        print(f"wrote {len(texts)} x {vectors.shape[1]} float32 vectors to {args.out} ({embedder.describe()})")
    elif args.json:
        for text, vector in zip(texts, vectors.tolist()):
            print(json.dumps({"text": text, "embedding": vector}, ensure_ascii=False))
    else:
        print(f"{len(texts)} x {vectors.shape[1]} ({embedder.describe()})")
        for text, vector in zip(texts, vectors.tolist()):
            shown = " ".join(f"{x:+.4f}" for x in vector[:4])
            print(f"[{shown} ...]  {text if len(text) <= 60 else text[:57] + '...'}")
    return 0


def cmd_search(args) -> int:
    from . import distributed
    from .errors import DataError
    from .tasks.search import Searcher

    queries = _read_texts(args.queries)
    if not queries:
        raise DataError("no query: give --query Q (repeatable; '-' reads one query per line from stdin)")
    info = distributed.DistInfo()
    device = args.device
    if distributed.launched_by_torchrun():  # every process embeds its share of the documents; rank 0 answers
        info = distributed.join("cuda" if device.startswith("cuda") else "cpu", "ddp", timeout_minutes=60)
        device = f"cuda:{info.local_rank}" if device == "cuda" else device
        if not info.is_main:
            logging.getLogger("bertmath").setLevel(logging.WARNING)
    try:
        searcher = Searcher.from_pretrained(args.checkpoint, args.docs, device=device, batch_size=args.batch_size,
                                            chunk_size=args.chunk_size, info=info, precision=args.precision)
    finally:
        distributed.cleanup(info)
    if not info.is_main:
        return 0
    _summary(args, len(queries), "queries", searcher.embedder.precision)
    for n, (query, hits) in enumerate(zip(queries, searcher(queries, top_k=args.top_k))):
        if args.json:
            print(json.dumps({"query": query, "hits": [hit.to_dict() for hit in hits]}, ensure_ascii=False))
            continue
        print(("\n" if n else "") + query)
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:2d}. {hit.score:.4f}  line {hit.line}: {hit.text}")
    return 0


def cmd_export(args) -> int:
    from .pretrained import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"wrote {out} (config.json, model.safetensors, tokenizer files): load it with "
          f"transformers' from_pretrained({str(out)!r})")
    return 0


def cmd_plot(args) -> int:
    from .viz.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def cmd_figures(args) -> int:
    from .viz.figures import write_math_figures

    for path in write_math_figures(args.out, args.checkpoint):
        print(f"wrote {path}")
    return 0


def cmd_attention(args) -> int:
    from .viz.attention import plot_attention

    print(f"wrote {plot_attention(args.checkpoint, args.text, args.out, args.layer, args.head)}")
    return 0


def cmd_embed(args) -> int:
    from .viz.embed import embed

    options = {"top_k": args.top_k}
    for name in ("word", "analogy", "context_word", "sentences"):
        if getattr(args, name) is not None:  # unset options keep embed's defaults; an empty one is an error
            options[name] = getattr(args, name)
    report, path = embed(args.checkpoint, args.out, **options)
    print(report.to_text())
    print(f"wrote {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other bertmath error; subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bertmath", description="BERT encoder: the math, pretraining, fill-mask.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("params", help="print parameter counts per module for a config")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("pretrain", help="pretrain BertForMaskedLM with masked-language modelling")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in train.out_dir (error if there is none)")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("prepare", help="prepare pretraining's data (tokenizer, tokens, blocks) into its cache, and "
                                       "nothing else; under torchrun every process prepares its share of the corpus")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on a labelled task (config with a task: section)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in train.out_dir (error if there is none)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("classify", help="labels and scores of texts (or text pairs) from a fine-tuned checkpoint")
    p.add_argument("checkpoint", help="bertmath fine-tuning run or step directory, or a transformers "
                                      "BertForSequenceClassification directory")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="TEXT, or TEXT TEXT2 for a sentence pair")
    p.add_argument("--file", dest="files", action="append", default=[], metavar="FILE",
                   help="read one example per line from FILE (UTF-8; blank lines skipped; '-': stdin); repeatable. "
                        "Many examples are batched by length, and the results come in input order")
    p.add_argument("--pairs", action="store_true", help="with --file: each line is TEXT<tab>TEXT2")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    _add_precision_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per example, one per line")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("tag", help="each word's tag and the entities of texts, from a fine-tuned token classifier")
    p.add_argument("checkpoint", help="bertmath tagging run or step directory (task.kind: tokens), or a transformers "
                                      "BertForTokenClassification directory")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="text to tag; '-' reads one text per line from stdin")
    p.add_argument("--file", dest="files", action="append", default=[], metavar="FILE",
                   help="read one text per line from FILE (UTF-8; blank lines skipped; '-': stdin); repeatable. Many "
                        "texts are batched by length, and the results come in input order")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    _add_precision_arg(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per text, one per line: its entities ({label, word, start, end, "
                        "score}, as transformers' token-classification pipeline with aggregation_strategy simple "
                        "gives them) and its words")
    p.set_defaults(func=cmd_tag)
    p = sub.add_parser("answer", help="the answer to a question: its span in a passage, from a fine-tuned "
                                      "question-answering checkpoint")
    p.add_argument("checkpoint", help="bertmath fine-tuning run or step directory (task.kind span), or a "
                                      "transformers BertForQuestionAnswering directory")
    p.add_argument("--question", dest="questions", action="append", default=[], metavar="Q",
                   help="the question; repeatable (each answered from the same passage); '-' reads one question "
                        "per line from stdin. Many questions are batched by length; answers come in input order")
    p.add_argument("--context", default=None, metavar="C", help="the passage holding the answer")
    p.add_argument("--context-file", default=None, metavar="F", help="read the passage from F (UTF-8; '-': stdin)")
    p.add_argument("--file", default=None, metavar="FILE",
                   help="instead: JSON lines, each {\"question\": ..., \"context\": ...} ('-': stdin)")
    p.add_argument("--top-k", type=int, default=1, help="the K best spans, best first")
    p.add_argument("--max-answer-tokens", type=int, default=30, help="the longest answer, in tokens (run_qa.py's 30)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    _add_precision_arg(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per question: {question, answers: [{answer, start, end, score}]}; "
                        "start and end are character offsets in the passage, score the span's probability among "
                        "the 20 best")
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("fill-mask", help="predict the words behind [MASK] with a checkpoint")
    p.add_argument("checkpoint", help="bertmath run or step directory, or a transformers BERT directory")
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="text with [MASK] tokens; '-' reads one text per line from stdin")
    p.add_argument("--file", dest="files", action="append", default=[], metavar="FILE",
                   help="read one text per line from FILE (UTF-8; blank lines skipped); repeatable. Many texts are "
                        "batched by length, and the results come in input order")
    p.add_argument("--top-k", type=int, default=5, help="candidates shown per mask (and the top-k cut when sampling)")
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy",
                   help="greedy: each mask its argmax from one pass; iterative: fill the most confident mask, "
                        "re-run, repeat; sample: draw from softmax(logits/T) cut to top-k and top-p")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T for --strategy sample")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] for --strategy sample")
    p.add_argument("--seed", type=int, default=None, help="random seed for --strategy sample (reproducible draws)")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model's max positions at the end (error if a [MASK] is cut)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    _add_precision_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per input, one per line")
    p.set_defaults(func=cmd_fill_mask)

    p = sub.add_parser("encode", help="sentence embeddings: one vector per text (a sentence-transformers folder, or "
                                      "any BERT, RoFormer or ModernBERT checkpoint)")
    p.add_argument("checkpoint", help="sentence-transformers folder, bertmath run or step directory (task.kind "
                                      "embedding, or any: then mean pooling), or a transformers directory")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="text to embed; '-' reads one text per line from stdin")
    p.add_argument("--file", dest="files", action="append", default=[], metavar="FILE",
                   help="read one text per line from FILE (UTF-8; blank lines skipped; '-': stdin); repeatable. Many "
                        "texts are batched by length, and the vectors come in input order")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--out", default=None, metavar="FILE.npy",
                       help="write the (N, D) float32 vectors to this .npy file (numpy.load reads it)")
    shown.add_argument("--json", action="store_true",
                       help="print one JSON object per text, one per line: {text, embedding: [D numbers]}")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass at most (default 32)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="unit-length vectors (default: as the checkpoint says; mean pooling without, for a "
                        "checkpoint that says nothing)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    _add_precision_arg(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("search", help="the documents (lines of a file) nearest each query by cosine similarity of "
                                      "their embeddings; the documents' vectors are kept beside the file")
    p.add_argument("checkpoint", help="sentence-transformers folder, bertmath run or step directory, or a transformers "
                                      "directory (as for bertmath encode)")
    p.add_argument("--docs", required=True, metavar="FILE",
                   help="UTF-8 text file, one document per line (blank lines skipped); its vectors are written "
                        "beside it once (FILE.bertmath-KEY.npy) and reused while FILE and the checkpoint are unchanged")
    p.add_argument("--query", dest="queries", action="append", default=[], metavar="Q", required=True,
                   help="a query; repeatable; '-' reads one query per line from stdin")
    p.add_argument("--top-k", type=int, default=5, help="documents per query, best first (default 5)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per query: {query, hits: [{score, line, text}]}")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass at most (default 32)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="documents embedded per step, each process's unit of work under torchrun (default 4096)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (under torchrun: each "
                                                   "process its own GPU)")
    _add_precision_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export",
                       help="write a checkpoint in transformers' layout (config.json, model.safetensors, tokenizer)")
    p.add_argument("checkpoint", help="bertmath run or step directory, or a transformers BERT directory")
    p.add_argument("out_dir", help="directory to write: a new or empty one, or a previous bertmath export (whose "
                                   "files are replaced); anything else is left alone, with an error")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="draw a run's training curves (loss, learning rate, held-out accuracy) to a PNG")
    p.add_argument("run_dir", help="bertmath run directory (train.out_dir, holding metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/training.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("figures", help="draw the figures of BERT's math (exp, sigmoid, GELU, softmax, sampling, "
                                       "embeddings, attention scaling, masking, WordPiece) as PNGs")
    p.add_argument("--out", required=True, help="directory to write NN_name.png into (created if missing)")
    p.add_argument("--checkpoint", default=None,
                   help="take the tokenizer and embedding matrix from this checkpoint (default: train a WordPiece "
                        "vocabulary on the embedded Shakespeare corpus, ~1 s, with embeddings at BERT's init)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("attention", help="draw a checkpoint's attention weights for a text as heat maps")
    p.add_argument("checkpoint", help="bertmath run or step directory, or a transformers BERT directory")
    p.add_argument("text", help="the text to encode ([CLS] and [SEP] are added)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--layer", type=int, default=None, help="only this layer (from 0; default: every layer)")
    p.add_argument("--head", type=int, default=None, help="only this head (from 0; default: every head)")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("embed", help="nearest words, analogies and contextual vectors of a checkpoint's embeddings")
    p.add_argument("checkpoint", help="bertmath run or step directory, or a transformers BERT directory")
    p.add_argument("--word", help="word whose nearest neighbours to list (default: king)")
    p.add_argument("--analogy", nargs=3, metavar=("A", "B", "C"),
                   help="solve A - B + C (default: king man woman)")
    p.add_argument("--context-word", help="word to compare across --sentence's (default: bear)")
    p.add_argument("--sentence", dest="sentences", action="append", metavar="TEXT",
                   help="a sentence holding --context-word (repeat, at least twice; default: four about bears)")
    p.add_argument("--top-k", type=int, default=8, help="neighbours and analogy answers to list")
    p.add_argument("--out", default="embed.png", help="PNG to write (default: embed.png)")
    p.set_defaults(func=cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # argparse gives an optional-length positional (fill-mask's or classify's TEXT ...) nothing when an option
        # stands between it and the one before ("CKPT --top-k 3 TEXT"; fixed in Python 3.13): such texts come back here
        if not isinstance(getattr(args, "texts", None), list) or any(e.startswith("-") and e != "-" for e in extras):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.texts += extras
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keep_freed_memory()  # every command allocates and frees the same tensors batch after batch
    for noisy in ("datasets", "httpx", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        try:
            return args.func(args)
        except BertmathError as e:
            # process_label(): " [rank r/P]" in a torchrun job, which process failed
            print(f"bertmath {args.command}{process_label()}: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print(f"bertmath {args.command}: interrupted", file=sys.stderr)
            return 130
        finally:
            if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
                sys.stdout.flush()  # output still buffered meets a closed pipe here, not in the interpreter's exit
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """The reader closed stdout's pipe (`| head -1`): stop quietly, as coreutils' cat or seq do. They die of
    SIGPIPE, which a shell reports as 128 + 13 = 141; returning 141 keeps that status (a `set -o pipefail`
    script sees what it sees for them) without killing the process mid-cleanup. stdout goes to /dev/null first,
    so the interpreter's final flush of what is left in the buffer does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
