#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_cache_flush
short_description: Invalidate Redis cache keys by pattern, safely and fast, standalone or cluster
version_added: 0.1.0
description:
  - Deletes (C(UNLINK)) or sets a TTL on the keys matching glob O(patterns), leaving the keys
    matching O(exclude_patterns) alone, or empties a whole database (C(FLUSHDB ASYNC)) or
    server (C(FLUSHALL ASYNC)).
  - Never uses C(KEYS). Keys are found with C(SCAN cursor MATCH pattern COUNT n), n being
    O(batch_size), and removed with pipelined multi-key C(UNLINK) commands, so the server
    keeps answering other clients during the flush (each command does a bounded amount of
    work).
  - On a Redis Cluster (ElastiCache cluster mode) every primary is scanned over a direct
    connection, all primaries in parallel; each C(UNLINK) only holds keys of one hash slot
    (no C(CROSSSLOT) errors). A key whose slot moves during the run (C(MOVED), C(ASK)) is
    retried through the cluster client; a key that still cannot be removed is counted in
    RV(skipped) instead of failing the run.
  - Before changing anything the module counts all matching keys; when more than O(max_keys)
    match it fails and deletes nothing. The matched keys are then removed from that snapshot,
    so check mode and the real run act on the same keys. Keys written after the scan are not
    touched (run the task again).
  - Reports C(changed) only when a key was deleted or got a TTL, so a second run is unchanged.
  - Replaces the runbook commands C(redis-cli --scan --pattern ... | xargs redis-cli del),
    the Lua C(KEYS) + C(del) script, C(FLUSHALL)/C(FLUSHDB) "emergency only" and the
    C(SCAN)/C(TTL)/C(EXPIRE) shell loop that gives keys without a TTL one.
author:
  - ops.runbooks team (@ops-runbooks)
extends_documentation_fragment:
  - ops.runbooks._redis
  - ops.runbooks._attributes
  - ops.runbooks._attributes.actiongroup_redis
attributes:
  check_mode:
    support: full
    details:
      - Scans and counts exactly like a real run (for O(action=expire) it also asks the TTL of
        each matched key) and changes nothing.
  diff_mode:
    support: full
    details:
      - The diff holds counts, not key names - C(keys) (or C(keys_without_ttl)) before and after.
  idempotent:
    support: full
options:
  mode:
    description:
      - V(pattern) acts on the keys matching O(patterns).
      - V(db) empties the selected database (O(db)) with C(FLUSHDB ASYNC), on every primary of a
        cluster. Needs O(force=true).
      - V(all) empties every database with C(FLUSHALL ASYNC), on every primary of a cluster.
        Needs O(force=true).
      - O(max_keys) does not apply to V(db) and V(all); O(force) is their guard.
    type: str
    choices: [pattern, db, all]
    default: pattern
  patterns:
    description:
      - Redis glob patterns (C(*), C(?), C([abc]), C([^a]), C(\) escapes), as for C(SCAN MATCH),
        for example V(liquid_abt:exchange_rate:*).
      - Required with O(mode=pattern). A pattern made only of C(*) and C(?) matches every key and
        needs O(force=true).
      - On a cluster, a hash tag in a pattern does not limit the scan to one node.
    type: list
    elements: raw
  exclude_patterns:
    description:
      - Keys matching any of these glob patterns are never touched, for example sessions or
        queues (V(bull:*), V(sess:*)) that must survive a cache flush.
      - Matched by the module with the same rules as Redis' glob.
    type: list
    elements: raw
    default: []
  action:
    description:
      - V(delete) removes the matched keys with C(UNLINK) (memory is freed in the background).
      - V(expire) gives the matched keys that have no TTL a TTL of O(ttl) seconds
        (C(EXPIRE key ttl NX), Redis 7+); keys that already have a TTL are left as they are.
    type: str
    choices: [delete, expire]
    default: delete
  ttl:
    description:
      - Seconds to set with O(action=expire). Required with it, not allowed otherwise.
    type: int
  batch_size:
    description:
      - C(COUNT) hint of each C(SCAN) call. Larger is faster, smaller keeps each call shorter
        for other clients. 1000 to 5000 suits caches of millions of keys.
    type: int
    default: 1000
  max_keys:
    description:
      - Fail, before anything is changed, when more keys than this match.
      - The check needs the whole keyspace scanned first, and the matched keys are held in
        memory by the module (roughly 100 bytes per key) until they are removed. V(0) means
        no limit; for tens of millions of keys prefer O(mode=db).
    type: int
    default: 100000
  rate_limit:
    description:
      - Keys per second to delete or expire at most (over all primaries together). V(0) means
        unlimited (the server still serves other clients between commands).
    type: int
    default: 0
  sample_size:
    description:
      - How many matched key names to return in RV(sample), the first ones C(SCAN) returned on
        each primary, sorted, so an unchanged keyspace gives the same sample in check mode and
        in the real run.
    type: int
    default: 10
  force:
    description:
      - Required for a pattern that matches every key, for O(mode=db) and for O(mode=all).
    type: bool
    default: false
notes:
  - Point O(login_host) at a primary. On a cluster, any node (or the configuration endpoint)
    will do; the module finds the primaries.
  - Memory of deleted keys is reclaimed by Redis in a background thread (C(UNLINK),
    C(FLUSHDB ASYNC)).
seealso:
  - module: community.general.redis
    description: Only C(FLUSHALL)/C(FLUSHDB), not cluster-aware, and always reports a change.
"""

EXAMPLES = r"""
- name: Invalidate the exchange-rate cache (000 runbook)
  ops.runbooks.redis_cache_flush:
    login_host: "{{ redis_host }}"
    login_password: "{{ redis_password }}"
    patterns:
      - "liquid_abt:exchange_rate:*"

- name: Drop expired-order keys on the ElastiCache cluster, at most 5000 keys/s
  ops.runbooks.redis_cache_flush:
    login_host: clustercfg.prod-cache.abc123.apse2.cache.amazonaws.com
    tls: true
    login_password: "{{ elasticache_auth_token }}"
    cluster: true
    patterns: ["liquid_abt:expired:*"]
    rate_limit: 5000

- name: Flush everything but sessions and the Bull queues, preview first
  ops.runbooks.redis_cache_flush:
    url: "{{ lookup('ansible.builtin.env', 'REDIS_URL') }}"
    patterns: ["*"]
    exclude_patterns: ["sess:*", "bull:*"]
    force: true
    max_keys: 2000000
  check_mode: true
  register: preview

- name: Give prod_* keys without a TTL one hour (004 runbook 14)
  ops.runbooks.redis_cache_flush:
    login_host: prod-redis
    patterns: ["prod_*"]
    action: expire
    ttl: 3600

- name: Emergency - empty database 0 on every primary (FLUSHDB ASYNC)
  ops.runbooks.redis_cache_flush:
    login_host: prod-redis
    mode: db
    force: true

- name: Connection options once for every Redis module of the play
  module_defaults:
    group/ops.runbooks.redis:
      login_host: prod-redis
      login_password: "{{ redis_password }}"
  block:
    - name: Invalidate product pages
      ops.runbooks.redis_cache_flush:
        patterns: ["page:product:*"]
"""

RETURN = r"""
mode:
  description: The O(mode) used.
  returned: always
  type: str
  sample: pattern
action:
  description: The O(action) used (V(delete) for O(mode=db) and O(mode=all)).
  returned: always
  type: str
  sample: delete
matched:
  description:
    - Keys that matched (after O(exclude_patterns)); for O(mode=db) and O(mode=all) the number
      of keys in the database(s) before the flush.
    - When O(max_keys) is exceeded, the count reached when the scan stopped.
  returned: always
  type: int
  sample: 1523
deleted:
  description:
    - Keys removed. In check mode, the keys a real run would remove.
    - Can be lower than RV(matched) when keys expired or were deleted by someone else meanwhile.
  returned: when O(action=delete)
  type: int
  sample: 1523
expired:
  description: Keys that had no TTL and got one (in check mode, that would get one).
  returned: when O(action=expire)
  type: int
  sample: 87
skipped:
  description: Keys that could not be changed because their cluster slot kept moving.
  returned: always
  type: int
  sample: 0
sample:
  description: Up to O(sample_size) of the matched key names (the first ones found, sorted).
  returned: always
  type: list
  elements: str
  sample: ["liquid_abt:exchange_rate:AUD", "liquid_abt:exchange_rate:BTC"]
nodes:
  description: Per primary (one entry for a standalone server).
  returned: always
  type: list
  elements: dict
  contains:
    node:
      description: C(host:port) of the primary.
      type: str
    matched:
      description: Keys matched on that primary.
      type: int
    deleted:
      description: Keys removed there (with O(action=delete)).
      type: int
    expired:
      description: Keys given a TTL there (with O(action=expire)).
      type: int
    skipped:
      description: Keys of that primary that could not be changed.
      type: int
  sample: [{"node": "10.0.1.5:6379", "matched": 512, "deleted": 512, "skipped": 0}]
errors:
  description: The first errors behind RV(skipped), per primary.
  returned: when keys were skipped
  type: list
  elements: str
duration_ms:
  description: Wall-clock time of the scan and the flush, in milliseconds.
  returned: always
  type: int
  sample: 1840
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._redis_cache_flush import (  # noqa: E402
    DEFAULT_MAX_KEYS,
    CacheFlusher,
    FlushError,
    primaries,
    validate,
)
from ansible_collections.ops.runbooks.plugins.module_utils._redis_client import (  # noqa: E402
    RedisConnectionError,
    check_redis,
    connect,
    describe_target,
    failure_message,
    is_cluster,
    redis_argument_spec,
)


def argument_spec() -> dict:
    spec = redis_argument_spec()
    spec.update(
        mode={"type": "str", "choices": ["pattern", "db", "all"], "default": "pattern"},
        patterns={"type": "list", "elements": "raw"},
        exclude_patterns={"type": "list", "elements": "raw", "default": []},
        action={"type": "str", "choices": ["delete", "expire"], "default": "delete"},
        ttl={"type": "int"},
        batch_size={"type": "int", "default": 1000},
        max_keys={"type": "int", "default": DEFAULT_MAX_KEYS, "no_log": False},
        rate_limit={"type": "int", "default": 0},
        sample_size={"type": "int", "default": 10},
        force={"type": "bool", "default": False},
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    problems = validate(params)
    if problems:
        module.fail_json(msg="; ".join(problems), changed=False)
    check_redis(module)
    try:
        client = connect(params)
    except RedisConnectionError as exc:
        module.fail_json(msg=str(exc), changed=False)

    cluster = is_cluster(client)
    try:
        nodes = primaries(client, cluster, describe_target(params))
        flusher = CacheFlusher(nodes, params, fallback=client if cluster else None)
        result = flusher.run(check_mode=module.check_mode)
    except FlushError as exc:
        module.fail_json(msg=str(exc), **exc.result)
    except Exception as exc:  # noqa: BLE001 pylint: disable=broad-except  # an unexpected library error
        module.fail_json(msg=failure_message(params, str(exc) or type(exc).__name__), changed=False)
    finally:
        client.close()
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
