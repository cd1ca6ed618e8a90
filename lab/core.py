"""Shared plumbing of the local lab: state file, ports, commands, waiting.

Every part of the lab (postgres, redis, docker, droplets, pm2, nginx) is a module in
this package with three functions:

    up(state: dict) -> dict      start it (idempotent) and return its state entry
    down(entry: dict) -> None    stop it and remove everything it created
    status(entry: dict) -> dict  {"ok": bool, ...details}

`lab/__main__.py` calls them in order and keeps their entries in one JSON state file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "lab" / "app"  # the lab app every platform runs
LAB_DIR = Path(os.environ.get("OPS_LAB_DIR", "/tmp/ops-runbooks-lab"))
STATE_FILE = LAB_DIR / "state.json"
LABEL = "ops.runbooks.lab"  # docker label key put on every container/image/network we create
HOST = "127.0.0.1"


class LabError(Exception):
    """A lab part could not be started or stopped; the message says what to do."""


def collection_path() -> Path:
    """A folder in which this checkout is `ansible_collections/ops/runbooks` (a symlink), for
    sys.path and ANSIBLE_COLLECTIONS_PATH: one per checkout (OPS_TEST_COLLECTIONS overrides),
    made or repaired on first use. The tests and the benchmarks share it."""
    base = Path(os.environ.get(
        "OPS_TEST_COLLECTIONS",
        f"/tmp/ops-runbooks-pythonpath-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}",
    ))
    link = base / "ansible_collections" / "ops" / "runbooks"
    if not link.exists() or link.resolve() != REPO:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(REPO)
    return base


def run(cmd, check=True, env=None, cwd=None, input=None, timeout=600, user=None):
    """Run a command (list), capture text output; raise LabError with stderr on failure."""
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update({k: str(v) for k, v in env.items()})
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, env=full_env,
            cwd=cwd, input=input, timeout=timeout, check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {cmd[0]} (run `make deps` first)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout}s: {' '.join(map(str, cmd))}") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed (rc={proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def reserve_port(*ports: int) -> None:
    """Never hand these out: they belong to something that does not listen yet."""
    _handed_out.update(ports)


def free_port(low: int = 20000, high: int = 55000) -> int:
    """A free loopback port in [low, high); never the same one twice in a process.

    The upper bound keeps port+10000 (Redis cluster bus) below 65535.
    """
    for _attempt in range(500):
        port = random.randrange(low, high)  # noqa: S311 - spreading ports, not a secret
        if port in _handed_out or not port_is_free(port) or not port_is_free(port + 10000):
            continue
        _handed_out.add(port)
        return port
    raise LabError("no free loopback port found")


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60, interval: float = 0.2):
    """Poll predicate until truthy; return its value or raise LabError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        time.sleep(interval)
    detail = f" (last error: {last_exc})" if last_exc else ""
    raise LabError(f"timed out after {timeout}s waiting for {what}{detail}")


def wait_port(port: int, what: str, timeout: float = 60, host: str = HOST) -> None:
    wait_for(lambda: port_open(port, host), f"{what} on {host}:{port}", timeout)


def pid_alive(pid) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_pid(*pids, timeout: float = 15) -> None:
    """SIGTERM every live pid at once, wait for all, then SIGKILL the stragglers."""
    live = [int(p) for p in pids if pid_alive(p)]
    for pid in live:
        os.kill(pid, 15)
    try:
        wait_for(lambda: not any(pid_alive(p) for p in live), f"pids {live} to exit", timeout, 0.05)
    except LabError:
        for pid in live:
            if pid_alive(pid):
                os.kill(pid, 9)


def load_state() -> dict:
    if STATE_FILE.exists():
        return json.loads(STATE_FILE.read_text())
    return {}


def save_state(state: dict) -> None:
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(STATE_FILE)


def part_dir(name: str) -> Path:
    """A directory for one lab part under LAB_DIR (created, world-traversable)."""
    path = LAB_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    LAB_DIR.chmod(0o755)
    return path


def cmdline(pid) -> str:
    """The command line of pid, spaces for NULs; "" when it is gone."""
    try:
        return Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, TypeError, ValueError):
        return ""


def pids_with(needle: bytes, where: str = "cmdline") -> list[int]:
    """Pids (not this process) whose /proc/<pid>/<where> (cmdline, environ) contains needle."""
    found = []
    for path in Path("/proc").glob(f"[0-9]*/{where}"):
        pid = int(path.parent.name)
        if pid == os.getpid():
            continue
        try:
            if needle in path.read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET; (0, b"") when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - lab URLs on 127.0.0.1
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def ensure_app_node_modules() -> bool:
    """`npm ci` in lab/app when node_modules is missing or older than package-lock.json.

    Both the host app (pm2) and the labapp image need it; True if npm ran.
    """
    lock = APP_DIR / "package-lock.json"
    marker = APP_DIR / "node_modules" / ".package-lock.json"  # written by every npm install/ci
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return False
    npm = shutil.which("npm")
    if not npm:
        raise LabError("npm not found: install node + npm (e.g. `apt-get install nodejs npm`)")
    run([npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"], cwd=APP_DIR, timeout=600)
    if not marker.exists():
        raise LabError(f"`npm ci` in {APP_DIR} left no node_modules/.package-lock.json")
    return True
