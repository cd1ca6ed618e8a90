"""`python -m lab up` is idempotent and `down` leaves no process, port or folder behind.

Runs a second, private lab (its own OPS_LAB_DIR) of the process-based parts so the shared
lab the other tests use is not disturbed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = ["postgres", "redis", "hostapp"]


def _lab(base, *args, check=True):
    env = dict(os.environ, OPS_LAB_DIR=str(base / "lab"), OPS_LAB_INVENTORY=str(base / "inventory"))
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=check, timeout=600)


def _compose_containers(project: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True, check=True).stdout.split()


def test_up_twice_then_down_leaves_nothing(compose_lab, droplets_lab):
    shared = {"compose": _compose_containers(compose_lab["project_name"]),
              "droplets": [host["container"] for host in droplets_lab["hosts"]]}
    assert shared["compose"] and shared["droplets"]
    # not pytest's tmp_path: PostgreSQL runs as `postgres` and needs every parent traversable
    tmp_path = Path(tempfile.mkdtemp(prefix="ops-lab-lifecycle-"))
    tmp_path.chmod(0o755)
    lab_dir = tmp_path / "lab"
    _lab(tmp_path, "up", *PARTS)
    state = json.loads((lab_dir / "state.json").read_text())
    first = (state["postgres"]["primary"]["port"], state["redis"]["standalone"]["port"],
             state["hostapp"]["nginx_port"])

    _lab(tmp_path, "up", *PARTS)  # second `up` reuses what runs
    state = json.loads((lab_dir / "state.json").read_text())
    assert (state["postgres"]["primary"]["port"], state["redis"]["standalone"]["port"],
            state["hostapp"]["nginx_port"]) == first

    status = json.loads(_lab(tmp_path, "status", check=False).stdout)
    assert all(status[part]["ok"] for part in PARTS), status

    down = _lab(tmp_path, "down", check=False)
    assert down.returncode == 0, down.stderr  # `down` itself fails when anything is left
    assert not lab_dir.exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(lab_dir) not in ps
    shutil.rmtree(tmp_path)

    # the private lab's `down` left the shared lab's containers alone
    assert _compose_containers(compose_lab["project_name"]) == shared["compose"]
    running = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert set(shared["droplets"]) <= set(running), running
