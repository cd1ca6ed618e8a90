#!/usr/bin/python
# Copyright: ops.runbooks team
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: compose_rollout
short_description: Roll out a docker compose service with health gates, and roll it back
version_added: 0.1.0
description:
  - Updates one or more services of a Docker Compose v2 project to the release the compose files
    (plus O(env) / O(env_file)) describe, and checks that the new containers are healthy before the
    old ones go.
  - V(rolling) (start-first) - C(docker compose up -d --no-deps --no-recreate --scale S=2n S) starts
    as many new containers beside the old ones as are running; each must pass the gate
    (O(health.successes) consecutive probes within O(wait_timeout)) and stay healthy for
    O(health.soak) seconds. With O(proxy), the proxy is reloaded so the new containers join it, both
    serve for O(drain) seconds, the old ones are stopped (the proxy retries their refused connections
    on the new ones), the proxy is reloaded again and the old ones are removed. Without O(proxy), the
    old containers are disconnected from their networks (out of the service's DNS name), given
    O(drain) seconds, and removed.
  - A failed gate or soak with O(rollback_on_failure) removes the new containers the same way; the old
    ones never stopped serving. The task fails with C(rolled_back=true) and the reason.
  - V(recreate) - for services that cannot run twice (a fixed published host port, a C(container_name)),
    C(up -d --no-deps --force-recreate). This has downtime (stop, start, gate). When the gate fails the
    release that ran before is started again, if it is the recorded last known good release.
  - Last known good - after every successful rollout the module writes C(.ops-rollout-state.json)
    (mode 0600) in O(project_src), with the current and the previous release of each service (image
    reference, image id, repo digests, compose config hash, the O(env) overrides).
    O(state=rolled_back) goes back to the previous release with the image pinned to its recorded
    image id, even if the tag has moved since.
  - Nothing changes when every running container of the service already runs the target image id with
    the target compose config hash (C(com.docker.compose.config-hash)). A rollout interrupted half way
    (new containers beside old ones) is finished by running the module again.
  - When the Docker daemon stops answering in the middle of a run (dockerd restarted or killed), the module
    fails at once with C(lost the Docker daemon ...) and leaves everything as it is (if dockerd was back
    before the module noticed, the gate fails on the stopped new container and the message says the old
    containers are not running either). Run the same task again
    once dockerd is back - it removes stopped containers, adopts running new containers already at the
    target and gates them, retires the old ones; when the restart stopped every container of the service
    (C(live-restore) off and no C(restart) policy), it starts the target release again with as many
    containers as before. After a dockerd restart with C(live-restore) off, containers whose compose
    C(restart) policy is V(always) or V(on-failure) come back; V(unless-stopped) ones come back after a
    C(SIGTERM) but not after a C(kill -9) (dockerd stops them at start-up, which counts as a manual stop).
    With C(live-restore) on, nothing stops.
  - New containers join the service's DNS name as soon as they start, before the gate passes. A proxy
    that resolves the name per request (nginx C(resolver) + a variable in C(proxy_pass)) sends them
    traffic early and keeps using a removed container's address until its cache expires; nginx 1.22
    does not retry another address after a connect timeout there (measured - a few 504s per rollout).
    Use O(proxy) with a static upstream instead.
author:
  - ops.runbooks team (@ops-runbooks)
requirements:
  - docker (Python SDK)
  - the C(docker) CLI with the Compose v2 plugin (C(docker compose)) on the target host
extends_documentation_fragment:
  - ops.runbooks._docker
  - ops.runbooks._attributes
  - ops.runbooks._attributes.actiongroup_docker
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (per service - V(none), V(create), V(rolling) or V(recreate), how many
        containers would be created and which would be removed); changes nothing.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  project_src:
    description:
      - Folder of the compose project (where its compose file and C(.env) live). The state file is
        written here.
    type: path
    required: true
  files:
    description:
      - Compose files, relative to O(project_src) or absolute. Default - the first of C(compose.yaml),
        C(compose.yml), C(docker-compose.yaml), C(docker-compose.yml) in O(project_src).
    type: list
    elements: path
  project_name:
    description:
      - Compose project name. Default - the C(name:) in the compose file, else the folder name.
    type: str
  services:
    description:
      - Services to roll out, in this order (put dependencies first). Other services are not touched
        (C(--no-deps)).
    type: list
    elements: str
    required: true
  env:
    description:
      - Variables for compose's interpolation of the new release, for example C(APP_TAG=v2). They
        override C(.env) and O(env_file) and are recorded in the state file to roll back with.
      - Not for secrets - put those in C(.env) or O(env_file).
    type: dict
  env_file:
    description:
      - An env file passed to compose with C(--env-file) instead of C(<project_src>/.env).
    type: path
  strategy:
    description:
      - V(rolling) starts the new containers beside the old ones (no downtime); it refuses services with
        a fixed published host port or a C(container_name).
      - V(recreate) stops the old containers first (downtime, documented).
    type: str
    choices: [rolling, recreate]
    default: rolling
  health:
    description:
      - The gate every new container must pass.
    type: dict
    suboptions:
      type:
        description:
          - V(docker) - the container's Docker HEALTHCHECK status is C(healthy) (the image or compose
            file must define one).
          - V(http) - O(health.url) answers O(health.expect_status), fetched inside the project network
            (curl, python3 or wget in the probing container).
          - V(tcp) - O(health.port) accepts connections (nc or python3 in the probing container).
          - V(command) - O(health.command) exits 0, run with C(sh -c) inside each new container.
        type: str
        choices: [docker, http, tcp, command]
        default: docker
      url:
        description:
          - For V(http). C({host}) is replaced by the new container's address as seen from the probing
            container (C(127.0.0.1) when it probes itself), for example V(http://{host}:8080/health).
        type: str
      port:
        description:
          - For V(tcp), the container port to connect to.
        type: int
      command:
        description:
          - For V(command), a shell command run in each new container.
        type: str
      expect_status:
        description:
          - For V(http), the status code of a healthy answer.
        type: int
        default: 200
      interval:
        description:
          - Seconds between probes.
        type: float
        default: 1.0
      timeout:
        description:
          - Seconds one probe may take.
        type: float
        default: 5.0
      successes:
        description:
          - Consecutive successful probes that make a container pass the gate.
        type: int
        default: 3
      soak:
        description:
          - Seconds the new containers must stay healthy after the gate (probed every O(health.interval));
            a failure then rolls back like a failed gate.
        type: float
        default: 0
      probe_from:
        description:
          - For V(http) and V(tcp), a service of the project whose first running container runs the
            probe, for example the proxy. Default - each new container probes itself.
        type: str
  proxy:
    description:
      - The project's proxy in front of the rolled services. The module runs O(proxy.reload_command) in
        each of its running containers once the new containers passed the gate (they join the
        upstream) and again once the old ones left the network (they leave it).
      - With nginx, an C(upstream) block naming the service (C(server app:8080;)) is resolved at each
        reload, so requests only reach containers that passed the gate, and nginx retries another
        upstream server on a connection error or timeout (C(proxy_next_upstream error timeout)).
      - A failed reload when the new containers join fails the gate (and rolls back).
    type: dict
    suboptions:
      service:
        description:
          - The proxy's compose service, for example V(nginx).
        type: str
        required: true
      reload_command:
        description:
          - Shell command, run with C(sh -c) inside each proxy container.
        type: str
        default: nginx -s reload
  drain:
    description:
      - Seconds between taking old containers out of the network (and out of the proxy) and stopping them.
    type: float
    default: 2
  pull:
    description:
      - Run C(docker compose pull <service>) before the rollout. With V(false) the image must be on the
        Docker host already (built locally).
    type: bool
    default: false
  rollback_on_failure:
    description:
      - Roll back automatically when the gate or the soak fails.
    type: bool
    default: true
  state:
    description:
      - V(rolled_out) - the services run the release the compose files and O(env) describe.
      - V(rolled_back) - the services run the previous release recorded in the state file (the last
        known good one before the current). Running it again is a no-op.
    type: str
    choices: [rolled_out, rolled_back]
    default: rolled_out
  wait_timeout:
    description:
      - Seconds the new containers have to pass the gate.
    type: int
    default: 120
notes:
  - Reach services only through what the project publishes; the module probes from inside the
    project's networks.
  - The C(env) overrides are passed to compose in the process environment, never on the command line.
seealso:
  - name: Runbook 001 (Liquidator) rolling update and rollback
    description: The procedures this module replaces (C(up -d --no-deps), C(git checkout) + rebuild).
    link: https://docs.docker.com/compose/
"""

EXAMPLES = r"""
- name: Roll price-service out to v2 behind the proxy, no dropped request
  ops.runbooks.compose_rollout:
    project_src: /opt/liquidator
    services: [price-service]
    env:
      PRICE_SERVICE_TAG: v2
    health:
      type: http
      url: http://{host}:3000/health
      probe_from: proxy
      successes: 3
      soak: 15
    proxy:
      service: proxy
    drain: 3

- name: Services with a fixed host port are recreated (downtime)
  ops.runbooks.compose_rollout:
    project_src: /opt/pr-023-bot
    files: [docker-compose.production.yml]
    services: [nginx]
    strategy: recreate
    health:
      type: tcp
      port: 80

- name: Go back to the last known good release
  ops.runbooks.compose_rollout:
    project_src: /opt/liquidator
    services: [price-service]
    state: rolled_back
    health:
      type: docker
"""

RETURN = r"""
project_name:
  description: The compose project.
  returned: when the compose files could be read
  type: str
  sample: liquidator
plan:
  description: Per service, what the run does (check mode - would do).
  returned: always
  type: list
  elements: dict
  sample:
    - service: price-service
      action: rolling
      create: 1
      adopt: []
      remove: [liquidator-price-service-1]
      keep: []
from:
  description: Per service, the release running before (running containers only).
  returned: always
  type: dict
  sample:
    price-service:
      image: liquidator/price-service:v1
      image_id: sha256:61271e73a64e
      digests: []
      config_hash: 74102b549ed1
      containers: [liquidator-price-service-1]
to:
  description: Per service, the target release; C(containers) once it runs.
  returned: always
  type: dict
  sample:
    price-service:
      image: liquidator/price-service:v2
      image_id: sha256:02c26c8d6640
      digests: []
      config_hash: 20facd658317
      containers: [liquidator-price-service-2]
rolled_back:
  description: Whether the module rolled back after a failed gate or soak.
  returned: always
  type: bool
rollback_reason:
  description: Why the rollout failed (the gate's last probe, the soak failure), or null.
  returned: always
  type: str
  sample: >-
    not healthy within wait_timeout=20s (http gate, 3 consecutive successes needed);
    last probe: app-2: GET http://172.19.0.4:8080/health -> 404
duration_s:
  description: Seconds the whole run took.
  returned: always
  type: float
steps:
  description: Timed steps (plan, pull, start_new, gate, soak, drain_old, remove_new, rollback, recreate).
  returned: always
  type: list
  elements: dict
  sample:
    - {service: price-service, step: gate, duration_s: 3.1}
state_file:
  description: Path of the last-known-good state file.
  returned: always
  type: str
"""

import os  # noqa: E402  (Ansible modules put DOCUMENTATION first)
import traceback  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.ops.runbooks.plugins.module_utils._compose_rollout import (  # noqa: E402
    ComposeRollout,
    ComposeRolloutError,
    DockerBackend,
    check_params,
    compose_files,
)
from ansible_collections.ops.runbooks.plugins.module_utils._docker_client import (  # noqa: E402
    DOCKER_REQUIRED_TOGETHER,
    DockerConnectionError,
    check_docker,
    connect,
    docker_argument_spec,
)

try:
    from docker.errors import APIError, DockerException
except ImportError:
    APIError = OSError
    DockerException = OSError


def argument_spec() -> dict:
    spec = docker_argument_spec()
    spec.update(
        project_src={"type": "path", "required": True},
        files={"type": "list", "elements": "path"},
        project_name={"type": "str"},
        services={"type": "list", "elements": "str", "required": True},
        env={"type": "dict"},
        env_file={"type": "path"},
        strategy={"type": "str", "choices": ["rolling", "recreate"], "default": "rolling"},
        health={"type": "dict", "options": {
            "type": {"type": "str", "choices": ["docker", "http", "tcp", "command"], "default": "docker"},
            "url": {"type": "str"},
            "port": {"type": "int"},
            "command": {"type": "str"},
            "expect_status": {"type": "int", "default": 200},
            "interval": {"type": "float", "default": 1.0},
            "timeout": {"type": "float", "default": 5.0},
            "successes": {"type": "int", "default": 3},
            "soak": {"type": "float", "default": 0},
            "probe_from": {"type": "str"},
        }},
        proxy={"type": "dict", "options": {
            "service": {"type": "str", "required": True},
            "reload_command": {"type": "str", "default": "nginx -s reload"},
        }},
        drain={"type": "float", "default": 2},
        pull={"type": "bool", "default": False},
        rollback_on_failure={"type": "bool", "default": True},
        state={"type": "str", "choices": ["rolled_out", "rolled_back"], "default": "rolled_out"},
        wait_timeout={"type": "int", "default": 120},
    )
    return spec


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), required_together=DOCKER_REQUIRED_TOGETHER,
                           supports_check_mode=True)
    params = module.params
    base = {"changed": False, "rolled_back": False, "rollback_reason": None, "plan": [], "steps": []}
    try:
        check_params(params)
        files = compose_files(params["project_src"], params["files"])
        if params["env_file"] and not os.path.isfile(params["env_file"]):
            raise ComposeRolloutError(f"env_file {params['env_file']} does not exist")
    except ComposeRolloutError as exc:
        module.fail_json(msg=str(exc), **base)
    check_docker(module)
    if not module.get_bin_path("docker"):
        module.fail_json(msg="the docker CLI is not on PATH: install it with the Compose v2 plugin "
                             "(docker compose)", **base)
    try:
        client = connect(params)
    except DockerConnectionError as exc:
        module.fail_json(msg=str(exc), **base)

    def run(argv, env):
        return module.run_command(argv, environ_update=env, cwd=params["project_src"])

    backend = DockerBackend(client, run, params["project_src"], files, params["project_name"],
                            params["env_file"], docker_host=params["docker_host"],
                            compose_bin=module.get_bin_path("docker"), api_error=APIError,
                            conn_errors=(OSError, DockerException))
    try:
        result = ComposeRollout(backend, params, check_mode=module.check_mode).run()
    except ComposeRolloutError as exc:
        module.fail_json(msg=str(exc), **{**base, **exc.result})
    except APIError as exc:
        module.fail_json(msg=f"the Docker daemon refused a request: {exc}; check that dockerd is running "
                             "and the project's containers were not changed by hand meanwhile",
                         exception=traceback.format_exc(), **base)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
