from __future__ import annotations

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.ops.runbooks.plugins.module_utils import _docker_client as dc
from ansible_collections.ops.runbooks.plugins.module_utils._docker_client import (
    DockerConnectionError,
    client_kwargs,
    connect,
    docker_argument_spec,
    hint_for,
)


def params(**overrides):
    base = {
        "docker_host": "unix:///var/run/docker.sock", "tls": False, "validate_certs": False,
        "ca_path": None, "client_cert": None, "client_key": None, "timeout": 60,
    }
    base.update(overrides)
    return base


def test_unix_socket_defaults():
    assert client_kwargs(params()) == {"base_url": "unix:///var/run/docker.sock", "version": "auto", "timeout": 60}


def test_tls_is_ignored_for_unix_sockets():
    assert "tls" not in client_kwargs(params(tls=True, validate_certs=True))


def test_tcp_with_tls_without_verification():
    kw = client_kwargs(params(docker_host="tcp://docker.example:2376", tls=True))
    assert kw["tls"] == {"verify": False, "ca_cert": None, "client_cert": None}


def test_validate_certs_implies_tls_and_uses_client_cert():
    kw = client_kwargs(params(docker_host="tcp://docker.example:2376", validate_certs=True,
                              ca_path="/certs/ca.pem", client_cert="/certs/cert.pem", client_key="/certs/key.pem"))
    assert kw["tls"] == {"verify": True, "ca_cert": "/certs/ca.pem",
                         "client_cert": ("/certs/cert.pem", "/certs/key.pem")}


def test_ssh_uses_the_ssh_client():
    assert client_kwargs(params(docker_host="ssh://deploy@host"))["use_ssh_client"] is True


def test_docker_cert_path_fallback(monkeypatch, tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", "tcp://docker.example:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    result = ArgumentSpecValidator(docker_argument_spec()).validate({})
    p = result.validated_parameters
    assert p["docker_host"] == "tcp://docker.example:2376" and p["validate_certs"] is True
    assert (p["ca_path"], p["client_cert"], p["client_key"]) == (
        str(tmp_path / "ca.pem"), str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_docker_cert_path_fallback_skips_missing_files(monkeypatch, tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    p = ArgumentSpecValidator(docker_argument_spec()).validate({}).validated_parameters
    assert p["ca_path"] == str(tmp_path / "ca.pem") and p["client_cert"] is None


@pytest.mark.parametrize(("reason", "expected"), [
    ("('Connection aborted.', PermissionError(13, 'Permission denied'))", "docker group"),
    ("('Connection aborted.', FileNotFoundError(2, 'No such file or directory'))", "dockerd is running"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED]", "ca_path"),
])
def test_hints(reason, expected):
    assert expected in hint_for(reason)


def test_real_missing_socket(tmp_path):
    host = f"unix://{tmp_path}/docker.sock"
    with pytest.raises(DockerConnectionError) as err:
        connect(params(docker_host=host, timeout=5))
    assert host in str(err.value) and "dockerd is running" in str(err.value)


def test_check_docker(monkeypatch):
    class Module:
        def fail_json(self, **kwargs):
            raise SystemExit(kwargs["msg"])

    monkeypatch.setattr(dc, "HAS_DOCKER", False)
    with pytest.raises(SystemExit, match="docker"):
        dc.check_docker(Module())
