# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.pg_backup (and the pieces backup_verify shares with it).

Imports nothing from Ansible. The work is done through two injected things:

* a *runner* (``ProcessRunner`` by default) that runs pg_dump/pg_restore/psql with an
  environment (passwords only ever travel in ``PGPASSWORD`` of the child's environment);
* a *connection* (psycopg-like: ``execute()``, ``commit()``, ``close()``) to the source
  database, opened by the module.

``take_backup()`` opens a REPEATABLE READ transaction, exports its snapshot, runs
``pg_dump --snapshot`` while that transaction stays open and, in the same transaction
(so in the same snapshot), counts the rows of every table. The manifest written beside the
dump therefore describes exactly what the dump contains.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading

UTC_TZ = _dt.timezone.utc  # noqa: UP017  (datetime.UTC needs Python 3.11; managed nodes may be older)
TOOL = "ops.runbooks.pg_backup"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"
FORMATS = {"custom": ("c", ".dump"), "directory": ("d", ".dir")}
CHUNK = 1024 * 1024

# Ordinary tables whose data pg_dump writes (no catalogs, temp tables or extension members).
TABLES_SQL = """
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype = 'e')
 ORDER BY 1, 2
"""


class PgBackupError(Exception):
    """Something the user must fix; the message says what and what to do."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.result = result or {}


# ---------------------------------------------------------------------------- small pure helpers

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value) -> float:
    """`90`, `"90"`, `"15m"`, `"1h30m"`, `"2d"` -> seconds. Raises ValueError with a hint."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use seconds or a string like 15m, 1h, 2d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if text[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"invalid duration {value!r}: use seconds or a string like 15m, 1h, 1h30m, 2d")
    return total


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
               "tb": 1000**4, "tib": 1024**4}


def parse_size(value) -> int:
    """`1048576`, `"500kB"`, `"1MiB"`, `"2GB"` -> bytes. Raises ValueError with a hint."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: use bytes or a string like 500kB, 10MB, 1GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: use bytes or a string like 500kB, 10MB, 1GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def human_size(num: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(num) < 1000:
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    return f"{num:.1f} TB"


def human_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(UTC_TZ)


def iso(moment: _dt.datetime) -> str:
    return moment.astimezone(UTC_TZ).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def safe_name(text: str) -> str:
    """A file-name-safe version of a database name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "db"


# ---------------------------------------------------------------------------- libpq environment

# libpq keyword -> environment variable (so nothing secret is ever on a command line).
_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
    "password": "PGPASSWORD", "dbname": "PGDATABASE", "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME",
    "options": "PGOPTIONS", "passfile": "PGPASSFILE", "target_session_attrs": "PGTARGETSESSIONATTRS",
    "gssencmode": "PGGSSENCMODE", "service": "PGSERVICE",
}


def libpq_env(kwargs: dict, base_env: dict | None = None, dbname: str | None = None) -> dict:
    """Child environment for pg_dump/pg_restore/psql from `connect_kwargs()`-style kwargs.

    `kwargs` may hold a `conninfo` (already parsed by the caller into keywords) or plain
    keywords. Inherited PG* variables are dropped so only what the module was given applies.
    Raises PgBackupError for a DSN keyword that has no environment variable.
    """
    env = {k: v for k, v in (base_env if base_env is not None else os.environ).items()
           if not k.startswith("PG")}
    for key, value in kwargs.items():
        if value in (None, ""):
            continue
        var = _LIBPQ_ENV.get(key)
        if var is None:
            raise PgBackupError(f"connection option {key!r} cannot be passed to the PostgreSQL client "
                                "tools; use the login_* options or a DSN with standard keywords")
        env[var] = str(value)
    if dbname:
        env["PGDATABASE"] = dbname
    return env


# ---------------------------------------------------------------------------- runner


class ProcessRunner:
    """Runs client tools; remembers the live children so `terminate_all()` can stop them.

    `run(argv, env, stdin_chunks=None)` returns (rc, stdout, stderr). When `stdin_chunks`
    (an iterable of bytes) is given, it is streamed to the child's stdin; an exception raised
    by the iterable (a corrupt gzip stream, say) stops the child and is re-raised.
    """

    def __init__(self):
        self._procs: set = set()
        self._lock = threading.Lock()

    def run(self, argv, env=None, stdin_chunks=None, capture_stdout=True, on_stderr_line=None):
        """`on_stderr_line(str)` is called for each stderr line as it arrives (from a reader thread)."""
        with tempfile.TemporaryFile() as err:
            # Not AnsibleModule.run_command: this core imports nothing from Ansible, and it must stream
            # stdin from a generator (no temp copy of a .sql.gz), read stderr line by line while the child
            # runs, and let a signal handler stop the child - none of which run_command offers.
            proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
                [str(a) for a in argv], env=env,
                stderr=subprocess.PIPE if on_stderr_line is not None else err,
                stdin=subprocess.PIPE if stdin_chunks is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            )
            with self._lock:
                self._procs.add(proc)
            reader = None
            if on_stderr_line is not None:
                def _read():
                    for raw in proc.stderr:
                        err.write(raw)
                        try:
                            on_stderr_line(raw.decode("utf-8", "replace"))
                        except Exception:  # noqa: BLE001,S110  (a callback bug must not hang the child)
                            pass
                reader = threading.Thread(target=_read, name="stderr-reader", daemon=True)
                reader.start()
            try:
                out = b""
                if stdin_chunks is not None:
                    feed_error = None
                    try:
                        for chunk in stdin_chunks:
                            proc.stdin.write(chunk)
                    except BrokenPipeError:
                        pass
                    except Exception as exc:  # noqa: BLE001  (re-raised below after cleanup)
                        feed_error = exc
                        proc.kill()
                    finally:
                        try:
                            proc.stdin.close()
                        except BrokenPipeError:
                            pass
                    if feed_error is not None:
                        proc.wait()
                        raise feed_error
                if capture_stdout:
                    out = proc.stdout.read()
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if reader is not None:
                    reader.join()
                    proc.stderr.close()
                if proc.stdout:
                    proc.stdout.close()
                with self._lock:
                    self._procs.discard(proc)
            err.seek(0)
            return rc, out.decode("utf-8", "replace"), err.read().decode("utf-8", "replace")

    def terminate_all(self, grace: float = 5.0) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    # pg tools print "pg_restore: error: ..." lines; prefer the first error line.
    errors = [ln for ln in lines if ": error:" in ln or ln.startswith("ERROR") or "FATAL" in ln]
    return (errors[0] if errors else (lines[-1] if lines else "")).strip()[:500]


def pg_tool(name: str, bin_dir: str | None, server_major: int | None, which=shutil.which,
            exists=os.path.exists) -> str:
    """Path of a PostgreSQL client tool: bin_dir, else the server's major version's Debian
    location, else PATH. Raises PgBackupError saying what to install."""
    if bin_dir:
        path = os.path.join(bin_dir, name)
        if not exists(path):
            raise PgBackupError(f"{path} not found; check pg_bin_dir")
        return path
    if server_major:
        path = f"/usr/lib/postgresql/{server_major}/bin/{name}"
        if exists(path):
            return path
    found = which(name)
    if not found:
        raise PgBackupError(f"{name} not found on PATH; install the PostgreSQL client tools "
                            f"(postgresql-client-{server_major or 'NN'}) or set pg_bin_dir")
    return found


# ---------------------------------------------------------------------------- checksums & files


def sha256_file(path: str, stop: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            if stop is not None and stop.is_set():
                raise InterruptedError("checksum cancelled")
            block = handle.read(CHUNK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def dir_files(path: str) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            out.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(out)


def sha256_dump(path: str, stop: threading.Event | None = None) -> tuple[str, dict]:
    """sha256 of a dump file, or for a directory dump the sha256 of `<sha256>  <relpath>`
    lines of all its files (sorted) plus the per-file map."""
    if not os.path.isdir(path):
        return sha256_file(path, stop), {}
    files = {}
    lines = []
    for rel in dir_files(path):
        full = os.path.join(path, rel)
        digest = sha256_file(full, stop)
        files[rel] = {"sha256": digest, "size": os.path.getsize(full)}
        lines.append(f"{digest}  {rel}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest(), files


def dump_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, rel)) for rel in dir_files(path))
    return os.path.getsize(path)


def manifest_path_for(dump_path: str) -> str:
    return dump_path.rstrip("/") + MANIFEST_SUFFIX


def read_manifest(path: str) -> dict | None:
    """The manifest at `path` if it is one of ours, else None (missing, unreadable, foreign)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != TOOL:
        return None
    return data


def write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# ---------------------------------------------------------------------------- planning (pure)


def backup_name(prefix: str, fmt: str, moment: _dt.datetime) -> str:
    return f"{prefix}_{moment.astimezone(UTC_TZ).strftime('%Y%m%dT%H%M%SZ')}{FORMATS[fmt][1]}"


def list_backups(dest: str, database: str | None = None, prefix: str | None = None,
                 listdir=os.listdir) -> list[dict]:
    """Backups made by this module in `dest` (identified by their manifest), newest first.

    Each: {"path", "manifest_path", "finished_at", "manifest"}; a manifest whose dump is gone
    is listed too (so retention removes it)."""
    out = []
    try:
        names = listdir(dest)
    except OSError:
        return out
    for name in names:
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        mpath = os.path.join(dest, name)
        data = read_manifest(mpath)
        if data is None or not data.get("dump"):
            continue
        if database is not None and data.get("database") != database:
            continue
        if prefix is not None and data.get("prefix", prefix) != prefix:
            continue
        dump = os.path.join(dest, os.path.basename(str(data["dump"])))
        if manifest_path_for(dump) != mpath:
            continue  # manifest does not sit beside its own dump: not ours to manage
        out.append({"path": dump, "manifest_path": mpath, "finished_at": str(data.get("finished_at", "")),
                    "manifest": data})
    out.sort(key=lambda b: (b["finished_at"], b["path"]), reverse=True)
    return out


def plan_retention(existing: list[dict], keep: int | None, new_path: str | None) -> list[dict]:
    """Which existing backups to remove so that `keep` remain, counting the new one."""
    if keep is None:
        return []
    slots = keep - (1 if new_path else 0)
    candidates = [b for b in existing if b["path"] != new_path]
    return candidates[max(slots, 0):]


def plan_backup(params: dict, database: str, existing: list[dict], now: _dt.datetime,
                exists=os.path.lexists) -> dict:
    """Decide what a run does: reuse a recent backup (min_interval) or take a new one, and
    what retention removes. Same function in check mode and in a real run."""
    dest = params["dest"]
    interval = params.get("min_interval")
    if interval is not None and existing:
        newest = existing[0]
        try:
            age = (now - parse_iso(newest["finished_at"])).total_seconds()
        except ValueError:
            age = None
        if age is not None and 0 <= age < parse_duration(interval) and exists(newest["path"]):
            removed = plan_retention(existing, params.get("keep"), newest["path"])
            removed = [b for b in removed if b["path"] != newest["path"]]
            return {"action": "reuse", "backup_path": newest["path"], "manifest_path": newest["manifest_path"],
                    "remove": removed, "age_seconds": age}
    name = backup_name(params["prefix"], params["format"], now)
    path = os.path.join(dest, name)
    serial = 1
    while exists(path) or exists(manifest_path_for(path)) or exists(path + PARTIAL_SUFFIX):
        stem, ext = os.path.splitext(name)
        path = os.path.join(dest, f"{stem}-{serial}{ext}")
        serial += 1
    return {"action": "dump", "backup_path": path, "manifest_path": manifest_path_for(path),
            "remove": plan_retention(existing, params.get("keep"), path)}


# ---------------------------------------------------------------------------- the snapshot dump


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def count_rows(conn, tables: list[tuple[str, str]]) -> dict:
    counts = {}
    for schema, table in tables:
        row = conn.execute(f"SELECT count(*) FROM ONLY {quote_ident(schema)}.{quote_ident(table)}"  # noqa: S608
                           ).fetchone()
        counts[f"{schema}.{table}"] = int(row[0])
    return counts


def pg_dump_argv(tool: str, fmt: str, out_path: str, snapshot: str, jobs: int, compress) -> list[str]:
    argv = [tool, f"--format={FORMATS[fmt][0]}", f"--file={out_path}", f"--snapshot={snapshot}",
            "--no-password"]
    if fmt == "directory" and jobs and jobs > 1:
        argv.append(f"--jobs={jobs}")
    if compress is not None:
        argv.append(f"--compress={compress}")
    return argv


def server_facts(conn) -> dict:
    row = conn.execute(
        "SELECT current_database(), current_setting('server_version'), "
        "current_setting('server_version_num')::int, pg_database_size(current_database())"
    ).fetchone()
    return {"database": row[0], "server_version": row[1], "server_version_num": int(row[2]),
            "database_size_bytes": int(row[3])}


def take_backup(conn, runner, plan: dict, params: dict, env: dict, tool: str, now=utcnow) -> dict:
    """Dump inside an exported snapshot and write the manifest. Returns the manifest.

    `conn` must be in autocommit mode (the transaction is opened and ended explicitly). The dump is
    written to `<path>.partial` and renamed when complete, so a crash never leaves something
    that looks like a finished backup; on failure the partial output is removed.
    """
    fmt = params["format"]
    path = plan["backup_path"]
    partial = path + PARTIAL_SUFFIX
    started = now()
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        facts = server_facts(conn)
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        tables = [(r[0], r[1]) for r in conn.execute(TABLES_SQL).fetchall()]
        remove_path(partial)
        argv = pg_dump_argv(tool, fmt, partial, snapshot, params.get("jobs") or 1, params.get("compress"))
        counts: dict = {}
        count_error: list = []

        def _count():
            try:
                counts.update(count_rows(conn, tables))
            except Exception as exc:  # noqa: BLE001  (reported after pg_dump finished)
                count_error.append(exc)

        counter = threading.Thread(target=_count, name="pg_backup-count", daemon=True)
        counter.start()
        try:
            rc, _out, err = runner.run(argv, env=env, capture_stdout=False)
        finally:
            counter.join()
        if rc != 0:
            raise PgBackupError(f"pg_dump of database {facts['database']!r} failed (exit {rc}): {last_line(err)}; "
                                "the partial dump was removed")
        if count_error:
            raise PgBackupError(f"counting rows in snapshot {snapshot} failed: {count_error[0]}")
    except BaseException:
        remove_path(partial)
        raise
    finally:
        try:
            conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001,S110  (the connection may already be gone)
            pass
    digest, files = sha256_dump(partial)
    size = dump_size(partial)
    os.replace(partial, path)
    finished = now()
    manifest = {
        "tool": TOOL, "manifest_version": MANIFEST_VERSION, "prefix": params["prefix"],
        "database": facts["database"], "server_version": facts["server_version"],
        "server_version_num": facts["server_version_num"], "database_size_bytes": facts["database_size_bytes"],
        "format": fmt, "compress": params.get("compress"), "jobs": params.get("jobs") or 1,
        "snapshot": snapshot, "started_at": iso(started), "finished_at": iso(finished),
        "duration_seconds": round((finished - started).total_seconds(), 3),
        "dump": os.path.basename(path), "dump_size_bytes": size, "sha256": digest,
        "tables": counts, "table_count": len(counts), "row_count_total": sum(counts.values()),
    }
    if files:
        manifest["files"] = files
    try:
        write_json_atomic(plan["manifest_path"], manifest)
    except OSError as exc:
        remove_path(path)
        raise PgBackupError(f"cannot write the manifest {plan['manifest_path']}: {exc}; the dump was removed "
                            "(a dump without its manifest cannot be verified)") from None
    return manifest


def apply_retention(remove: list[dict], dest: str) -> list[str]:
    """Delete the planned backups (dump + manifest); only paths directly inside `dest`."""
    removed = []
    real_dest = os.path.realpath(dest)
    for backup in remove:
        for path in (backup["path"], backup["manifest_path"]):
            if os.path.dirname(os.path.realpath(path)) != real_dest:
                continue
            if os.path.lexists(path):
                remove_path(path)
        removed.append(backup["path"])
    return removed


def matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern)
