#!/usr/bin/env bash
# Smoke test on one Python: does bertmath install and work on this interpreter?
#
#   scripts/smoke.sh                    # python3
#   scripts/smoke.sh python3.12         # or a path: scripts/smoke.sh ~/.pyenv/versions/3.13.0/bin/python
#   VENV=/tmp/venv-3.12 scripts/smoke.sh python3.12   # build (or reuse) that venv and keep it
#
# A fresh venv (a temporary one, removed at the end, unless VENV names one) gets torch==2.13.0 first: pip takes a
# CPU wheel where its find-links hold one for this Python, otherwise PyPI's CUDA build (a ~530 MB wheel plus ~3 GB
# of nvidia-* / cuda-* packages; it runs on the CPU all the same). Then bertmath with its test extra, installed as a
# wheel (not editable: this also checks the packaging, the embedded corpus included), and, from outside the
# checkout, what a user runs first:
#   bertmath params configs/base.yaml            (BERT-base's 109,514,298 parameters)
#   bertmath pretrain configs/small.yaml         (5 steps on 500 documents of the embedded corpus, vocabulary 1000)
#   bertmath fill-mask RUN "... [MASK] ..."      (on the checkpoint just written)
#   bertmath export RUN OUT                      (and transformers' fill-mask pipeline loads OUT)
# and last the tests marked `smoke` (pytest -m smoke: one or a few per module, seconds).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
python=${1:-python3}

work=$(mktemp -d "${TMPDIR:-/tmp}/bertmath-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
venv=${VENV:-$work/venv}
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
py=$venv/bin/python
pip=("$py" -m pip install --quiet --disable-pip-version-check)
version=$("$py" -c 'import platform; print(platform.python_version())')
echo "== smoke: Python $version ($python), venv $venv"

"${pip[@]}" torch==2.13.0
"${pip[@]}" "$repo[test]"
"$py" -c 'import torch, transformers, datasets, tokenizers; print("torch", torch.__version__, "| transformers",
transformers.__version__, "| datasets", datasets.__version__, "| tokenizers", tokenizers.__version__)'

cd "$work"  # from here on `import bertmath` is the installed wheel, not the checkout
"$py" -c 'import bertmath, sys; assert "site-packages" in bertmath.__file__, bertmath.__file__'
bertmath=$venv/bin/bertmath

echo "== bertmath params configs/base.yaml"
"$bertmath" params "$repo/configs/base.yaml" | tee params.txt | tail -3
grep -q "109,514,298" params.txt

echo "== bertmath pretrain configs/small.yaml (5 steps)"
"$bertmath" pretrain "$repo/configs/small.yaml" --set train.out_dir="$work/run" --set train.max_steps=5 \
  --set train.warmup_steps=2 --set train.batch_size=8 --set train.eval_every=5 --set train.eval_batches=2 \
  --set train.save_every=5 --set data.max_documents=500 \
  --set data.eval_fraction=0.1 --set model.vocab_size=1000 2>&1 | tail -2
test -f "$work/run/model.safetensors"

echo "== bertmath fill-mask"
"$bertmath" fill-mask "$work/run" --top-k 3 "to be or not to be, that is the [MASK]."

echo "== bertmath export"
"$bertmath" export "$work/run" "$work/exported"
"$py" - "$work/exported" <<'EOF'
import sys
import transformers
transformers.logging.set_verbosity_error()
out = transformers.pipeline("fill-mask", model=sys.argv[1], device="cpu")("to be or not to [MASK].", top_k=2)
assert len(out) == 2 and all("token_str" in d for d in out), out
print("transformers' fill-mask pipeline loads the export:", [d["token_str"] for d in out])
EOF

echo "== pytest -m smoke"
"$venv/bin/pytest" -q -p no:cacheprovider -m smoke "$repo/tests"
echo "smoke: passed on Python $version"
