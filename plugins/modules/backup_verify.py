#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_verify
short_description: Prove a PostgreSQL backup restorable - age, size, checksum, TOC, test restore, row counts
version_added: 0.1.0
description:
  - Checks a PostgreSQL dump (custom, directory, plain SQL or gzipped plain SQL) the way an on-call engineer
    would want it checked before trusting it, in one task.
  - C(exists), C(age) against an RPO (O(max_age)), C(size) (O(min_size)) and C(shrink) against the previous
    backup (O(max_shrink_pct)).
  - C(checksum) against the sha256 in the manifest M(ops.runbooks.pg_backup) writes, or a given sha256.
  - C(toc) with C(pg_restore --list) for custom/directory dumps; C(integrity) of a gzipped plain dump by
    streaming it through zlib (no temporary copy), or by reading every data block of an archive.
  - With O(restore_test=true), C(restore) into a uniquely named scratch database on O(restore_target)
    (C(pg_restore --jobs)), then C(row_counts) - exact C(count(*)) of every restored table, in parallel - compared
    with the manifest (counted by M(ops.runbooks.pg_backup) in the dump's own snapshot) or with the live source.
  - The scratch database is always dropped, also when the restore fails half-way or the task is interrupted
    (SIGTERM/SIGINT). Each scratch database carries a C(COMMENT) naming the host, pid and start time, so a later
    run drops scratch databases whose process is gone (after a C(SIGKILL), say).
  - Optionally checks that the newest RDS snapshot of an instance (O(rds)) is available and younger than its
    RPO.
  - The checksum runs in a thread while the archive is being restored and, with O(jobs) > 1, each table is counted
    as soon as C(pg_restore) reports its data loaded, so a full verification costs little more than the restore
    itself.
  - Never reports C(changed). Fails when the overall status reaches O(fail_on).
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
      - The module changes nothing that lasts, so check mode runs every check, the test restore included (its
        scratch database is dropped at the end), and returns the same result as a normal run.
  diff_mode:
    support: none
    details:
      - Nothing is changed, so there is nothing to diff.
  idempotent:
    support: full
options:
  path:
    description:
      - The dump to verify (a file, or a directory for a directory-format dump).
      - Mutually exclusive with O(latest_in).
    type: path
  latest_in:
    description:
      - Verify the newest entry (by modification time) of this directory that matches O(pattern). Manifests and
        C(.partial) files are ignored. The second newest is the previous backup for O(max_shrink_pct).
    type: path
  pattern:
    description:
      - Shell pattern for O(latest_in), for example V(db_*.sql.gz).
    type: str
    default: "*"
  format:
    description:
      - Dump format. V(auto) detects it from the content (directory, C(PGDMP) header, gzip magic, else plain
        SQL).
    type: str
    choices: [auto, custom, directory, plain, plain_gz]
    default: auto
  max_age:
    description:
      - RPO. The backup (its manifest's C(finished_at), else the file's modification time) must be younger,
        for example V(1h), V(15m), V(26h).
    type: str
  min_size:
    description:
      - Minimum size of the dump, in bytes or with a unit (V(10MB), V(1GiB)).
    type: str
  max_shrink_pct:
    description:
      - Critical when the dump is more than this many percent smaller than the previous backup.
    type: float
  checksum:
    description:
      - V(manifest) compares the dump's sha256 with the one in its manifest (critical when the manifest is
        missing); a 64-character sha256 compares with that; V(none) skips the check.
    type: str
    default: manifest
  allow_empty:
    description:
      - Accept a dump without any table data. By default a dump of an empty database is critical.
    type: bool
    default: false
  restore_test:
    description:
      - Restore the dump into a scratch database on O(restore_target) and count the rows.
    type: bool
    default: false
  restore_target:
    description:
      - Connection to a PostgreSQL server where the scratch database may be created (the user needs
        C(CREATEDB)). Same options as the module's own connection options, without environment fallbacks.
      - Required when O(restore_test=true).
    type: dict
    suboptions:
      login_host:
        description: Host name or IP address.
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
        description: Password of O(restore_target.login_user); never shown.
        type: str
      login_db:
        description: Maintenance database to connect to for C(CREATE DATABASE) / C(DROP DATABASE).
        type: str
        default: postgres
      login_unix_socket:
        description: Directory of the server's Unix socket; takes precedence over O(restore_target.login_host).
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
        description: Seconds to wait for a connection.
        type: int
        default: 10
      dsn:
        description: A complete libpq connection string; replaces the other options; never shown.
        type: str
  jobs:
    description:
      - Parallel C(pg_restore) jobs (custom/directory dumps), and connections used to count rows.
    type: int
    default: 1
  keep_scratch:
    description:
      - Keep the scratch database after the run (for inspection); its name is in RV(scratch_db). You drop it.
    type: bool
    default: false
  compare:
    description:
      - What the restored row counts are compared with. V(manifest) (exact, from the dump's snapshot),
        V(source) (live counts on the database named by the module's connection options, within
        O(tolerance_pct)), or V(none).
    type: str
    choices: [manifest, source, none]
    default: manifest
  tolerance_pct:
    description:
      - Allowed difference in percent per table for O(compare=source) (the live database keeps changing).
    type: float
    default: 0
  scratch_prefix:
    description:
      - Prefix of scratch database names (C(<prefix><timestamp>_<random>)); lower-case letters, digits and
        C(_), at least 3 characters. Only databases with this prefix and the module's tag are ever dropped.
    type: str
    default: ops_verify_
  scratch_db:
    description:
      - Use this exact scratch database name (it must start with O(scratch_prefix) and must not exist).
    type: str
  scratch_tablespace:
    description:
      - Create the scratch database in this tablespace (C(CREATE DATABASE ... TABLESPACE)) instead of the restore
        target's default, for example one on a scratch volume so a test restore cannot fill the disk production
        data lives on. The O(restore_target.login_user) needs C(CREATE) on it.
      - When that tablespace (or the default one) runs out of space, the restore check is critical with a message
        naming the tablespace, and the scratch database is dropped as always.
    type: str
  cleanup_stale:
    description:
      - Before restoring, drop scratch databases left by earlier runs whose process is gone (same host, dead
        pid) or that are older than O(stale_after).
    type: bool
    default: true
  stale_after:
    description:
      - Age after which a tagged scratch database from any host is considered abandoned.
    type: str
    default: 24h
  rds:
    description:
      - Check the newest RDS snapshot of an instance. Needs boto3. Credentials come from the usual boto3 chain
        unless given here.
    type: dict
    suboptions:
      db_instance_identifier:
        description: RDS instance identifier.
        type: str
        required: true
      region:
        description: AWS region.
        type: str
        required: true
      max_age:
        description: RPO for the newest available snapshot, for example V(26h).
        type: str
      snapshot_type:
        description: Which snapshots count.
        type: str
        choices: [all, automated, manual]
        default: all
      endpoint_url:
        description: Alternative endpoint (a VPC endpoint, or a local AWS stand-in such as moto in tests).
        type: str
      aws_access_key_id:
        description: Access key id.
        type: str
      aws_secret_access_key:
        description: Secret access key; never shown.
        type: str
      aws_session_token:
        description: Session token; never shown.
        type: str
      profile:
        description: Named profile from the AWS config files.
        type: str
  fail_on:
    description:
      - Fail the task when the overall status is at least this bad. V(never) only reports.
    type: str
    choices: [critical, warning, never]
    default: critical
  pg_bin_dir:
    description:
      - Directory holding C(pg_restore) and C(psql). Defaults to the newest C(/usr/lib/postgresql/*/bin), else
        E(PATH).
    type: path
notes:
  - The module's own connection options (O(login_host) ...) are only used with O(compare=source); the source
    database is only read.
  - The restore runs C(pg_restore --no-owner --no-privileges --exit-on-error), so roles need not exist on the
    restore target. Plain SQL dumps are fed to C(psql -v ON_ERROR_STOP=1) and must not need missing roles.
  - Passwords reach C(pg_restore)/C(psql) through E(PGPASSWORD) in their environment, never on a command line.
  - Interruptions. On SIGTERM or SIGINT (Ctrl-C, a killed job) the module stops C(pg_restore) and drops the
    scratch database at once. With the task keyword C(timeout), Ansible stops waiting; a module that is already
    restoring goes on to its end and drops the scratch database itself. After a SIGKILL the next run drops it
    (O(cleanup_stale)).
requirements:
  - boto3 (only for O(rds))
seealso:
  - module: ops.runbooks.pg_backup
"""

EXAMPLES = r"""
- name: Take a backup and prove it restorable
  ops.runbooks.pg_backup:
    login_db: bunty_prod
    dest: /var/backups/bunty
    keep: 7
  register: backup

- name: Verify it (checksum, TOC, restore into a scratch DB, row counts vs the manifest)
  ops.runbooks.backup_verify:
    path: "{{ backup.backup_path }}"
    max_age: 1h
    restore_test: true
    jobs: 2
    restore_target:
      login_host: scratch-db.internal
      login_user: verifier
      login_password: "{{ vault_verifier_password }}"

- name: The runbook's "gunzip -t" and "check the latest backup", done properly
  ops.runbooks.backup_verify:
    latest_in: /backups
    pattern: "db_*.sql.gz"
    max_age: 26h
    max_shrink_pct: 20
    checksum: none
    restore_test: true
    compare: source
    tolerance_pct: 5
    login_host: db.internal
    login_db: app
    login_password: "{{ vault_pg_password }}"
    restore_target:
      login_host: scratch-db.internal
      login_password: "{{ vault_scratch_password }}"

- name: RDS - newest snapshot available and younger than a day
  ops.runbooks.backup_verify:
    rds:
      db_instance_identifier: liquid-abt-production
      region: ap-southeast-2
      max_age: 26h
"""

RETURN = r"""
status:
  description: Worst status of all checks (V(ok), V(warning), V(critical)).
  returned: always
  type: str
  sample: ok
checks:
  description: One entry per check (exists, manifest, age, size, shrink, checksum, toc, integrity, restore,
    row_counts, rds_snapshot, rds_age) that ran or was skipped.
  returned: always
  type: dict
  sample:
    age: {status: ok, value: 812.4, threshold: 3600, msg: "backup is 14 min old (manifest finished_at), within 60 min"}
    checksum: {status: ok, value: 9f86d0..., threshold: 9f86d0..., msg: sha256 matches the manifest}
problems:
  description: Messages of the checks that are warning or critical.
  returned: always
  type: list
  elements: str
  sample: ["age: backup is 26.0 h old (file modification time); RPO (max_age) is 60 min: ..."]
backup_path:
  description: The dump that was verified (the newest match with O(latest_in)).
  returned: when a dump was looked at
  type: str
format:
  description: Format used (detected with O(format=auto)).
  returned: when the dump exists
  type: str
manifest_path:
  description: The manifest used, if one was found.
  returned: always
  type: str
backup_age_seconds:
  description: Age of the backup.
  returned: when the dump exists
  type: float
restore_seconds:
  description: Duration of the test restore.
  returned: when a restore ran
  type: float
tables:
  description: Per table (C(schema.table)), the expected and restored row counts and the status.
  returned: when rows were counted
  type: dict
  sample: {public.orders: {expected: 120034, actual: 120034, status: ok}}
timings:
  description: Seconds spent in each phase that ran (toc, scratch_create, row_counts after the restore,
    scratch_drop, checksum_wait - the part of the checksum not hidden behind the restore).
  returned: always
  type: dict
  sample: {toc: 0.03, scratch_create: 0.2, row_counts: 0.04, scratch_drop: 0.2, checksum_wait: 0.0}
tables_counted_during_restore:
  description: With O(jobs) > 1, how many tables were counted while C(pg_restore) was still running (as soon as
    their data was in), instead of after it.
  returned: when rows were counted with O(jobs) > 1
  type: int
scratch_db:
  description: Name of the scratch database (dropped unless O(keep_scratch)).
  returned: when one was created
  type: str
stale_scratch_dropped:
  description: Scratch databases of earlier, dead runs that this run dropped.
  returned: always
  type: list
  elements: str
"""

import glob  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._backup_verify import (  # noqa: E402
    FORMATS,
    Interrupted,
    TargetError,
    Verifier,
    should_fail,
    signals_raise,
)
from ansible_collections.ops.runbooks.plugins.module_utils._pg_backup import (  # noqa: E402
    PgBackupError,
    ProcessRunner,
    libpq_env,
    parse_duration,
    parse_size,
    pg_tool,
)
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import (  # noqa: E402
    HAS_PSYCOPG,
    check_psycopg,
    connect_kwargs,
    failure_message,
    other_server_argument_spec,
    parse_dsn,
    postgres_argument_spec,
    secrets_of,
)


def import_boto3():
    """boto3 is imported only when `rds` is used (it costs ~0.1-0.3 s and is optional)."""
    try:
        import boto3  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None, traceback.format_exc()
    return boto3, None


if HAS_PSYCOPG:
    import psycopg  # noqa: E402

SCRATCH_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{2,40}$")
REDACTED = "********"


def rds_spec() -> dict:
    return {
        "db_instance_identifier": {"type": "str", "required": True},
        "region": {"type": "str", "required": True},
        "max_age": {"type": "str"},
        "snapshot_type": {"type": "str", "choices": ["all", "automated", "manual"], "default": "all"},
        "endpoint_url": {"type": "str"},
        "aws_access_key_id": {"type": "str"},
        "aws_secret_access_key": {"type": "str", "no_log": True},
        "aws_session_token": {"type": "str", "no_log": True},
        "profile": {"type": "str"},
    }


def tool_kwargs(params: dict) -> dict:
    kw = connect_kwargs(params)
    if "conninfo" in kw:
        merged = parse_dsn(kw.pop("conninfo"))
        merged.update(kw)
        kw = merged
    return kw


def normalise(params: dict) -> dict:
    """Validated options for the core; raises PgBackupError with what is wrong and what to do."""
    opts = dict(params)
    for key, parse in (("max_age", parse_duration), ("min_size", parse_size), ("stale_after", parse_duration)):
        if params.get(key) is not None:
            try:
                opts[key] = parse(params[key])
            except ValueError as exc:
                raise PgBackupError(f"{key}: {exc}") from None
    if params.get("rds") and params["rds"].get("max_age") is not None:
        try:
            opts["rds"] = dict(params["rds"], max_age=parse_duration(params["rds"]["max_age"]))
        except ValueError as exc:
            raise PgBackupError(f"rds.max_age: {exc}") from None
    if not 1 <= params["jobs"] <= 64:
        raise PgBackupError(f"jobs={params['jobs']} is out of range; use 1 to 64 (about the restore target's CPUs)")
    for key in ("max_shrink_pct", "tolerance_pct"):
        if params.get(key) is not None and not 0 <= params[key] <= 100:
            raise PgBackupError(f"{key}={params[key]} is out of range; use a percentage from 0 to 100")
    csum = params["checksum"]
    if csum not in ("manifest", "none") and not re.fullmatch(r"[0-9a-fA-F]{64}", csum or ""):
        raise PgBackupError(f"checksum {csum!r} is neither 'manifest', 'none' nor a 64-character sha256 hex digest")
    if not SCRATCH_PREFIX.match(params["scratch_prefix"]):
        raise PgBackupError(f"scratch_prefix {params['scratch_prefix']!r} is unsafe; use 3-41 lower-case letters, "
                            "digits or '_' (it decides which databases may be dropped)")
    name = params.get("scratch_db")
    if name is not None and (not name.startswith(params["scratch_prefix"]) or len(name) > 63
                             or not re.fullmatch(r"[a-z0-9_]+", name)):
        raise PgBackupError(f"scratch_db {name!r} must start with scratch_prefix {params['scratch_prefix']!r}, use "
                            "lower-case letters, digits or '_' and be at most 63 characters, so it can never name a "
                            "real database")
    space = params.get("scratch_tablespace")
    if space is not None and (not space.strip() or len(space) > 63 or "\x00" in space):
        raise PgBackupError(f"scratch_tablespace {space!r} is not a PostgreSQL tablespace name (1-63 characters)")
    if params["restore_test"] and not params.get("restore_target"):
        raise PgBackupError("restore_test=true needs restore_target: the connection to a server where a scratch "
                            "database may be created")
    if params.get("latest_in") and not os.path.isdir(params["latest_in"]):
        raise PgBackupError(f"latest_in {params['latest_in']} is not a directory; check the path")
    return opts


def connector(params: dict):
    def _connect(dbname: str | None = None):
        kw = connect_kwargs(params)
        if dbname:
            kw["dbname"] = dbname
        try:
            return psycopg.connect(**kw, autocommit=True)
        except psycopg.Error as exc:
            msg = failure_message(params, str(exc))
        raise TargetError(msg)
    return _connect


def tool_finder(bin_dir: str | None):
    def _tool(name: str) -> str:
        if bin_dir:
            return pg_tool(name, bin_dir, None)
        for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                key=lambda d: int(re.sub(r"\D", "", d.split("/")[4]) or 0), reverse=True):
            if os.path.exists(os.path.join(directory, name)):
                return os.path.join(directory, name)
        return pg_tool(name, None, None)
    return _tool


def rds_lister(boto3):
    def _list(rds: dict) -> list:
        session = boto3.session.Session(profile_name=rds.get("profile"), region_name=rds["region"])
        client = session.client(
            "rds", region_name=rds["region"], endpoint_url=rds.get("endpoint_url"),
            aws_access_key_id=rds.get("aws_access_key_id"), aws_secret_access_key=rds.get("aws_secret_access_key"),
            aws_session_token=rds.get("aws_session_token"))
        kwargs = {"DBInstanceIdentifier": rds["db_instance_identifier"]}
        if rds.get("snapshot_type", "all") != "all":
            kwargs["SnapshotType"] = rds["snapshot_type"]
        snaps = []
        for page in client.get_paginator("describe_db_snapshots").paginate(**kwargs):
            snaps.extend(page.get("DBSnapshots", []))
        return snaps
    return _list


def all_secrets(params: dict) -> list[str]:
    found = secrets_of(params)
    if params.get("restore_target"):
        found += secrets_of(params["restore_target"])
    rds = params.get("rds") or {}
    found += [rds.get("aws_secret_access_key"), rds.get("aws_session_token")]
    return [s for s in found if s]


def redact_all(data, secrets):
    if isinstance(data, str):
        for secret in sorted(set(secrets), key=len, reverse=True):
            data = data.replace(secret, REDACTED)
        return data
    if isinstance(data, dict):
        return {k: redact_all(v, secrets) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_all(v, secrets) for v in data]
    return data


def main():
    spec = postgres_argument_spec()
    spec.update(
        path={"type": "path"},
        latest_in={"type": "path"},
        pattern={"type": "str", "default": "*"},
        format={"type": "str", "choices": ["auto", *FORMATS], "default": "auto"},
        max_age={"type": "str"},
        min_size={"type": "str"},
        max_shrink_pct={"type": "float"},
        checksum={"type": "str", "default": "manifest"},
        allow_empty={"type": "bool", "default": False},
        restore_test={"type": "bool", "default": False},
        restore_target={"type": "dict", "options": other_server_argument_spec(login_db="postgres")},
        jobs={"type": "int", "default": 1},
        keep_scratch={"type": "bool", "default": False},
        compare={"type": "str", "choices": ["manifest", "source", "none"], "default": "manifest"},
        tolerance_pct={"type": "float", "default": 0},
        scratch_prefix={"type": "str", "default": "ops_verify_"},
        scratch_db={"type": "str"},
        scratch_tablespace={"type": "str"},
        cleanup_stale={"type": "bool", "default": True},
        stale_after={"type": "str", "default": "24h"},
        rds={"type": "dict", "options": rds_spec()},
        fail_on={"type": "str", "choices": ["critical", "warning", "never"], "default": "critical"},
        pg_bin_dir={"type": "path"},
    )
    module = AnsibleModule(
        argument_spec=spec, supports_check_mode=True,
        mutually_exclusive=[("path", "latest_in")],
        required_one_of=[("path", "latest_in", "rds")],
    )
    params = module.params
    secrets = all_secrets(params)
    base = {"changed": False, "status": "critical", "checks": {}, "problems": [], "tables": {},
            "stale_scratch_dropped": []}
    try:
        opts = normalise(params)
    except PgBackupError as exc:
        module.fail_json(msg=redact_all(str(exc), secrets), **base)
    if params["restore_test"]:
        check_psycopg(module)
    boto3 = None
    if params.get("rds"):
        boto3, boto3_error = import_boto3()
        if boto3 is None:
            module.fail_json(msg=missing_required_lib("boto3"), exception=boto3_error, **base)
    target = params.get("restore_target") or {}
    verifier = Verifier(
        opts, ProcessRunner(),
        target=connector(target) if target else None,
        target_env=(lambda db: libpq_env(tool_kwargs(target), dbname=db)) if target else None,
        source=connector(params),
        tool=tool_finder(params.get("pg_bin_dir")),
        rds_snapshots=rds_lister(boto3),
        host=socket.gethostname(), pid=os.getpid(),
    )
    try:
        with signals_raise():
            result = verifier.run()
    except Interrupted as exc:
        partial = dict(base, **redact_all(verifier.result, secrets))
        module.fail_json(msg=f"backup_verify {exc}; scratch database {verifier.result.get('scratch_db')} was "
                             "dropped, child processes stopped", **partial)
    except (PgBackupError, TargetError) as exc:
        module.fail_json(msg=redact_all(str(exc), secrets), **base)
    except Exception as exc:  # noqa: BLE001  (psycopg errors on the target: say what happened, no traceback)
        if HAS_PSYCOPG and isinstance(exc, psycopg.Error):
            module.fail_json(msg=redact_all(f"PostgreSQL error during verification: {' '.join(str(exc).split())}",
                                            secrets), **base)
        raise
    result = redact_all(result, secrets)
    result["changed"] = False
    if should_fail(result["status"], params["fail_on"]):
        module.fail_json(msg=f"backup verification {result['status']}: " + " | ".join(result["problems"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
