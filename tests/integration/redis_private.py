"""Private, throwaway Redis servers (standalone and a 3-master cluster) for destructive tests
and benchmarks: free ports, a temp dir, stopped by pid. Never touches the shared lab."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import core

HOST = "127.0.0.1"


class PrivateRedis:
    """`with PrivateRedis(cluster=False, password=None) as rd:` -> rd.ports, rd.pids, rd.stop()."""

    def __init__(self, cluster: bool = False, password: str | None = None, masters: int = 3,
                 extra: tuple[str, ...] = ()):
        self.cluster = cluster
        self.password = password
        self.masters = masters if cluster else 1
        self.extra = extra
        self.dir = Path(tempfile.mkdtemp(prefix="ops-rcf-redis-"))
        self.ports: list[int] = []
        self.pids: list[int] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    def _server(self, port: int, workdir: Path) -> int:
        workdir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--daemonize", "yes", "--pidfile", str(workdir / "redis.pid"),
                "--logfile", str(workdir / "redis.log"), *self.extra]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
                     "--cluster-node-timeout", "5000"]
        subprocess.run(args, check=True, capture_output=True)
        core.wait_for((workdir / "redis.pid").exists, f"redis on {port} to write its pid file", 20)
        core.wait_port(port, "redis", 20)
        return int((workdir / "redis.pid").read_text().strip())

    def cli(self, *args: str, port: int | None = None, data: bytes | None = None) -> str:
        env = {"REDISCLI_AUTH": self.password} if self.password else None
        proc = subprocess.run(["redis-cli", "-h", HOST, "-p", str(port or self.port), *args], input=data,
                              capture_output=True, check=True, env=env, timeout=120)
        return proc.stdout.decode(errors="replace").strip()

    def start(self) -> PrivateRedis:
        try:
            for i in range(self.masters):
                port = core.free_port()
                self.ports.append(port)
                self.pids.append(self._server(port, self.dir / f"n{i}"))
            if self.cluster:
                subprocess.run(["redis-cli", "--cluster", "create", *[f"{HOST}:{p}" for p in self.ports],
                                "--cluster-replicas", "0", "--cluster-yes"],
                               check=True, capture_output=True, timeout=60)
                core.wait_for(lambda: all("cluster_state:ok" in self.cli("CLUSTER", "INFO", port=p)
                                          for p in self.ports), "the private cluster to be ok", 30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        core.kill_pid(*self.pids, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def resp_set(key: bytes, value: bytes = b"1") -> bytes:
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value)


def load_keys(port: int, prefix: str, count: int, password: str | None = None, start: int = 0) -> float:
    """SET prefix<i> for i in [start, start+count) with `redis-cli --pipe`; return seconds."""
    began = time.monotonic()
    pre = prefix.encode()
    data = b"".join(resp_set(pre + str(i).encode()) for i in range(start, start + count))
    env = {"REDISCLI_AUTH": password} if password else None
    subprocess.run(["redis-cli", "-h", HOST, "-p", str(port), "--pipe"], input=data, check=True,
                   capture_output=True, env=env, timeout=300)
    return time.monotonic() - began


# ------------------------------------------------------------ running the module for real

REPO = Path(__file__).resolve().parents[2]
MODULE = "ops.runbooks.redis_cache_flush"


def playbook(tmp_path: Path, steps: list[dict]) -> Path:
    """A play on localhost running the module once per step; results land in results.json.

    A step is {"args": {...}, "check": bool} (failures are kept: ignore_errors).
    """
    out = tmp_path / "results.json"
    tasks = []
    for i, step in enumerate(steps):
        tasks.append({"name": f"step {i}", MODULE: step["args"], "register": f"r{i}",
                      "check_mode": bool(step.get("check")), "ignore_errors": True})
    names = ", ".join(f"r{i}" for i in range(len(steps)))
    tasks.append({"name": "Save results", "ansible.builtin.copy": {
        "content": "{{ [" + names + "] | to_json }}", "dest": str(out), "mode": "0600"},
        "check_mode": False, "no_log": True})
    play = tmp_path / "play.yml"
    play.write_text(json.dumps([{"name": "redis_cache_flush", "hosts": "localhost", "gather_facts": False,
                                 "tasks": tasks}]))
    return play


def run_steps(tmp_path: Path, steps: list[dict], venv_bin: Path, env: dict, *args: str):
    """Run the steps with ansible-playbook; return (proc, [result per step])."""
    play = playbook(tmp_path, steps)
    env = {k: v for k, v in env.items() if not k.startswith("REDIS_")}
    proc = subprocess.run(
        [str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play),
         "-e", f"ansible_python_interpreter={sys.executable}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300)
    out = tmp_path / "results.json"
    results = json.loads(out.read_text()) if out.exists() else None
    assert results is not None, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc, results
