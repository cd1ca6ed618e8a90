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
