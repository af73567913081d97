"""Data preparation at corpus scale: memory, time and throughput of `bertmath pretrain` on synthetic corpora of
growing size, cold and warm, beside `tokenizers` alone and a run_mlm.py-style preparation (docs/benchmarks.md).

    python scripts/bench_data.py --sizes 0.4 1.2 --out bench_data.json
    python scripts/bench_data.py --sizes 4 --no-warm --no-baseline --out bench_data_4gb.json
    python scripts/bench_data.py --sizes 0.4 --layouts paragraph lines line --no-warm --no-baseline

For each size S (GB of UTF-8 text, in files of --file-mb MB: paragraphs of lines drawn with a fixed seed from
the embedded Shakespeare corpus, written once under --work and reused) and each layout of that text
(--layouts: `paragraph`, a blank line between paragraphs; `lines`, one line a row with no blank line, so each
file is one document under data.documents: paragraph; `line`, each file one line):
    cold   `bertmath pretrain configs/small.yaml` with data.source text, data.tokenizer given (an 8,192-WordPiece
           vocabulary trained once on the embedded corpus), train.max_steps 2, a new out_dir and cache_dir:
           the whole preparation, then two steps. Its MB/s: S over the "data: prepared in T s" it logs.
    warm   the same command into another new out_dir, pointed at the first run's data.cache_dir.
    tokenizers alone: Tokenizer.encode_batch (and encode_batch_fast) on the same files' paragraphs, in batches
           of 10,000 documents, only the encode calls timed (the first --baseline-mb MB of the corpus).
    run_mlm.py-style (--run-mlm): datasets.load_dataset("text", data_files=...) (a row per line), a batched
           map tokenising with num_proc = the cores, a map grouping the ids into 128-token blocks, as
           transformers' examples/pytorch/language-modeling/run_mlm.py prepares data; a fresh datasets cache.
Memory: every 0.2 s, the sum over the command's whole process tree (itself and every descendant) of
/proc/PID/smaps_rollup's Pss_Anon + Pss_Shmem (anonymous: heap, Python objects; what cannot be given back)
and of Pss (with the file pages of memory-mapped files, which the kernel drops at will); the peaks.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")


# --- memory of a process tree -----------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/*/stat's parent ids."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def tree_memory(pid: int) -> tuple[int, int]:
    """(Pss_Anon + Pss_Shmem, Pss) in bytes, summed over the process tree of `pid`."""
    anonymous = total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line and not line[0].isdigit())
        except OSError:
            continue  # gone meanwhile
        kb = {k: int(v.split()[0]) for k, v in fields.items() if v.strip().endswith("kB")}
        anonymous += (kb.get("Pss_Anon", 0) + kb.get("Pss_Shmem", 0)) * 1024
        total += kb.get("Pss", 0) * 1024
    return anonymous, total


def run_measured(command: list[str], env: dict | None = None, period: float = 0.2) -> dict:
    """Run `command`; its wall time, exit status, output, and the peaks of its tree's memory."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    peaks = [0, 0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            anonymous, total = tree_memory(process.pid)
            peaks[0], peaks[1] = max(peaks[0], anonymous), max(peaks[1], total)
            done.wait(period)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    done.set()
    sampler.join()
    return {"command": command, "returncode": process.returncode, "wall_s": time.perf_counter() - started,
            "peak_anon_gb": peaks[0] / 1e9, "peak_pss_gb": peaks[1] / 1e9, "stdout": out, "stderr": err}


# --- a synthetic corpus ------------------------------------------------------------------------------


def shakespeare_lines() -> list[str]:
    resource = importlib.resources.files("bertmath").joinpath("corpus/shakespeare.jsonl.gz")
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        works = [json.loads(line)["text"] for line in f if line.strip()]
    return [line.strip() for work in works for line in work.splitlines() if len(line.strip()) > 20]


LAYOUTS = {"paragraph": ("\n", "\n\n"), "lines": ("\n", "\n"), "line": (" ", " ")}  # (within, between) paragraphs


def write_corpus(directory: Path, gigabytes: float, file_mb: float, seed: int = 0, layout: str = "paragraph"
                 ) -> list[Path]:
    """Files of about file_mb MB, gigabytes GB in all: paragraphs of 2 to 11 random corpus lines, laid out as
    `layout` says (LAYOUTS: the same text but for the separators). Written once: a directory holding a
    matching manifest is reused."""
    manifest = directory / "manifest.json"
    wanted = {"gigabytes": gigabytes, "file_mb": file_mb, "seed": seed} | \
        ({"layout": layout} if layout != "paragraph" else {})
    within, between = LAYOUTS[layout]
    count = max(1, round(gigabytes * 1000 / file_mb))
    files = [directory / f"part-{i:05d}.txt" for i in range(count)]
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted and all(f.is_file() for f in files):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    lines = shakespeare_lines()
    rng = random.Random(seed)
    target = gigabytes * 1e9 / count
    for path in files:
        size, paragraphs = 0, []
        while size < target:
            paragraph = within.join(rng.choices(lines, k=rng.randint(2, 11)))
            paragraphs.append(paragraph)
            size += len(paragraph) + 2
        path.write_text(between.join(paragraphs) + "\n", encoding="utf-8")
    manifest.write_text(json.dumps(wanted))
    return files


def corpus_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def paragraphs(files: list[Path], limit_bytes: int):
    """Batches of 10,000 paragraphs of the files, in order, up to about limit_bytes."""
    seen, batch = 0, []
    for path in files:
        for paragraph in PARAGRAPH.split(path.read_text(encoding="utf-8")):
            paragraph = paragraph.strip()
            if paragraph:
                batch.append(paragraph)
                seen += len(paragraph.encode()) + 2
                if len(batch) == 10_000:
                    yield batch
                    batch = []
            if seen >= limit_bytes:
                break
        if seen >= limit_bytes:
            break
    if batch:
        yield batch


# --- the measurements --------------------------------------------------------------------------------


def tokenizer_file(work: Path) -> Path:
    """An 8,192-WordPiece vocabulary trained once on the embedded corpus (configs/small.yaml's)."""
    path = work / "tokenizer-8192.json"
    if not path.is_file():
        from bertmath.config import load_config
        from bertmath.data import train_corpus_tokenizer

        tokenizer, _ = train_corpus_tokenizer(load_config(REPO / "configs" / "small.yaml"))
        tokenizer.save(str(path))
    return path


def tokenizers_alone(tokenizer_path: Path, files: list[Path], limit_bytes: int) -> dict:
    """MB/s of encode_batch and encode_batch_fast on the files' paragraphs (encode calls only, on every core)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    rates = {}
    for method in ("encode_batch", "encode_batch_fast"):
        encode = getattr(tokenizer, method)
        seconds = text = 0
        for batch in paragraphs(files, limit_bytes):
            started = time.perf_counter()
            encode(batch, add_special_tokens=False)
            seconds += time.perf_counter() - started
            text += sum(len(p.encode()) for p in batch)
        rates[method] = text / 1e6 / seconds
    rates["text_mb"] = text / 1e6
    return rates


def pretrain_command(files_glob: str, tokenizer_path: Path, out_dir: Path, cache_dir: Path, steps: int,
                     extra: list[str] = ()) -> list[str]:
    sets = {"data.source": "text", "data.paths": files_glob, "data.tokenizer": str(tokenizer_path),
            "data.cache_dir": str(cache_dir), "train.out_dir": str(out_dir), "train.max_steps": steps,
            "train.plot": "false"}
    return [sys.executable, "-m", "bertmath", "pretrain", str(REPO / "configs" / "small.yaml")] + \
        [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")] + \
        [arg for setting in extra for arg in ("--set", setting)]


def prepared_seconds(stderr: str) -> float | None:
    match = re.search(r"data: prepared in ([\d.]+) s", stderr)
    return float(match.group(1)) if match else None


RUN_MLM_STYLE = r'''
import sys, datasets
from tokenizers import Tokenizer
files, tokenizer_path, cache, num_proc = sys.argv[1].split(","), sys.argv[2], sys.argv[3], int(sys.argv[4])
tokenizer = Tokenizer.from_file(tokenizer_path)
tokenizer.no_truncation()

def tokenize(batch):
    return {"input_ids": [e.ids for e in tokenizer.encode_batch(batch["text"], add_special_tokens=False)]}

def group(batch, size=126):
    ids = [i for row in batch["input_ids"] for i in row]
    return {"input_ids": [ids[k:k + size] for k in range(0, len(ids) - size + 1, size)]}

lines = datasets.load_dataset("text", data_files=files, split="train", cache_dir=cache)
tokens = lines.map(tokenize, batched=True, num_proc=num_proc, remove_columns=["text"])
blocks = tokens.map(group, batched=True, num_proc=num_proc)
print(len(blocks), "blocks")
'''


def measure_size(gigabytes: float, args, tokenizer_path: Path, layout: str = "paragraph") -> dict:
    name = f"{gigabytes:g}gb" + (f"-{layout}" if layout != "paragraph" else "")
    files = write_corpus(args.work / f"corpus-{name}", gigabytes, args.file_mb, layout=layout)
    size_mb = corpus_bytes(files) / 1e6
    files_glob = str(files[0].parent / "part-*.txt")
    runs = Path(tempfile.mkdtemp(prefix=f"runs-{name}-", dir=args.work))
    row = {"gigabytes": gigabytes, "layout": layout, "text_mb": size_mb, "files": len(files)}
    cold = run_measured(pretrain_command(files_glob, tokenizer_path, runs / "cold", runs / "cache", args.steps, args.set))
    if cold["returncode"]:
        raise SystemExit(f"cold run failed:\n{cold['stderr'][-3000:]}")
    seconds = prepared_seconds(cold["stderr"])
    row["cold"] = {k: cold[k] for k in ("wall_s", "peak_anon_gb", "peak_pss_gb")} | {
        "prepare_s": seconds, "prepare_mb_per_s": size_mb / seconds if seconds else None}
    if args.warm:
        warm = run_measured(pretrain_command(files_glob, tokenizer_path, runs / "warm", runs / "cache", args.steps,
                                             args.set))
        if warm["returncode"]:
            raise SystemExit(f"warm run failed:\n{warm['stderr'][-3000:]}")
        row["warm"] = {k: warm[k] for k in ("wall_s", "peak_anon_gb", "peak_pss_gb")} | {
            "prepare_s": prepared_seconds(warm["stderr"])}
    if args.baseline and layout == "paragraph":  # the encode calls take a document at a time: paragraphs only
        row["tokenizers_alone"] = tokenizers_alone(tokenizer_path, files, int(args.baseline_mb * 1e6))
        if seconds:
            row["ratio_to_encode_batch"] = row["cold"]["prepare_mb_per_s"] / row["tokenizers_alone"]["encode_batch"]
            row["ratio_to_encode_batch_fast"] = \
                row["cold"]["prepare_mb_per_s"] / row["tokenizers_alone"]["encode_batch_fast"]
    if args.run_mlm:
        cores = len(os.sched_getaffinity(0))
        mlm = run_measured([sys.executable, "-c", RUN_MLM_STYLE, ",".join(map(str, files)), str(tokenizer_path),
                            str(runs / "hf-cache"), str(cores)])
        if mlm["returncode"]:
            raise SystemExit(f"run_mlm-style preparation failed:\n{mlm['stderr'][-3000:]}")
        row["run_mlm_style"] = {k: mlm[k] for k in ("wall_s", "peak_anon_gb", "peak_pss_gb")} | {
            "mb_per_s": size_mb / mlm["wall_s"]}
    if not args.keep:
        subprocess.run(["rm", "-rf", str(runs)], check=False)
    return row


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    wanted = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return " ".join(wanted) or "no avx2"


def table(report: dict) -> str:
    lines = ["| text | files | cold: wall | cold: prepare MB/s | cold: peak anon / with files | warm: wall (data ready) | "
             "warm: peak anon / with files | tokenizers alone MB/s (encode_batch / _fast) | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        cold, warm, alone = r["cold"], r.get("warm"), r.get("tokenizers_alone")
        layout = f" ({r['layout']})" if r.get("layout", "paragraph") != "paragraph" else ""
        lines.append(
            f"| {r['text_mb'] / 1000:.2f} GB{layout} | {r['files']} | {cold['wall_s']:.0f} s | "
            f"{cold['prepare_mb_per_s'] or 0:.2f} | {cold['peak_anon_gb']:.2f} / {cold['peak_pss_gb']:.2f} GB | "
            + (f"{warm['wall_s']:.1f} s ({warm['prepare_s']:.1f} s) | {warm['peak_anon_gb']:.2f} / "
               f"{warm['peak_pss_gb']:.2f} GB | " if warm else "– | – | ")
            + (f"{alone['encode_batch']:.2f} / {alone['encode_batch_fast']:.2f} | "
               f"{r['ratio_to_encode_batch']:.2f} / {r['ratio_to_encode_batch_fast']:.2f} |" if alone else "– | – |"))
    for r in report["rows"]:
        if "run_mlm_style" in r:
            m = r["run_mlm_style"]
            lines.append(f"\nrun_mlm.py-style at {r['text_mb'] / 1000:.2f} GB: {m['wall_s']:.0f} s "
                         f"({m['mb_per_s']:.2f} MB/s), peak anon {m['peak_anon_gb']:.2f} GB, with files "
                         f"{m['peak_pss_gb']:.2f} GB")
    for r in (r for r in report["rows"] if r.get("layout", "paragraph") != "paragraph"):
        reference = next((p for p in report["rows"] if p.get("layout", "paragraph") == "paragraph"
                          and p.get("gigabytes") == r["gigabytes"]), None)
        if reference:
            lines.append(f"\n{r['layout']} at {r['text_mb'] / 1000:.2f} GB: cold peak anon "
                         f"{r['cold']['peak_anon_gb'] / reference['cold']['peak_anon_gb']:.3f}x the paragraph "
                         "layout's")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[0.4, 1.2], help="corpus sizes in GB")
    p.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=["paragraph"],
                   help="how the text is laid out (each size is measured in each)")
    p.add_argument("--file-mb", type=float, default=50.0, help="size of each corpus file (MB)")
    p.add_argument("--work", type=Path, default=Path("data/bench_data"), help="where corpora and runs go")
    p.add_argument("--steps", type=int, default=2, help="train.max_steps of each pretrain run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another --set for each pretrain run (repeatable), e.g. train.eval_batches=1")
    p.add_argument("--baseline-mb", type=float, default=400.0, help="text the tokenizers-alone rate reads (MB)")
    p.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm run")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip tokenizers alone")
    p.add_argument("--run-mlm", action="store_true", help="also the run_mlm.py-style preparation")
    p.add_argument("--keep", action="store_true", help="keep the run directories and caches")
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer_path = tokenizer_file(args.work)
    report = {"cpu": cpu_flags(), "cores": len(os.sched_getaffinity(0)), "command": " ".join(sys.argv),
              "rows": [measure_size(size, args, tokenizer_path, layout) for size in args.sizes
                       for layout in args.layouts]}
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
