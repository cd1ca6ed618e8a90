"""Bench: failed requests during a compose service update, ours vs the runbook's.

A throwaway compose project (unique name, temp dir): `app` (local/httpapp) behind `proxy`
(local/nginx:bookworm, upstream `app` resolved at each reload, published on an ephemeral
127.0.0.1 port). A client thread sends GET /version through the proxy back to back while:

  1. ours:     compose_rollout v1 -> v2 (rolling, http gate from the proxy, proxy reload)
  2. ours:     compose_rollout v2 -> broken (never healthy: automatic rollback)
  3. runbook:  APP_TAG=v1 docker compose up -d --no-deps app, then `nginx -s reload` in the
               proxy (runbook 001 "Rolling Update"; the reload is added, or nginx would keep
               the removed container's address) — v2 -> v1 on the same service
  4. ours:     compose_rollout v1 -> v2 again (same direction as 3's opposite, for the ratio)

Prints requests / failures / duration per scenario. Not collected by pytest; needs the lab's
Docker (`python -m lab up docker`). Usage: .venv/bin/python bench/compose_rollout/run.py [--rounds N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lab import images  # noqa: E402
from lab.core import collection_path  # noqa: E402

NGINX_CONF = """\
worker_processes 1;
events { worker_connections 512; }
http {
  access_log off;
  upstream app_pool { server app:8080; }
  server {
    listen 80;
    location / {
      proxy_pass http://app_pool;
      proxy_connect_timeout 300ms;
      proxy_next_upstream error timeout http_502 http_503 http_504;
    }
  }
}
"""

COMPOSE = """\
name: {name}
services:
  app:
    image: local/httpapp:${{APP_TAG:-v1}}
    init: true
  proxy:
    image: local/nginx:bookworm
    init: true
    ports: ["127.0.0.1::80"]
    volumes: ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    depends_on: [app]
"""

PLAYBOOK = """\
- name: compose_rollout
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Roll out
      ops.runbooks.compose_rollout: "{{ rollout_args }}"
      ignore_errors: true
"""


class Load:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.requests = 0
        self.failures = 0
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request("GET", "/version")
                resp = conn.getresponse()
                body = resp.read().decode().strip()
                if resp.status == 200 and body:
                    self.versions[body] = self.versions.get(body, 0) + 1
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            finally:
                conn.close()
                self.requests += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def compose(project_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "--project-directory", str(project_dir), *args],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, check=True,
                          timeout=300)


def measure(label: str, url_port: int, action) -> dict:
    with Load("127.0.0.1", url_port) as load:
        time.sleep(0.5)
        start = time.monotonic()
        outcome = action()
        duration = time.monotonic() - start
        time.sleep(0.5)
    return {"scenario": label, "requests": load.requests, "failures": load.failures,
            "duration_s": round(duration, 2), "versions": dict(load.versions), "outcome": outcome}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    opts = parser.parse_args()
    images.build_httpapp("v1")
    images.build_httpapp("v2")
    images.build_httpapp("broken")
    images.build_nginx()
    venv_bin = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="cr7-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collection_path()), ANSIBLE_NOCOLOR="1")
        name = f"cr7bench-{uuid.uuid4().hex[:6]}"
        project_dir = tmp / name
        project_dir.mkdir()
        (project_dir / "nginx.conf").write_text(NGINX_CONF)
        (project_dir / "compose.yaml").write_text(COMPOSE.format(name=name))
        (tmp / "play.yml").write_text(PLAYBOOK)
        try:
            compose(project_dir, "up", "-d", "--wait")
            port = int(compose(project_dir, "port", "proxy", "80").stdout.strip().rsplit(":", 1)[1])

            def ours(tag: str, **extra):
                args = {"project_src": str(project_dir), "services": ["app"], "env": {"APP_TAG": tag},
                        "health": {"type": "http", "url": "http://{host}:8080/health", "probe_from": "proxy",
                                   "interval": 0.5, "successes": 3},
                        "proxy": {"service": "proxy"}, "drain": 1, **extra}
                vars_file = tmp / "vars.json"
                vars_file.write_text(json.dumps({"rollout_args": args, "ansible_python_interpreter": sys.executable}))

                def run():
                    proc = subprocess.run([str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                                           "-e", f"@{vars_file}", str(tmp / "play.yml")], cwd=REPO, env=env,
                                          capture_output=True, text=True, check=False, timeout=600)
                    if "ignored=1" in proc.stdout:
                        return "failed, rolled back" if '"rolled_back": true' in proc.stdout else "failed"
                    return "changed" if "changed=1" in proc.stdout else "ok"
                return run

            def runbook(tag: str):
                def run():
                    compose(project_dir, "up", "-d", "--no-deps", "app", env={"APP_TAG": tag})
                    proxy = compose(project_dir, "ps", "-q", "proxy").stdout.split()[0]
                    subprocess.run(["docker", "exec", proxy, "nginx", "-s", "reload"], check=True,
                                   capture_output=True)
                    return "recreated"
                return run

            rows = []
            for _round in range(opts.rounds):
                rows.append(measure("ours: rolling v1 -> v2", port, ours("v2")))
                rows.append(measure("ours: v2 -> broken (auto-rollback)", port, ours("broken", wait_timeout=8)))
                rows.append(measure("runbook: up -d --no-deps app (v2 -> v1)", port, runbook("v1")))
                rows.append(measure("ours: rolling v1 -> v2 (again)", port, ours("v2")))
                rows.append(measure("runbook: up -d --no-deps app (v2 -> v1, again)", port, runbook("v1")))
        finally:
            subprocess.run(["docker", "compose", "--project-directory", str(project_dir), "down", "-v",
                            "--remove-orphans", "--timeout", "1"], capture_output=True, check=False)
    print(f"{'scenario':<48} {'requests':>9} {'failures':>9} {'fail %':>7} {'duration s':>11}  outcome")
    for row in rows:
        pct = 100.0 * row["failures"] / max(1, row["requests"])
        print(f"{row['scenario']:<48} {row['requests']:>9} {row['failures']:>9} {pct:>6.2f}% "
              f"{row['duration_s']:>11}  {row['outcome']} {row['versions']}")
    ours_rows = [r for r in rows if r["scenario"].startswith("ours: rolling")]
    base_rows = [r for r in rows if r["scenario"].startswith("runbook")]
    ours_fail = sum(r["failures"] for r in ours_rows)
    base_fail = sum(r["failures"] for r in base_rows)
    ours_dur = sum(r["duration_s"] for r in ours_rows) / len(ours_rows)
    base_dur = sum(r["duration_s"] for r in base_rows) / len(base_rows)
    print(f"\nfailed requests, ours / runbook: {ours_fail} / {base_fail}; "
          f"mean duration ours / runbook: {ours_dur:.2f} s / {base_dur:.2f} s = {ours_dur / base_dur:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
