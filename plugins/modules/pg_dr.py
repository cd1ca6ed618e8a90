#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_dr
short_description: PostgreSQL steps of a disaster recovery (promote, fence, rename, drop, comment, space)
version_added: 0.1.0
description:
  - The database-side steps of runbook 002 ("PostgreSQL Down", "Promote replica if primary failed") and of a
    restore drill, each one guarded so that a tired operator cannot make things worse.
  - V(info) - read-only; whether the server is in recovery, its version, whether it is fenced (read-only), its
    WAL position, on a standby what it received and replayed; with O(name) that database's existence, size,
    comment and connections.
  - V(promote) - promote the standby the module connects to, after measuring what would be lost (WAL received but
    not replayed, time since the last replayed transaction) and refusing when O(old_primary) still accepts writes,
    when the standby still streams from a live primary, or when the data loss exceeds O(max_data_loss).
  - V(fence) - make the old primary the module connects to refuse writes (C(ALTER SYSTEM SET
    default_transaction_read_only = on), reload, terminate every other client session), so it cannot come back
    as a second primary. An unreachable server is reported (not a failure) so the caller can make sure it stays
    down.
  - V(rename) - rename database O(name) to O(new_name) (the old production database is kept, never dropped).
  - V(drop) - drop database O(name), only when its comment carries an ops.runbooks tag (a database this
    collection created for a drill or a verification), unless O(force=true).
  - V(comment) - set the comment of database O(name), for example to tag a drill database, or to remove the tag
    of a restored database that became production so no clean-up ever drops it.
  - V(space) - free disk space where a restore would write, on the host the task runs on (delegate it to the
    database host), failing when less than O(need) is free.
  - V(query) - read-only smoke queries on a (restored) database, each checked against a minimum (runbook 004
    "Verify Data" - counts of the critical tables). Never changes anything.
author:
  - ops.runbooks team (@ops-runbooks)
extends_documentation_fragment:
  - ops.runbooks._postgres
  - ops.runbooks._attributes
  - ops.runbooks._attributes.actiongroup_postgres
attributes:
  check_mode:
    support: full
    details:
      - Every action reads the state and takes its decisions (guards included) exactly as in a real run, then
        reports what it would change without changing anything. V(promote) measures the lag and data loss in check
        mode too.
  diff_mode:
    support: full
    details:
      - V(promote) shows C(in_recovery), V(fence) C(default_transaction_read_only) and the number of client
        sessions, V(rename) the database name, V(drop) its existence and comment, V(comment) the comment.
  idempotent:
    support: full
    details:
      - A promoted server is no longer in recovery, a fenced one is read-only with no other client session, a
        renamed database is found under its new name, a dropped one is gone, a set comment is equal.
options:
  action:
    description:
      - The step to run; see the description.
    type: str
    required: true
    choices: [info, promote, fence, rename, drop, comment, space, query]
  name:
    description:
      - The database to describe (V(info)), rename (V(rename)), drop (V(drop)) or comment (V(comment)).
      - Required for V(rename), V(drop) and V(comment). At most 63 bytes (PostgreSQL would truncate longer names).
    type: str
  new_name:
    description:
      - The new name for V(rename). Must not exist yet; when O(name) is gone and O(new_name) exists the rename is
        considered done (no change).
    type: str
  comment:
    description:
      - The comment for V(comment); an empty string removes the comment.
      - A comment starting with V(ops.runbooks.pg_dr) (or with the scratch tag of M(ops.runbooks.backup_verify))
        marks the database as droppable by V(drop) without O(force).
    type: str
  terminate:
    description:
      - V(rename) - terminate the sessions connected to O(name). Without it a database with sessions is not
        renamed and the task fails, saying how many there are.
    type: bool
    default: false
  force:
    description:
      - V(promote) - promote although a guard refused (old primary accepts writes, the standby still streams, data
        loss over O(max_data_loss)); the reasons are returned in RV(forced).
      - V(drop) - drop a database that does not carry the ops.runbooks tag.
    type: bool
    default: false
  old_primary:
    description:
      - V(promote) - connection to the old primary. When it answers and is neither in recovery nor fenced
        (read-only), the promotion is refused (two primaries). When it cannot be reached the promotion goes on
        and RV(old_primary.reachable) is V(false). When it answers but refuses the login, the promotion is
        refused, because it cannot be checked.
      - Same options as the module's own connection options, without environment fallbacks.
    type: dict
    suboptions:
      login_host:
        description: Host name or IP address of the old primary.
        type: str
      login_port:
        description: TCP port.
        type: int
        default: 5432
      login_user:
        description: Role to connect as.
        type: str
        default: postgres
      login_password:
        description: Password of O(old_primary.login_user); never shown.
        type: str
      login_db:
        description: Database to connect to.
        type: str
      login_unix_socket:
        description: Directory of the server's Unix socket; takes precedence over O(old_primary.login_host).
        type: path
      ssl_mode:
        description: libpq C(sslmode).
        type: str
        default: prefer
        choices: [disable, allow, prefer, require, verify-ca, verify-full]
      ssl_rootcert:
        description: CA certificate for V(verify-ca) / V(verify-full).
        type: path
      connect_timeout:
        description: Seconds to wait for a connection; an old primary that does not answer in time counts as
          unreachable.
        type: int
        default: 10
      dsn:
        description: A complete libpq connection string; replaces the other options; never shown.
        type: str
  incident_time:
    description:
      - V(promote) - when the primary was lost, in ISO 8601 (V(2026-11-23T03:12:00Z); without a zone it is UTC).
        The data loss is this time minus the last transaction the standby replayed.
      - Not set means now.
    type: str
  max_data_loss:
    description:
      - V(promote) - refuse to promote when the data loss is longer than this (RPO), for example V(15m), V(1h),
        V(30s) or a number of seconds, unless O(force=true).
      - Also refused when the loss cannot be measured (the standby replayed no transaction since it started).
    type: str
  wait_timeout:
    description:
      - V(promote) - seconds C(pg_promote()) waits for the promotion to finish.
    type: int
    default: 60
  tablespace:
    description:
      - V(space) - measure the filesystem of this tablespace. Not set means the default tablespace. Finding the
        directory of C(pg_default) needs a superuser or a member of C(pg_read_all_settings).
      - Mutually exclusive with O(path).
    type: str
  path:
    description:
      - V(space) - measure the filesystem holding this directory instead; no database connection is made.
    type: path
  need:
    description:
      - V(space) - fail when less than this is free, in bytes or with a unit (V(500MB), V(2GiB)).
    type: str
  queries:
    description:
      - V(query) - smoke queries, each run in its own C(READ ONLY) transaction with a statement timeout of
        O(wait_timeout) seconds, so none can change anything. The first value of the first row is the result.
      - The task fails when a query errors, returns no row, or its value is below C(min_value).
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the check, unique in the list.
        type: str
        required: true
      sql:
        description: The query.
        type: str
        required: true
      min_value:
        description: The first value of the first row must be a number at least this (for example a C(count(*))).
        type: float
notes:
  - Privileges are checked before anything changes (in check mode too), so a missing one fails the task with
    what to grant, and nothing half-done.
  - V(promote) and V(fence) need a superuser (or, for V(promote), EXECUTE on C(pg_promote); for V(fence),
    C(ALTER SYSTEM) on C(default_transaction_read_only) and C(pg_signal_backend)). V(rename), V(drop) and
    V(comment) need the database owner or a superuser (V(rename) also C(CREATEDB)), and V(rename) and V(drop)
    a connection to another database (O(login_db)).
  - Data loss. RV(data_loss_seconds) is measured from the last transaction the standby replayed; it is an upper
    bound, because on PostgreSQL 14 and later the promotion first replays the WAL already received (also when
    replay was paused) and because an idle primary commits nothing. After a real promotion
    RV(final_data_loss_seconds) gives the figure from the last transaction actually replayed.
  - A fence is a default, not a wall. A session can still run C(SET default_transaction_read_only = off); roles or
    databases with that setting are reported in RV(warnings). Stop the old primary when you can, and rebuild it as
    a standby of the new primary.
  - Every query starts with C(/* ops.runbooks pg_dr:... */) so the module's statements are recognisable.
seealso:
  - name: PostgreSQL failover
    description: Promoting a standby and avoiding two primaries.
    link: https://www.postgresql.org/docs/current/warm-standby-failover.html
  - module: ops.runbooks.pg_health
  - module: ops.runbooks.backup_verify
"""

EXAMPLES = r"""
- name: Primary lost (runbook 002) - fence the old primary if it still answers
  ops.runbooks.pg_dr:
    action: fence
    login_host: db-primary.internal
    login_password: "{{ vault_pg_password }}"
  register: fence

- name: Promote the replica, at most 15 minutes of data lost since the incident
  ops.runbooks.pg_dr:
    action: promote
    login_host: db-replica-1.internal
    login_password: "{{ vault_pg_password }}"
    incident_time: "{{ dr_incident_time }}"
    max_data_loss: 15m
    old_primary:
      login_host: db-primary.internal
      login_password: "{{ vault_pg_password }}"
      connect_timeout: 3
  register: promoted

- name: Report the measured RPO
  ansible.builtin.debug:
    msg: "lost at most {{ promoted.final_data_loss_seconds | default(promoted.data_loss_seconds) }} s"

- name: Enough room for the restore on the database host?
  ops.runbooks.pg_dr:
    action: space
    need: 20GB
    login_host: 127.0.0.1
  delegate_to: db-primary.internal

- name: Keep the broken production database under another name
  ops.runbooks.pg_dr:
    action: rename
    name: bitcurrent
    new_name: bitcurrent_broken_20261123
    terminate: true
    login_db: postgres

- name: The restored database became production - remove its drill tag
  ops.runbooks.pg_dr:
    action: comment
    name: bitcurrent
    comment: "production since 2026-11-23 (restored by dr_restore.yml)"

- name: Drop a drill database (only if it carries the ops.runbooks tag)
  ops.runbooks.pg_dr:
    action: drop
    name: bitcurrent_dr_20261123t031200
"""

RETURN = r"""
queries:
  description: V(query) - the verdict of each smoke query.
  returned: action is query
  type: list
  elements: dict
  sample: [{"name": "users", "ok": true, "value": 500, "rows": 1, "msg": "500 >= min_value 1.0"}]
failed_queries:
  description: V(query) - how many smoke queries failed.
  returned: action is query
  type: int
  sample: 0
in_recovery:
  description: Whether the server is a standby (for V(promote), after the promotion; predicted in check mode).
  returned: action is info, promote or fence and the server was reached
  type: bool
  sample: false
server_version:
  description: The server's C(server_version).
  returned: action is info or promote
  type: str
  sample: 15.18 (Debian 15.18-0+deb12u1)
server_version_num:
  description: The server's C(server_version_num).
  returned: action is info
  type: int
  sample: 150018
read_only:
  description: C(default_transaction_read_only) is on (the server is fenced).
  returned: action is info
  type: bool
  sample: false
current_lsn:
  description: The primary's current WAL position.
  returned: action is info and the server is a primary
  type: str
  sample: 0/3001228
standby:
  description: On a standby, C(receive_lsn), C(replay_lsn), C(lag_bytes), C(last_replay_at), C(replay_paused),
    C(wal_receiver) (C(status), C(sender)), as for V(promote), and C(can_promote) (the login role may execute
    C(pg_promote())).
  returned: action is info and the server is a standby
  type: dict
database:
  description:
    - V(info) and V(drop) - the database O(name) - C(name), C(exists), C(size_bytes), C(comment), C(connections)
      (sessions connected to it, not counting the module's), C(tagged) (its comment carries an ops.runbooks tag),
      C(owned) (the login role owns it or is a superuser, so it may rename, drop or comment it).
  returned: action is info with name, or drop
  type: dict
  sample: {name: app, exists: true, size_bytes: 8004387, comment: null, connections: 3, tagged: false, owned: true}
promoted:
  description: The server was (or in check mode would be) promoted by this task. V(false) when it already was a
    primary.
  returned: action is promote
  type: bool
  sample: true
receive_lsn:
  description: Last WAL position the standby received, before promoting.
  returned: action is promote and the server was a standby
  type: str
  sample: 0/30011B0
replay_lsn:
  description: Last WAL position the standby replayed, before promoting.
  returned: action is promote and the server was a standby
  type: str
  sample: 0/3001148
lag_bytes:
  description: WAL received but not yet replayed, before promoting (the promotion replays it).
  returned: action is promote and the server was a standby
  type: int
  sample: 104
last_replay_at:
  description: Commit time of the last transaction replayed before promoting (C(pg_last_xact_replay_timestamp())).
  returned: action is promote and the server was a standby
  type: str
  sample: "2026-11-23T03:11:58.120Z"
replay_paused:
  description: Replay was paused (C(pg_wal_replay_pause())) before promoting.
  returned: action is promote and the server was a standby
  type: bool
  sample: false
wal_receiver:
  description: C(status) and C(sender) (host:port) of the standby's WAL receiver before promoting; null values
    when not connected or not visible to the login role.
  returned: action is promote and the server was a standby
  type: dict
  sample: {status: null, sender: null}
incident_time:
  description: The incident time used (O(incident_time) or the time of the run), ISO 8601 UTC.
  returned: action is promote and the server was a standby
  type: str
data_loss_seconds:
  description: O(incident_time) minus RV(last_replay_at), at least 0; null when the standby replayed no
    transaction since it started. An upper bound, see the notes.
  returned: action is promote and the server was a standby
  type: float
  sample: 42.5
max_data_loss_seconds:
  description: O(max_data_loss) in seconds.
  returned: action is promote and the server was a standby
  type: float
old_primary:
  description: What was found at O(old_primary); null when O(old_primary) was not given.
  returned: action is promote and the server was a standby
  type: dict
  contains:
    target:
      description: host:port of the old primary.
      type: str
      sample: 10.0.0.5:5432
    reachable:
      description: It answered and the login worked.
      type: bool
    refused_login:
      description: It answered but refused the login (so it is alive and could not be checked).
      type: bool
    error:
      description: The connection error, when not reachable.
      type: str
      returned: when not reachable
    in_recovery:
      description: It is a standby.
      type: bool
      returned: when reachable
    read_only:
      description: It is fenced (C(default_transaction_read_only) on).
      type: bool
      returned: when reachable
    lsn:
      description: Its current WAL position (null when it is in recovery).
      type: str
      returned: when reachable
    unreceived_bytes:
      description: WAL it has that the standby never received (0 after a clean fence).
      type: int
      returned: when reachable and not in recovery
forced:
  description: The guards that refused and were overridden by O(force=true).
  returned: action is promote and the server was a standby
  type: list
  elements: str
promote_seconds:
  description: Time C(pg_promote()) took.
  returned: action is promote and the server was promoted (not in check mode)
  type: float
  sample: 0.91
timeline:
  description: Timeline of the promoted server.
  returned: action is promote and the server was promoted (not in check mode)
  type: int
  sample: 2
final_replay_at:
  description: Commit time of the last transaction replayed, after the promotion replayed the received WAL.
  returned: action is promote and the server was promoted (not in check mode)
  type: str
final_data_loss_seconds:
  description: O(incident_time) minus RV(final_replay_at), at least 0.
  returned: action is promote and the server was promoted (not in check mode)
  type: float
reachable:
  description: The server answered (V(fence)).
  returned: action is fence
  type: bool
  sample: true
fenced:
  description: The server refuses writes by default (or would, in check mode) after this task.
  returned: action is fence
  type: bool
  sample: true
client_sessions:
  description: Other client sessions found on the server before fencing.
  returned: action is fence and the server is a primary
  type: int
terminated:
  description: Sessions terminated (V(fence), V(rename)); in check mode, the number that would be.
  returned: action is fence or rename
  type: int
  sample: 3
actions:
  description: What was (or would be) done - V(set_read_only), V(terminate_sessions), V(rename).
  returned: action is fence or rename
  type: list
  elements: str
renamed:
  description: The database was (or would be) renamed by this task.
  returned: action is rename
  type: bool
dropped:
  description: The database was (or would be) dropped by this task.
  returned: action is drop
  type: bool
previous_comment:
  description: The comment before this task.
  returned: action is comment
  type: str
tagged:
  description: The new comment carries an ops.runbooks tag (V(drop) would accept the database).
  returned: action is comment
  type: bool
path:
  description: The directory measured (V(space)).
  returned: action is space
  type: str
  sample: /var/lib/postgresql/15/main
tablespace:
  description: The tablespace whose directory was measured; null when O(path) was given.
  returned: action is space
  type: str
  sample: pg_default
free_bytes:
  description: Bytes free for an unprivileged user (the C(postgres) OS user) on that filesystem.
  returned: action is space
  type: int
total_bytes:
  description: Size of that filesystem.
  returned: action is space
  type: int
need_bytes:
  description: O(need) in bytes.
  returned: action is space
  type: int
enough:
  description: RV(free_bytes) is at least RV(need_bytes) (true when O(need) is not set).
  returned: action is space
  type: bool
warnings:
  description: Things the operator should know (for example roles that override the fence).
  returned: when there are some
  type: list
  elements: str
"""

import socket  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._connection_errors import redact  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._pg_dr import (  # noqa: E402
    ACTIONS,
    Client,
    ConnectFailed,
    PgDrError,
    query_failure,
    run,
    validate,
)
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import (  # noqa: E402
    PostgresConnectionError,
    check_psycopg,
    connect,
    describe_target,
    other_server_argument_spec,
    postgres_argument_spec,
    secrets_of,
)


def argument_spec() -> dict:
    spec = postgres_argument_spec()
    spec.update(
        action={"type": "str", "required": True, "choices": list(ACTIONS)},
        name={"type": "str"},
        new_name={"type": "str"},
        comment={"type": "str"},
        terminate={"type": "bool", "default": False},
        force={"type": "bool", "default": False},
        old_primary={"type": "dict", "options": other_server_argument_spec()},
        incident_time={"type": "str"},
        max_data_loss={"type": "str"},
        wait_timeout={"type": "int", "default": 60},
        tablespace={"type": "str"},
        path={"type": "path"},
        need={"type": "str"},
        queries={"type": "list", "elements": "dict", "options": {
            "name": {"type": "str", "required": True},
            "sql": {"type": "str", "required": True},
            "min_value": {"type": "float"},
        }},
    )
    return spec


def connector(params: dict, target: str):
    def _connect():
        try:
            return Client(connect(params), target)
        except PostgresConnectionError as exc:
            msg = str(exc)
        raise ConnectFailed(msg)
    return _connect


def host_port(params: dict) -> str:
    """`host:port` of a connection (the middle of describe_target's user@host:port/db)."""
    return describe_target(params).split("@", 1)[-1].rsplit("/", 1)[0]


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    old = params.get("old_primary")
    secrets = secrets_of(params) + (secrets_of(old) if old else [])

    def fail(msg: str, **result):
        result.pop("msg", None)
        result.setdefault("changed", False)
        module.fail_json(msg=redact(msg, secrets), **result)

    try:
        opts = validate(params)
    except PgDrError as exc:
        fail(str(exc))
    needs_db = not (opts["action"] == "space" and opts.get("path"))
    if needs_db:
        check_psycopg(module)

    target = describe_target(params)
    where = host_port(params)
    try:
        result = run(opts, connector(params, where), module.check_mode,
                     connect_old=connector(old, host_port(old)) if old else None,
                     target=where, old_target=host_port(old) if old else "old_primary", host=socket.gethostname())
    except PgDrError as exc:
        fail(str(exc), **exc.result)
    except ConnectFailed as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except  # a statement failed or the connection died
        fail(query_failure(f"action={opts['action']}", target, exc))
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
