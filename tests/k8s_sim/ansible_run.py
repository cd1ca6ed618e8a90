"""Run ops.runbooks.k8s_rollback through ansible-playbook and return its registered result."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

_PLAY = """
- name: Run k8s_rollback once
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The module under test
      ops.runbooks.k8s_rollback: __ARGS__
      register: k8s_result
      ignore_errors: true
    - name: Save its result
      ansible.builtin.copy:
        content: "{{ k8s_result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      check_mode: false
      diff: false
"""


_TASK = """
    - name: The module under test, run __N__
      ops.runbooks.k8s_rollback: __ARGS__
      register: k8s_result___N__
      ignore_errors: true
"""

_SAVE = """
    - name: Save the results
      ansible.builtin.copy:
        content: "{{ __RESULTS__ | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
"""


def run_modules(venv_bin: Path, env: dict, many: list[dict], extra_env: dict | None = None) -> list[dict]:
    """Several independent module runs in one ansible-playbook (saves Ansible's start-up time)."""
    tasks = "".join(_TASK.replace("__N__", str(i)).replace("__ARGS__", json.dumps(a)) for i, a in enumerate(many))
    results_expr = "[" + ", ".join(f"k8s_result_{i}" for i in range(len(many))) + "]"
    play = (
        "- name: Run k8s_rollback several times\n  hosts: localhost\n  gather_facts: false\n  tasks:"
        + tasks
        + _SAVE.replace("__RESULTS__", results_expr)
    )
    with tempfile.TemporaryDirectory(prefix="k8s-rb-") as tmp:
        path, out, extra = Path(tmp, "play.yml"), Path(tmp, "result.json"), Path(tmp, "vars.json")
        path.write_text(play)
        extra.write_text(json.dumps({"result_file": str(out), "ansible_python_interpreter": str(venv_bin / "python")}))
        cmd = [str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(path), "-e", f"@{extra}"]
        run_env = dict(env, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
        run_env.update(extra_env or {})
        proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=600, check=False)
        if not out.exists():
            raise AssertionError(f"ansible-playbook did not save results:\n{proc.stdout}\n{proc.stderr}")
        results = json.loads(out.read_text())
        for r in results:
            r["_output"] = proc.stdout + proc.stderr
        return results


def run_module(
    venv_bin: Path,
    env: dict,
    args: dict,
    check: bool = False,
    diff: bool = False,
    verbosity: int = 0,
    extra_env: dict | None = None,
) -> tuple[dict, subprocess.CompletedProcess]:
    with tempfile.TemporaryDirectory(prefix="k8s-rb-") as tmp:
        play, out, extra = Path(tmp, "play.yml"), Path(tmp, "result.json"), Path(tmp, "vars.json")
        play.write_text(_PLAY.replace("__ARGS__", json.dumps(args)))
        extra.write_text(json.dumps({"result_file": str(out), "ansible_python_interpreter": str(venv_bin / "python")}))
        cmd = [str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play), "-e", f"@{extra}"]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        if verbosity:
            cmd.append("-" + "v" * verbosity)
        run_env = dict(env, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
        run_env.update(extra_env or {})
        proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=300, check=False)
        if not out.exists():
            raise AssertionError(f"ansible-playbook did not save a result:\n{proc.stdout}\n{proc.stderr}")
        return json.loads(out.read_text()), proc
