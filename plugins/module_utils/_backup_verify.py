# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.backup_verify: prove a backup restorable instead of assuming it.

Imports nothing from Ansible. `verify()` takes a runner (pg_restore/psql), two connection
factories (restore target by database name, and the live source) and returns plain data:
`status`, `checks` (each with status/value/threshold/msg), `tables`, `problems`.

Every decision (age, size, shrink, checksum, TOC parsing, row-count comparison, RDS snapshot
freshness, stale scratch detection) is a small pure function, unit-tested on its own.

The scratch database is always dropped in a `finally` (unless keep_scratch); SIGTERM/SIGINT
are turned into an exception by `signals_raise()` so that `finally` runs when Ansible (or a
person) interrupts the task; and every scratch database is tagged with a COMMENT naming host,
pid and start time, so a later run drops the ones whose process is gone.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import os
import queue
import re
import secrets
import signal
import threading
import time
import zlib
from contextlib import contextmanager

from ansible_collections.ops.runbooks.plugins.module_utils._pg_backup import (
    CHUNK,
    MANIFEST_SUFFIX,
    PARTIAL_SUFFIX,
    TABLES_SQL,
    UTC_TZ,
    dump_size,
    human_duration,
    human_size,
    last_line,
    list_backups,
    manifest_path_for,
    parse_iso,
    quote_ident,
    read_manifest,
    sha256_dump,
    utcnow,
)

OK, WARNING, CRITICAL, SKIPPED = "ok", "warning", "critical", "skipped"
SEVERITY = {SKIPPED: 0, OK: 0, WARNING: 1, CRITICAL: 2}
CHECK_ORDER = ["exists", "manifest", "age", "size", "shrink", "checksum", "toc", "integrity", "restore",
               "row_counts", "cleanup", "rds_snapshot", "rds_age"]
FORMATS = ["custom", "directory", "plain", "plain_gz"]
SCRATCH_TAG = "ops.runbooks.backup_verify scratch"
PLAIN_END_MARK = b"-- PostgreSQL database dump complete"


class VerifyError(Exception):
    """Bad input the module must refuse before doing anything."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT arrived; BaseException so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


class IntegrityError(Exception):
    pass


def check(status: str, msg: str | None = None, value=None, threshold=None) -> dict:
    return {"status": status, "value": value, "threshold": threshold, "msg": msg}


def skipped(msg: str) -> dict:
    return check(SKIPPED, msg)


# ---------------------------------------------------------------------------- finding the backup


def detect_format(path: str) -> str:
    """directory | custom | plain_gz | plain, from the content (not the name)."""
    if os.path.isdir(path):
        return "directory"
    with open(path, "rb") as handle:
        head = handle.read(5)
    if head.startswith(b"PGDMP"):
        return "custom"
    if head.startswith(b"\x1f\x8b"):
        return "plain_gz"
    return "plain"


def is_candidate(name: str, pattern: str) -> bool:
    if name.endswith((MANIFEST_SUFFIX, PARTIAL_SUFFIX)) or ".tmp" in name or name.startswith("."):
        return False
    return fnmatch.fnmatch(name, pattern)


def candidates_in(directory: str, pattern: str, listdir=os.listdir, getmtime=os.path.getmtime) -> list[str]:
    """Backups in `directory` matching `pattern`, newest first (by modification time)."""
    found = []
    for name in listdir(directory):
        if is_candidate(name, pattern):
            path = os.path.join(directory, name)
            found.append((getmtime(path), path))
    found.sort(reverse=True)
    return [p for _m, p in found]


# ---------------------------------------------------------------------------- threshold checks


def evaluate_age(age_seconds: float | None, max_age: float | None, source: str) -> dict:
    if age_seconds is None:
        return skipped("age unknown")
    value = round(age_seconds, 1)
    if max_age is None:
        return check(OK, f"backup is {human_duration(age_seconds)} old ({source})", value)
    if age_seconds > max_age:
        return check(CRITICAL, f"backup is {human_duration(age_seconds)} old ({source}); RPO (max_age) is "
                               f"{human_duration(max_age)}: the backup job is not running or failing", value, max_age)
    return check(OK, f"backup is {human_duration(age_seconds)} old ({source}), within {human_duration(max_age)}",
                 value, max_age)


def evaluate_size(size: int, min_size: int | None) -> dict:
    if min_size is not None and size < min_size:
        return check(CRITICAL, f"backup is {human_size(size)}, smaller than min_size {human_size(min_size)}",
                     size, min_size)
    return check(OK, f"backup is {human_size(size)}", size, min_size)


def evaluate_shrink(size: int, previous: tuple[str, int] | None, max_shrink_pct: float | None) -> dict:
    if max_shrink_pct is None:
        return skipped("max_shrink_pct not set")
    if previous is None:
        return skipped("no previous backup to compare with")
    prev_path, prev_size = previous
    if prev_size <= 0:
        return skipped(f"previous backup {prev_path} is empty")
    shrink = round((prev_size - size) * 100.0 / prev_size, 2)
    if shrink > max_shrink_pct:
        return check(CRITICAL, f"backup is {shrink}% smaller than the previous one ({human_size(size)} vs "
                               f"{human_size(prev_size)}, {os.path.basename(prev_path)}); max_shrink_pct is "
                               f"{max_shrink_pct}: data lost or the dump was cut short?", shrink, max_shrink_pct)
    return check(OK, f"{shrink}% size change vs {os.path.basename(prev_path)}", shrink, max_shrink_pct)


def evaluate_checksum(expected: str | None, actual: str | None, source: str, error: str | None = None) -> dict:
    if error:
        return check(CRITICAL, f"cannot compute the checksum: {error}")
    if expected is None:
        return skipped("no expected checksum")
    if actual != expected.lower():
        return check(CRITICAL, f"sha256 mismatch: the dump is {actual}, the {source} says {expected}; the file "
                               "was modified or corrupted after it was written", actual, expected)
    return check(OK, f"sha256 matches the {source}", actual, expected)


_TOC_LINE = re.compile(r"^(?P<id>\d+);\s*\d+\s+\d+\s+(?P<rest>.*)$")


def parse_toc(listing: str) -> dict:
    """`pg_restore --list` output -> {"entries": n, "table_data": ["schema.table", ...],
    "ids": {dump_id: (schema, table)}}."""
    entries = 0
    table_data = []
    ids = {}
    for line in listing.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        entries += 1
        match = _TOC_LINE.match(line.strip())
        if match and match.group("rest").startswith("TABLE DATA "):
            # "TABLE DATA <schema> <name> <owner>"; a name may hold spaces, the owner is last
            schema, _sep, remainder = match.group("rest")[len("TABLE DATA "):].partition(" ")
            name = remainder.rsplit(" ", 1)[0] if " " in remainder else remainder
            table_data.append(f"{schema}.{name}")
            ids[int(match.group("id"))] = (schema, name)
    return {"entries": entries, "table_data": table_data, "ids": ids}


def evaluate_toc(rc: int, listing: str, stderr: str, allow_empty: bool) -> dict:
    if rc != 0:
        return check(CRITICAL, f"pg_restore --list cannot read the archive: {last_line(stderr) or f'exit {rc}'}; "
                               "the dump is truncated, corrupt or not a pg_dump archive")
    toc = parse_toc(listing)
    if not toc["table_data"] and not allow_empty:
        return check(CRITICAL, f"the archive holds no table data ({toc['entries']} TOC entries): a dump of an "
                               "empty or wrong database? Set allow_empty=true if that is expected",
                     toc["entries"])
    return check(OK, f"{toc['entries']} TOC entries, {len(toc['table_data'])} tables with data", toc["entries"])


def compare_counts(expected: dict, actual: dict, tolerance_pct: float, source: str) -> tuple[dict, dict]:
    """Compare row counts -> (row_counts check, tables {name: {expected, actual, status}})."""
    tables = {}
    bad, extra = [], []
    for name in sorted(set(expected) | set(actual)):
        exp, act = expected.get(name), actual.get(name)
        if exp is None:
            status = WARNING
            extra.append(name)
        elif act is None:
            status = CRITICAL
            bad.append(f"{name} missing after restore")
        else:
            allowed = exp * tolerance_pct / 100.0
            if abs(act - exp) > allowed:
                status = CRITICAL
                bad.append(f"{name} has {act} rows, {source} says {exp}")
            else:
                status = OK
        tables[name] = {"expected": exp, "actual": act, "status": status}
    value = {"tables": len(tables), "rows": sum(v for v in actual.values() if v is not None)}
    threshold = f"{tolerance_pct}% tolerance" if tolerance_pct else "exact"
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        return check(CRITICAL, f"row counts differ from the {source}: {'; '.join(bad[:5])}{more}", value,
                     threshold), tables
    if extra:
        return check(WARNING, f"tables not in the {source}: {', '.join(extra[:5])}", value, threshold), tables
    return check(OK, f"{len(expected)} tables, {value['rows']} rows match the {source}", value, threshold), tables


def evaluate_rds(snapshots: list[dict], now: _dt.datetime, max_age: float | None, instance: str) -> dict:
    """RDS snapshots (boto3 dicts) -> {"rds_snapshot": check, "rds_age": check}."""
    if not snapshots:
        msg = (f"no RDS snapshot of {instance}: automated backups disabled (BackupRetentionPeriod 0) or the "
               "instance name is wrong")
        return {"rds_snapshot": check(CRITICAL, msg),
                "rds_age": skipped("no snapshot")}
    ordered = sorted(snapshots, key=lambda s: s.get("SnapshotCreateTime") or now, reverse=True)
    latest = ordered[0]
    available = [s for s in ordered if s.get("Status") == "available" and s.get("SnapshotCreateTime")]
    value = {"id": latest.get("DBSnapshotIdentifier"), "status": latest.get("Status"),
             "type": latest.get("SnapshotType")}
    if latest.get("Status") == "available":
        snap = check(OK, f"latest snapshot {value['id']} ({value['type']}) is available", value)
    elif available:
        snap = check(WARNING, f"latest snapshot {value['id']} is {value['status']}; the newest available one is "
                              f"{available[0].get('DBSnapshotIdentifier')}", value)
    else:
        snap = check(CRITICAL, f"no snapshot of {instance} is available (latest {value['id']} is "
                               f"{value['status']})", value)
    if not available:
        return {"rds_snapshot": snap, "rds_age": skipped("no available snapshot")}
    created = available[0]["SnapshotCreateTime"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC_TZ)
    age = (now - created).total_seconds()
    return {"rds_snapshot": snap,
            "rds_age": evaluate_age(age, max_age, f"RDS snapshot {available[0].get('DBSnapshotIdentifier')}")}


def overall(checks: dict) -> tuple[str, list[str]]:
    worst = OK
    problems = []
    for name in CHECK_ORDER:
        item = checks.get(name)
        if not item:
            continue
        if SEVERITY[item["status"]] > SEVERITY[worst]:
            worst = item["status"]
        if item["status"] in (WARNING, CRITICAL):
            problems.append(f"{name}: {item['msg']}")
    return worst, problems


def should_fail(status: str, fail_on: str) -> bool:
    if fail_on == "never":
        return False
    return SEVERITY[status] >= SEVERITY[fail_on]


_DISK_FULL = re.compile(r"No space left on device|could not extend file|disk full|quota exceeded", re.I)


def disk_full_message(stderr: str, tablespace: str | None, database: str, manifest: dict | None,
                      doing: str = "restoring into") -> str | None:
    """A user-facing message when `stderr` says the restore target ran out of space, else None."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if _DISK_FULL.search(ln)]
    if not lines:
        return None
    where = f"tablespace {tablespace}" if tablespace else "the restore target's default tablespace (pg_default)"
    need = ""
    size = (manifest or {}).get("database_size_bytes")
    if size:
        need = f" (the source database was {human_size(size)} when it was dumped)"
    return (f"the restore target ran out of disk space in {where} while {doing} scratch database {database}: "
            f"{lines[0][:300]}. The backup itself may be fine; the scratch database is dropped (a failed drop is "
            f"reported as cleanup). Free space in {where}, or set scratch_tablespace to a tablespace with room for "
            f"the restored database{need}")


# ---------------------------------------------------------------------------- scratch databases


def scratch_name(prefix: str, now: _dt.datetime, rand: str | None = None) -> str:
    rand = rand or secrets.token_hex(3)
    return f"{prefix}{now.strftime('%Y%m%d%H%M%S')}_{rand}"[:63]


def scratch_comment(host: str, pid: int, now: _dt.datetime) -> str:
    return f"{SCRATCH_TAG} host={host} pid={pid} started={now.strftime('%Y-%m-%dT%H:%M:%SZ')}"


_TAG = re.compile(re.escape(SCRATCH_TAG) + r" host=(?P<host>\S+) pid=(?P<pid>\d+) started=(?P<started>\S+)$")


def parse_scratch_comment(text: str | None) -> dict | None:
    match = _TAG.match(text or "")
    if not match:
        return None
    try:
        started = parse_iso(match.group("started"))
    except ValueError:
        return None
    return {"host": match.group("host"), "pid": int(match.group("pid")), "started": started}


def stale_scratch(rows, prefix: str, host: str, pid_alive, now: _dt.datetime, stale_after: float) -> list[str]:
    """Scratch databases (name, comment) left by a run that is gone: same host and dead pid,
    or any host and older than `stale_after` seconds. Untagged databases are never chosen."""
    out = []
    for name, comment in rows:
        if not name.startswith(prefix):
            continue
        tag = parse_scratch_comment(comment)
        if tag is None:
            continue
        age = (now - tag["started"]).total_seconds()
        if (tag["host"] == host and not pid_alive(tag["pid"])) or age > stale_after:
            out.append(name)
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextmanager
def signals_raise():
    """Within the block, SIGTERM/SIGINT raise Interrupted in the main thread (once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"fired": False}

    def _handler(signum, _frame):
        if state["fired"]:
            return  # already cleaning up: let the cleanup finish
        state["fired"] = True
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- streaming gzip


def gzip_chunks(path: str, stop: threading.Event | None = None):
    """Decompressed chunks of a (multi-member) gzip file, streamed; IntegrityError on corruption
    or truncation. Nothing is written anywhere."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as handle:
        while True:
            if stop is not None and stop.is_set():
                raise InterruptedError("cancelled")
            block = handle.read(CHUNK)
            if not block:
                break
            while block:
                try:
                    out = decomp.decompress(block)
                except zlib.error as exc:
                    raise IntegrityError(f"gzip data is corrupt: {exc}") from None
                if out:
                    yield out
                if decomp.eof:
                    block = decomp.unused_data
                    if block:
                        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    block = b""
    tail = decomp.flush()
    if tail:
        yield tail
    if not decomp.eof:
        raise IntegrityError("gzip stream is truncated (unexpected end of file)")


def plain_complete(path: str, chunks=None) -> tuple[bool, int]:
    """(ends with pg_dump's completion mark, bytes read) for a plain or streamed dump."""
    window = b""
    total = 0
    if chunks is None:
        def _plain():
            with open(path, "rb") as handle:
                while True:
                    block = handle.read(CHUNK)
                    if not block:
                        return
                    yield block
        chunks = _plain()
    for block in chunks:
        total += len(block)
        window = (window + block)[-4096:]
    return PLAIN_END_MARK in window, total


class _Tail:
    """Pass chunks through while remembering the end (to find pg_dump's completion mark)."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.window = b""
        self.total = 0

    def __iter__(self):
        for block in self.chunks:
            self.total += len(block)
            self.window = (self.window + block)[-4096:]
            yield block

    @property
    def complete(self) -> bool:
        return PLAIN_END_MARK in self.window


# ---------------------------------------------------------------------------- row counts


def list_tables(conn) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(TABLES_SQL).fetchall()]


class TableCounter:
    """Exact count(*) of tables on `workers` connections, as tables are handed in with `put()`:
    during a parallel restore each table is counted as soon as pg_restore reports its data
    finished, overlapping the counts with the rest of the restore (indexes, other tables)."""

    def __init__(self, connect, workers: int, stop: threading.Event):
        self.connect = connect
        self.stop = stop
        self.todo: queue.Queue = queue.Queue()
        self.counts: dict = {}
        self.errors: list = []
        self.seen: set = set()
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"verify-count-{n}")
                        for n in range(max(1, workers))]
        for thread in self.threads:
            thread.start()

    def put(self, schema: str, table: str) -> None:
        if (schema, table) not in self.seen:
            self.seen.add((schema, table))
            self.todo.put((schema, table))

    def _work(self):
        conn = None
        try:
            while not self.stop.is_set():
                try:
                    item = self.todo.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    return
                if conn is None:
                    conn = self.connect()
                schema, table = item
                row = conn.execute(f"SELECT count(*) FROM ONLY {quote_ident(schema)}.{quote_ident(table)}"  # noqa: S608
                                   ).fetchone()
                self.counts[f"{schema}.{table}"] = int(row[0])
        except Exception as exc:  # noqa: BLE001  (reported by finish())
            self.errors.append(exc)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001,S110
                    pass

    def finish(self) -> dict:
        for _thread in self.threads:
            self.todo.put(None)
        for thread in self.threads:
            thread.join()
        if self.errors:
            raise self.errors[0]
        return dict(self.counts)

    def abandon(self) -> None:
        for _thread in self.threads:
            self.todo.put(None)


def count_parallel(connect, tables: list[tuple[str, str]], workers: int, stop: threading.Event) -> dict:
    """Exact count(*) of every table, `workers` connections at once, in the order given."""
    counter = TableCounter(connect, min(workers, max(1, len(tables))), stop)
    for schema, table in tables:
        counter.put(schema, table)
    return counter.finish()


def tables_by_size(conn) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT t.nspname, t.relname FROM (" + TABLES_SQL + ") t(nspname, relname) "  # noqa: S608
        "ORDER BY pg_catalog.pg_total_relation_size(quote_ident(t.nspname) || '.' || quote_ident(t.relname)) DESC"
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


# ---------------------------------------------------------------------------- the verification


class Verifier:
    """One verification run. `opts` is normalised by the module (durations in seconds, sizes in
    bytes). Collaborators:

    runner          ProcessRunner-like: run(argv, env, stdin_chunks=None, capture_stdout=True)
    target          callable(dbname) -> autocommit connection on the restore target (raises
                    TargetError with a user-facing message when it cannot connect)
    target_env      callable(dbname) -> environment for pg_restore/psql against the target
    source          callable() -> connection to the live source (compare=source), or None
    tool            callable(name) -> path of pg_restore / psql
    rds_snapshots   callable(rds_opts) -> list of snapshot dicts, or None
    """

    def __init__(self, opts, runner, target=None, target_env=None, source=None, tool=None, rds_snapshots=None,
                 host="localhost", pid=None, now=utcnow, alive=pid_alive):
        self.o = opts
        self.runner = runner
        self.target = target
        self.target_env = target_env
        self.source = source
        self.tool = tool
        self.rds_snapshots = rds_snapshots
        self.host = host
        self.pid = pid or os.getpid()
        self.now = now
        self.alive = alive
        self.checks: dict = {}
        self.result: dict = {"tables": {}, "stale_scratch_dropped": [], "scratch_db": None,
                             "backup_path": None, "format": None, "manifest_path": None,
                             "backup_age_seconds": None, "restore_seconds": None}
        self.stop = threading.Event()
        self.timings: dict = {}
        self.toc_ids: dict = {}
        self.counter: TableCounter | None = None
        self._pending: str | None = None  # being created: ours even if a signal lands mid-CREATE
        self.manifest: dict | None = None

    @contextmanager
    def _timed(self, name):
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0) + time.monotonic() - start, 3)

    # -- helpers
    def _set(self, name, item):
        self.checks[name] = item

    def run(self) -> dict:
        try:
            if self.o.get("path") or self.o.get("latest_in"):
                self._verify_file()
            if self.o.get("rds"):
                self._verify_rds()
        finally:
            self.stop.set()
        status, problems = overall(self.checks)
        self.result.update(status=status, problems=problems, timings=self.timings,
                           checks={k: self.checks[k] for k in CHECK_ORDER if k in self.checks})
        return self.result

    def _verify_rds(self):
        rds = self.o["rds"]
        try:
            snaps = self.rds_snapshots(rds)
        except Exception as exc:  # noqa: BLE001  (any AWS/botocore error becomes a finding)
            self._set("rds_snapshot", check(CRITICAL, f"cannot list RDS snapshots of "
                                                      f"{rds['db_instance_identifier']}: {exc}"))
            return
        self.checks.update(evaluate_rds(snaps, self.now(), rds.get("max_age"), rds["db_instance_identifier"]))

    def _resolve(self):
        o = self.o
        previous = None
        if o.get("latest_in"):
            try:
                found = candidates_in(o["latest_in"], o.get("pattern") or "*")
            except OSError as exc:
                self._set("exists", check(CRITICAL, f"cannot list {o['latest_in']}: {exc.strerror}; check latest_in"))
                return None, None
            if not found:
                self._set("exists", check(CRITICAL, f"no backup matching {o.get('pattern') or '*'!r} in "
                                                    f"{o['latest_in']}: the backup job has not written any"))
                return None, None
            path = found[0]
            if len(found) > 1:
                previous = found[1]
        else:
            path = o["path"]
        self.result["backup_path"] = path
        if not os.path.exists(path):
            self._set("exists", check(CRITICAL, f"backup {path} does not exist; check path (or the backup job)",
                                      False))
            return None, None
        if not os.access(path, os.R_OK):
            self._set("exists", check(CRITICAL, f"backup {path} is not readable by this user", False))
            return None, None
        return path, previous

    def _verify_file(self):
        o = self.o
        path, previous = self._resolve()
        if path is None:
            for name in ("age", "size", "checksum", "toc", "integrity", "restore", "row_counts"):
                self._set(name, skipped("no backup to check"))
            return
        self._set("exists", check(OK, f"{path} exists", True))
        fmt = o.get("format") or "auto"
        fmt = detect_format(path) if fmt == "auto" else fmt
        self.result["format"] = fmt
        mpath = manifest_path_for(path)
        manifest = read_manifest(mpath)
        needs_manifest = o.get("checksum") == "manifest" or (o.get("restore_test") and o.get("compare") == "manifest")
        if manifest is not None:
            self.result["manifest_path"] = mpath
            self._set("manifest", check(OK, f"manifest {mpath} found", mpath))
        elif needs_manifest:
            what = os.path.exists(mpath) and "is not a pg_backup manifest" or "is missing"
            self._set("manifest", check(CRITICAL, f"manifest {mpath} {what}; checksum=manifest / compare=manifest "
                                                  "need the manifest ops.runbooks.pg_backup writes beside the dump "
                                                  "(for dumps made elsewhere give checksum=<sha256> or none and "
                                                  "compare=source or none)"))
        # age
        if manifest and manifest.get("finished_at"):
            age = (self.now() - parse_iso(manifest["finished_at"])).total_seconds()
            source = "manifest finished_at"
        else:
            age = time.time() - os.path.getmtime(path)
            source = "file modification time"
        self.result["backup_age_seconds"] = round(age, 1)
        self._set("age", evaluate_age(age, o.get("max_age"), source))
        size = dump_size(path)
        self._set("size", evaluate_size(size, o.get("min_size")))
        prev = self._previous(path, previous, manifest)
        self._set("shrink", evaluate_shrink(size, prev, o.get("max_shrink_pct")))

        # checksum in a thread, overlapping the TOC and the restore
        expected, csum_source = None, None
        if o.get("checksum") == "manifest":
            expected, csum_source = (manifest or {}).get("sha256"), "manifest"
        elif o.get("checksum") not in (None, "none"):
            expected, csum_source = o["checksum"], "checksum option"
        csum: dict = {}
        thread = None
        if expected:
            def _sum():
                try:
                    csum["actual"] = sha256_dump(path, self.stop)[0]
                except InterruptedError:
                    csum["error"] = "cancelled"
                except OSError as exc:
                    csum["error"] = str(exc)
            thread = threading.Thread(target=_sum, name="verify-sha256", daemon=True)
            thread.start()
        try:
            self._content(path, fmt, manifest)
        finally:
            if thread is not None:
                with self._timed("checksum_wait"):
                    thread.join()
        if expected:
            self._set("checksum", evaluate_checksum(expected, csum.get("actual"), csum_source, csum.get("error")))
        elif o.get("checksum") == "manifest":
            self._set("checksum", check(CRITICAL, "no manifest sha256 to compare with (see the manifest check)"))
        else:
            self._set("checksum", skipped("checksum=none"))

    def _previous(self, path, previous, manifest):
        if previous:
            try:
                return previous, dump_size(previous)
            except OSError:
                return None
        if manifest:
            for item in list_backups(os.path.dirname(path), manifest.get("database"), manifest.get("prefix")):
                if item["path"] != path and item["finished_at"] < manifest.get("finished_at", "") \
                        and os.path.exists(item["path"]):
                    return item["path"], dump_size(item["path"])
        return None

    # -- content: TOC, integrity, restore, row counts
    def _content(self, path, fmt, manifest):
        o = self.o
        if fmt in ("custom", "directory"):
            with self._timed("toc"):
                rc, out, err = self.runner.run([self.tool("pg_restore"), "--list", path], env=None)
            toc = evaluate_toc(rc, out, err, o.get("allow_empty", False))
            self._set("toc", toc)
            if rc == 0:
                self.toc_ids = parse_toc(out)["ids"]
            if rc != 0:
                self._set("integrity", check(CRITICAL, "archive unreadable (see toc)"))
                self._set("restore", skipped("archive unreadable"))
                self._set("row_counts", skipped("archive unreadable"))
                return
        else:
            self._set("toc", skipped(f"{fmt} dumps have no table of contents"))
        if o.get("restore_test"):
            self._restore(path, fmt, manifest)
            return
        self._set("restore", skipped("restore_test=false"))
        self._set("row_counts", skipped("restore_test=false"))
        self._integrity_only(path, fmt)

    def _integrity_only(self, path, fmt):
        try:
            if fmt in ("custom", "directory"):
                rc, _out, err = self.runner.run([self.tool("pg_restore"), "--file=/dev/null", path],
                                                env=None, capture_stdout=False)
                if rc != 0:
                    self._set("integrity", check(CRITICAL, f"reading every data block failed: {last_line(err)}"))
                else:
                    self._set("integrity", check(OK, "every data block reads and decompresses"))
                return
            chunks = gzip_chunks(path, self.stop) if fmt == "plain_gz" else None
            complete, total = plain_complete(path, chunks)
        except IntegrityError as exc:
            self._set("integrity", check(CRITICAL, f"{exc}: {path} cannot be restored"))
            return
        self._integrity_plain(complete, total, fmt)

    def _integrity_plain(self, complete, total, fmt):
        if not complete:
            self._set("integrity", check(CRITICAL, "the SQL does not end with pg_dump's '-- PostgreSQL database "
                                                   "dump complete' line: the dump was cut short", total))
        else:
            self._set("integrity", check(OK, f"{'gzip stream and ' if fmt == 'plain_gz' else ''}SQL complete "
                                             f"({human_size(total)} of SQL)", total))

    def _restore(self, path, fmt, manifest):
        o = self.o
        self.manifest = manifest
        try:
            admin = self.target(o.get("target_db") or "postgres")
        except TargetError as exc:
            self._set("restore", check(CRITICAL, f"restore target unreachable: {exc}"))
            self._set("row_counts", skipped("no restore"))
            self._integrity_only(path, fmt)
            return
        name = None
        created = False
        try:
            with self._timed("scratch_create"):
                self._drop_stale(admin)
                name, created = self._create_scratch(admin)
            if not created:
                return
            jobs = o.get("jobs") or 1
            if fmt in ("custom", "directory") and jobs > 1 and (o.get("compare") or "manifest") != "none":
                self.counter = TableCounter(lambda: self.target(name), jobs, self.stop)
            ok = self._run_restore(path, fmt, name)
            if ok:
                with self._timed("row_counts"):
                    self._row_counts(name, manifest)
            else:
                self._set("row_counts", skipped("restore failed"))
        finally:
            self.stop.set()
            if self.counter is not None:
                self.counter.abandon()
            self.runner.terminate_all()
            mine = self.result.get("scratch_db") or self._pending
            if mine and not (created and o.get("keep_scratch")):
                with self._timed("scratch_drop"):
                    admin = self._drop_for_sure(admin, mine)
            try:
                admin.close()
            except Exception:  # noqa: BLE001,S110
                pass

    def _drop_for_sure(self, admin, name):
        """Drop the scratch database; on a broken admin connection retry on a fresh one. A failure
        becomes a critical `cleanup` finding naming the database (never an exception that would
        hide the original outcome)."""
        error = None
        for attempt in range(2):
            try:
                if attempt:
                    admin = self.target(self.o.get("target_db") or "postgres")
                self._drop(admin, name)
                return admin
            except Exception as exc:  # noqa: BLE001  (reported as a finding)
                error = " ".join(str(exc).split())
        self._set("cleanup", check(CRITICAL, f"scratch database {name} could not be dropped: {error}; drop it "
                                             "by hand (the next run also drops it once this process is gone)"))
        return admin

    def _drop(self, admin, name):
        admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")

    def _drop_stale(self, admin):
        if not self.o.get("cleanup_stale", True):
            return
        prefix = self.o["scratch_prefix"]
        rows = admin.execute(
            "SELECT datname, pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database "
            "WHERE datname LIKE %s", (prefix.replace("_", "\\_") + "%",)).fetchall()
        for name in stale_scratch(rows, prefix, self.host, self.alive, self.now(), self.o["stale_after"]):
            self._drop(admin, name)
            self.result["stale_scratch_dropped"].append(name)

    def _create_scratch(self, admin):
        o = self.o
        explicit = o.get("scratch_db")
        for _attempt in range(1 if explicit else 3):
            name = explicit or scratch_name(o["scratch_prefix"], self.now())
            exists = admin.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)).fetchone()
            if exists:
                if explicit:
                    self._set("restore", check(CRITICAL, f"scratch database {name} already exists on the restore "
                                                         "target; it was left untouched. Drop it if it is a "
                                                         "leftover, or choose another scratch_db"))
                    self._set("row_counts", skipped("no restore"))
                    self._set("integrity", skipped("no restore"))
                    return name, False
                continue
            self._pending = name  # checked free just above: from here on it is ours to drop
            try:
                space = o.get("scratch_tablespace")
                admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0"
                              + (f" TABLESPACE {quote_ident(space)}" if space else ""))
            except Exception as exc:  # noqa: BLE001  (race with another run, permissions ...)
                self._pending = None
                text = " ".join(str(exc).split())
                if "already exists" in text and not explicit:
                    continue
                full = disk_full_message(text, space, name, None, doing="creating")
                if full:
                    hint = full
                elif space and "tablespace" in text:
                    hint = (f"cannot create scratch database {name} in tablespace {space} on the restore target: "
                            f"{text}; create the tablespace, grant CREATE on it to the restore_target user, or fix "
                            "scratch_tablespace")
                else:
                    hint = (f"cannot create scratch database {name} on the restore target: {text}; the "
                            "restore_target user needs CREATEDB")
                self._set("restore", check(CRITICAL, hint))
                self._set("row_counts", skipped("no restore"))
                self._set("integrity", skipped("no restore"))
                return name, False
            self.result["scratch_db"] = name
            self._pending = None
            admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS "
                          f"'{scratch_comment(self.host, self.pid, self.now())}'")
            return name, True
        self._set("restore", check(CRITICAL, "could not find a free scratch database name"))
        self._set("row_counts", skipped("no restore"))
        return None, False

    def _run_restore(self, path, fmt, name) -> bool:
        env = self.target_env(name)
        started = time.monotonic()
        ok = self._restore_command(path, fmt, name, env)
        self.result["restore_seconds"] = round(time.monotonic() - started, 3)
        if ok:
            self._set("restore", check(OK, f"restored into scratch database {name} in "
                                           f"{self.result['restore_seconds']:.1f} s", name))
        return ok

    def _restore_command(self, path, fmt, name, env) -> bool:
        o = self.o
        if fmt in ("custom", "directory"):
            argv = [self.tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
                    f"--jobs={o.get('jobs') or 1}", f"--dbname={name}", path]
            if self.counter is not None:  # count each table as soon as its data is in (see TableCounter)
                argv.insert(-1, "--verbose")
                rc, _out, err = self.runner.run(argv, env=env, capture_stdout=False,
                                                on_stderr_line=self._restore_progress)
            else:
                rc, _out, err = self.runner.run(argv, env=env, capture_stdout=False)
            if rc != 0:
                full = disk_full_message(err, o.get("scratch_tablespace"), name, self.manifest)
                if full:
                    self._set("restore", check(CRITICAL, full, rc))
                    self._set("integrity", skipped("the restore stopped on a full disk, not on the archive"))
                    return False
                self._set("restore", check(CRITICAL, f"pg_restore into scratch database {name} failed: "
                                                     f"{last_line(err)}", rc))
                self._set("integrity", check(CRITICAL, "the archive did not restore completely (see restore)"))
                return False
            self._set("integrity", check(OK, "every data block was read and restored"))
        else:
            chunks = gzip_chunks(path, self.stop) if fmt == "plain_gz" else _file_chunks(path)
            tail = _Tail(chunks)
            argv = [self.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password", "-d", name]
            try:
                rc, _out, err = self.runner.run(argv, env=env, stdin_chunks=tail, capture_stdout=False)
            except IntegrityError as exc:
                self._set("integrity", check(CRITICAL, f"{exc}: the restore stopped there"))
                self._set("restore", check(CRITICAL, f"restore into {name} aborted: {exc}"))
                return False
            full = disk_full_message(err, o.get("scratch_tablespace"), name, self.manifest) if rc != 0 else None
            if full:
                self._set("restore", check(CRITICAL, full, rc))
                self._set("integrity", skipped("the restore stopped on a full disk before the end of the SQL"))
                return False
            self._integrity_plain(tail.complete, tail.total, fmt)
            if rc != 0:
                self._set("restore", check(CRITICAL, f"psql restore into scratch database {name} failed: "
                                                     f"{last_line(err)}", rc))
                return False
            if not tail.complete:
                self._set("restore", check(CRITICAL, "the SQL was cut short; the restore is incomplete"))
                return False
        return True

    _FINISHED = re.compile(r"finished item (\d+) TABLE DATA ")

    def _restore_progress(self, line: str) -> None:
        match = self._FINISHED.search(line)
        if match and self.counter is not None:
            ident = self.toc_ids.get(int(match.group(1)))
            if ident:
                self.counter.put(*ident)

    def _row_counts(self, name, manifest):
        o = self.o
        compare = o.get("compare") or "manifest"
        conn = self.target(name)
        try:
            tables = tables_by_size(conn)
        finally:
            conn.close()
        if not tables and not o.get("allow_empty"):
            self._set("row_counts", check(CRITICAL, "the restored database has no tables: the backup is of an "
                                                    "empty or wrong database? Set allow_empty=true if expected", 0))
            return
        if compare == "none":
            self._set("row_counts", skipped("compare=none"))
            return
        if self.counter is not None:
            counted_early = len(self.counter.seen)
            for schema, table in tables:
                self.counter.put(schema, table)
            actual = self.counter.finish()
            self.result["tables_counted_during_restore"] = counted_early
        else:
            actual = count_parallel(lambda: self.target(name), tables, o.get("jobs") or 1, self.stop)
        if compare == "manifest":
            if manifest is None:
                self._set("row_counts", check(CRITICAL, "no manifest to compare row counts with (see manifest)"))
                self.result["tables"] = {k: {"expected": None, "actual": v, "status": SKIPPED}
                                         for k, v in actual.items()}
                return
            item, tables_out = compare_counts(manifest.get("tables") or {}, actual, 0.0, "manifest")
        else:
            try:
                src = self.source()
            except TargetError as exc:
                self._set("row_counts", check(CRITICAL, f"source database unreachable for compare=source: {exc}"))
                return
            try:
                live_tables = list_tables(src)
                live = {}
                for schema, table in live_tables:
                    row = src.execute(f"SELECT count(*) FROM ONLY {quote_ident(schema)}.{quote_ident(table)}"  # noqa: S608
                                      ).fetchone()
                    live[f"{schema}.{table}"] = int(row[0])
            finally:
                src.close()
            item, tables_out = compare_counts(live, actual, o.get("tolerance_pct") or 0.0, "live source")
        self._set("row_counts", item)
        self.result["tables"] = tables_out


class TargetError(Exception):
    """The restore target / source cannot be reached; the message is user-facing and redacted."""


def _file_chunks(path):
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            if not block:
                return
            yield block
