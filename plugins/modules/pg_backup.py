#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Dump a PostgreSQL database inside an exported snapshot, with a manifest
version_added: 0.1.0
description:
  - Runs C(pg_dump) in custom or directory format B(inside an exported snapshot). The module opens a
    C(REPEATABLE READ) transaction, calls C(pg_export_snapshot()) and runs C(pg_dump --snapshot) while that
    transaction stays open.
  - In the same snapshot it counts the rows of every table, so the manifest written beside the dump
    (C(<dump>.manifest.json)) describes exactly what the dump holds - per-table row counts, database size,
    server version, start/end time and the dump's sha256 (for a directory dump, of all its files).
  - M(ops.runbooks.backup_verify) uses that manifest to prove the backup restorable.
  - The dump is written under a temporary C(.partial) name and renamed when complete, so an interrupted run
    never leaves something that looks like a finished backup.
  - Retention (O(keep)) only ever removes backups this module made (recognised by their manifest) for the
    same database and O(prefix).
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
      - Connects to the database (read only) and reports the path it would write and the backups retention
        would remove; no dump is taken, so RV(manifest) is not returned.
  diff_mode:
    support: full
    details:
      - The list of backups in O(dest) before and after the run.
  idempotent:
    support: partial
    details:
      - Every run takes a new backup, unless O(min_interval) is set and a backup younger than that exists,
        in which case the run reports no change.
options:
  dest:
    description:
      - Existing directory the dump and its manifest are written to.
    type: path
    required: true
  format:
    description:
      - C(pg_dump) output format. V(custom) is one file; V(directory) allows parallel dumps (O(jobs)).
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description:
      - Parallel C(pg_dump) workers; only with O(format=directory).
    type: int
    default: 1
  compress:
    description:
      - Compression level 0-9 passed to C(pg_dump --compress). Default is C(pg_dump)'s own.
    type: int
  prefix:
    description:
      - File name prefix; the dump is named C(<prefix>_<UTC timestamp>.dump) (or C(.dir)).
      - Defaults to the database name. Retention only considers backups with the same prefix.
    type: str
  keep:
    description:
      - After a successful backup, keep only the newest O(keep) backups made by this module for this database
        and prefix (the new one included) and delete the older ones with their manifests.
      - Files not made by this module are never touched.
    type: int
  min_interval:
    description:
      - Do not take a new backup when the newest one made by this module for this database is younger than
        this (for example V(1h), V(15m), V(90) seconds); return that one with C(changed=false).
    type: str
  pg_bin_dir:
    description:
      - Directory holding C(pg_dump). Defaults to C(/usr/lib/postgresql/<server major>/bin) when it exists,
        else C(pg_dump) on E(PATH). C(pg_dump) must be at least the server's major version.
    type: path
notes:
  - The database dumped is the one the connection options name (O(login_db) or the O(dsn)'s database).
  - The password reaches C(pg_dump) through E(PGPASSWORD) in its environment, never on its command line.
seealso:
  - module: ops.runbooks.backup_verify
  - name: pg_dump --snapshot
    description: Using an exported snapshot for a consistent dump.
    link: https://www.postgresql.org/docs/15/app-pgdump.html
"""

EXAMPLES = r"""
- name: Nightly backup, keep a week
  ops.runbooks.pg_backup:
    login_host: db.internal
    login_user: backup
    login_password: "{{ vault_pg_backup_password }}"
    login_db: bunty_prod
    dest: /var/backups/bunty
    keep: 7
  register: backup

- name: Parallel directory dump, at most one per hour
  ops.runbooks.pg_backup:
    dsn: "{{ database_url }}"
    dest: /var/backups/app
    format: directory
    jobs: 4
    compress: 6
    min_interval: 1h

- name: Prove it restores
  ops.runbooks.backup_verify:
    path: "{{ backup.backup_path }}"
    restore_test: true
    restore_target:
      login_host: scratch-db.internal
      login_password: "{{ vault_scratch_password }}"
"""

RETURN = r"""
action:
  description: V(dump) when a new backup was taken (or would be in check mode), V(reuse) when O(min_interval)
    kept the newest one.
  returned: success
  type: str
  sample: dump
backup_path:
  description: Path of the dump (file or directory).
  returned: success
  type: str
  sample: /var/backups/bunty/bunty_prod_20260101T030000Z.dump
manifest_path:
  description: Path of the manifest beside the dump.
  returned: success
  type: str
  sample: /var/backups/bunty/bunty_prod_20260101T030000Z.dump.manifest.json
manifest:
  description: The manifest (not returned in check mode when a new dump would be taken).
  returned: success and not check mode
  type: dict
  contains:
    database:
      description: Database dumped.
      type: str
    server_version:
      description: Server version string.
      type: str
    snapshot:
      description: The exported snapshot the dump and the counts were taken in.
      type: str
    started_at:
      description: UTC start time (ISO 8601).
      type: str
    finished_at:
      description: UTC end time (ISO 8601).
      type: str
    database_size_bytes:
      description: C(pg_database_size()) at dump time.
      type: int
    dump_size_bytes:
      description: Size of the dump (all files for a directory dump).
      type: int
    sha256:
      description: sha256 of the dump file; for a directory dump, of the C(<sha256>  <file>) lines of its files.
      type: str
    tables:
      description: Exact row count per C(schema.table), counted in the dump's snapshot.
      type: dict
    format:
      description: V(custom) or V(directory).
      type: str
  sample:
    database: bunty_prod
    format: custom
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    tables: {public.orders: 120034, public.users: 5120}
removed:
  description: Backups deleted by retention (or that would be, in check mode).
  returned: success
  type: list
  elements: str
backups:
  description: Backups made by this module for this database and prefix after the run, newest first.
  returned: success
  type: list
  elements: str
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._backup_verify import (  # noqa: E402
    Interrupted,
    signals_raise,
)
from ansible_collections.ops.runbooks.plugins.module_utils._pg_backup import (  # noqa: E402
    FORMATS,
    PgBackupError,
    ProcessRunner,
    apply_retention,
    libpq_env,
    list_backups,
    parse_duration,
    pg_tool,
    plan_backup,
    safe_name,
    server_facts,
    take_backup,
    utcnow,
)
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import (  # noqa: E402
    PostgresConnectionError,
    check_psycopg,
    connect,
    connect_kwargs,
    parse_dsn,
    postgres_argument_spec,
    secrets_of,
)


def tool_kwargs(params: dict) -> dict:
    """libpq keywords for the client tools (a DSN is split so its password goes to PGPASSWORD)."""
    kw = connect_kwargs(params)
    if "conninfo" in kw:
        merged = parse_dsn(kw.pop("conninfo"))
        merged.update(kw)
        kw = merged
    return kw


def redact(msg: str, params: dict) -> str:
    for secret in sorted(secrets_of(params), key=len, reverse=True):
        msg = msg.replace(secret, "********")
    return msg


def validate(params: dict) -> None:
    if not os.path.isdir(params["dest"]):
        raise PgBackupError(f"dest {params['dest']} is not an existing directory; create it first (owned by the "
                            "user running the backup)")
    if params["keep"] is not None and params["keep"] < 1:
        raise PgBackupError(f"keep={params['keep']} would delete every backup; use 1 or more, or omit keep")
    if params["jobs"] < 1:
        raise PgBackupError(f"jobs={params['jobs']} is invalid; use 1 or more")
    if params["jobs"] > 1 and params["format"] != "directory":
        raise PgBackupError("jobs > 1 needs format=directory (pg_dump can only dump in parallel to a directory)")
    if params["compress"] is not None and not 0 <= params["compress"] <= 9:
        raise PgBackupError(f"compress={params['compress']} is invalid; use 0 (none) to 9")
    if params["min_interval"] is not None:
        try:
            parse_duration(params["min_interval"])
        except ValueError as exc:
            raise PgBackupError(f"min_interval: {exc}") from None
    if params["prefix"] is not None and safe_name(params["prefix"]) != params["prefix"]:
        raise PgBackupError(f"prefix {params['prefix']!r} is not a safe file name part; use letters, digits, "
                            "'_', '-' and '.'")


def main():
    spec = postgres_argument_spec()
    spec.update(
        dest={"type": "path", "required": True},
        format={"type": "str", "choices": list(FORMATS), "default": "custom"},
        jobs={"type": "int", "default": 1},
        compress={"type": "int"},
        prefix={"type": "str"},
        keep={"type": "int", "no_log": False},
        min_interval={"type": "str"},
        pg_bin_dir={"type": "path"},
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    check_psycopg(module)
    params = dict(module.params)
    result = {"changed": False, "removed": [], "backups": []}
    try:
        validate(params)
        conn = connect(params)
    except (PgBackupError, PostgresConnectionError) as exc:
        module.fail_json(msg=str(exc), **result)
    try:
        facts = server_facts(conn)
        database = facts["database"]
        params["prefix"] = params["prefix"] or safe_name(database)
        existing = list_backups(params["dest"], database, params["prefix"])
        plan = plan_backup(params, database, existing, utcnow())
        before = [b["path"] for b in existing]
        removed_paths = [b["path"] for b in plan["remove"]]
        after = [p for p in before if p not in removed_paths]
        if plan["action"] == "dump":
            after.insert(0, plan["backup_path"])
        result.update(action=plan["action"], backup_path=plan["backup_path"], manifest_path=plan["manifest_path"],
                      removed=removed_paths, backups=after,
                      changed=plan["action"] == "dump" or bool(removed_paths))
        if module._diff:
            result["diff"] = {"before": {"backups": before}, "after": {"backups": after}}
        if plan["action"] == "reuse":
            result["manifest"] = existing[0]["manifest"]
        if module.check_mode:
            module.exit_json(**result)
        if plan["action"] == "dump":
            tool = pg_tool("pg_dump", params["pg_bin_dir"], facts["server_version_num"] // 10000)
            env = libpq_env(tool_kwargs(params), dbname=database)
            with signals_raise():
                result["manifest"] = take_backup(conn, ProcessRunner(), plan, params, env, tool)
        apply_retention(plan["remove"], params["dest"])
    except Interrupted as exc:
        result.update(changed=False, removed=[])
        module.fail_json(msg=f"pg_backup {exc}: pg_dump was stopped and the partial dump removed; no backup "
                             "was written", **result)
    except (PgBackupError, OSError) as exc:
        result.update(changed=False, removed=[])
        text = str(exc) if isinstance(exc, PgBackupError) else f"backup failed: {exc}"
        module.fail_json(msg=redact(text, params), **result)
    except Exception as exc:  # noqa: BLE001  (psycopg errors: one line, no traceback, no secret)
        if type(exc).__module__.split(".", maxsplit=1)[0] != "psycopg":
            raise
        result.update(changed=False, removed=[])
        module.fail_json(msg=redact(f"PostgreSQL error: {' '.join(str(exc).split())}", params), **result)
    finally:
        conn.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
