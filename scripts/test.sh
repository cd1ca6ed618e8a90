#!/usr/bin/env bash
# The whole test suite, as CI runs it: deps, lab up, lint, sanity, unit + integration tests
# on real services, lab down. Every step runs even if an earlier one failed; the exit code
# says whether all passed. Timings of each step are printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export VENV=${VENV:-$PWD/.venv} VENV_NEWEST=${VENV_NEWEST:-$PWD/.venv-newest}
export PATH="$VENV/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
log_dir=${TEST_LOG_DIR:-/tmp/ops-runbooks-test-logs}
mkdir -p "$log_dir"
failed=()
timings=()

step() {  # step NAME COMMAND...
  local name=$1; shift
  local start=$SECONDS
  echo "=== $name: $*"
  "$@"
  local rc=$?
  case $name in pytest|unit-new) [ $rc -eq 5 ] && { echo "pytest collected no test"; rc=0; } ;; esac
  timings+=("$(printf '%-12s %4ss  rc=%s' "$name" $((SECONDS - start)) "$rc")")
  ((rc == 0)) || failed+=("$name")
  return 0
}

step deps bash scripts/install-deps.sh
if [ ${#failed[@]} -ne 0 ]; then echo "installing dependencies failed"; exit 1; fi
step lab-up python -m lab up
step ruff ruff check .
step ansible-lint ansible-lint
step sanity bash scripts/sanity.sh
step sanity-new env VENV="$VENV_NEWEST" SANITY_TREE=/tmp/ops-runbooks-sanity-newest bash scripts/sanity.sh
step unit-new "$VENV_NEWEST/bin/python" -m pytest -q tests/unit
step molecule bash scripts/molecule.sh
step pytest bash -c "python -m pytest -n 2 --dist loadfile 2>&1 | tee '$log_dir/pytest.log'; exit \${PIPESTATUS[0]}"
step lab-down python -m lab down

echo "=== timings"
printf '%s\n' "${timings[@]}"
summary=$(grep -E '^=+ .*(passed|failed|error|no tests ran).* =+$' "$log_dir/pytest.log" | tail -n 1)
if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  echo "$summary"
  exit 1
fi
echo "all steps passed"
echo "$summary"
