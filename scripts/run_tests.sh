#!/usr/bin/env bash
# Run pytest; "no tests collected" (exit 5) is a failure, not a success.
set -uo pipefail
PY=${1:?usage: run_tests.sh PYTHON [pytest args]}
shift
"$PY" -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
