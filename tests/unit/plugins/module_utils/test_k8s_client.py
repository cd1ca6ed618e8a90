from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _k8s_client as kc
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_client import (
    K8sConnectionError,
    auth_plan,
    connect,
    default_kubeconfig_paths,
    failure_message,
)

TOKEN = "eyJhbGciOi-secret-token"


def params(**overrides):
    base = {
        "kubeconfig": None, "context": None, "host": None, "api_key": None, "validate_certs": None,
        "ca_cert": None, "client_cert": None, "client_key": None,
    }
    base.update(overrides)
    return base


def test_nothing_given_in_a_pod_uses_the_service_account():
    plan = auth_plan(params(), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, default_kubeconfig_exists=True)
    assert plan["source"] == "in-cluster" and plan["overrides"] == {}


def test_nothing_given_outside_a_pod_uses_the_default_kubeconfig():
    plan = auth_plan(params(), {}, default_kubeconfig_exists=True)
    assert plan["source"] == "kubeconfig" and plan["kubeconfig"] is None


def test_nothing_at_all_is_a_clear_error():
    with pytest.raises(K8sConnectionError, match="no Kubernetes credentials found.*update-kubeconfig"):
        auth_plan(params(), {}, default_kubeconfig_exists=False)


def test_kubeconfig_and_context_win_and_explicit_options_override():
    plan = auth_plan(params(kubeconfig="/k", context="prod", host="https://api", validate_certs=False,
                            ca_cert="/ca"), {"KUBERNETES_SERVICE_HOST": "x"}, True)
    assert plan["source"] == "kubeconfig" and plan["kubeconfig"] == "/k" and plan["context"] == "prod"
    assert plan["overrides"] == {"host": "https://api", "verify_ssl": False, "ssl_ca_cert": "/ca"}


def test_host_alone_is_explicit():
    plan = auth_plan(params(host="https://api", api_key=TOKEN, client_cert="/c", client_key="/k"), {}, False)
    assert plan["source"] == "explicit" and plan["api_key"] == TOKEN
    assert plan["overrides"] == {"host": "https://api", "cert_file": "/c", "key_file": "/k"}


def test_default_kubeconfig_paths():
    assert default_kubeconfig_paths({"KUBECONFIG": "/a:/b"}) == ["/a", "/b"]
    assert default_kubeconfig_paths({})[0].endswith("/.kube/config")


def test_failure_message_hides_the_token():
    plan = auth_plan(params(host="https://api", api_key=TOKEN), {}, False)
    msg = failure_message(plan, f"(401) Reason: Unauthorized, token {TOKEN}")
    assert TOKEN not in msg and "rejected the credentials" in msg


class _Api(BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server API)
        _Api.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"major": "1", "minor": "32", "gitVersion": "v1.32.0"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server():
    server = HTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Api.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_real_connect_with_kubeconfig_and_token_override(tmp_path, api_server):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": api_server}}],
        "users": [{"name": "lab", "user": {"token": "from-kubeconfig"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
    }))
    connect(params(kubeconfig=str(kubeconfig)), env={})
    assert _Api.seen[-1] == ("/version/", "Bearer from-kubeconfig")
    connect(params(kubeconfig=str(kubeconfig), api_key=TOKEN), env={})
    assert _Api.seen[-1] == ("/version/", f"Bearer {TOKEN}")


def test_real_connect_explicit_host(api_server):
    api = connect(params(host=api_server, api_key=TOKEN), env={})
    assert api.configuration.host == api_server


def test_real_unreachable_api_server_hides_the_token():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(K8sConnectionError) as err:
        connect(params(host=f"http://127.0.0.1:{port}", api_key=TOKEN), env={})
    msg = str(err.value)
    assert TOKEN not in msg and f"127.0.0.1:{port}" in msg and "reachable" in msg


def test_missing_context_is_explained(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [],
                                      "contexts": []}))
    with pytest.raises(K8sConnectionError, match="check kubeconfig and context"):
        connect(params(kubeconfig=str(kubeconfig), context="nope"), env={})


def test_check_kubernetes(monkeypatch):
    class Module:
        def fail_json(self, **kwargs):
            raise SystemExit(kwargs["msg"])

    monkeypatch.setattr(kc, "HAS_KUBERNETES", False)
    with pytest.raises(SystemExit, match="kubernetes"):
        kc.check_kubernetes(Module())
