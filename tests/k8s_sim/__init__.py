"""Test-only Kubernetes simulator: a fake API server, a deterministic controller, kubeconfigs.

with FakeApiServer(seed="x") as srv:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", srv.url, token="t")
    scenario_two_revisions(srv)           # Deployment "web" at revision 2 (image web:v2)
"""

from __future__ import annotations

from .kubeconfig import write_kubeconfig
from .scenarios import daemonset, deployment, rollout, statefulset
from .server import FakeApiServer

__all__ = ["FakeApiServer", "daemonset", "deployment", "rollout", "statefulset", "write_kubeconfig"]
