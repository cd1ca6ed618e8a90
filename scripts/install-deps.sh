#!/usr/bin/env bash
# Install everything `make test` / `make demo` need on a fresh Debian bookworm machine (as root).
# Idempotent and quick when everything is already there: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
VENV_NEWEST=${VENV_NEWEST:-$REPO/.venv-newest}
say() { printf '[deps] %s\n' "$*" >&2; }

# 1. Debian packages: real services and tools the lab and sanity tests use.
APT_PACKAGES=(postgresql-15 postgresql-contrib redis-server redis-tools docker.io nginx-light
              debootstrap busybox-static shellcheck locales openssh-client curl rsync)
missing=()
# Node.js may come from elsewhere (e.g. NodeSource); only take Debian's when there is none.
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages start nothing here (no systemd), and the lab never uses system services.

# 2. en_US.UTF-8 locale: ansible-test sanity needs it.
if ! locale -a 2>/dev/null | grep -qi '^en_US.utf8$'; then
  say "generating en_US.UTF-8 locale"
  sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
  grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
  locale-gen >/dev/null
fi

# 3. Two venvs (each rebuilt only when its requirements change): the main one on the
#    machine's Python (ansible-core 2.19 on 3.11) and one on Python 3.12 with the newest
#    ansible-core, for sanity and unit tests against the newest release we can get.
make_venv() {  # make_venv DIR PYTHON REQUIREMENTS
  local dir=$1 python=$2 reqs=$3 want
  want=$(cat requirements.txt "$reqs" | sha256sum | cut -d' ' -f1)
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    say "creating venv $dir ($("$python" --version))"
    "$python" -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check --upgrade pip
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$reqs"
    echo "$want" > "$dir/.requirements.sha256"
  fi
}
make_venv "$VENV" python3 requirements-dev.txt
NEWEST_PYTHON=
for candidate in /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
  if [ -x "$candidate" ] && "$candidate" -c 'import venv' 2>/dev/null; then NEWEST_PYTHON=$candidate; fi
done
[ -n "$NEWEST_PYTHON" ] || { say "no python3.12 found: the newest ansible-core needs it"; exit 1; }
make_venv "$VENV_NEWEST" "$NEWEST_PYTHON" requirements-newest.txt

# 4. PM2 on the host (npm registry).
if ! command -v pm2 >/dev/null; then
  say "npm install -g pm2"
  npm install -g --no-fund --no-audit pm2 >/dev/null
fi

# 5. ansible-test bootstraps pip with a get-pip script from a host we cannot reach: seed its
#    cache with a stand-in that installs pip from the PyPI wheel kept beside it.
seed_ansible_test() {  # seed_ansible_test VENV
  local venv=$1 pip_version cache=~/.ansible/test/cache seed
  pip_version=$(grep -oP "pip='\K[0-9.]+" "$("$venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py")
  seed="$cache/get_pip_${pip_version//./_}.py"
  if grep -q no-setuptools "$seed" 2>/dev/null && ls "$cache"/pip-"$pip_version"-*.whl >/dev/null 2>&1; then
    return
  fi
  say "seeding ansible-test's pip $pip_version bootstrap"
  mkdir -p "$cache"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$cache" "pip==$pip_version"
  cat > "$seed" <<PY
"""Offline stand-in for get-pip.py: install pip from the wheel beside this file."""
import glob, os, sys
wheel = glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip-$pip_version-*.whl"))[0]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main
# get-pip.py options that pip install does not know
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", *args]))
PY
}
seed_ansible_test "$VENV"
seed_ansible_test "$VENV_NEWEST"

# 6. Collections molecule's docker driver needs (community.docker, ansible.posix) cannot come
#    from Galaxy here: take them from the `ansible` package's wheel (on PyPI) without
#    installing it, into .ansible/vendor_collections (gitignored).
vendor=$REPO/.ansible/vendor_collections
if [ ! -d "$vendor/ansible_collections/community/docker" ] || [ ! -d "$vendor/ansible_collections/ansible/posix" ]; then
  say "vendoring community.docker and ansible.posix from the ansible wheel"
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" 'ansible>=12,<13'
  "$VENV/bin/python" - "$tmp"/ansible-*.whl "$vendor" <<'PY'
import sys
import zipfile

wheel, dest = sys.argv[1:3]
wanted = ("ansible_collections/community/docker/", "ansible_collections/ansible/posix/")
with zipfile.ZipFile(wheel) as archive:
    archive.extractall(dest, [name for name in archive.namelist() if name.startswith(wanted)])
PY
  rm -rf "$tmp"
fi

# 7. Make this checkout the installed ops.runbooks collection (a symlink, so edits are live).
link=~/.ansible/collections/ansible_collections/ops/runbooks
if [ "$(readlink -f "$link" 2>/dev/null)" != "$REPO" ]; then
  say "linking $link -> $REPO"
  mkdir -p "$(dirname "$link")"
  ln -sfn "$REPO" "$link"
fi

# The lab app's node_modules: `python -m lab up` installs them (lab/core.py), where they are used.
say "ready"
