#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: pm2_app
short_description: Run a Node.js app under PM2, idempotently, with a health gate
version_added: 0.1.0
description:
  - Starts, reloads, restarts, stops or deletes one PM2 app and only acts when the running app
    differs from the desired one. It compares what C(pm2 jlist) reports (script path, cwd,
    args, interpreter, exec mode, number of instances, environment) with the options.
  - 'Drift is resolved the cheapest safe way, and the result says which and why: changed
    O(args) or O(env) values - C(pm2 reload --update-env) in cluster mode (one instance at a
    time, no dropped request) or C(pm2 restart --update-env) in fork mode (PM2 cannot reload a
    fork-mode app without a gap); a changed instance count - C(pm2 scale); a changed script
    path, cwd, interpreter or exec mode - delete + start (a reload keeps the ones from the first
    start); env keys removed since the last run - delete + start, because PM2 keeps removed
    variables across reload and restart (Unitech/pm2 issues 3192 and 5591).'
  - After any start, reload, restart or scale, waits until every instance is online and, with
    O(health), until the health URL answers; fails otherwise, with what was done in the result.
  - Never starts a PM2 daemon just to look. With no daemon in O(pm2_home), the app counts as
    absent, so O(state=absent) and O(state=stopped) change nothing and start nothing.
  - 'Secrets: O(env) values are C(no_log) and never returned (the diff shows key names only).
    PM2 itself keeps the environment of every app in clear text: in the process environment,
    in C(pm2 jlist)/C(pm2 env) output and, after C(pm2 save), in C(<pm2_home>/dump.pm2).
    Protect O(pm2_home) (mode 0700, owned by the app user) accordingly.'
  - Because O(env) is C(no_log), Ansible masks every occurrence of its values in all output
    of the task (a C(PORT) value in a URL shows as C(********)). Non-secret settings can go in
    an O(ecosystem) file instead.
author:
  - ops.runbooks team (@ops-runbooks)
extends_documentation_fragment:
  - ops.runbooks._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Env values are never shown; the diff lists env key names and C(env_changed).
  idempotent:
    support: full
  platform:
    platforms: posix
    details: Runs on the host where PM2 runs (a droplet over SSH, or localhost).
options:
  name:
    description:
      - PM2 app name. V(all) and plain numbers are refused (PM2 reads them as every app or a
        process id).
    type: str
    required: true
  state:
    description:
      - V(started) - running with the given definition (start, or reload/restart/recreate on drift).
      - V(reloaded) - like V(started), and reload even when nothing changed (cluster mode keeps
        serving; fork mode restarts).
      - V(restarted) - like V(started), and restart even when nothing changed.
      - V(stopped) - defined but not running (an app PM2 does not know stays unknown).
      - V(absent) - deleted from PM2.
    type: str
    choices: [started, stopped, restarted, reloaded, absent]
    default: started
  script:
    description:
      - Script to run, absolute or relative to O(cwd). Needed to start an app PM2 does not
        know, unless O(ecosystem) gives it. Point it through a stable path such as a
        C(current) symlink so a release is a reload, not a delete + start.
    type: path
  ecosystem:
    description:
      - A PM2 ecosystem file (C(.json), C(.js) or C(.config.js)); the app named O(only), or
        O(name), or the only app in the file is used. Module options override its values and
        O(env) is merged over its C(env). A C(.js) file is evaluated with C(node) on the host.
      - Env values from the file are not C(no_log); pass secrets through O(env).
    type: path
  only:
    description:
      - Which app of O(ecosystem) to use.
    type: str
  cwd:
    description:
      - Working directory of the app. Default - the ecosystem's C(cwd), the ecosystem file's
        directory, or the directory of O(script).
    type: path
  args:
    description:
      - Arguments for the script, a list or one string (split like a shell would).
    type: raw
  interpreter:
    description:
      - Interpreter, such as V(node) or V(/usr/bin/node). Only compared when set.
    type: str
  instances:
    description:
      - Number of processes; V(0) or V(max) means one per CPU, V(-1) one less than the CPUs.
      - Default - the ecosystem's value, else 1.
    type: raw
  exec_mode:
    description:
      - V(cluster) (node's cluster module, zero-downtime reloads) or V(fork).
      - Default - the ecosystem's value, else V(cluster) when O(instances) is more than 1, else
        V(fork).
    type: str
    choices: [fork, cluster]
  env:
    description:
      - Environment variables of the app. Values are secrets (C(no_log)) and never returned.
      - The key names are recorded in the app's env as C(OPS_RUNBOOKS_ENV_KEYS), so that a key
        removed later triggers the delete + start PM2 needs to really drop it.
    type: dict
  pm2_home:
    description:
      - PM2_HOME of the daemon to talk to. Default - the E(PM2_HOME) environment variable, else
        C(~/.pm2) of the remote user.
    type: path
  executable:
    description:
      - The pm2 command. Default - C(pm2) from the PATH.
    type: path
  health:
    description:
      - Health gate after any start, reload, restart or scale. Without it only the PM2 process
        states are checked.
    type: dict
    suboptions:
      url:
        description:
          - URL to GET from the host, for example through nginx. A JSON body with a
            C(status) field must not say V(unhealthy), V(fail), V(failed), V(failing),
            V(error), V(down), V(critical) or V(degraded).
        type: str
        required: true
      expect_status:
        description: HTTP status of a healthy answer.
        type: int
        default: 200
      timeout:
        description: Seconds to wait for each answer.
        type: float
        default: 5
      retries:
        description: Attempts after the first one before the gate fails.
        type: int
        default: 30
      delay:
        description: Seconds between attempts.
        type: float
        default: 1
  save:
    description:
      - Run C(pm2 save) after a change, so the PM2 startup script brings the app back after a
        reboot. C(pm2 save) writes the env (secrets included) to C(<pm2_home>/dump.pm2).
    type: bool
    default: false
  logrotate:
    description:
      - Configure the C(pm2-logrotate) module (runbook 003 "Log Rotation") with
        C(pm2 set pm2-logrotate:<key> <value>), only for values that differ from
        C(<pm2_home>/module_conf.json).
    type: dict
    suboptions:
      install:
        description:
          - Install C(pm2-logrotate) with C(pm2 install) when it is missing. That needs the npm
            registry; set V(false) on offline hosts (the settings are still written, and take
            effect once the module is installed another way).
        type: bool
        default: true
      max_size:
        description: Rotate a log when it reaches this size, for example V(10M).
        type: str
      retain:
        description: Number of rotated files to keep.
        type: int
      compress:
        description: Gzip rotated files.
        type: bool
      rotate_interval:
        description: Cron expression of forced rotations, for example V(0 0 * * *).
        type: str
notes:
  - Needs pm2 (C(npm i -g pm2)) and node on the host. Tested with pm2 7.0.4.
seealso:
  - name: PM2 ecosystem file
    description: The options an ecosystem file can hold.
    link: https://pm2.keymetrics.io/docs/usage/application-declaration/
"""

EXAMPLES = r"""
- name: Run bunty-backend in cluster mode, gated on its health through nginx
  ops.runbooks.pm2_app:
    name: bunty-backend
    script: /var/www/bunty-backend/current/dist/server.js
    cwd: /var/www/bunty-backend/current
    instances: 2
    exec_mode: cluster
    env:
      NODE_ENV: production
      PORT: "3000"
      JWT_SECRET: "{{ vault_bunty_jwt_secret }}"
    health:
      url: http://127.0.0.1/health
      retries: 20
    save: true

- name: Start one app of an ecosystem file
  ops.runbooks.pm2_app:
    name: opslab-app
    ecosystem: /srv/opslab/current/ecosystem.config.js
    only: opslab-app

- name: Zero-downtime reload after a release (runbook 003 "pm2 restart", without the gap)
  ops.runbooks.pm2_app:
    name: bunty-backend
    state: reloaded

- name: Log rotation on an offline droplet (pm2-logrotate installed from the image)
  ops.runbooks.pm2_app:
    name: bunty-backend
    logrotate:
      install: false
      max_size: 10M
      retain: 7
      compress: true

- name: Remove the app
  ops.runbooks.pm2_app:
    name: bunty-backend
    state: absent
"""

RETURN = r"""
status:
  description: PM2 status of the app afterwards (V(online), V(stopped), V(errored), V(mixed), V(absent)).
  returned: always
  type: str
  sample: online
pids:
  description: Process ids of the instances.
  returned: always
  type: list
  elements: int
  sample: [4123, 4150]
instances:
  description: Number of instances.
  returned: always
  type: int
  sample: 2
restarts:
  description: Sum of PM2's restart counters over the instances.
  returned: always
  type: int
  sample: 0
actions:
  description: PM2 verbs run (or, in check mode, that would run), in order.
  returned: always
  type: list
  elements: str
  sample: [reload]
reasons:
  description: Why each action was chosen.
  returned: always
  type: list
  elements: str
  sample: ["env (JWT_SECRET) changed: reload --update-env (cluster mode: zero-downtime, one instance at a time)"]
changes:
  description: What differs between the running and the desired app; env as key names only.
  returned: always
  type: dict
  sample: {"env_changed": ["JWT_SECRET"]}
health:
  description: Result of the health gate.
  returned: when O(health) was given and something was started
  type: dict
  sample: {"ok": true, "url": "http://127.0.0.1/health", "attempts": 2, "status_code": 200, "detail": "HTTP 200"}
logrotate:
  description: pm2-logrotate state and the settings written.
  returned: when O(logrotate) was given
  type: dict
  sample: {"installed": true, "install": false, "set": {"max_size": "10M"}, "config": {"max_size": "10M"}}
pm2_home:
  description: The PM2_HOME used.
  returned: always
  type: str
  sample: /home/deploy/.pm2
saved:
  description: Whether C(pm2 save) ran.
  returned: when O(save=true) and something changed
  type: bool
  sample: true
diff:
  description: Before and after (env key names only).
  returned: always
  type: dict
  sample: {"before": {"status": "absent"}, "after": {"status": "online", "instances": 2}}
"""

import os  # noqa: E402  (ansible-test wants DOCUMENTATION before imports)
from urllib.error import HTTPError  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.urls import open_url  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._pm2 import (  # noqa: E402
    STATES,
    Pm2App,
    Pm2Error,
    run,
)


def _http_get(url, timeout):
    # main() only lets http:// and https:// URLs through.
    try:
        resp = open_url(url, timeout=timeout, http_agent="ops.runbooks.pm2_app", follow_redirects="safe")
        try:
            return resp.status, resp.read(65536).decode("utf-8", "replace")
        finally:
            resp.close()
    except HTTPError as exc:
        return exc.code, exc.read(65536).decode("utf-8", "replace")


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "started", "choices": list(STATES)},
            "script": {"type": "path"},
            "ecosystem": {"type": "path"},
            "only": {"type": "str"},
            "cwd": {"type": "path"},
            "args": {"type": "raw"},
            "interpreter": {"type": "str"},
            "instances": {"type": "raw"},
            "exec_mode": {"type": "str", "choices": ["fork", "cluster"]},
            "env": {"type": "dict", "no_log": True},
            "pm2_home": {"type": "path"},
            "executable": {"type": "path"},
            "health": {
                "type": "dict",
                "options": {
                    "url": {"type": "str", "required": True},
                    "expect_status": {"type": "int", "default": 200},
                    "timeout": {"type": "float", "default": 5},
                    "retries": {"type": "int", "default": 30},
                    "delay": {"type": "float", "default": 1},
                },
            },
            "save": {"type": "bool", "default": False},
            "logrotate": {
                "type": "dict",
                "options": {
                    "install": {"type": "bool", "default": True},
                    "max_size": {"type": "str"},
                    "retain": {"type": "int"},
                    "compress": {"type": "bool"},
                    "rotate_interval": {"type": "str"},
                },
            },
        },
        mutually_exclusive=[["script", "ecosystem"]],
        required_by={"only": "ecosystem"},
        supports_check_mode=True,
    )
    params = module.params
    health = params.get("health")
    if health:
        if not str(health["url"]).startswith(("http://", "https://")):
            module.fail_json(msg=f"health.url must be an http:// or https:// URL, got {health['url']!r}")
        if health["retries"] < 0 or health["timeout"] <= 0 or health["delay"] < 0:
            module.fail_json(msg="health.retries and health.delay must be >= 0 and health.timeout > 0")
        if not 100 <= health["expect_status"] <= 599:
            module.fail_json(msg=f"health.expect_status must be an HTTP status 100-599, got {health['expect_status']}")

    executable = params["executable"] or module.get_bin_path("pm2")
    if params["executable"] and not os.access(params["executable"], os.X_OK):
        module.fail_json(msg=f"executable {params['executable']} does not exist or is not executable: "
                             f"give the path of pm2 (`command -v pm2` on the host)")
    if not executable:
        module.fail_json(msg="pm2 is not installed on this host (not in PATH): install it with "
                             "`npm i -g pm2`, or give its path in executable")
    node = module.get_bin_path("node") or "node"

    def runner(argv, env=None):
        return module.run_command([str(a) for a in argv], environ_update=env or {})

    app = Pm2App(runner, executable, params["pm2_home"], http_get=_http_get, node=node)
    try:
        result = run(app, params, check_mode=module.check_mode)
    except Pm2Error as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    except OSError as exc:
        module.fail_json(msg=f"cannot run pm2 ({executable}): {exc}; check executable and pm2_home")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
