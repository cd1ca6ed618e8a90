#!/usr/bin/env bash
# `molecule test` for every role that has scenarios (roles/*/molecule/*), on the lab's
# locally built images. Needs the lab up (`python -m lab up`): the dr scenario uses its PostgreSQL,
# Redis and the droplet release archives.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
export PATH="${VENV:-$REPO/.venv}/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$HOME/.ansible/collections:$REPO/.ansible/vendor_collections"
rc=0
for scenario_dir in roles/*/molecule/*/; do
  role_dir=${scenario_dir%/molecule/*}
  scenario=$(basename "$scenario_dir")
  echo "--- molecule test: $role_dir ($scenario)"
  (cd "$role_dir" && molecule test --scenario-name "$scenario") || rc=1
done
exit $rc
