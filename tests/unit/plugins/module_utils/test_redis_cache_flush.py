"""Unit tests of the pure core of redis_cache_flush: guards, Redis glob, hash slots, batching,
rate limiting, results; and the flush logic against an in-memory fake Redis (the real-server
behaviour is covered by tests/integration/test_redis_cache_flush*.py)."""

from __future__ import annotations

import fnmatch

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _redis_cache_flush as core
from ansible_collections.ops.runbooks.plugins.module_utils._redis_cache_flush import (
    Budget,
    CacheFlusher,
    FlushError,
    RateLimiter,
    batches,
    chunk_size,
    compile_globs,
    drop_matching,
    glob_to_regex,
    group_by_slot,
    hash_slot,
    is_match_all,
    validate,
)
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import MovedError, ResponseError

# ------------------------------------------------------------------------- guards


@pytest.mark.parametrize("pattern, expected", [
    ("*", True), ("**", True), ("?*", True), ("*?*", True),
    ("?", False), ("a*", False), ("*a", False), ("", False), ("[a]*", False),
])
def test_is_match_all(pattern, expected):
    assert is_match_all(pattern) is expected


BAD_OPTIONS = [
    ({"patterns": ["*"]}, "matches every key; set force: true"),
    ({"patterns": ["cache:*", "**"]}, "matches every key"),
    ({"patterns": None}, "mode: pattern needs patterns"),
    ({"patterns": []}, "mode: pattern needs patterns"),
    ({"patterns": "cache:*"}, "patterns must be a list of strings, got str"),
    ({"patterns": [{"a": 1}]}, "patterns entries must be strings; {'a': 1} is a dict"),
    ({"patterns": [7]}, "7 is a int (quote it in YAML)"),
    ({"patterns": [""]}, "patterns contains an empty string"),
    ({"patterns": ["a:*"], "exclude_patterns": [None]}, "exclude_patterns entries must be strings"),
    ({"mode": "db", "patterns": None}, "mode: db runs FLUSHDB ASYNC and removes every key; set force: true"),
    ({"mode": "all", "patterns": None}, "FLUSHALL ASYNC and removes every key of every database"),
    ({"mode": "db", "force": True, "patterns": ["a:*"]}, "patterns are not used with mode: db"),
    ({"mode": "db", "force": True, "patterns": None, "exclude_patterns": ["s:*"]},
     "exclude_patterns cannot be honoured by mode: db"),
    ({"mode": "all", "force": True, "patterns": None, "action": "expire", "ttl": 5},
     "action: expire only works with mode: pattern"),
    ({"patterns": ["a:*"], "action": "expire"}, "action: expire needs ttl"),
    ({"patterns": ["a:*"], "action": "expire", "ttl": 0}, "ttl must be a positive number of seconds"),
    ({"patterns": ["a:*"], "ttl": 60}, "ttl is only used with action: expire"),
    ({"patterns": ["a:*"], "batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"patterns": ["a:*"], "max_keys": -1}, "max_keys must be an integer >= 0"),
    ({"patterns": ["a:*"], "rate_limit": -5}, "rate_limit must be an integer >= 0"),
    ({"patterns": ["a:*"], "sample_size": True}, "sample_size must be an integer >= 0"),
    ({"mode": "nope", "patterns": ["a:*"]}, "mode must be one of pattern, db, all"),
    ({"action": "nope", "patterns": ["a:*"]}, "action must be one of delete, expire"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS)
def test_validate_refuses_with_a_message_that_says_what_to_do(options, message):
    problems = validate(options)
    assert problems, options
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize("options", [
    {"patterns": ["cache:*"]},
    {"patterns": ["*"], "force": True, "exclude_patterns": ["sess:*"]},
    {"mode": "db", "force": True, "patterns": None},
    {"mode": "all", "force": True, "patterns": []},
    {"patterns": ["prod_*"], "action": "expire", "ttl": 3600},
    {"patterns": ["a"], "batch_size": 1, "max_keys": 0, "rate_limit": 0, "sample_size": 0},
])
def test_validate_accepts(options):
    assert validate(options) == []


def test_flusher_refuses_bad_options_before_touching_a_client():
    with pytest.raises(FlushError, match="set force: true"):
        CacheFlusher([("n", object())], {"patterns": ["*"]})


# ------------------------------------------------------------------- Redis glob


GLOB_CASES = [
    ("a*", b"a", True), ("a*", b"abc", True), ("a*", b"ba", False),
    ("a?c", b"abc", True), ("a?c", b"ac", False),
    ("h[ae]llo", b"hello", True), ("h[ae]llo", b"hallo", True), ("h[ae]llo", b"hillo", False),
    ("h[^e]llo", b"hallo", True), ("h[^e]llo", b"hello", False),
    ("h[a-b]llo", b"hbllo", True), ("h[b-a]llo", b"hallo", True), ("h[a-b]llo", b"hcllo", False),
    (r"a\*b", b"a*b", True), (r"a\*b", b"axb", False), (r"[\]]", b"]", True),
    ("sess:*", b"sess:1", True), ("sess:*", b"xsess:1", False), ("a.b", b"axb", False),
    ("a*", b"a\nb", True), ("(x)+", b"(x)+", True), ("{u1}:*", b"{u1}:k", True),
]


@pytest.mark.parametrize("pattern, key, expected", GLOB_CASES)
def test_glob_matches_like_redis(pattern, key, expected):
    assert bool(compile_globs([pattern]).match(key)) is expected


def test_glob_agrees_with_fnmatch_on_simple_patterns():
    keys = [b"app:1", b"app:12", b"app:x", b"other", b"app:", b"xapp:1"]
    for pattern in ("app:*", "app:?", "*:1", "*p*"):
        rx = compile_globs([pattern])
        assert [k for k in keys if rx.match(k)] == [k for k in keys if fnmatch.fnmatchcase(k.decode(), pattern)]


def test_glob_to_regex_escapes_regex_characters():
    assert glob_to_regex("a.b+") == r"a\.b\+"


def test_drop_matching_keeps_order_and_no_patterns_is_identity():
    keys = [b"sess:1", b"cache:1", b"bull:q", b"cache:2"]
    assert drop_matching(keys, compile_globs(["sess:*", "bull:*"])) == [b"cache:1", b"cache:2"]
    assert drop_matching(keys, compile_globs([])) is keys


# ------------------------------------------------------------------- hash slots


def test_hash_slot_is_redis_cluster_crc16():
    # Known values from the Redis Cluster spec / CLUSTER KEYSLOT.
    assert hash_slot(b"foo") == 12182
    assert hash_slot(b"123456789") == 0x31C3 & 16383
    assert hash_slot(b"{user1000}.following") == hash_slot(b"{user1000}.followers") == hash_slot(b"user1000")
    assert hash_slot(b"foo{}{bar}") == hash_slot(b"foo{}{bar}")  # empty tag: whole key
    assert hash_slot(b"foo{}{bar}") != hash_slot(b"bar")
    for key in (b"a", b"{a}b", b"x{y}z{w}", b"{}", b"{", b"}{x}", b"\xff\x00"):
        assert hash_slot(key) == key_slot(key)


def test_batches_by_slot_never_mix_slots_and_keep_every_key():
    keys = [f"k:{i}".encode() for i in range(5000)] + [f"{{t}}:{i}".encode() for i in range(2500)]
    out = list(batches(keys, 1000, by_slot=True))
    assert sorted(k for b in out for k in b) == sorted(keys)
    assert all(len(b) <= 1000 for b in out)
    assert all(len({hash_slot(k) for k in b}) == 1 for b in out)
    tagged = [b for b in out if b[0].startswith(b"{t}")]
    assert [len(b) for b in tagged] == [1000, 1000, 500]


def test_batches_without_slots_are_plain_chunks():
    keys = [str(i).encode() for i in range(2500)]
    assert [len(b) for b in batches(keys, 1000, by_slot=False)] == [1000, 1000, 500]
    assert list(batches([], 1000, by_slot=True)) == []


def test_group_by_slot():
    groups = group_by_slot([b"{a}1", b"{a}2", b"b"])
    assert groups[hash_slot(b"a")] == [b"{a}1", b"{a}2"]
    assert groups[hash_slot(b"b")] == [b"b"]


# ------------------------------------------------------------------ rate limiting


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_paces_to_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    for _step in range(10):
        limiter.acquire(100)
    # 1000 keys at 1000 keys/s: one second in total (the first batch waits too: no initial burst)
    assert sum(clock.slept) == pytest.approx(1.0)


def test_rate_limiter_does_not_bank_idle_time_beyond_one_second():
    clock = FakeClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)
    limiter.acquire(1)
    clock.now += 3600  # idle for an hour
    assert limiter.wait_time(100) == pytest.approx(0.0)
    assert limiter.wait_time(100) == pytest.approx(1.0)


def test_rate_limiter_zero_means_unlimited():
    clock = FakeClock()
    limiter = RateLimiter(0, clock=clock, sleep=clock.sleep)
    limiter.acquire(10**9)
    assert clock.slept == []


@pytest.mark.parametrize("rate, size", [(0, 1000), (5, 1), (100, 10), (5000, 500), (10**6, 1000)])
def test_chunk_size(rate, size):
    assert chunk_size(rate) == size


def test_budget():
    budget = Budget(10)
    budget.add(10)
    assert not budget.exceeded
    budget.add(1)
    assert budget.exceeded
    unlimited = Budget(0)
    unlimited.add(10**9)
    assert not unlimited.exceeded


# ------------------------------------------------------- flush logic on a fake Redis


@pytest.fixture(autouse=True)
def _readable_commands(monkeypatch):
    """The fake server reads argument tuples: skip the hiredis byte serializer."""
    monkeypatch.setattr(core, "_pack_bytes", None)


class FakeConn:
    """Speaks just enough of Redis through redis-py's Connection interface."""

    def __init__(self, server):
        self.server = server
        self.replies = []
        self.disconnected = False

    def pack_command(self, *args):
        return args

    def send_packed_command(self, command, check_health=True):
        self.replies.append(self.server.execute(*command))

    def read_response(self):
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def disconnect(self):
        self.disconnected = True


class FakePool:
    def __init__(self, server):
        self.server = server

    def get_connection(self):
        return FakeConn(self.server)

    def release(self, conn):
        self.server.released += 1


class FakeRedis:
    def __init__(self, keys=(), ttl=None, moved_slots=(), fail_after=None):
        self.data = {k: (ttl or {}).get(k, -1) for k in keys}
        self.connection_pool = FakePool(self)
        self.moved_slots = set(moved_slots)
        self.commands = []
        self.released = 0
        self.fail_after = fail_after

    def execute(self, name, *args):
        name = name.decode() if isinstance(name, bytes) else name
        self.commands.append(name)
        if self.fail_after is not None and len(self.commands) > self.fail_after:
            return RedisConnError("Connection reset by peer")
        if name == "SCAN":
            cursor, _match, pattern, _count, count = args
            cursor = int(cursor)
            keys = sorted(self.data)
            page = keys[cursor:cursor + count]
            rx = compile_globs([pattern])
            nxt = cursor + count if cursor + count < len(keys) else 0
            return [str(nxt).encode(), [k for k in page if rx.match(k)]]
        if name == "UNLINK":
            if {hash_slot(k) for k in args} & self.moved_slots:
                return MovedError(f"{hash_slot(args[0])} 127.0.0.1:7001")
            return sum(self.data.pop(k, None) is not None for k in args)
        if name == "EXPIRE":
            key, ttl, _nx = args
            if self.data.get(key) == -1:
                self.data[key] = ttl
                return 1
            return 0
        if name == "TTL":
            return self.data.get(args[0], -2)
        return ResponseError(f"unknown command {name}")

    # the cluster-client side used for retries
    def unlink(self, key):
        return int(self.data.pop(key, None) is not None)

    def expire(self, key, ttl, nx=False):
        return self.execute("EXPIRE", key, ttl, "NX")


def keys_of(prefix, n):
    return [f"{prefix}{i}".encode() for i in range(n)]


def run(nodes, check_mode=False, fallback=None, **options):
    options.setdefault("patterns", ["cache:*"])
    return CacheFlusher([(f"n{i}", n) for i, n in enumerate(nodes)], options, fallback=fallback).run(check_mode)


def test_check_mode_counts_and_deletes_nothing_then_real_run_matches_it():
    server = FakeRedis(keys_of("cache:", 2500) + keys_of("sess:", 10) + keys_of("cache:keep:", 5))
    check = run([server], check_mode=True, exclude_patterns=["cache:keep:*"], batch_size=100)
    assert len(server.data) == 2515
    assert "UNLINK" not in server.commands
    real = run([server], exclude_patterns=["cache:keep:*"], batch_size=100)
    assert check["changed"] is real["changed"] is True
    assert check["matched"] == real["matched"] == check["deleted"] == real["deleted"] == 2500
    assert check["sample"] == real["sample"] == [k.decode() for k in sorted(keys_of("cache:", 2500))[:10]]
    assert len(real["sample"]) == 10
    assert check["diff"] == real["diff"] == {"before": {"keys": 2500}, "after": {"keys": 0}}
    assert sorted(server.data) == sorted(keys_of("sess:", 10) + keys_of("cache:keep:", 5))
    again = run([server], exclude_patterns=["cache:keep:*"])
    assert again["changed"] is False and again["deleted"] == 0
    assert server.released == 4  # every raw connection went back to its pool


def test_max_keys_refuses_before_deleting_anything_on_any_node():
    nodes = [FakeRedis(keys_of("cache:a", 60)), FakeRedis(keys_of("cache:b", 60))]
    refusal = r"more than max_keys=100 keys match \['cache:\*'\].*nothing was deleted"
    with pytest.raises(FlushError, match=refusal) as err:
        run(nodes, max_keys=100, batch_size=10)
    assert err.value.result["changed"] is False
    assert all(len(n.data) == 60 and "UNLINK" not in n.commands for n in nodes)
    assert run(nodes, max_keys=120)["deleted"] == 120


def test_sample_is_the_first_scanned_keys_of_each_node_sorted():
    nodes = [FakeRedis([b"cache:b", b"cache:d"]), FakeRedis([b"cache:a", b"cache:c"])]
    assert run(nodes, check_mode=True, sample_size=3)["sample"] == ["cache:a", "cache:b", "cache:c"]
    assert run(nodes, check_mode=True, sample_size=0)["sample"] == []


def test_moved_slot_keys_are_retried_through_the_cluster_client():
    keys = keys_of("cache:", 300)
    moved = {hash_slot(keys[0])}
    node = FakeRedis(keys, moved_slots=moved)
    result = run([node], fallback=node)
    assert result["deleted"] == 300 and result["skipped"] == 0
    assert node.data == {}
    assert any("MOVED" in e or "127.0.0.1:7001" in e for e in result["errors"])


def test_moved_keys_that_keep_failing_are_skipped_not_fatal():
    keys = keys_of("cache:", 300)
    node = FakeRedis(keys, moved_slots={hash_slot(keys[0])})

    class Broken:
        def unlink(self, key):
            raise ResponseError("TRYAGAIN Multiple keys request during rehashing of slot")

    result = run([node], fallback=Broken())
    moved = sum(hash_slot(k) == hash_slot(keys[0]) for k in keys)
    assert result["skipped"] == moved and result["deleted"] == 300 - moved
    assert result["nodes"][0]["skipped"] == moved


def test_standalone_refusal_fails_with_what_to_check():
    node = FakeRedis(keys_of("cache:", 5), moved_slots={hash_slot(k) for k in keys_of("cache:", 5)})
    with pytest.raises(FlushError, match="refused 5 of 5 keys.*writable primary"):
        run([node])


def test_lost_connection_mid_flush_says_run_again():
    node = FakeRedis(keys_of("cache:", 3000), fail_after=3)
    with pytest.raises(FlushError, match="lost n0 during UNLINK after .* run again"):
        run([node], batch_size=5000)


def test_expire_only_keys_without_ttl_check_equals_real_and_second_run_unchanged():
    keys = keys_of("prod_", 20)
    node = FakeRedis(keys, ttl={k: 50 for k in keys[:5]})
    check = run([node], check_mode=True, patterns=["prod_*"], action="expire", ttl=3600)
    assert all(v in (50, -1) for v in node.data.values())
    real = run([node], patterns=["prod_*"], action="expire", ttl=3600)
    assert check["expired"] == real["expired"] == 15 and check["matched"] == real["matched"] == 20
    assert check["diff"] == real["diff"] == {"before": {"keys_without_ttl": 15}, "after": {"keys_without_ttl": 0}}
    assert [node.data[k] for k in keys[:5]] == [50] * 5
    assert all(node.data[k] == 3600 for k in keys[5:])
    assert run([node], patterns=["prod_*"], action="expire", ttl=3600)["changed"] is False


def test_rate_limit_uses_small_commands(monkeypatch):
    node = FakeRedis(keys_of("cache:", 50))
    seen = []
    monkeypatch.setattr(core.RateLimiter, "acquire", lambda self, n: seen.append(n))
    run([node], rate_limit=100)
    assert seen == [10] * 5


def test_summarize_shape():
    result = core.summarize([{"node": "a", "matched": 3, "deleted": 2, "skipped": 1}], "delete", ["k"], 1.0, 1.5)
    assert result == {"changed": True, "mode": "pattern", "action": "delete", "matched": 3, "deleted": 2,
                      "skipped": 1, "sample": ["k"], "duration_ms": 500,
                      "nodes": [{"node": "a", "matched": 3, "deleted": 2, "skipped": 1}],
                      "diff": {"before": {"keys": 3}, "after": {"keys": 1}}}
