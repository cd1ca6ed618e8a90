"""Properties every shared connection spec must have, checked for all four services:

- each secret option has no_log=True, and each option whose name looks secret (the regex of
  ansible-test's validate-modules) says no_log explicitly;
- the documented environment variables are wired as env_fallback and really applied by
  Ansible's own argument validation, including no_log for secrets that come from the env;
- the doc fragment documents exactly the spec (names, types, defaults, choices).
"""

from __future__ import annotations

import re

import pytest
import yaml
from ansible.module_utils.basic import env_fallback
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.ops.runbooks.plugins.doc_fragments import _docker as docker_doc
from ansible_collections.ops.runbooks.plugins.doc_fragments import _k8s as k8s_doc
from ansible_collections.ops.runbooks.plugins.doc_fragments import _postgres as postgres_doc
from ansible_collections.ops.runbooks.plugins.doc_fragments import _redis as redis_doc
from ansible_collections.ops.runbooks.plugins.module_utils._docker_client import docker_argument_spec
from ansible_collections.ops.runbooks.plugins.module_utils._k8s_client import k8s_argument_spec
from ansible_collections.ops.runbooks.plugins.module_utils._postgres_client import postgres_argument_spec
from ansible_collections.ops.runbooks.plugins.module_utils._redis_client import redis_argument_spec

NO_LOG_REGEX = re.compile(r"(?:pass(?!ive)|secret|token|key)", re.I)  # as validate-modules

SPECS = {
    "postgres": (postgres_argument_spec, postgres_doc),
    "redis": (redis_argument_spec, redis_doc),
    "docker": (docker_argument_spec, docker_doc),
    "k8s": (k8s_argument_spec, k8s_doc),
}

SECRETS = {
    "postgres": {"login_password", "dsn"},
    "redis": {"login_password", "url"},
    "docker": set(),
    "k8s": {"api_key"},
}

ENV = {
    "postgres": {
        "login_host": "PGHOST", "login_port": "PGPORT", "login_user": "PGUSER",
        "login_password": "PGPASSWORD", "login_db": "PGDATABASE", "ssl_mode": "PGSSLMODE",
    },
    "redis": {
        "url": "REDIS_URL", "login_host": "REDIS_HOST", "login_port": "REDIS_PORT",
        "login_password": "REDIS_PASSWORD",
    },
    "docker": {"docker_host": "DOCKER_HOST", "validate_certs": "DOCKER_TLS_VERIFY"},
    "k8s": {
        "kubeconfig": "K8S_AUTH_KUBECONFIG", "context": "K8S_AUTH_CONTEXT", "host": "K8S_AUTH_HOST",
        "api_key": "K8S_AUTH_API_KEY", "validate_certs": "K8S_AUTH_VERIFY_SSL",
    },
}

# A value for each env var that the option's type accepts.
ENV_VALUES = {
    "PGPORT": ("6543", 6543), "PGSSLMODE": ("require", "require"),
    "REDIS_PORT": ("6380", 6380), "DOCKER_TLS_VERIFY": ("1", True), "K8S_AUTH_VERIFY_SSL": ("no", False),
}
ALL_ENV = sorted({var for env in ENV.values() for var in env.values()} | {
    "PGSSLROOTCERT", "DOCKER_TLS", "DOCKER_TIMEOUT", "DOCKER_CERT_PATH", "K8S_AUTH_SSL_CA_CERT",
    "K8S_AUTH_CERT_FILE", "K8S_AUTH_KEY_FILE",
})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ALL_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("service", SPECS)
def test_secret_options_are_no_log(service):
    spec = SPECS[service][0]()
    for name in SECRETS[service]:
        assert spec[name].get("no_log") is True, f"{service}.{name} must have no_log=True"
    for name, option in spec.items():
        if NO_LOG_REGEX.search(name):
            assert "no_log" in option, f"{service}.{name} looks secret: set no_log explicitly"
        if option.get("no_log"):
            assert name in SECRETS[service], f"{service}.{name} is no_log but not listed as a secret here"


@pytest.mark.parametrize("service", SPECS)
def test_env_fallbacks_are_declared(service):
    spec = SPECS[service][0]()
    for name, var in ENV[service].items():
        assert spec[name]["fallback"] == (env_fallback, [var]), f"{service}.{name} should fall back to ${var}"


@pytest.mark.parametrize(("service", "option", "var"), [
    (service, option, var) for service, env in ENV.items() for option, var in env.items()
])
def test_env_fallbacks_apply_through_ansible_validation(monkeypatch, service, option, var):
    raw, expected = ENV_VALUES.get(var, (f"from-{var}", f"from-{var}"))
    monkeypatch.setenv(var, raw)
    result = ArgumentSpecValidator(SPECS[service][0]()).validate({})
    assert not result.error_messages, result.error_messages
    assert result.validated_parameters[option] == expected
    if option in SECRETS[service]:
        assert raw in result._no_log_values  # hidden from output even when it came from the env


@pytest.mark.parametrize("service", SPECS)
def test_explicit_value_beats_env(monkeypatch, service):
    spec = SPECS[service][0]()
    option, var = next(iter(ENV[service].items()))
    monkeypatch.setenv(var, ENV_VALUES.get(var, ("from-env", None))[0])
    value = {"int": 1, "bool": True}.get(spec[option].get("type"), "/explicit")
    result = ArgumentSpecValidator(spec).validate({option: value})
    assert result.validated_parameters[option] == value


@pytest.mark.parametrize("service", SPECS)
def test_spec_validates_with_no_arguments(service):
    result = ArgumentSpecValidator(SPECS[service][0]()).validate({})
    assert not result.error_messages, result.error_messages


@pytest.mark.parametrize("service", SPECS)
def test_doc_fragment_matches_spec(service):
    spec_fn, doc_module = SPECS[service]
    spec = spec_fn()
    doc = yaml.safe_load(doc_module.ModuleDocFragment.DOCUMENTATION)["options"]
    assert set(doc) == set(spec)
    for name, option in spec.items():
        documented = doc[name]
        assert documented.get("type", "str") == option.get("type", "str"), name
        assert documented.get("default") == option.get("default"), name
        assert documented.get("choices") == option.get("choices"), name
        assert documented.get("description"), name
        assert "no_log" not in documented, name


def test_attributes_fragment_parses():
    from ansible_collections.ops.runbooks.plugins.doc_fragments._attributes import ModuleDocFragment

    base = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["attributes"]
    assert {"check_mode", "diff_mode", "idempotent", "platform"} <= set(base)
    for group in ("POSTGRES", "REDIS", "DOCKER", "K8S"):
        attrs = yaml.safe_load(getattr(ModuleDocFragment, f"ACTIONGROUP_{group}"))["attributes"]
        assert attrs["action_group"]["membership"] == [f"ops.runbooks.{group.lower()}"]


def test_action_groups_exist_in_runtime_yml():
    from pathlib import Path

    runtime = yaml.safe_load((Path(__file__).parents[4] / "meta" / "runtime.yml").read_text())
    assert set(SPECS) <= set(runtime["action_groups"])
