"""Write pair files for `task.kind: embedding` from task files already on disk (a recipe; offline).

    python scripts/get_tasks.py       # data/tasks/stsb/{train,dev,test}.jsonl (scored pairs)
    python scripts/make_pairs.py      # the pair files below

Output (jsonl, one pair per line, {"anchor", "positive"}):
  data/tasks/stsb/pairs_{train,dev,test}.jsonl   STS-B pairs scored >= --min-score (4 of 5: near paraphrases)
  data/tasks/qa_pairs/{train,dev}.jsonl          each answerable question of tests/fixtures/qa_{train,dev}.json
                                                 and its passage: as an eval file, retrieval of the passage
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bertmath.tasks.qa import read_squad

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def write_jsonl(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=Path("data/tasks"), help="scripts/get_tasks.py's output")
    parser.add_argument("--min-score", type=float, default=4.0, help="STS-B pairs scored at least this are pairs")
    parser.add_argument("--qa", type=Path, default=FIXTURES, help="folder of qa_train.json and qa_dev.json")
    args = parser.parse_args(argv)
    counts = {}
    for split in ("train", "dev", "test"):
        source = args.tasks / "stsb" / f"{split}.jsonl"
        if source.is_file():
            rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
            counts[f"stsb/pairs_{split}"] = write_jsonl(args.tasks / "stsb" / f"pairs_{split}.jsonl", [
                {"anchor": r["sentence1"], "positive": r["sentence2"]} for r in rows if r["score"] >= args.min_score])
    for split in ("train", "dev"):
        questions = [q for q in read_squad(args.qa / f"qa_{split}.json").questions if not q.is_impossible]
        counts[f"qa_pairs/{split}"] = write_jsonl(args.tasks / "qa_pairs" / f"{split}.jsonl", [
            {"anchor": q.question, "positive": q.context} for q in questions])
    for name, n in counts.items():
        print(f"{args.tasks / name}.jsonl: {n:,} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
