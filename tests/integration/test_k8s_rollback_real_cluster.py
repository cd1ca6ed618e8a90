"""Opt-in: the same scenarios against a REAL cluster, when K8S_IT_KUBECONFIG points at its
kubeconfig (optionally K8S_IT_CONTEXT). Each test works in its own namespace and deletes it
afterwards, even on failure. Without K8S_IT_KUBECONFIG every test here is SKIPPED (not passed).

Images (override with K8S_IT_IMAGE_V1 / K8S_IT_IMAGE_V2): two tags of a tiny image the cluster
can pull; K8S_IT_IMAGE_BROKEN must never start (a tag that does not exist).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

from tests.k8s_sim.ansible_run import run_module

KUBECONFIG = os.environ.get("K8S_IT_KUBECONFIG")
CONTEXT = os.environ.get("K8S_IT_CONTEXT")
V1 = os.environ.get("K8S_IT_IMAGE_V1", "registry.k8s.io/pause:3.9")
V2 = os.environ.get("K8S_IT_IMAGE_V2", "registry.k8s.io/pause:3.10")
BROKEN = os.environ.get("K8S_IT_IMAGE_BROKEN", "registry.k8s.io/pause:ops-runbooks-does-not-exist")

pytestmark = pytest.mark.skipif(not KUBECONFIG, reason="K8S_IT_KUBECONFIG is not set: the real-cluster suite "
                                "is opt-in (these are skips, not passes)")


@pytest.fixture
def real(request):
    import kubernetes  # noqa: PLC0415 (only needed when the suite runs)

    api = kubernetes.config.new_client_from_config(config_file=KUBECONFIG, context=CONTEXT)
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    ns = f"ops-rb-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"ops.runbooks/test": "k8s_rollback"}}})

    def cleanup():
        core.delete_namespace(ns)

    request.addfinalizer(cleanup)

    class Real:
        namespace = ns

        def deploy(self, image, name="web", deadline=60):
            body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                    "spec": {"replicas": 2, "progressDeadlineSeconds": deadline,
                             "selector": {"matchLabels": {"app": name}},
                             "template": {"metadata": {"labels": {"app": name}},
                                          "spec": {"containers": [{"name": name, "image": image}]}}}}
            apps.create_namespaced_deployment(ns, body)

        def set_image(self, image, name="web"):
            apps.patch_namespaced_deployment(name, ns, {"spec": {"template": {"spec": {
                "containers": [{"name": name, "image": image}]}}}})

        def image(self, name="web"):
            return apps.read_namespaced_deployment(name, ns).spec.template.spec.containers[0].image

        def wait(self, name="web", timeout=180):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                d = apps.read_namespaced_deployment(name, ns)
                st = d.status
                if (st.observed_generation or 0) >= d.metadata.generation and (st.updated_replicas or 0) == 2 \
                        and (st.available_replicas or 0) == 2 and (st.replicas or 0) == 2:
                    return
                time.sleep(1)
            raise AssertionError(f"{name} did not roll out")

    return Real()


def _args(real, **kw):
    args = {"kubeconfig": KUBECONFIG, "namespace": real.namespace, "name": "web"}
    if CONTEXT:
        args["context"] = CONTEXT
    args.update(kw)
    return args


def test_real_undo_check_mode_real_run_and_repeat(real, venv_bin, ansible_env):
    real.deploy(V1)
    real.wait()
    real.set_image(V2)
    real.wait()
    check, _p = run_module(venv_bin, ansible_env, _args(real, to_revision=1), check=True)
    assert check["changed"] and real.image() == V2, check
    done, _p = run_module(venv_bin, ansible_env, _args(real, to_revision=1))
    assert done["changed"] and done["patch"] == check["patch"] and done["rollout"]["done"], done
    assert real.image() == V1
    again, _p = run_module(venv_bin, ansible_env, _args(real, to_revision=1))
    assert not again["changed"] and again["skipped"], again


def test_real_progress_deadline_is_reported(real, venv_bin, ansible_env):
    real.deploy(BROKEN, deadline=15)
    real.set_image(V1)  # revision 2 is fine, roll back to the broken revision 1
    real.wait()
    res, _p = run_module(venv_bin, ansible_env, _args(real, wait_timeout=240))
    assert res.get("failed") and "exceeded its progress deadline" in res["msg"], res


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_real_kubectl_agrees_on_the_skip(real, venv_bin, ansible_env):
    real.deploy(V1)
    real.wait()
    real.set_image(V2)
    real.wait()
    env = dict(os.environ, KUBECONFIG=KUBECONFIG)
    ctx = ["--context", CONTEXT] if CONTEXT else []
    proc = subprocess.run(["kubectl", *ctx, "-n", real.namespace, "rollout", "undo", "deployment/web",
                           "--to-revision=2"], env=env, capture_output=True, text=True, check=False)
    res, _p = run_module(venv_bin, ansible_env, _args(real, to_revision=2))
    assert "skipped rollback (current template already matches revision 2)" in proc.stdout
    assert res["msg"] == "skipped rollback (current template already matches revision 2)"
