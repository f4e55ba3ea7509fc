#!/usr/bin/env bash
# Set everything up, lint, and run the whole test suite. Fails when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
set +e
# one process per core, each with one torch thread: the known-answer optimisations run side by side with the
# service tests' waits instead of two threads sharing each small step; a file's tests stay on one worker
# so module fixtures (a Ray cluster, a running service) start once
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
python -m pytest -n "${LATENTFORGE_TEST_WORKERS:-auto}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
