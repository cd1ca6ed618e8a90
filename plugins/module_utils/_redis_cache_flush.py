# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure core of ops.runbooks.redis_cache_flush: safe, fast, cluster-aware cache invalidation.

Imports nothing from Ansible. The module builds a redis-py client and calls
`CacheFlusher(nodes, options, fallback=...).run(check_mode)`; everything that decides
(option guards, Redis glob matching, hash slots, batching, rate limiting, the result and
the diff) is a plain function unit-tested without a server.

How a `mode: pattern` run works (the same code in check mode and in a real run):

1. Scan. Every primary (one thread each) is read with `SCAN cursor MATCH pattern COUNT
   batch_size` on a direct connection to that node, never `KEYS`. Keys matching an
   `exclude_patterns` entry are dropped. The matched keys are kept in memory as a snapshot
   (about 100 bytes per key). The scan stops as soon as the total passes `max_keys`, and the
   run then fails before anything was deleted.
2. Apply (skipped in check mode). Each primary's snapshot is cut into `UNLINK` commands of
   up to `UNLINK_CHUNK` keys (in a cluster: keys of one hash slot per command, so no
   CROSSSLOT), written on a window of in-flight commands so the server never waits for the
   client, and the replies are read behind. `action: expire` sends `EXPIRE key ttl NX`,
   which only touches keys without a TTL. A command refused because its slot moved
   (MOVED/ASK/TRYAGAIN) is retried key by key through the cluster client; a key that still
   fails is counted in `skipped`.

Keys created after the scan are not touched by that run (run it again); keys that vanished
in between are simply not counted in `deleted`.
"""

from __future__ import annotations

import re
import threading
import time
from binascii import crc_hqx
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat

try:
    from redis.exceptions import RedisError, ResponseError
except ImportError:  # the module checks for redis-py before it gets here
    RedisError = ResponseError = Exception  # type: ignore[misc,assignment]

try:  # C serializer (redis-py uses it too when installed); keys are bytes already
    from hiredis import pack_command as _pack_bytes
except ImportError:
    _pack_bytes = None

MODES = ("pattern", "db", "all")
ACTIONS = ("delete", "expire")
DEFAULT_MAX_KEYS = 100000
UNLINK_CHUNK = 1000       # keys per UNLINK command
WINDOW_KEYS = 16000       # keys written ahead of the replies read back
SLOTS = 16384
_SLOT_MASK = SLOTS - 1


class FlushError(Exception):
    """Refused or failed; `result` holds what was done so far (for fail_json)."""

    def __init__(self, msg: str, result: dict | None = None):
        super().__init__(msg)
        self.result = result or {}


# --------------------------------------------------------------------------- guards

def is_match_all(pattern: str) -> bool:
    """True for patterns that match every key: only `*` and `?` with at least one `*`."""
    return "*" in pattern and not pattern.replace("*", "").replace("?", "")


def validate(options: dict) -> list[str]:
    """Every problem with the options, each saying what to do; [] when they are usable."""
    problems = []
    mode = options.get("mode") or "pattern"
    action = options.get("action") or "delete"
    patterns = options.get("patterns")
    excludes = options.get("exclude_patterns")
    force = bool(options.get("force"))
    ttl = options.get("ttl")

    for name, value in (("patterns", patterns), ("exclude_patterns", excludes)):
        if value is None:
            continue
        if not isinstance(value, list):
            problems.append(f"{name} must be a list of strings, got {type(value).__name__}")
            continue
        for item in value:
            if not isinstance(item, str):
                problems.append(f"{name} entries must be strings; {item!r} is a {type(item).__name__} "
                                "(quote it in YAML)")
            elif not item:
                problems.append(f"{name} contains an empty string; remove it")

    if mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if action not in ACTIONS:
        problems.append(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")

    if mode == "pattern":
        if not patterns:
            problems.append("mode: pattern needs patterns, e.g. patterns: ['myapp:exchange_rate:*'] "
                            "(use mode: db with force: true to empty the whole database)")
        elif isinstance(patterns, list) and not force:
            for pattern in patterns:
                if isinstance(pattern, str) and is_match_all(pattern):
                    problems.append(f"pattern {pattern!r} matches every key; set force: true if you "
                                    "really mean to flush the whole cache (or narrow the pattern)")
    else:
        if not force:
            flush = "FLUSHDB" if mode == "db" else "FLUSHALL"
            problems.append(f"mode: {mode} runs {flush} ASYNC and removes every key"
                            f"{'' if mode == 'db' else ' of every database'}; set force: true to confirm")
        if patterns:
            problems.append(f"patterns are not used with mode: {mode}; remove them or use mode: pattern")
        if excludes:
            problems.append(f"exclude_patterns cannot be honoured by mode: {mode} (it flushes everything); "
                            "use mode: pattern with patterns: ['*'] and force: true")
        if action != "delete":
            problems.append(f"action: {action} only works with mode: pattern")

    if action == "expire":
        if ttl is None:
            problems.append("action: expire needs ttl (seconds to set on keys that have no TTL), e.g. ttl: 3600")
        elif not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            problems.append(f"ttl must be a positive number of seconds, got {ttl!r}")
    elif ttl is not None:
        problems.append("ttl is only used with action: expire; remove it or set action: expire")

    for name, low in (("batch_size", 1), ("max_keys", 0), ("rate_limit", 0), ("sample_size", 0)):
        value = options.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            problems.append(f"{name} must be an integer >= {low}, got {value!r}")
    return problems


# ------------------------------------------------------------------ Redis glob matching

def _glob_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate `[...]` starting at pattern[i] == '['; return (regex, index of `]`)."""
    j = i + 1
    negate = j < len(pattern) and pattern[j] == "^"
    if negate:
        j += 1
    items = []
    while j < len(pattern) and pattern[j] != "]":
        if pattern[j] == "\\" and j + 1 < len(pattern):
            items.append(re.escape(pattern[j + 1]))
            j += 2
        elif j + 2 < len(pattern) and pattern[j + 1] == "-" and pattern[j + 2] != "]":
            low, high = sorted((pattern[j], pattern[j + 2]))  # Redis accepts [z-a]
            items.append(f"{re.escape(low)}-{re.escape(high)}")
            j += 3
        else:
            items.append(re.escape(pattern[j]))
            j += 1
    if not items:
        return ("." if negate else "(?!)"), j
    return f"[{'^' if negate else ''}{''.join(items)}]", j


def glob_to_regex(pattern: str) -> str:
    """A regex (str) matching exactly what Redis' glob (SCAN MATCH, KEYS) matches."""
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            part, i = _glob_class(pattern, i)
            out.append(part)
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def compile_globs(patterns) -> re.Pattern | None:
    """One bytes regex matching any of the Redis glob patterns; None for no patterns."""
    if not patterns:
        return None
    body = "|".join(f"(?:{glob_to_regex(p)})" for p in patterns)
    return re.compile(f"(?:{body})\\Z".encode(), re.DOTALL)


def drop_matching(keys: list, regex: re.Pattern | None) -> list:
    """keys without those matched by regex (the exclude patterns)."""
    if regex is None:
        return keys
    match = regex.match
    return [k for k in keys if not match(k)]


# ----------------------------------------------------------------------- hash slots

def hash_slot(key: bytes) -> int:
    """Redis Cluster hash slot of key (CRC16 of the hash tag if it has one)."""
    start = key.find(b"{")
    if start > -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc_hqx(key, 0) & (SLOTS - 1)


def group_by_slot(keys) -> dict[int, list]:
    """{slot: [keys]}. Keys without a `{` (the usual case) take a C-level CRC16 path."""
    keys = list(keys)
    if not keys:
        return {}
    if b"{" in b"".join(keys):
        slots = map(hash_slot, keys)
    else:
        slots = map(crc_hqx, keys, repeat(0, len(keys)))
    groups: dict[int, list] = {}
    for slot, key in zip(slots, keys, strict=True):
        try:
            groups[slot & _SLOT_MASK].append(key)
        except KeyError:
            groups[slot & _SLOT_MASK] = [key]
    return groups


def batches(keys, size: int, by_slot: bool):
    """Lists of at most `size` keys; with by_slot every list holds keys of one slot only."""
    keys = list(keys)
    groups = group_by_slot(keys).values() if by_slot else [keys]
    for group in groups:
        for start in range(0, len(group), size):
            yield group[start:start + size]


# --------------------------------------------------------------------- rate limiting

class RateLimiter:
    """Token bucket shared by all node threads: `acquire(n)` sleeps until n keys are allowed.

    rate 0 means unlimited. The bucket holds at most one second of tokens, so an idle period
    does not turn into a burst.
    """

    def __init__(self, rate: int, clock=time.monotonic, sleep=time.sleep):
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.lock = threading.Lock()
        self.tokens = 0.0
        self.last = None

    def wait_time(self, n: int) -> float:
        """Take n tokens; return how long the caller must sleep first (pure bookkeeping)."""
        with self.lock:
            now = self.clock()
            if self.last is None:
                self.last = now
            self.tokens = min(float(self.rate), self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def acquire(self, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        delay = self.wait_time(n)
        if delay > 0:
            self.sleep(delay)


def chunk_size(rate_limit: int) -> int:
    """Keys per command: smaller under a rate limit so the rate is smooth (10 commands/s)."""
    if rate_limit > 0:
        return max(1, min(UNLINK_CHUNK, rate_limit // 10))
    return UNLINK_CHUNK


# ------------------------------------------------------------------------ the budget

class Budget:
    """Thread-safe count of matched keys; `exceeded` once more than max_keys (0 = no limit)."""

    def __init__(self, max_keys: int):
        self.max_keys = max_keys
        self.total = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.total += n

    @property
    def exceeded(self) -> bool:
        return bool(self.max_keys) and self.total > self.max_keys


# ------------------------------------------------------------------- wire and nodes

class Wire:
    """One raw connection of a redis-py client: write commands now, read replies later."""

    def __init__(self, client):
        self.pool = client.connection_pool
        try:
            self.conn = self.pool.get_connection()
        except TypeError:  # redis-py < 5.1 wants a command name
            self.conn = self.pool.get_connection("SCAN")
        self.broken = False

    def send(self, *args) -> None:
        self.conn.send_packed_command(self.conn.pack_command(*args), check_health=False)

    def send_keys(self, args: tuple) -> None:
        """Like send() for bytes/int arguments, without redis-py's per-argument Python work."""
        if _pack_bytes is None:
            self.send(*args)
        else:
            self.conn.send_packed_command([_pack_bytes(args)], check_health=False)

    def read(self):
        return self.conn.read_response()

    def close(self) -> None:
        if self.broken:
            self.conn.disconnect()
        self.pool.release(self.conn)


def node_name(node) -> str:
    return f"{node.host}:{node.port}"


def primaries(client, cluster: bool, name: str) -> list[tuple[str, object]]:
    """[(name, redis.Redis)] to scan: each cluster primary directly, or the client itself."""
    if not cluster:
        return [(name, client)]
    return [(node_name(n), client.get_redis_connection(n)) for n in client.get_primaries()]


_REPLY_CODES = {"MovedError": "MOVED", "AskError": "ASK", "TryAgainError": "TRYAGAIN",
                "ClusterDownError": "CLUSTERDOWN"}


def _short(exc: Exception) -> str:
    """First line of an error; redis-py drops the MOVED/ASK code from the text: put it back."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
    code = _REPLY_CODES.get(type(exc).__name__)
    return f"{code} {text}" if code and not text.startswith(code) else text


# --------------------------------------------------------------------------- results

def diff_for(action: str, before: int, after: int) -> dict:
    label = "keys_without_ttl" if action == "expire" else "keys"
    return {"before": {label: before}, "after": {label: after}}


def summarize(nodes: list[dict], action: str, sample: list, started: float, now: float,
              mode: str = "pattern") -> dict:
    """The module result from per-node counts (same shape in check mode and a real run)."""
    done_key = "expired" if action == "expire" else "deleted"
    matched = sum(n["matched"] for n in nodes)
    done = sum(n[done_key] for n in nodes)
    skipped = sum(n.get("skipped", 0) for n in nodes)
    before = sum(n.get("candidates", n["matched"]) for n in nodes)
    result = {
        "changed": done > 0,
        "mode": mode,
        "action": action,
        "matched": matched,
        done_key: done,
        "skipped": skipped,
        "sample": sample,
        "nodes": [{k: v for k, v in n.items() if k != "candidates"} for n in nodes],
        "duration_ms": int(round((now - started) * 1000)),
        "diff": diff_for(action, before, before - done),
    }
    return result


def decode_sample(keys) -> list[str]:
    return [k.decode("utf-8", "backslashreplace") if isinstance(k, bytes) else str(k) for k in keys]


# --------------------------------------------------------------------------- the work

class CacheFlusher:
    """Plan and apply one flush over `nodes` = [(name, redis.Redis), ...] (the primaries).

    `fallback` is the cluster client (or None): it retries keys whose slot moved.
    """

    def __init__(self, nodes, options: dict, fallback=None, clock=time.monotonic):
        problems = validate(options)
        if problems:
            raise FlushError("; ".join(problems))
        self.nodes = nodes
        self.fallback = fallback
        self.clock = clock
        self.mode = options.get("mode") or "pattern"
        self.action = options.get("action") or "delete"
        self.patterns = list(options.get("patterns") or [])
        self.exclude = compile_globs(options.get("exclude_patterns") or [])
        self.ttl = options.get("ttl")
        self.batch_size = options.get("batch_size") or 1000
        max_keys = options.get("max_keys")
        self.max_keys = DEFAULT_MAX_KEYS if max_keys is None else max_keys
        self.rate_limit = options.get("rate_limit") or 0
        self.sample_size = 10 if options.get("sample_size") is None else options["sample_size"]
        self.by_slot = fallback is not None
        self.limiter = RateLimiter(self.rate_limit)

    # -- helpers
    def _parallel(self, func, items):
        if not items:
            return []
        if len(items) == 1:
            return [func(*items[0])]
        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            return list(pool.map(lambda item: func(*item), items))

    def _fail(self, what: str, name: str, exc: Exception, nodes=None):
        result = {"changed": False, "nodes": nodes or []}
        raise FlushError(f"{what} on {name} failed: {_short(exc)}", result) from None

    # -- mode: pattern, step 1
    def scan_node(self, name, client, budget: Budget):
        """(set of keys on this node matching the patterns and none of the excludes, the first
        sample_size of them in SCAN order - the same on an unchanged keyspace)."""
        found: set = set()
        first: list = []
        wire = Wire(client)
        try:
            for pattern in self.patterns:
                cursor = 0
                while not budget.exceeded:
                    wire.send("SCAN", cursor, "MATCH", pattern, "COUNT", self.batch_size)
                    cursor, keys = wire.read()
                    if keys:
                        keys = drop_matching(keys, self.exclude)
                        if len(first) < self.sample_size:
                            first.extend(k for k in keys[:self.sample_size] if k not in found)
                        before = len(found)
                        found.update(keys)
                        budget.add(len(found) - before)
                    if int(cursor) == 0:
                        break
        except RedisError as exc:
            wire.broken = True
            self._fail("SCAN", name, exc)
        finally:
            wire.close()
        return found, first[:self.sample_size]

    def count_without_ttl(self, name, client, keys) -> int:
        """How many of keys exist without a TTL (pipelined TTL; for check mode of expire)."""
        wire = Wire(client)
        count = 0
        try:
            inflight = 0
            for key in keys:
                wire.send("TTL", key)
                inflight += 1
                if inflight >= WINDOW_KEYS:
                    count += wire.read() == -1
                    inflight -= 1
            while inflight:
                count += wire.read() == -1
                inflight -= 1
        except RedisError as exc:
            wire.broken = True
            self._fail("TTL", name, exc)
        finally:
            wire.close()
        return count

    # -- mode: pattern, step 2
    def _commands(self, keys):
        """(args, keys) per command to send."""
        size = chunk_size(self.rate_limit)
        if self.action == "delete":
            for batch in batches(keys, size, self.by_slot):
                yield (b"UNLINK", *batch), batch
        else:
            for batch in batches(keys, size, False):
                for key in batch:
                    yield (b"EXPIRE", key, self.ttl, b"NX"), [key]

    def apply_node(self, name, client, keys) -> tuple[int, list, list]:
        """(keys done, keys refused, first errors) for this node."""
        if not keys:
            return 0, [], []
        done = 0
        refused: list = []
        errors: list = []
        wire = Wire(client)
        inflight: deque = deque()
        window = WINDOW_KEYS if self.rate_limit <= 0 else chunk_size(self.rate_limit)
        pending = 0

        def read_one():
            nonlocal done, pending
            batch = inflight.popleft()
            pending -= len(batch)
            try:
                done += int(wire.read())
            except ResponseError as exc:   # MOVED/ASK/TRYAGAIN/READONLY...: the connection is fine
                refused.extend(batch)
                if len(errors) < 3:
                    errors.append(_short(exc))

        try:
            for args, batch in self._commands(keys):
                self.limiter.acquire(len(batch))
                wire.send_keys(args)
                inflight.append(batch)
                pending += len(batch)
                while pending > window:
                    read_one()
            while inflight:
                read_one()
        except RedisError as exc:
            wire.broken = True
            raise FlushError(f"lost {name} during {'UNLINK' if self.action == 'delete' else 'EXPIRE'} after "
                             f"{done} keys: {_short(exc)}; run again to finish (the flush is idempotent)",
                             {"changed": done > 0}) from None
        finally:
            wire.close()
        return done, refused, errors

    def retry(self, keys) -> tuple[int, int, list]:
        """Keys refused by their node (slot moved): one by one through the cluster client."""
        done = skipped = 0
        errors = []
        for key in keys:
            try:
                if self.action == "delete":
                    done += int(self.fallback.unlink(key))
                else:
                    done += int(bool(self.fallback.expire(key, self.ttl, nx=True)))
            except RedisError as exc:
                skipped += 1
                if len(errors) < 3:
                    errors.append(_short(exc))
        return done, skipped, errors

    def run_pattern(self, check_mode: bool) -> dict:
        started = self.clock()
        budget = Budget(self.max_keys)
        scanned = self._parallel(lambda name, client: self.scan_node(name, client, budget), self.nodes)
        found = [keys for keys, _first in scanned]
        matched = sum(len(keys) for keys in found)
        if budget.exceeded:
            raise FlushError(
                f"more than max_keys={self.max_keys} keys match {self.patterns} (counted {budget.total} "
                f"before stopping); nothing was deleted. Narrow the patterns, or raise max_keys "
                f"(0 = no limit) if you mean it",
                {"changed": False, "matched": budget.total})
        sample = decode_sample(sorted(k for _keys, first in scanned for k in first)[:self.sample_size])
        done_key = "expired" if self.action == "expire" else "deleted"
        nodes = []
        if check_mode:
            for (name, client), keys in zip(self.nodes, found, strict=True):
                done = len(keys)
                entry = {"node": name, "matched": len(keys)}
                if self.action == "expire":
                    done = self.count_without_ttl(name, client, keys) if keys else 0
                    entry["candidates"] = done
                entry.update({done_key: done, "skipped": 0})
                nodes.append(entry)
            return summarize(nodes, self.action, sample, started, self.clock())

        work = [(name, client, keys) for (name, client), keys in zip(self.nodes, found, strict=True)]
        applied = self._parallel(self.apply_node, work)
        errors = []
        for (name, _client, keys), (done, refused, errs) in zip(work, applied, strict=True):
            skipped = 0
            if refused and self.fallback is not None:
                more, skipped, retry_errors = self.retry(refused)
                done += more
                errs = errs + retry_errors
            elif refused:
                raise FlushError(f"{name} refused {len(refused)} of {len(keys)} keys: {errs[0]}; "
                                 f"check that login_host is a writable primary",
                                 {"changed": done > 0, done_key: done, "matched": matched})
            errors.extend(f"{name}: {e}" for e in errs)
            entry = {"node": name, "matched": len(keys), done_key: done, "skipped": skipped}
            if self.action == "expire":
                entry["candidates"] = done + skipped
            nodes.append(entry)
        result = summarize(nodes, self.action, sample, started, self.clock())
        if errors:
            result["errors"] = errors
        return result

    # -- mode: db / all
    def count_db(self, name, client) -> int:
        try:
            if self.mode == "db":
                return int(client.dbsize())
            keyspace = client.info("keyspace")
            return sum(int(v.get("keys", 0)) for v in keyspace.values() if isinstance(v, dict))
        except RedisError as exc:
            self._fail("counting keys", name, exc)
        return 0  # not reached

    def flush_node(self, name, client) -> None:
        try:
            if self.mode == "db":
                client.execute_command("FLUSHDB", "ASYNC")
            else:
                client.execute_command("FLUSHALL", "ASYNC")
        except RedisError as exc:
            self._fail("FLUSHDB" if self.mode == "db" else "FLUSHALL", name, exc)

    def run_flush(self, check_mode: bool) -> dict:
        started = self.clock()
        counts = self._parallel(self.count_db, self.nodes)
        if not check_mode:
            self._parallel(self.flush_node, [node for node, count in zip(self.nodes, counts, strict=True) if count])
        nodes = [{"node": name, "matched": count, "deleted": count, "skipped": 0}
                 for (name, _client), count in zip(self.nodes, counts, strict=True)]
        return summarize(nodes, "delete", [], started, self.clock(), mode=self.mode)

    def run(self, check_mode: bool = False) -> dict:
        if self.mode == "pattern":
            return self.run_pattern(check_mode)
        return self.run_flush(check_mode)
