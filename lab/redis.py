"""Lab part "redis": a password-protected standalone Redis and a 3-master Redis cluster.

The cluster has no password (ElastiCache cluster mode is often run with TLS + AUTH token,
which the collection's modules support, but the lab keeps the cluster simple); the
standalone server requires a password so secret handling is exercised for real.
"""

from __future__ import annotations

import secrets
import shutil

from . import core

CLUSTER_SIZE = 3


def _server(port: int, workdir, *extra: str) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    core.run([
        "redis-server", "--port", port, "--bind", core.HOST, "--save", "", "--appendonly", "no",
        "--dir", workdir, "--daemonize", "yes", "--pidfile", workdir / "redis.pid",
        "--logfile", workdir / "redis.log", *extra,
    ])
    core.wait_for((workdir / "redis.pid").exists, f"redis on port {port} to write its pid file", 20)
    core.wait_port(port, "redis")
    return int((workdir / "redis.pid").read_text().strip())


def _cli(port: int, *args: str, password: str | None = None, cluster: bool = False) -> str:
    cmd = ["redis-cli", "-h", core.HOST, "-p", port]
    if cluster:
        cmd.append("-c")
    env = {"REDISCLI_AUTH": password} if password else None
    return core.run([*cmd, *args], env=env).stdout.strip()


def _alive(port, password=None) -> bool:
    try:
        return _cli(port, "PING", password=password) == "PONG"
    except core.LabError:
        return False


def up(state: dict) -> dict:
    entry = state.get("redis") or {}
    if entry and _alive(entry["standalone"]["port"], entry["standalone"]["password"]) and all(
        _alive(n["port"]) for n in entry["cluster"]["nodes"]
    ):
        return entry
    if entry:
        down(entry)
    if not shutil.which("redis-server"):
        raise core.LabError("redis-server not found: `apt-get install redis-server redis-tools`")
    base = core.part_dir("redis")

    password = "lab-" + secrets.token_hex(8)
    port = core.free_port()
    pid = _server(port, base / "standalone", "--requirepass", password)
    standalone = {"host": core.HOST, "port": port, "password": password, "pid": pid}

    nodes = []
    for i in range(CLUSTER_SIZE):
        node_port = core.free_port()
        workdir = base / f"cluster{i}"
        node_pid = _server(
            node_port, workdir, "--cluster-enabled", "yes",
            "--cluster-config-file", workdir / "nodes.conf", "--cluster-node-timeout", "5000",
        )
        nodes.append({"host": core.HOST, "port": node_port, "pid": node_pid})
    core.run([
        "redis-cli", "--cluster", "create", *[f"{n['host']}:{n['port']}" for n in nodes],
        "--cluster-replicas", "0", "--cluster-yes",
    ], timeout=60)
    core.wait_for(lambda: "cluster_state:ok" in _cli(nodes[0]["port"], "CLUSTER", "INFO"),
                  "the redis cluster to report cluster_state:ok", 30)
    return {"standalone": standalone, "cluster": {"nodes": nodes}}


def down(entry: dict) -> None:
    nodes = [entry.get("standalone") or {}, *((entry.get("cluster") or {}).get("nodes") or [])]
    core.kill_pid(*(node.get("pid") for node in nodes), timeout=10)
    shutil.rmtree(core.LAB_DIR / "redis", ignore_errors=True)


def status(entry: dict) -> dict:
    standalone = entry.get("standalone") or {}
    nodes = (entry.get("cluster") or {}).get("nodes") or []
    result = {"standalone": _alive(standalone.get("port"), standalone.get("password"))}
    masters = 0
    if nodes:
        try:
            masters = sum("master" in line.split()[2] for line in
                          _cli(nodes[0]["port"], "CLUSTER", "NODES").splitlines())
        except core.LabError:
            masters = 0
    result["cluster_masters"] = masters
    result["ok"] = result["standalone"] and masters == CLUSTER_SIZE
    return result
