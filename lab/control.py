"""Bring lab parts up and down in dependency order, under a lock, and record their state."""

from __future__ import annotations

import fcntl
import importlib
import shutil
import sys
import time
from contextlib import contextmanager

from . import core, inventory

# part name -> parts it needs first; the order of this dict is the start order.
PARTS = {
    "postgres": [],
    "redis": [],
    "docker": [],
    "compose": ["docker"],
    "droplets": ["docker"],
    "hostapp": ["postgres", "redis"],
}


def _module(part: str):
    return importlib.import_module(f"{__package__}.{part}")


def expand(parts) -> list[str]:
    """The requested parts plus everything they need, in start order."""
    wanted = set()
    todo = list(parts or PARTS)
    while todo:
        part = todo.pop()
        if part not in PARTS:
            raise core.LabError(f"unknown lab part {part!r}; choose from {', '.join(PARTS)}")
        if part not in wanted:
            wanted.add(part)
            todo.extend(PARTS[part])
    return [p for p in PARTS if p in wanted]


@contextmanager
def locked():
    """One lab operation at a time on this machine (pytest-xdist workers share the lab)."""
    core.LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open(core.LAB_DIR / "lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


def up(parts=None, quiet: bool = False) -> dict:
    """Start the parts (default: all) that are not running; return the whole state."""
    with locked():
        state = core.load_state()
        for part in expand(parts):
            started = time.monotonic()
            state[part] = _module(part).up(state)
            state.setdefault("timings", {})[f"{part}_up_s"] = round(time.monotonic() - started, 2)
            core.save_state(state)
            if not quiet:
                _log(f"{part} up ({time.monotonic() - started:.1f}s)")
        inventory.write(state)
        return state


def _walk(value, key: str):
    """Every value stored under `key` anywhere in a nested state entry."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key and isinstance(v, int):
                yield v
            else:
                yield from _walk(v, key)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, key)


def leftovers(entries: dict, whole_lab: bool) -> list[str]:
    """What the stopped parts left behind: live pids, open ports, processes naming LAB_DIR."""
    found = [f"process {pid} still running" for pid in _walk(entries, "pid") if core.pid_alive(pid)]
    for key in ("port", "ssh_port", "nginx_port", "app_port", "web_port"):
        found += [f"port {port} still open" for port in _walk(entries, key) if core.port_open(port)]
    if whole_lab:
        found += [f"process {pid} still running: {core.cmdline(pid).strip()[:120]}"
                  for pid in core.pids_with(str(core.LAB_DIR).encode() + b"/")]
    return found


def down(parts=None, quiet: bool = False) -> None:
    """Stop the parts (default: all), remove what they created, and prove nothing is left."""
    with locked():
        state = core.load_state()
        everything = not parts
        expand(parts or [])  # rejects unknown names; `down` stops exactly the parts named
        # A whole-lab `down` stops the parts this lab's state says it started, nothing else:
        # the parts' label-based clean-ups would otherwise reach into another lab on the same
        # Docker engine (a test's private lab must not stop the shared one's containers).
        targets = [p for p in PARTS if p in state] if everything else [p for p in PARTS if p in parts]
        stopped = {}
        for part in reversed(targets):
            started = time.monotonic()
            stopped[part] = state.pop(part, {})
            _module(part).down(stopped[part])
            if not quiet:
                _log(f"{part} down ({time.monotonic() - started:.1f}s)")
        core.save_state(state)
        if everything:
            inventory.remove()
    if everything:
        shutil.rmtree(core.LAB_DIR, ignore_errors=True)
    left = leftovers(stopped, everything)
    if left:
        raise core.LabError("lab down left things behind:\n  " + "\n  ".join(left))


def status() -> dict:
    state = core.load_state()
    report = {}
    for part in PARTS:
        if part in state:
            try:
                report[part] = _module(part).status(state[part])
            except core.LabError as exc:
                report[part] = {"ok": False, "error": str(exc)}
        else:
            report[part] = {"ok": False, "error": "not started"}
    return report
