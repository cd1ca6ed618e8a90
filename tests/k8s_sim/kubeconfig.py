"""Write kubeconfig files pointing at the fake API server (token user or EKS-style exec user)."""

from __future__ import annotations

import json
from pathlib import Path


def write_kubeconfig(
    path: Path,
    server_url: str,
    token: str | None = None,
    exec_args: list | None = None,
    exec_command: str = "aws",
    exec_env: dict | None = None,
    context: str = "sim",
    namespace: str = "default",
) -> Path:
    """A kubeconfig with one cluster/context/user; `exec_args` makes the user an exec plugin
    (as `aws eks update-kubeconfig` writes it)."""
    user: dict = {}
    if exec_args is not None:
        user["exec"] = {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": exec_command,
            "args": exec_args,
            "interactiveMode": "Never",
        }
        if exec_env:
            user["exec"]["env"] = [{"name": k, "value": v} for k, v in exec_env.items()]
    elif token:
        user["token"] = token
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": context,
        "clusters": [{"name": context, "cluster": {"server": server_url}}],
        "users": [{"name": f"{context}-user", "user": user}],
        "contexts": [
            {"name": context, "context": {"cluster": context, "user": f"{context}-user", "namespace": namespace}}
        ],
    }
    path = Path(path)
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    path.chmod(0o600)
    return path


def write_fake_aws(
    bin_dir: Path, token: str | None = None, error: str | None = None, stdout: str | None = None
) -> Path:
    """A fake `aws` CLI: `aws ... eks get-token ...` prints an ExecCredential with `token`, or
    prints `error` on stderr and exits 255 (like the real CLI without credentials)."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "aws"
    if error is not None:
        body = f"echo {json.dumps(error)} >&2\nexit 255\n"
    elif stdout is not None:
        body = f"cat <<'EOF'\n{stdout}\nEOF\n"
    else:
        cred = {
            "kind": "ExecCredential",
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "spec": {},
            "status": {"expirationTimestamp": "2099-01-01T00:00:00Z", "token": token},
        }
        body = f"cat <<'EOF'\n{json.dumps(cred)}\nEOF\n"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script
