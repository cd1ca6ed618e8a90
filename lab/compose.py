"""Lab part "compose": a Docker Compose v2 project `opslab` running local/httpapp:v1.

The project lives in core.part_dir("compose"): service `web` published on
127.0.0.1:<free port> -> 8080, `init: true` (busybox httpd ignores SIGTERM as PID 1),
the image's healthcheck, and the label ops.runbooks.lab=1 on the service and its network.
up() runs `docker compose up -d --wait` and checks HTTP 200 on 127.0.0.1; down() runs
`docker compose down -v --remove-orphans`.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import core, docker, images

PROJECT = "opslab"
SERVICE = "web"
IMAGE = "local/httpapp:v1"
COMPOSE_FILE = "compose.yaml"
META_FILE = "lab.json"

TEMPLATE = """\
# Written by lab/compose.py: the lab's compose project (do not edit; `python -m lab up`
# rewrites it). Reach it only through 127.0.0.1:{port}.
name: {project}
services:
  {service}:
    image: {image}
    init: true
    restart: "no"
    ports:
      - "127.0.0.1:{port}:8080"
    labels:
      {label}: "1"
      {label}.part: compose
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"]
      interval: 1s
      timeout: 2s
      retries: 3
      start_period: 3s
networks:
  default:
    labels:
      {label}: "1"
"""


def compose_cmd(project_dir: Path | str, *args: str) -> list[str]:
    return ["docker", "compose", "--project-name", PROJECT, "--project-directory",
            str(project_dir), "-f", str(Path(project_dir) / COMPOSE_FILE), *args]


def http_status(url: str) -> int | None:
    return core.http_get(url, timeout=3)[0] or None


def _previous_port(project_dir: Path) -> int | None:
    meta = project_dir / META_FILE
    if not meta.exists():
        return None
    try:
        return int(json.loads(meta.read_text())["web_port"])
    except (ValueError, KeyError, TypeError):
        return None


def _running(project_dir: Path) -> bool:
    proc = core.run(compose_cmd(project_dir, "ps", "-q", "--status", "running", SERVICE),
                    check=False, timeout=60)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def up(state: dict) -> dict:
    if not (state.get("docker") or {}).get("compose_version"):
        if docker.compose_version() is None:
            raise core.LabError("`docker compose` is missing: bring up the docker part first "
                                "(`python -m lab up`)")
    images.require(state, IMAGE)  # built by the docker part
    project_dir = core.part_dir("compose")
    port = _previous_port(project_dir)
    compose_file = project_dir / COMPOSE_FILE
    if port is None or not (_running(project_dir) or core.port_is_free(port)):
        port = core.free_port()
    compose_file.write_text(TEMPLATE.format(project=PROJECT, service=SERVICE, image=IMAGE,
                                            port=port, label=core.LABEL))
    (project_dir / META_FILE).write_text(json.dumps({"web_port": port}))
    proc = core.run(compose_cmd(project_dir, "up", "-d", "--wait", "--remove-orphans"),
                    check=False, timeout=180)
    if proc.returncode != 0:
        logs = core.run(compose_cmd(project_dir, "logs", "--no-color", "--tail", "20"),
                        check=False).stdout
        raise core.LabError(
            f"`docker compose up --wait` failed for {compose_file} (rc={proc.returncode}):\n"
            f"{proc.stderr.strip()}\n{logs}\nfix it, or `python -m lab down` and retry"
        )
    url = f"http://{core.HOST}:{port}/"
    core.wait_for(lambda: http_status(url) == 200, f"HTTP 200 from {url}", timeout=30)
    return {
        "project_dir": str(project_dir),
        "project_name": PROJECT,
        "compose_file": str(compose_file),
        "web_port": port,
        "url": url,
    }


def down(entry: dict) -> None:
    project_dir = Path(entry.get("project_dir") or core.part_dir("compose"))
    if (project_dir / COMPOSE_FILE).exists():
        core.run(compose_cmd(project_dir, "down", "-v", "--remove-orphans", "--timeout", "5"),
                 timeout=120)
    else:  # no file left: fall back to the project label compose puts on everything
        ids = core.run(["docker", "ps", "-aq", "--filter",
                        f"label=com.docker.compose.project={PROJECT}"], check=False).stdout.split()
        if ids:
            core.run(["docker", "rm", "-f", "-v", *ids], check=False)


def status(entry: dict) -> dict:
    url = entry.get("url")
    code = http_status(url) if url else None
    return {"ok": code == 200, "url": url, "http_status": code}
