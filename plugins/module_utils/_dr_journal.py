# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.dr_journal: a lock plus a journal for one disaster-recovery run.

Imports nothing from Ansible. `run(params, system, check_mode)` takes the module's options and
a *system* object (file system + process table + clock, see `LocalSystem`) and returns plain
data, or raises `JournalError(msg, result)`.

The journal is one JSON file (mode 0600). Whoever created it owns the lock; the owner is the
`ansible-playbook` process running the play (found by walking the module's parent chain), so
the lock outlives single tasks but not the playbook run. A later run takes over a journal whose
owner is gone (dead pid, other boot, or - for an owner on another host or an unknown pid -
older than `stale_after`) and keeps its `steps` and `data`, so it can continue where the
interrupted run stopped.

Every read-decide-write happens under an exclusive `flock` on the journal's directory, and
every write is a complete temp file, fsync'ed, then linked (create) or renamed (update) into
place, so a reader never sees half a journal and two runs never both win.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager

from ansible_collections.ops.runbooks.plugins.module_utils._pg_backup import parse_duration

STATES = ("present", "updated", "absent")
STEP_STATUSES = ("started", "done", "failed", "skipped")
OWNER_KINDS = ("ansible-playbook", "ansible-runner", "ansible")
FORMAT_VERSION = 1
MAX_WALK = 64
UTC = _dt.timezone.utc  # noqa: UP017  (datetime.UTC needs Python 3.11)


class JournalError(Exception):
    """A refusal or failure with a user-facing message; `result` is returned with fail_json."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.msg = msg
        self.result = result or {}


# ---------------------------------------------------------------------------- time


def iso(moment: _dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text) -> _dt.datetime | None:
    if not text:
        return None
    try:
        moment = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------- owner detection


def owner_kind(cmdline: list[str] | None) -> str | None:
    """'ansible-playbook' / 'ansible-runner' / 'ansible' when argv[0] or argv[1] names that
    program (argv[1] covers `python3 /venv/bin/ansible-playbook ...`), else None."""
    for arg in (cmdline or [])[:2]:
        base = os.path.basename(arg)
        if base.startswith("ansible-playbook"):
            return "ansible-playbook"
        if base.startswith("ansible-runner"):
            return "ansible-runner"
        if base == "ansible" or re.fullmatch(r"ansible-?\d+(\.\d+)*", base):
            return "ansible"
    return None


def find_owner(system, start_pid: int) -> dict:
    """Walk the parent chain from `start_pid` to the first ansible-playbook (or ansible /
    ansible-runner) process, then on up while the parent is the same program: Ansible forks its
    task workers from the main process, so the first match is a worker that ends with the task,
    the outermost one is the playbook run itself.

    Returns {"pid", "kind", "start_ticks", "detection"}; pid None when no such ancestor exists."""
    chain = []
    pid = start_pid
    for _step in range(MAX_WALK):
        if not pid or pid <= 1:
            break
        chain.append((pid, system.cmdline(pid)))
        pid = system.ppid(pid)
    for index, (_pid, cmd) in enumerate(chain):
        kind = owner_kind(cmd)
        if kind is None:
            continue
        top = index
        while top + 1 < len(chain) and owner_kind(chain[top + 1][1]) == kind:
            top += 1
        owner_pid = chain[top][0]
        hops = top + 1
        forks = top - index
        how = (f"{kind} pid {owner_pid}: ancestor {hops} of the module process"
               + (f" (above {forks} forked {kind} worker{'s' if forks != 1 else ''})" if forks else ""))
        return {"pid": owner_pid, "kind": kind, "start_ticks": system.start_ticks(owner_pid), "detection": how}
    names = [os.path.basename((cmd or ["?"])[0]) for _pid, cmd in chain[1:4]]
    return {"pid": None, "kind": None, "start_ticks": None,
            "detection": "not found: no ansible-playbook, ansible or ansible-runner process among the module's "
                         f"ancestors (parents: {', '.join(names) or 'none'}); the lock is then held until "
                         "stale_after or until the journal is removed"}


def owner_state(owner: dict, system, now: _dt.datetime, updated: _dt.datetime | None, stale_after: float) -> tuple:
    """(alive: bool, reason: str) for the owner recorded in a journal."""
    age = (now - updated).total_seconds() if updated else None
    stale = age is not None and age > stale_after
    age_text = f"last written {age / 3600:.1f} h ago" if age is not None else "age unknown"
    if owner.get("host") != system.host():
        if stale:
            return False, f"owner on host {owner.get('host')}, {age_text}, older than stale_after"
        return True, f"owner on another host ({owner.get('host')}), {age_text}; its liveness cannot be checked " \
                     "from here"
    if owner.get("boot_id") and owner.get("boot_id") != system.boot_id():
        return False, "owner ran before this host rebooted (boot_id changed)"
    pid = owner.get("pid")
    if not pid:
        if stale:
            return False, f"owner pid unknown, {age_text}, older than stale_after"
        return True, f"owner pid unknown (not started by ansible-playbook), {age_text}"
    if not system.pid_alive(pid):
        return False, f"owner pid {pid} is gone"
    kind = owner.get("kind") or "ansible-playbook"
    if owner_kind(system.cmdline(pid)) != kind:
        return False, f"pid {pid} now belongs to another program (not {kind}): the owner is gone"
    ticks = owner.get("start_ticks")
    if ticks is not None and system.start_ticks(pid) not in (None, ticks):
        return False, f"pid {pid} was reused by a newer {kind} process: the owner is gone"
    return True, f"owner pid {pid} ({kind}) is running"


# ---------------------------------------------------------------------------- journal content


def validate_journal(text: str, path: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise JournalError(f"journal {path} is not valid JSON ({exc}); it was left untouched. Inspect it: if no DR "
                           f"run is in progress, move it aside or remove it and re-run") from None
    shape_ok = isinstance(data, dict) and isinstance(data.get("run_id"), str) and isinstance(data.get("owner"), dict) \
        and isinstance(data.get("steps", {}), dict) and isinstance(data.get("data", {}), dict)
    if not shape_ok:
        raise JournalError(f"journal {path} is JSON but not a dr_journal file (needs run_id, owner, steps, data); it "
                           "was left untouched. Check that path points at the DR journal; if it is a leftover, move it "
                           "aside or remove it and re-run")
    data.setdefault("steps", {})
    data.setdefault("data", {})
    return data


def describe(journal: dict) -> str:
    owner = journal.get("owner") or {}
    return (f"run_id {journal.get('run_id')}, mode {journal.get('mode')}, pid {owner.get('pid') or 'unknown'} on "
            f"host {owner.get('host')}, started {owner.get('started')}")


def interrupted_steps(journal: dict) -> list[str]:
    return sorted(name for name, step in (journal.get("steps") or {}).items()
                  if isinstance(step, dict) and step.get("status") == "started")


def apply_step(journal: dict, step: str, status: str, run_id: str, now: _dt.datetime, msg: str | None) -> bool:
    """Record `status` for `step`; False when it is already recorded (idempotent)."""
    steps = journal.setdefault("steps", {})
    current = steps.get(step)
    if isinstance(current, dict) and current.get("status") == status and \
            (status != "started" or current.get("run_id") == run_id) and \
            (msg is None or current.get("msg") == msg):
        return False
    record = dict(current) if isinstance(current, dict) else {}
    stamp = iso(now)
    if status == "started":
        record = {"status": "started", "started_at": stamp, "ended_at": None, "seconds": None, "run_id": run_id,
                  "attempts": int(record.get("attempts") or 0) + 1}
    else:
        started = parse_time(record.get("started_at"))
        record.update(status=status, ended_at=stamp, run_id=run_id,
                      seconds=round((now - started).total_seconds(), 3) if started else None)
        record.setdefault("started_at", None)
        record.setdefault("attempts", 1 if started else 0)
    if msg is not None:
        record["msg"] = msg
    steps[step] = record
    return True


# ---------------------------------------------------------------------------- the module's logic


def validate(params: dict) -> dict:
    opts = dict(params)
    path = params.get("path")
    if not path or not os.path.isabs(path):
        raise JournalError(f"path {path!r} must be an absolute file path (the journal and lock file, for example "
                           "/var/lib/ops-runbooks/dr/journal.json)")
    if path.endswith("/"):
        raise JournalError(f"path {path} names a directory; give the journal file's path")
    state = params.get("state")
    if state not in STATES:
        raise JournalError(f"state {state!r} is not one of {', '.join(STATES)}")
    run_id = params.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id.strip() or len(run_id) > 200
                               or any(ord(c) < 32 for c in run_id)):
        raise JournalError(f"run_id {run_id!r} must be a non-empty single-line string of at most 200 characters "
                           "(unique per playbook run, for example the play's start time and a random suffix)")
    if state in ("present", "updated") and not run_id:
        raise JournalError(f"state={state} needs run_id: the identifier this playbook run uses for every dr_journal "
                           "task")
    if state == "absent" and not run_id and not params.get("force"):
        raise JournalError("state=absent needs run_id (only the owner releases the lock) or force=true")
    data = params.get("data")
    if data is not None and not isinstance(data, dict):
        raise JournalError(f"data must be a dictionary (merged key by key into the journal's data), got "
                           f"{type(data).__name__}")
    step, status = params.get("step"), params.get("step_status")
    if (step is None) != (status is None):
        raise JournalError("step and step_status go together: name the step and say started, done, failed or skipped")
    if step is not None and state != "updated":
        raise JournalError("step/step_status are recorded with state=updated")
    if step is not None and (not isinstance(step, str) or not step.strip()):
        raise JournalError(f"step {step!r} must be a non-empty string")
    if status is not None and status not in STEP_STATUSES:
        raise JournalError(f"step_status {status!r} is not one of {', '.join(STEP_STATUSES)}")
    try:
        opts["stale_after"] = parse_duration(params.get("stale_after") if params.get("stale_after") is not None
                                             else "24h")
    except ValueError as exc:
        raise JournalError(f"stale_after: {exc}") from None
    archive = params.get("archive_to")
    if archive is not None and (not os.path.isabs(archive) or archive.endswith("/")):
        raise JournalError(f"archive_to {archive!r} must be an absolute file path")
    if archive is not None and os.path.normpath(archive) == os.path.normpath(path):
        raise JournalError("archive_to must differ from path (the journal is removed after archiving)")
    return opts


def _base(resumed=False) -> dict:
    return {"changed": False, "resumed": resumed, "journal": {}, "action": "none"}


def run(params: dict, system, check_mode: bool = False) -> dict:
    opts = validate(params)
    path = opts["path"]
    directory = os.path.dirname(path)
    try:
        if system.isdir(path):
            raise JournalError(f"path {path} is a directory; give the journal file's path")
        existing = directory
        while not system.isdir(existing) and existing != os.path.dirname(existing):
            if system.exists(existing):
                raise JournalError(f"cannot use {path}: {existing} exists and is not a directory")
            existing = os.path.dirname(existing)
        if not system.writable(existing):
            raise JournalError(f"cannot write the journal in {existing}: not writable by this user (permissions or "
                               "a read-only file system); choose a path in a directory it may write, or fix the "
                               "directory's owner/mode")
        if existing != directory and not check_mode:
            system.makedirs(directory)
        with system.locked(directory, check_mode):
            return _run_locked(opts, system, check_mode)
    except OSError as exc:
        where = exc.filename or path
        raise JournalError(f"cannot use the journal {path}: {exc.strerror or exc} ({where}); check that the directory "
                           "exists or can be created and that this user may write it") from None


def _read(system, path: str) -> dict | None:
    text = system.read(path)
    if text is None:
        return None
    return validate_journal(text, path)


def _run_locked(opts: dict, system, check_mode: bool) -> dict:
    path = opts["path"]
    current = _read(system, path)
    if opts["state"] == "present":
        return _acquire(opts, system, current, check_mode)
    if opts["state"] == "updated":
        return _update(opts, system, current, check_mode)
    return _release(opts, system, current, check_mode)


def _acquire(opts: dict, system, current: dict | None, check_mode: bool) -> dict:
    path, run_id = opts["path"], opts["run_id"]
    now = system.now()
    owner = find_owner(system, system.pid())
    result = _base()
    result["owner_detection"] = owner["detection"]
    if current is not None and current.get("run_id") == run_id:
        result.update(journal=current, action="already_held")
        return result
    new_owner = {"host": system.host(), "pid": owner["pid"], "kind": owner["kind"], "start_ticks": owner["start_ticks"],
                 "boot_id": system.boot_id(), "started": iso(now)}
    journal = {"format": FORMAT_VERSION, "run_id": run_id, "owner": new_owner, "mode": opts.get("mode"),
               "created_at": iso(now), "updated_at": iso(now), "steps": {}, "data": dict(opts.get("data") or {})}
    if current is not None:
        updated = parse_time(current.get("updated_at")) or parse_time((current.get("owner") or {}).get("started")) \
            or system.mtime(path)
        alive, reason = owner_state(current.get("owner") or {}, system, now, updated, opts["stale_after"])
        if alive:
            raise JournalError(
                f"another DR run is in progress ({describe(current)}; {reason}): wait for it to finish; if that run "
                f"is gone, remove {path}",
                dict(result, journal=current, holder=current))
        journal["steps"] = current.get("steps") or {}
        journal["data"] = dict(current.get("data") or {}, **(opts.get("data") or {}))
        journal["created_at"] = current.get("created_at") or iso(now)
        journal["resumed_from"] = {"run_id": current.get("run_id"), "mode": current.get("mode"),
                                   "owner": current.get("owner"), "reason": reason, "at": iso(now),
                                   "interrupted_steps": interrupted_steps(current)}
        journal["resume_count"] = int(current.get("resume_count") or 0) + 1
        result.update(resumed=True, previous=current, interrupted_steps=interrupted_steps(current),
                      action="taken_over")
        if not check_mode:
            system.replace(path, dump(journal))
    else:
        result["action"] = "acquired"
        if not check_mode:
            if not system.create(path, dump(journal)):  # cannot happen under the lock, unless a foreign writer
                raise JournalError(f"{path} appeared while acquiring the lock: another run was faster; re-run")
    result.update(changed=True, journal=journal, diff={"before": current or {}, "after": journal})
    return result


def _owned(opts: dict, current: dict, what: str) -> None:
    if current.get("run_id") != opts.get("run_id"):
        raise JournalError(
            f"not the owner: {opts['path']} belongs to another DR run ({describe(current)}), not run_id "
            f"{opts.get('run_id')}; {what}",
            {"changed": False, "resumed": False, "journal": current, "holder": current})


def _update(opts: dict, system, current: dict | None, check_mode: bool) -> dict:
    path = opts["path"]
    if current is None:
        raise JournalError(f"no journal at {path}: acquire it first with state=present and the same run_id",
                           _base())
    _owned(opts, current, "updates come from the run that holds the lock")
    now = system.now()
    journal = json.loads(json.dumps(current))
    changed = False
    if opts.get("step") is not None:
        changed = apply_step(journal, opts["step"], opts["step_status"], opts["run_id"], now, opts.get("step_msg"))
    for key, value in (opts.get("data") or {}).items():
        if journal["data"].get(key, object()) != value:
            journal["data"][key] = value
            changed = True
    result = _base()
    if not changed:
        result.update(journal=current)
        return result
    journal["updated_at"] = iso(now)
    if not check_mode:
        system.replace(path, dump(journal))
    result.update(changed=True, journal=journal, action="updated", diff={"before": current, "after": journal})
    return result


def _release(opts: dict, system, current: dict | None, check_mode: bool) -> dict:
    path = opts["path"]
    result = _base()
    if current is None:
        return result
    if not opts.get("force"):
        _owned(opts, current, "only the owner releases the lock; use force=true to remove another run's journal")
    final = json.loads(json.dumps(current))
    final["data"].update(opts.get("data") or {})
    final["released_at"] = iso(system.now())
    final["released_by"] = opts.get("run_id")
    archive = opts.get("archive_to")
    if not check_mode:
        if archive:
            system.makedirs(os.path.dirname(archive))
            system.replace(archive, dump(final))
        system.remove(path)
    result.update(changed=True, journal=final, action="released", diff={"before": current, "after": {}})
    if archive:
        result["archived_to"] = archive
    return result


def dump(journal: dict) -> str:
    return json.dumps(journal, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------- the real system


class LocalSystem:
    """File system, process table and clock of this host (what the unit tests fake)."""

    proc = "/proc"

    def host(self) -> str:
        return socket.gethostname()

    def pid(self) -> int:
        return os.getpid()

    def now(self) -> _dt.datetime:
        return _dt.datetime.now(UTC)

    def boot_id(self) -> str | None:
        try:
            with open(f"{self.proc}/sys/kernel/random/boot_id", encoding="ascii") as handle:
                return handle.read().strip()
        except OSError:
            return None

    def _stat(self, pid: int) -> list[str] | None:
        try:
            with open(f"{self.proc}/{pid}/stat", encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            return None
        # "pid (comm) state ppid ..."; comm may hold spaces and parentheses
        return text.rsplit(")", 1)[1].split()

    def ppid(self, pid: int) -> int | None:
        fields = self._stat(pid)
        return int(fields[1]) if fields else None

    def start_ticks(self, pid: int) -> int | None:
        fields = self._stat(pid)
        return int(fields[19]) if fields and len(fields) > 19 else None

    def cmdline(self, pid: int) -> list[str] | None:
        try:
            with open(f"{self.proc}/{pid}/cmdline", "rb") as handle:
                raw = handle.read()
        except OSError:
            return None
        return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]

    def pid_alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        fields = self._stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def writable(self, path: str) -> bool:
        return os.access(path, os.W_OK | os.X_OK)

    def mtime(self, path: str) -> _dt.datetime | None:
        try:
            return _dt.datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
        except OSError:
            return None

    def makedirs(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)

    @contextmanager
    def locked(self, directory: str, check_mode: bool = False):
        """Exclusive flock on the directory for one read-decide-write (released on exit, and by
        the kernel if the process dies)."""
        if check_mode and not os.path.isdir(directory):
            yield
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            return f"<not UTF-8: {exc}>"

    def _temp(self, path: str, text: str) -> str:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return tmp

    def _sync_dir(self, directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def create(self, path: str, text: str) -> bool:
        """Create `path` with `text` only if it does not exist; never visible half-written:
        a complete temp file is hard-linked into place (link fails with EEXIST like O_EXCL)."""
        tmp = self._temp(path, text)
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # a file system without hard links: plain O_CREAT|O_EXCL
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
        finally:
            os.unlink(tmp)
        self._sync_dir(os.path.dirname(path))
        return True

    def replace(self, path: str, text: str) -> None:
        tmp = self._temp(path, text)
        try:
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._sync_dir(os.path.dirname(path))

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        self._sync_dir(os.path.dirname(path))
