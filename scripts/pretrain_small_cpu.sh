#!/usr/bin/env bash
# The CPU demo: pretrain the small BERT of configs/small.yaml (4 layers, 128 wide, rope, 8192 WordPieces) with masked-
# language modelling on the Shakespeare corpus that ships inside the package (no download, no GPU; about
# 10 minutes on 2 CPU cores), then let the checkpoint fill a few masked Shakespeare lines.
#
#   scripts/pretrain_small_cpu.sh                                     # the full demo
#   scripts/pretrain_small_cpu.sh --set train.max_steps=100           # a quick look
#   scripts/pretrain_small_cpu.sh --set train.out_dir=/tmp/small      # elsewhere (fill-mask follows it)
#   scripts/pretrain_small_cpu.sh --resume                            # continue a stopped run
#
# Every argument goes to `bertmath pretrain configs/small.yaml` (repeat --set KEY=VALUE as needed). A run
# directory that already holds checkpoints is resumed (train.resume: auto); delete it to start afresh.
# Outputs in train.out_dir (default checkpoints/small): step-*/ checkpoints, metrics.jsonl, summary.json and,
# when matplotlib is installed (pip install 'bertmath[plot]'), training.png with the training curves.
# PYTHON picks the interpreter (default: python).
set -euo pipefail

cd "$(dirname "$0")/.."
python=${PYTHON:-python}

out_dir=checkpoints/small  # configs/small.yaml's train.out_dir, unless an override says otherwise
for arg in "$@"; do
  case $arg in
    train.out_dir=* | --set=train.out_dir=*) out_dir=${arg#*train.out_dir=} ;;
  esac
done

"$python" -m bertmath pretrain configs/small.yaml "$@"

echo
echo "== fill-mask with $out_dir =="
"$python" -m bertmath fill-mask "$out_dir" --top-k 3 \
  "To be, or not to be: that is the [MASK]." \
  "O Romeo, Romeo! wherefore art thou [MASK]?" \
  "All the world's a [MASK], and all the men and women merely players." \
  "Now is the winter of our [MASK] made glorious summer by this sun of York." \
  "Friends, Romans, countrymen, lend me your [MASK]."

if [[ -f $out_dir/training.png ]]; then
  echo
  echo "training curves: $out_dir/training.png"
fi
