#!/usr/bin/env bash
# ansible-test sanity on this collection. ansible-test wants the collection at
# .../ansible_collections/ops/runbooks, so copy the files git knows (tracked or new, not
# ignored) into such a tree in a temp dir and run it there. Extra args go to ansible-test.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath "${VENV:-$PWD/.venv}")
tree=${SANITY_TREE:-/tmp/ops-runbooks-sanity}
dest="$tree/ansible_collections/ops/runbooks"
rm -rf "$dest" && mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | rsync -a --from0 --files-from=- ./ "$dest/"
cd "$dest"
PATH="$VENV/bin:$PATH" exec ansible-test sanity --venv --python "$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" --color no "$@"
