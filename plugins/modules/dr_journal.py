#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dr_journal
short_description: Lock and journal of a disaster-recovery run, so runs never overlap and an interrupted run resumes
version_added: 0.1.0
description:
  - Keeps one JSON file (mode C(0600)) that is both the lock of a disaster-recovery run and its journal
    (which steps started, ended, failed, with timestamps and durations, plus free-form O(data) such as the
    name of the restored database).
  - O(state=present) acquires the lock. The file is written completely and linked into place only if no
    journal exists, so two runs can never both acquire it. The owner recorded is the C(ansible-playbook)
    process running the play, found by walking the module's parent processes (C(/proc/<pid>/stat),
    C(/proc/<pid>/cmdline)); RV(owner_detection) says how it was found.
  - If a journal exists, the same O(run_id) is a no-op; a live owner (same host and boot, pid alive and still
    C(ansible-playbook)) makes the task fail with who holds the lock; an owner that is gone (dead pid, the host
    rebooted, or for an owner on another host or an unknown pid, a journal older than O(stale_after)) is taken
    over - RV(resumed) is V(true), RV(previous) holds the old journal, and the new journal keeps its C(steps)
    and C(data), so the caller can continue or clean up where the interrupted run stopped.
  - O(state=updated) records a step's status (O(step), O(step_status)) and merges O(data); only the owner
    (same O(run_id)) may write. Every write is a temp file, C(fsync), then an atomic rename.
  - O(state=absent) releases the lock, optionally archiving the final journal to O(archive_to) first.
  - Runs where the lock must live, normally the control node (C(delegate_to=localhost), C(run_once=true)).
author:
  - ops.runbooks team (@ops-runbooks)
extends_documentation_fragment:
  - ops.runbooks._attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing is written; the result (C(changed), RV(resumed), RV(journal) as it would be) is the same as a
        real run's, and a run that would be refused fails the same way.
  diff_mode:
    support: full
    details:
      - The journal before and after.
  idempotent:
    support: partial
    details:
      - O(state=present) with the same O(run_id), O(state=updated) with an already recorded step status and
        data, and O(state=absent) on a missing journal report no change. Recording C(started) again for a step
        started by an interrupted run starts a new attempt (a change).
options:
  path:
    description:
      - The journal and lock file (absolute path). Its directory is created with mode C(0700) if missing.
      - Use the same path for every DR run that must not overlap (for example one per environment).
    type: path
    required: true
  state:
    description:
      - V(present) acquires the lock (or resumes an abandoned journal), V(updated) records a step or data,
        V(absent) releases the lock.
    type: str
    choices: [present, updated, absent]
    default: present
  run_id:
    description:
      - Identifier of this playbook run, chosen by the caller and used for every task of the run (for example
        C("{{ now(utc=true, fmt='%Y%m%dT%H%M%S') }}-{{ 99999 | random }}") set once with C(set_fact)).
      - Required for V(present) and V(updated), and for V(absent) unless O(force=true).
    type: str
  mode:
    description:
      - Free text stored in the journal, for example the DR mode (V(drill), V(restore), V(promote)).
    type: str
  data:
    description:
      - Key/value data. With V(present), the journal's initial data (merged over the data of a journal being
        resumed); with V(updated) and V(absent), merged into the journal's data, top-level keys replaced.
    type: dict
  step:
    description:
      - Name of the step to record (with O(state=updated)); needs O(step_status).
    type: str
  step_status:
    description:
      - V(started) records C(started_at) and counts an attempt; V(done), V(failed) and V(skipped) record
        C(ended_at) and C(seconds) since the start.
    type: str
    choices: [started, done, failed, skipped]
  step_msg:
    description:
      - Optional message stored with the step (why it failed, what it did).
    type: str
  stale_after:
    description:
      - For an owner on another host, or whose pid could not be determined, the time since the journal was last
        written after which it is considered abandoned and may be taken over, for example V(24h), V(90m).
    type: str
    default: 24h
  force:
    description:
      - With O(state=absent), remove the journal even if another O(run_id) owns it (an operator clearing a
        lock by hand).
    type: bool
    default: false
  archive_to:
    description:
      - With O(state=absent), write the final journal (with C(released_at)) to this absolute path before
        removing the lock; its directory is created with mode C(0700).
    type: path
notes:
  - The owner is the outermost C(ansible-playbook) (else C(ansible) or C(ansible-runner)) process among the
    module's ancestors - Ansible forks its task workers from the main process. When none is found (the module
    runs over SSH, for example), the owner pid is unknown and the lock is held until O(stale_after) or until
    the journal is removed; RV(owner_detection) says so.
  - A journal that is not valid JSON is never overwritten; the task fails naming the file.
  - The journal is plain JSON on disk (mode C(0600)); keep secrets out of O(data).
seealso:
  - module: ops.runbooks.backup_verify
"""

EXAMPLES = r"""
- name: Pick an id for this run
  ansible.builtin.set_fact:
    dr_run_id: "{{ now(utc=true, fmt='%Y%m%dT%H%M%SZ') }}-{{ 999999 | random }}"
  run_once: true

- name: Take the DR lock (resumes the journal of an interrupted run)
  ops.runbooks.dr_journal:
    path: /var/lib/ops-runbooks/dr/app.journal.json
    run_id: "{{ dr_run_id }}"
    mode: drill
    data:
      incident_at: "{{ dr_incident_time | default(omit) }}"
  delegate_to: localhost
  run_once: true
  register: dr_lock

- name: Record the start of the restore step
  ops.runbooks.dr_journal:
    path: /var/lib/ops-runbooks/dr/app.journal.json
    run_id: "{{ dr_run_id }}"
    state: updated
    step: restore
    step_status: started
    data:
      restored_db: app_dr_20261123
  delegate_to: localhost
  run_once: true

- name: Release the lock and keep the journal for the report
  ops.runbooks.dr_journal:
    path: /var/lib/ops-runbooks/dr/app.journal.json
    run_id: "{{ dr_run_id }}"
    state: absent
    archive_to: /var/lib/ops-runbooks/dr/reports/{{ dr_run_id }}.journal.json
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
journal:
  description:
    - The journal after the call (as it would be, in check mode). With O(state=absent), the final content that
      was released (and archived); V({}) when there was no journal.
  returned: always
  type: dict
  sample:
    run_id: 20261123T165402Z-4711
    mode: drill
    owner: {host: ctl1, pid: 81234, kind: ansible-playbook, boot_id: 0b6c..., started: "2026-11-23T16:54:02.120000Z"}
    steps:
      restore: {status: done, started_at: "2026-11-23T16:55:00.000000Z", ended_at: "2026-11-23T16:57:10.500000Z",
                seconds: 130.5, attempts: 1, run_id: 20261123T165402Z-4711}
    data: {restored_db: app_dr_20261123}
resumed:
  description: V(true) when O(state=present) took over the journal of a run that is gone.
  returned: always
  type: bool
previous:
  description: The journal that was taken over, as it was.
  returned: when RV(resumed) is true
  type: dict
interrupted_steps:
  description: Steps of the taken-over journal that were C(started) and never ended.
  returned: when RV(resumed) is true
  type: list
  elements: str
action:
  description: What was done - V(acquired), V(already_held), V(taken_over), V(updated), V(released) or V(none).
  returned: always
  type: str
owner_detection:
  description: How the owner process was found (or why it was not).
  returned: with O(state=present)
  type: str
  sample: "ansible-playbook pid 81234: ancestor 4 of the module process (above 1 forked ansible-playbook worker)"
holder:
  description: The journal of the run holding the lock, when this call was refused.
  returned: on failure because another run holds the lock
  type: dict
archived_to:
  description: Where the final journal was written.
  returned: when O(archive_to) was given and a journal was released
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._dr_journal import (  # noqa: E402
    STATES,
    STEP_STATUSES,
    JournalError,
    LocalSystem,
    run,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "default": "present", "choices": list(STATES)},
            "run_id": {"type": "str"},
            "mode": {"type": "str"},
            "data": {"type": "dict"},
            "step": {"type": "str"},
            "step_status": {"type": "str", "choices": list(STEP_STATUSES)},
            "step_msg": {"type": "str"},
            "stale_after": {"type": "str", "default": "24h"},
            "force": {"type": "bool", "default": False},
            "archive_to": {"type": "path"},
        },
        required_together=[("step", "step_status")],
        supports_check_mode=True,
    )
    try:
        result = run(module.params, LocalSystem(), check_mode=module.check_mode)
    except JournalError as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    diff = result.pop("diff", None)
    if module._diff and diff is not None:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
