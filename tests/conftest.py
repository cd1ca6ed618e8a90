"""Shared pytest setup: import paths and the lab fixtures.

The lab fixtures start real services through `lab.control.up` (idempotent, locked, so
pytest-xdist workers share one lab) and never stop them: `python -m lab down` (run by
`make test` at the end) does. Reusing a running lab keeps the edit-test loop fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Tests import the collection as `ansible_collections.ops.runbooks...`: expose this checkout
# under that name through a symlink in a temp dir (no symlink inside the checkout).
from lab import control, core  # noqa: E402  (needs the path above)

_COLLECTIONS = core.collection_path()
sys.path.insert(0, str(_COLLECTIONS))


def _part(name: str) -> dict:
    return control.up([name], quiet=True)[name]


@pytest.fixture(scope="session")
def lab_state() -> dict:
    """The whole lab, started if needed; also writes inventories/lab/."""
    return control.up(quiet=True)


@pytest.fixture(scope="session")
def pg_lab() -> dict:
    """{"primary": {...}, "standby": {...}} each with host, port, user, password, dbname, socket_dir."""
    return _part("postgres")


@pytest.fixture(scope="session")
def redis_lab() -> dict:
    """{"standalone": {host, port, password}, "cluster": {"nodes": [{host, port}, ...]}}."""
    return _part("redis")


@pytest.fixture(scope="session")
def docker_lab() -> dict:
    return _part("docker")


@pytest.fixture(scope="session")
def compose_lab() -> dict:
    return _part("compose")


@pytest.fixture(scope="session")
def droplets_lab() -> dict:
    return _part("droplets")


@pytest.fixture(scope="session")
def hostapp_lab() -> dict:
    return _part("hostapp")


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The bin/ folder of the Python running the tests (ansible, ansible-playbook live there)."""
    return Path(sys.executable).parent


@pytest.fixture(scope="session")
def ansible_env() -> dict:
    """Environment for ansible-* commands: this checkout as ops.runbooks, plain output."""
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(_COLLECTIONS), ANSIBLE_NOCOLOR="1",
                ANSIBLE_FORCE_COLOR="0", ANSIBLE_DEPRECATION_WARNINGS="0")
