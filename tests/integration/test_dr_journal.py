"""ops.runbooks.dr_journal through real `ansible-playbook` runs on this host (the controller):
happy path with check mode == real and idempotence, two overlapping playbook runs (the second is
refused naming the first), a run killed with SIGKILL mid-step that the next run resumes, and a
bad-input table. Every run uses its own temp directory; every process started here is killed by pid
or process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TAG = "i8j"


@pytest.fixture
def work(tmp_path):
    """A private temp dir per test: plays, results, journals."""
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture(scope="module")
def env(ansible_env):
    return dict(ansible_env, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
                ANSIBLE_RETRY_FILES_ENABLED="0")


def command(venv_bin: Path, play: Path, *extra: str) -> list[str]:
    return [str(venv_bin / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", str(play), *extra]


def run_play(venv_bin, env, work: Path, name: str, body: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run a play; return the process and the JSON it saved to {{ out }} (its registered results)."""
    play = work / f"{name}.yml"
    out = work / f"{name}.out.json"
    play.write_text(body)
    proc = subprocess.run(command(venv_bin, play, "-e", f"out={out}", *extra), env=env, cwd=work,
                          capture_output=True, text=True, check=False, timeout=300)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads(out.read_text()) if out.exists() else {}
    return proc, saved


SAVE = """
    - name: Save the results
      ansible.builtin.copy:
        content: "{{ results | to_nice_json }}"
        dest: "{{ out }}"
        mode: "0600"
      check_mode: false
"""


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (read from /proc), to kill exactly what this test started."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def wait_for_file(path: Path, predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the holding playbook ended early (rc {proc.returncode}):\n{out[-3000:]}\n"
                                 f"{err[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if predicate(data):
                return data
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


HOLDER = """
- name: Hold the DR lock and sleep in the middle of a step
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Acquire
      ops.runbooks.dr_journal:
        path: "{{ journal }}"
        run_id: "{{ run_id }}"
        mode: restore
        data: {incident_at: "2026-11-23T10:00:00Z", backup: /srv/bk/app.dump}
    - name: Preflight done
      ops.runbooks.dr_journal:
        path: "{{ journal }}"
        run_id: "{{ run_id }}"
        state: updated
        step: preflight
        step_status: "{{ item }}"
      loop: [started, done]
    - name: Restore started
      ops.runbooks.dr_journal:
        path: "{{ journal }}"
        run_id: "{{ run_id }}"
        state: updated
        step: restore
        step_status: started
        data: {restored_db: app_dr_20261123}
    - name: The long restore
      ansible.builtin.wait_for:
        timeout: 600
"""


@contextlib.contextmanager
def holder(venv_bin, env, work: Path, journal: Path, run_id: str):
    """Start the holding playbook in its own process group; yield (proc, journal when the restore step
    started); kill the group (and any descendant that left it) on exit."""
    play = work / "holder.yml"
    play.write_text(HOLDER)
    proc = subprocess.Popen(command(venv_bin, play, "-e", f"journal={journal}", "-e", f"run_id={run_id}"),
                            env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        data = wait_for_file(journal, lambda d: "restore" in d.get("steps", {}), proc, "the restore step")
        yield proc, data
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        below = descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=60)


# ---------------------------------------------------------------------------- (1) happy path


HAPPY = """
- name: Acquire, update, release
  hosts: localhost
  gather_facts: false
  vars:
    j: "{{ journal }}"
  tasks:
    - name: Acquire (check mode)
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", mode: drill, data: {a: 1}}
      check_mode: true
      register: acquire_check
    - name: Acquire
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", mode: drill, data: {a: 1}}
      register: acquire
    - name: Acquire again, same run_id
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", mode: drill, data: {a: 1}}
      register: acquire_again
    - name: Step started (check mode)
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", state: updated, step: restore,
                                step_status: started, data: {db: app_dr_1}}
      check_mode: true
      register: step_check
    - name: Step started
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", state: updated, step: restore,
                                step_status: started, data: {db: app_dr_1}}
      register: step_started
    - name: Step started again
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", state: updated, step: restore,
                                step_status: started, data: {db: app_dr_1}}
      register: step_again
    - name: Step done
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", state: updated, step: restore,
                                step_status: done, step_msg: restored}
      diff: true
      register: step_done
    - name: Journal file mode
      ansible.builtin.stat: {path: "{{ j }}"}
      register: journal_stat
    - name: Journal dir mode
      ansible.builtin.stat: {path: "{{ j | dirname }}"}
      register: dir_stat
    - name: Release (check mode)
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", state: absent, archive_to: "{{ archive }}"}
      check_mode: true
      register: release_check
    - name: Journal still there after check mode
      ansible.builtin.stat: {path: "{{ j }}"}
      register: after_check
    - name: Release
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", state: absent, archive_to: "{{ archive }}"}
      register: release
    - name: Release again
      ops.runbooks.dr_journal: {path: "{{ j }}", run_id: "{{ run_id }}", state: absent}
      register: release_again
    - name: Collect
      ansible.builtin.set_fact:
        results: "{{ {'acquire_check': acquire_check, 'acquire': acquire, 'acquire_again': acquire_again,
                      'step_check': step_check, 'step_started': step_started, 'step_again': step_again,
                      'step_done': step_done, 'journal_mode': journal_stat.stat.mode, 'dir_mode': dir_stat.stat.mode,
                      'release_check': release_check, 'after_check': after_check.stat.exists,
                      'release': release, 'release_again': release_again} }}"
""" + SAVE


def test_happy_path_check_mode_equals_real_and_idempotent(venv_bin, env, work):
    journal = work / "dr" / "app.journal.json"
    archive = work / "reports" / "run.json"
    proc, res = run_play(venv_bin, env, work, "happy", HAPPY, "-e", f"journal={journal}", "-e", "run_id=happy-1",
                         "-e", f"archive={archive}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    check, real, again = res["acquire_check"], res["acquire"], res["acquire_again"]
    assert check["changed"] is real["changed"] is True and again["changed"] is False
    assert check["action"] == real["action"] == "acquired" and again["action"] == "already_held"
    for key in ("run_id", "mode", "data", "steps"):
        assert check["journal"][key] == real["journal"][key]
    assert real["resumed"] is False and real["journal"]["data"] == {"a": 1}
    owner = real["journal"]["owner"]
    assert owner["host"] == socket.gethostname() and owner["kind"] == "ansible-playbook"
    assert isinstance(owner["pid"], int) and owner["pid"] > 1  # which pid exactly: test_owner_is_the_...
    assert real["owner_detection"].startswith(f"ansible-playbook pid {owner['pid']}")
    assert "forked ansible-playbook worker" in real["owner_detection"]
    assert again["journal"] == real["journal"]
    # steps
    assert res["step_check"]["changed"] is res["step_started"]["changed"] is True
    assert res["step_check"]["journal"]["steps"]["restore"]["status"] == "started"
    assert res["step_again"]["changed"] is False
    done = res["step_done"]["journal"]["steps"]["restore"]
    assert done["status"] == "done" and done["seconds"] >= 0 and done["msg"] == "restored"
    assert res["step_done"]["journal"]["data"] == {"a": 1, "db": "app_dr_1"}
    diff = res["step_done"]["diff"]
    assert diff["before"]["steps"]["restore"]["status"] == "started"
    assert diff["after"] == res["step_done"]["journal"]
    assert "diff" not in res["step_started"]  # only with --diff / diff: true
    assert res["journal_mode"] == "0600" and res["dir_mode"] == "0700"
    # release
    assert res["release_check"]["changed"] is res["release"]["changed"] is True and res["after_check"] is True
    assert res["release_again"]["changed"] is False
    assert not journal.exists() and sorted(os.listdir(journal.parent)) == []
    archived = json.loads(archive.read_text())
    assert archived["steps"]["restore"]["status"] == "done" and archived["released_by"] == "happy-1"
    assert oct(archive.stat().st_mode & 0o777) == "0o600"


def test_owner_is_the_ansible_playbook_process(venv_bin, env, work):
    journal = work / "j.json"
    with holder(venv_bin, env, work, journal, "owner-1") as (proc, data):
        assert data["owner"]["pid"] == proc.pid
        assert data["owner"]["kind"] == "ansible-playbook"
        with open(f"/proc/{proc.pid}/stat", encoding="utf-8") as handle:
            assert data["owner"]["start_ticks"] == int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            assert data["owner"]["boot_id"] == handle.read().strip()


# ---------------------------------------------------------------------------- (2) overlap


SECOND = """
- name: A second DR run
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Acquire
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", mode: drill}
      register: acquire
      ignore_errors: true
    - name: Acquire in check mode
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", mode: drill}
      check_mode: true
      register: acquire_check
      ignore_errors: true
    - name: Try to write into the other run's journal
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", state: updated, data: {x: 1}}
      register: update
      ignore_errors: true
    - name: Try to release it
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", state: absent}
      register: release
      ignore_errors: true
    - name: Collect
      ansible.builtin.set_fact:
        results: {acquire: "{{ acquire }}", acquire_check: "{{ acquire_check }}", update: "{{ update }}",
                  release: "{{ release }}"}
""" + SAVE


def test_overlapping_runs_the_second_is_refused(venv_bin, env, work):
    journal = work / "j.json"
    with holder(venv_bin, env, work, journal, "first-run") as (proc, data):
        before = journal.read_bytes()
        second, res = run_play(venv_bin, env, work, "second", SECOND, "-e", f"journal={journal}",
                               "-e", "run_id=second-run")
        assert second.returncode == 0, second.stdout[-3000:]  # failures were ignored, results saved
        acquire = res["acquire"]
        assert acquire["failed"] is True and acquire["changed"] is False
        started = data["owner"]["started"]
        assert acquire["msg"].startswith(
            f"another DR run is in progress (run_id first-run, mode restore, pid {proc.pid} on host "
            f"{socket.gethostname()}, started {started}"), acquire["msg"]
        assert acquire["msg"].endswith(f"wait for it to finish; if that run is gone, remove {journal}")
        assert acquire["holder"]["run_id"] == "first-run"
        assert res["acquire_check"]["failed"] is True and res["acquire_check"]["msg"] == acquire["msg"]
        assert res["update"]["failed"] and res["update"]["msg"].startswith("not the owner:")
        assert res["release"]["failed"] and "force=true" in res["release"]["msg"]
        assert journal.read_bytes() == before
        assert proc.poll() is None  # the first run was not disturbed


# ---------------------------------------------------------------------------- (3) kill -9 and resume


RESUME = """
- name: The next DR run after a crash
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Acquire (check mode)
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", mode: restore, data: {note: rerun}}
      check_mode: true
      register: acquire_check
    - name: Acquire
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", mode: restore, data: {note: rerun}}
      register: acquire
    - name: Acquire again
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", mode: restore, data: {note: rerun}}
      register: acquire_again
    - name: Redo the interrupted step
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", state: updated, step: restore,
                                step_status: "{{ item }}"}
      loop: [started, done]
      register: redo
    - name: Release
      ops.runbooks.dr_journal: {path: "{{ journal }}", run_id: "{{ run_id }}", state: absent}
      register: release
    - name: Collect
      ansible.builtin.set_fact:
        results: {acquire_check: "{{ acquire_check }}", acquire: "{{ acquire }}", acquire_again: "{{ acquire_again }}",
                  redo: "{{ redo }}", release: "{{ release }}"}
""" + SAVE


def test_killed_run_is_resumed_with_its_steps_and_data(venv_bin, env, work):
    journal = work / "j.json"
    with holder(venv_bin, env, work, journal, "crashed-run") as (proc, _data):
        below = descendants(proc.pid)
        assert below, "the holding playbook has no worker/module processes"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        for pid in below:  # anything that escaped the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = json.loads(journal.read_text())
    assert left["run_id"] == "crashed-run" and left["owner"]["pid"] == proc.pid
    proc2, res = run_play(venv_bin, env, work, "resume", RESUME, "-e", f"journal={journal}",
                          "-e", "run_id=rerun-1")
    assert proc2.returncode == 0, proc2.stdout[-3000:]
    check, real = res["acquire_check"], res["acquire"]
    assert check["changed"] is real["changed"] is True and check["resumed"] is real["resumed"] is True
    assert check["previous"] == real["previous"] == left
    assert real["action"] == "taken_over" and real["interrupted_steps"] == ["restore"]
    journal_now = real["journal"]
    assert journal_now["run_id"] == "rerun-1" and journal_now["owner"]["pid"] != proc.pid
    assert journal_now["steps"] == left["steps"]
    assert journal_now["steps"]["preflight"]["status"] == "done"
    assert journal_now["data"] == {"incident_at": "2026-11-23T10:00:00Z", "backup": "/srv/bk/app.dump",
                                   "restored_db": "app_dr_20261123", "note": "rerun"}
    assert journal_now["resumed_from"]["run_id"] == "crashed-run"
    assert f"owner pid {proc.pid} is gone" in journal_now["resumed_from"]["reason"]
    assert res["acquire_again"]["changed"] is False and res["acquire_again"]["resumed"] is False
    redo = res["redo"]["results"]
    assert redo[0]["journal"]["steps"]["restore"]["attempts"] == 2
    assert redo[1]["journal"]["steps"]["restore"]["status"] == "done"
    assert res["release"]["changed"] is True and not journal.exists()


# ---------------------------------------------------------------------------- (4) bad input


BAD = """
- name: Bad input
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Case
      ops.runbooks.dr_journal:
        path: "{{ item.path | default(omit) }}"
        state: "{{ item.state | default(omit) }}"
        run_id: "{{ item.run_id | default(omit) }}"
        data: "{{ item.data | default(omit) }}"
        step: "{{ item.step | default(omit) }}"
        step_status: "{{ item.step_status | default(omit) }}"
        stale_after: "{{ item.stale_after | default(omit) }}"
        archive_to: "{{ item.archive_to | default(omit) }}"
      loop: "{{ cases }}"
      loop_control: {label: "{{ item.name }}"}
      register: bad
      ignore_errors: true
    - name: Collect
      ansible.builtin.set_fact:
        results: "{{ bad.results }}"
""" + SAVE


@contextlib.contextmanager
def read_only_dir():
    mnt = Path(tempfile.mkdtemp(prefix=f"{TAG}-ro-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        if subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode != 0:
            mnt.rmdir()


def test_bad_input_table(venv_bin, env, work):
    if os.geteuid() != 0:
        pytest.fail("needs root (a read-only tmpfs mount for the unwritable-directory case)")
    corrupt = work / "corrupt" / "j.json"
    corrupt.parent.mkdir()
    corrupt.write_text('{"run_id": "x", "owner": {"host"')
    foreign = work / "foreign" / "j.json"
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"run_id": "owner-run", "owner": {"host": "elsewhere", "pid": 1},
                                   "steps": {}, "data": {}, "updated_at": "2099-01-01T00:00:00Z"}))
    (work / "afile").write_text("x")
    with read_only_dir() as ro:
        cases = [
            ("relative path", {"path": "dr/j.json", "run_id": "r"}, "must be an absolute file path"),
            ("path is a directory", {"path": str(work), "run_id": "r"}, "is a directory"),
            ("parent is a file", {"path": str(work / "afile" / "j.json"), "run_id": "r"},
             "exists and is not a directory"),
            ("read-only directory", {"path": f"{ro}/dr/j.json", "run_id": "r"}, f"cannot write the journal in {ro}"),
            ("corrupt journal", {"path": str(corrupt), "run_id": "r"}, f"journal {corrupt} is not valid JSON"),
            ("corrupt journal update", {"path": str(corrupt), "run_id": "r", "state": "updated", "data": {"a": 1}},
             "left untouched"),
            ("wrong run_id update", {"path": str(foreign), "run_id": "intruder", "state": "updated",
                                     "step": "s", "step_status": "done"}, "not the owner"),
            ("wrong run_id release", {"path": str(foreign), "run_id": "intruder", "state": "absent"},
             "only the owner releases the lock"),
            ("foreign host, fresh", {"path": str(foreign), "run_id": "r"}, "another DR run is in progress"),
            ("bad state", {"path": str(work / "x.json"), "run_id": "r", "state": "locked"},
             "value of state must be one of"),
            ("data not a dict", {"path": str(work / "x.json"), "run_id": "r", "data": [1, 2]}, "data"),
            ("step without status", {"path": str(work / "x.json"), "run_id": "r", "state": "updated", "step": "s"},
             "step, step_status"),
            ("bad step status", {"path": str(work / "x.json"), "run_id": "r", "state": "updated", "step": "s",
                                 "step_status": "finished"}, "value of step_status must be one of"),
            ("bad stale_after", {"path": str(work / "x.json"), "run_id": "r", "stale_after": "soon"},
             "stale_after: invalid duration"),
            ("no run_id", {"path": str(work / "x.json")}, "state=present needs run_id"),
            ("update before acquire", {"path": str(work / "x.json"), "run_id": "r", "state": "updated",
                                       "data": {"a": 1}}, "acquire it first"),
            ("archive onto itself", {"path": str(foreign), "run_id": "owner-run", "state": "absent",
                                     "archive_to": str(foreign)}, "archive_to must differ from path"),
        ]
        before = {p: p.read_bytes() for p in (corrupt, foreign)}
        listing = sorted(os.listdir(work))
        proc, results = run_play(venv_bin, env, work, "bad", BAD,
                                 "-e", json.dumps({"cases": [dict(args, name=name) for name, args, _expect in cases]}))
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert os.listdir(ro) == []
    assert len(results) == len(cases)
    for (name, _args, expect), result in zip(cases, results, strict=True):
        assert result.get("failed") is True, (name, result)
        assert result.get("changed") in (False, None), (name, result)
        assert expect in result["msg"], (name, result["msg"])
        assert "Traceback" not in json.dumps(result), (name, result)
    assert {p: p.read_bytes() for p in (corrupt, foreign)} == before
    assert sorted(os.listdir(work)) == sorted({*listing, "bad.yml", "bad.out.json"})
    assert not (work / "x.json").exists()
