#!/usr/bin/env bash
# Regenerate constraints/ci.txt, the exact set of versions .ci/run installs: scripts/check_latest.sh builds a fresh
# venv with the newest versions pyproject.toml allows (torch==2.13.0 first), runs the whole suite, and only if it
# passed writes `pip freeze` there. Run it on purpose (after changing a dependency range, or to move CI to newer
# releases), read `git diff constraints/ci.txt`, and commit it with the suite's closing line. CI never runs it.
#
#   scripts/update_constraints.sh            # Python = python3; the file is meant for CI's Python, 3.11
#   scripts/update_constraints.sh -x         # arguments go to pytest
set -euo pipefail

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [[ $minor != 3.11 ]]; then
  echo "update_constraints: $python is Python $minor; CI runs 3.11 (set PYTHON=python3.11)" >&2
  exit 2
fi
FREEZE=constraints/ci.txt PYTHON=$python exec scripts/check_latest.sh "$@"
