"""Unit tests of the pure dr_journal core on a fake file system and process table."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
from contextlib import contextmanager

import pytest
from ansible_collections.ops.runbooks.plugins.module_utils import _dr_journal as dj
from ansible_collections.ops.runbooks.plugins.module_utils._dr_journal import JournalError

UTC = dt.timezone.utc  # noqa: UP017
T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
PATH = "/var/lib/dr/app.json"
PLAYBOOK = ["/usr/bin/python3", "/venv/bin/ansible-playbook", "-i", "inv", "dr.yml"]


class FakeSystem:
    """Processes: {pid: (ppid, cmdline, start_ticks)}; files: {path: text}."""

    def __init__(self, host="ctl1", boot="boot-1", my_pid=400):
        self._host, self._boot, self._pid = host, boot, my_pid
        self.clock = T0
        self.procs = {
            100: (1, ["/usr/bin/python3", "/usr/bin/ansible-runner", "run"], 10),
            200: (100, list(PLAYBOOK), 20),           # the playbook run
            300: (200, list(PLAYBOOK), 30),           # its forked task worker
            350: (300, ["/bin/sh", "-c", "python3 AnsiballZ_dr_journal.py"], 35),
            400: (350, ["/usr/bin/python3", "/root/.ansible/tmp/AnsiballZ_dr_journal.py"], 40),
        }
        self.zombies: set = set()
        self.files: dict = {}
        self.dirs = {"/", "/var", "/var/lib"}
        self.readonly: set = set()
        self.writes = 0

    def host(self):
        return self._host

    def boot_id(self):
        return self._boot

    def pid(self):
        return self._pid

    def now(self):
        return self.clock

    def ppid(self, pid):
        return self.procs[pid][0] if pid in self.procs else None

    def cmdline(self, pid):
        return self.procs[pid][1] if pid in self.procs else None

    def start_ticks(self, pid):
        return self.procs[pid][2] if pid in self.procs else None

    def pid_alive(self, pid):
        return pid in self.procs and pid not in self.zombies

    def exists(self, path):
        return path in self.files or path in self.dirs

    def isdir(self, path):
        return path in self.dirs

    def writable(self, path):
        return path not in self.readonly

    def mtime(self, path):
        return self.clock

    def makedirs(self, path):
        while path not in self.dirs:
            self.dirs.add(path)
            path = os.path.dirname(path)

    @contextmanager
    def locked(self, directory, check_mode=False):
        yield

    def read(self, path):
        return self.files.get(path)

    def create(self, path, text):
        if path in self.files:
            return False
        self.files[path] = text
        self.writes += 1
        return True

    def replace(self, path, text):
        self.files[path] = text
        self.writes += 1

    def remove(self, path):
        self.files.pop(path, None)
        self.writes += 1

    # helpers for the tests
    def journal(self, path=PATH):
        return json.loads(self.files[path])

    def end_playbook(self):
        for pid in (200, 300, 350, 400):
            self.procs.pop(pid, None)

    def new_playbook(self, base=500):
        """A second ansible-playbook run: the module now runs under pid base+200."""
        self.procs.update({
            base: (1, list(PLAYBOOK), base), base + 100: (base, list(PLAYBOOK), base + 1),
            base + 150: (base + 100, ["/bin/sh", "-c", "x"], base + 2),
            base + 200: (base + 150, ["/usr/bin/python3", "AnsiballZ_dr_journal.py"], base + 3)})
        self._pid = base + 200


def params(**over):
    base = {"path": PATH, "state": "present", "run_id": "run-1", "mode": "drill", "data": None, "step": None,
            "step_status": None, "step_msg": None, "stale_after": "24h", "force": False, "archive_to": None}
    base.update(over)
    return base


def acquire(system, **over):
    return dj.run(params(**over), system)


# ---------------------------------------------------------------------------- owner detection


@pytest.mark.parametrize(("argv", "kind"), [
    (["/venv/bin/python3", "/venv/bin/ansible-playbook", "x.yml"], "ansible-playbook"),
    (["/usr/local/bin/ansible-playbook", "x.yml"], "ansible-playbook"),
    (["ansible-playbook-3.11", "x.yml"], "ansible-playbook"),
    (["/usr/bin/python3", "/usr/bin/ansible", "all", "-m", "ping"], "ansible"),
    (["python3", "/usr/bin/ansible-runner", "run", "/tmp/pd"], "ansible-runner"),
    (["/usr/bin/python3", "/usr/bin/ansible-console"], None),
    (["/usr/bin/python3", "/srv/app/server.py", "ansible-playbook"], None),
    (["/bin/bash"], None),
    ([], None),
    (None, None),
])
def test_owner_kind(argv, kind):
    assert dj.owner_kind(argv) == kind


def test_find_owner_skips_the_forked_worker_and_stops_below_ansible_runner():
    system = FakeSystem()
    owner = dj.find_owner(system, 400)
    assert owner["pid"] == 200 and owner["kind"] == "ansible-playbook" and owner["start_ticks"] == 20
    assert "pid 200" in owner["detection"] and "1 forked ansible-playbook worker" in owner["detection"]


def test_find_owner_adhoc_ansible():
    system = FakeSystem()
    system.procs = {50: (1, ["/usr/bin/python3", "/usr/bin/ansible", "localhost", "-m", "x"], 5),
                    60: (50, ["/usr/bin/python3", "/usr/bin/ansible", "localhost", "-m", "x"], 6),
                    70: (60, ["/usr/bin/python3", "AnsiballZ.py"], 7)}
    owner = dj.find_owner(system, 70)
    assert (owner["pid"], owner["kind"]) == (50, "ansible")


def test_find_owner_not_found_is_honest():
    system = FakeSystem()
    system.procs = {10: (1, ["/usr/sbin/sshd", "-D"], 1), 20: (10, ["sshd: deploy"], 2),
                    30: (20, ["/bin/sh", "-c", "python3"], 3), 40: (30, ["/usr/bin/python3", "AnsiballZ.py"], 4)}
    owner = dj.find_owner(system, 40)
    assert owner["pid"] is None and owner["kind"] is None
    assert owner["detection"].startswith("not found") and "sshd" in owner["detection"]


# ---------------------------------------------------------------------------- acquire


def test_acquire_creates_the_journal_with_the_playbook_as_owner():
    system = FakeSystem()
    res = acquire(system, data={"incident_at": "2026-11-23T11:00:00Z"})
    assert res["changed"] and res["action"] == "acquired" and res["resumed"] is False
    journal = system.journal()
    assert journal == res["journal"]
    assert journal["run_id"] == "run-1" and journal["mode"] == "drill" and journal["steps"] == {}
    assert journal["data"] == {"incident_at": "2026-11-23T11:00:00Z"}
    assert journal["owner"] == {"host": "ctl1", "pid": 200, "kind": "ansible-playbook", "start_ticks": 20,
                                "boot_id": "boot-1", "started": "2026-11-23T12:00:00.000000Z"}
    assert "/var/lib/dr" in system.dirs
    assert res["diff"] == {"before": {}, "after": journal}


def test_acquire_same_run_id_is_unchanged():
    system = FakeSystem()
    acquire(system)
    writes = system.writes
    res = acquire(system)
    assert res["changed"] is False and res["action"] == "already_held" and system.writes == writes
    assert res["journal"] == system.journal()


def test_check_mode_writes_nothing_and_predicts_the_same():
    real_sys, check_sys = FakeSystem(), FakeSystem()
    check = dj.run(params(), check_sys, check_mode=True)
    real = dj.run(params(), real_sys)
    assert check_sys.files == {} and "/var/lib/dr" not in check_sys.dirs
    for key in ("changed", "action", "journal"):
        assert check[key] == real[key], key


def test_live_owner_refuses_with_who_and_what_to_do():
    system = FakeSystem()
    acquire(system, run_id="first", mode="restore")
    system.new_playbook()
    with pytest.raises(JournalError) as err:
        acquire(system, run_id="second")
    msg = err.value.msg
    assert msg.startswith("another DR run is in progress (run_id first, mode restore, pid 200 on host ctl1, started "
                          "2026-11-23T12:00:00.000000Z")
    assert f"wait for it to finish; if that run is gone, remove {PATH}" in msg
    assert err.value.result["holder"]["run_id"] == "first"
    assert system.journal()["run_id"] == "first"


def test_check_mode_refuses_the_same_way():
    system = FakeSystem()
    acquire(system, run_id="first")
    system.new_playbook()
    with pytest.raises(JournalError, match="another DR run is in progress"):
        dj.run(params(run_id="second"), system, check_mode=True)


def _interrupted(system):
    acquire(system, run_id="first", data={"a": 1})
    system.clock = T0 + dt.timedelta(seconds=30)
    dj.run(params(run_id="first", state="updated", step="preflight", step_status="started"), system)
    system.clock = T0 + dt.timedelta(seconds=40)
    dj.run(params(run_id="first", state="updated", step="preflight", step_status="done"), system)
    dj.run(params(run_id="first", state="updated", step="restore", step_status="started",
                  data={"restored_db": "app_dr_1"}), system)
    return system.journal()


@pytest.mark.parametrize("how", ["dead", "zombie", "pid_reused_by_other_program", "pid_reused_by_new_playbook",
                                 "rebooted"])
def test_dead_owner_is_taken_over_keeping_steps_and_data(how):
    system = FakeSystem()
    old = _interrupted(system)
    system.end_playbook()
    if how == "zombie":
        system.procs[200] = (1, list(PLAYBOOK), 20)
        system.zombies.add(200)
    elif how == "pid_reused_by_other_program":
        system.procs[200] = (1, ["/usr/sbin/nginx"], 20)
    elif how == "pid_reused_by_new_playbook":
        system.procs[200] = (1, list(PLAYBOOK), 999)
    elif how == "rebooted":
        system.procs[200] = (1, list(PLAYBOOK), 20)
        system._boot = "boot-2"
    system.new_playbook()
    system.clock = T0 + dt.timedelta(minutes=5)
    res = acquire(system, run_id="second", data={"b": 2})
    assert res["changed"] and res["resumed"] is True and res["action"] == "taken_over"
    assert res["previous"] == old
    assert res["interrupted_steps"] == ["restore"]
    journal = system.journal()
    assert journal == res["journal"]
    assert journal["run_id"] == "second" and journal["owner"]["pid"] == 500
    assert journal["steps"] == old["steps"]
    assert journal["data"] == {"a": 1, "restored_db": "app_dr_1", "b": 2}
    assert journal["resumed_from"]["run_id"] == "first" and journal["resumed_from"]["interrupted_steps"] == ["restore"]
    assert journal["resume_count"] == 1 and journal["created_at"] == old["created_at"]


def test_owner_on_another_host_blocks_until_stale():
    system = FakeSystem()
    acquire(system, run_id="first")
    other = FakeSystem(host="ctl2", boot="boot-9")
    other.files = system.files
    other.dirs = system.dirs
    other.clock = T0 + dt.timedelta(hours=2)
    with pytest.raises(JournalError, match="another DR run is in progress .*on host ctl1.*another host"):
        dj.run(params(run_id="second"), other)
    other.clock = T0 + dt.timedelta(hours=25)
    res = dj.run(params(run_id="second"), other)
    assert res["resumed"] and "older than stale_after" in res["journal"]["resumed_from"]["reason"]


def test_unknown_owner_pid_blocks_until_stale():
    system = FakeSystem()
    system.procs = {10: (1, ["sshd"], 1), 40: (10, ["/usr/bin/python3", "AnsiballZ.py"], 4)}
    system._pid = 40
    res = acquire(system, run_id="first")
    assert res["journal"]["owner"]["pid"] is None and res["owner_detection"].startswith("not found")
    system.clock = T0 + dt.timedelta(minutes=10)
    with pytest.raises(JournalError, match="pid unknown"):
        acquire(system, run_id="second")
    system.clock = T0 + dt.timedelta(minutes=90)
    assert acquire(system, run_id="second", stale_after="1h")["resumed"] is True


def test_stale_age_counts_from_the_last_write():
    system = FakeSystem()
    acquire(system, run_id="first")
    other = FakeSystem(host="ctl2")
    other.files, other.dirs = system.files, system.dirs
    system.clock = T0 + dt.timedelta(hours=23)
    dj.run(params(run_id="first", state="updated", data={"x": 1}), system)
    other.clock = T0 + dt.timedelta(hours=25)
    with pytest.raises(JournalError, match="another DR run"):
        dj.run(params(run_id="second"), other)


# ---------------------------------------------------------------------------- update


def test_step_timestamps_and_idempotence():
    system = FakeSystem()
    acquire(system)
    system.clock = T0 + dt.timedelta(seconds=10)
    res = dj.run(params(state="updated", step="restore", step_status="started"), system)
    assert res["changed"] and res["journal"]["steps"]["restore"] == {
        "status": "started", "started_at": "2026-11-23T12:00:10.000000Z", "ended_at": None, "seconds": None,
        "run_id": "run-1", "attempts": 1}
    writes = system.writes
    again = dj.run(params(state="updated", step="restore", step_status="started"), system)
    assert again["changed"] is False and system.writes == writes
    system.clock = T0 + dt.timedelta(seconds=75, milliseconds=500)
    res = dj.run(params(state="updated", step="restore", step_status="done", step_msg="42 tables"), system)
    step = res["journal"]["steps"]["restore"]
    assert step["status"] == "done" and step["seconds"] == 65.5 and step["msg"] == "42 tables"
    assert step["ended_at"] == "2026-11-23T12:01:15.500000Z"
    assert res["journal"]["updated_at"] == step["ended_at"]
    assert dj.run(params(state="updated", step="restore", step_status="done"), system)["changed"] is False


def test_skipped_without_start_and_failed():
    system = FakeSystem()
    acquire(system)
    res = dj.run(params(state="updated", step="cache_flush", step_status="skipped"), system)
    assert res["journal"]["steps"]["cache_flush"]["seconds"] is None
    assert res["journal"]["steps"]["cache_flush"]["started_at"] is None
    dj.run(params(state="updated", step="verify", step_status="started"), system)
    system.clock = T0 + dt.timedelta(seconds=3)
    res = dj.run(params(state="updated", step="verify", step_status="failed", step_msg="health 503"), system)
    assert res["journal"]["steps"]["verify"]["status"] == "failed" and res["journal"]["steps"]["verify"]["seconds"] == 3


def test_restarting_a_step_of_the_interrupted_run_counts_an_attempt():
    system = FakeSystem()
    _interrupted(system)
    system.end_playbook()
    system.new_playbook()
    acquire(system, run_id="second")
    res = dj.run(params(run_id="second", state="updated", step="restore", step_status="started"), system)
    assert res["changed"] and res["journal"]["steps"]["restore"]["attempts"] == 2
    assert res["journal"]["steps"]["restore"]["run_id"] == "second"


def test_data_merge_top_level_and_unchanged_when_equal():
    system = FakeSystem()
    acquire(system, data={"a": {"x": 1}, "b": 1})
    res = dj.run(params(state="updated", data={"a": {"y": 2}}), system)
    assert res["changed"] and res["journal"]["data"] == {"a": {"y": 2}, "b": 1}
    assert dj.run(params(state="updated", data={"b": 1}), system)["changed"] is False


def test_update_check_mode_equals_real():
    system = FakeSystem()
    acquire(system)
    before = dict(system.files)
    check = dj.run(params(state="updated", step="s", step_status="started", data={"k": 1}), system, check_mode=True)
    assert system.files == before
    real = dj.run(params(state="updated", step="s", step_status="started", data={"k": 1}), system)
    assert check["changed"] is True and real["changed"] is True and check["journal"] == real["journal"]


def test_update_by_another_run_is_refused():
    system = FakeSystem()
    acquire(system, run_id="first")
    with pytest.raises(JournalError, match=r"^not the owner: .* not run_id intruder"):
        dj.run(params(run_id="intruder", state="updated", data={"x": 1}), system)
    assert "x" not in system.journal()["data"]


def test_update_without_journal():
    with pytest.raises(JournalError, match="no journal at .*acquire it first"):
        dj.run(params(state="updated", step="s", step_status="done"), FakeSystem())


# ---------------------------------------------------------------------------- release


def test_release_archives_then_removes():
    system = FakeSystem()
    acquire(system, data={"a": 1})
    system.clock = T0 + dt.timedelta(minutes=3)
    res = dj.run(params(state="absent", archive_to="/var/lib/dr/reports/run-1.json", data={"result": "ok"}), system)
    assert res["changed"] and res["action"] == "released" and PATH not in system.files
    archived = system.journal("/var/lib/dr/reports/run-1.json")
    assert archived == res["journal"] and archived["data"] == {"a": 1, "result": "ok"}
    assert archived["released_at"] == "2026-11-23T12:03:00.000000Z" and res["archived_to"].endswith("run-1.json")
    again = dj.run(params(state="absent"), system)
    assert again["changed"] is False and again["journal"] == {}


def test_release_check_mode_and_ownership():
    system = FakeSystem()
    acquire(system, run_id="first")
    check = dj.run(params(run_id="first", state="absent"), system, check_mode=True)
    assert check["changed"] and PATH in system.files
    with pytest.raises(JournalError, match="not the owner.*force=true"):
        dj.run(params(run_id="other", state="absent"), system)
    res = dj.run(params(run_id=None, state="absent", force=True), system)
    assert res["changed"] and PATH not in system.files


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("over", "expect"), [
    ({"path": "journal.json"}, "must be an absolute file path"),
    ({"path": "/var/lib/dr/"}, "names a directory"),
    ({"state": "locked"}, "state 'locked' is not one of present, updated, absent"),
    ({"run_id": None}, "state=present needs run_id"),
    ({"run_id": "  "}, "must be a non-empty single-line string"),
    ({"run_id": "a\nb"}, "must be a non-empty single-line string"),
    ({"state": "absent", "run_id": None}, "needs run_id .* or force=true"),
    ({"data": ["a"]}, "data must be a dictionary"),
    ({"data": "x=1"}, "data must be a dictionary"),
    ({"state": "updated", "step": "s"}, "step and step_status go together"),
    ({"step": "s", "step_status": "done"}, "recorded with state=updated"),
    ({"state": "updated", "step": "s", "step_status": "finished"}, "step_status 'finished' is not one of"),
    ({"stale_after": "soon"}, "stale_after: invalid duration"),
    ({"state": "absent", "archive_to": "rel.json"}, "archive_to 'rel.json' must be an absolute"),
    ({"state": "absent", "archive_to": PATH}, "archive_to must differ from path"),
])
def test_bad_input(over, expect):
    system = FakeSystem()
    with pytest.raises(JournalError, match=expect):
        dj.run(params(**over), system)
    assert system.files == {} and system.writes == 0


def test_path_is_a_directory_or_under_a_file():
    system = FakeSystem()
    system.dirs.add(PATH)
    with pytest.raises(JournalError, match="is a directory"):
        acquire(system)
    system = FakeSystem()
    system.files["/var/lib/dr"] = "x"
    with pytest.raises(JournalError, match="/var/lib/dr exists and is not a directory"):
        acquire(system)


def test_unwritable_directory_fails_in_both_modes():
    for check_mode in (False, True):
        system = FakeSystem()
        system.readonly.add("/var/lib")
        with pytest.raises(JournalError, match="cannot write the journal in /var/lib: not writable"):
            dj.run(params(), system, check_mode=check_mode)
        assert system.files == {} and "/var/lib/dr" not in system.dirs


@pytest.mark.parametrize(("text", "expect"), [
    ("{not json", "is not valid JSON"),
    ("", "is not valid JSON"),
    ('["a"]', "is JSON but not a dr_journal file"),
    ('{"run_id": 5, "owner": {}}', "is JSON but not a dr_journal file"),
    ('{"run_id": "x", "owner": {}, "steps": []}', "is JSON but not a dr_journal file"),
])
@pytest.mark.parametrize("state", ["present", "updated", "absent"])
def test_corrupt_journal_is_never_overwritten(text, expect, state):
    system = FakeSystem()
    system.makedirs("/var/lib/dr")
    system.files[PATH] = text
    with pytest.raises(JournalError, match=expect) as err:
        dj.run(params(state=state, force=state == "absent"), system)
    assert PATH in err.value.msg and "left untouched" in err.value.msg and "remove it" in err.value.msg
    assert system.files[PATH] == text and system.writes == 0


def test_os_errors_become_messages():
    class Broken(FakeSystem):
        def create(self, path, text):
            raise OSError(28, "No space left on device", path)

    with pytest.raises(JournalError, match=r"cannot use the journal .*No space left on device"):
        acquire(Broken())


# ---------------------------------------------------------------------------- the real system object


def test_local_system_round_trip(tmp_path):
    system = dj.LocalSystem()
    path = str(tmp_path / "d" / "j.json")
    res = dj.run(params(path=path), system)
    assert res["changed"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "d").st_mode & 0o777) == "0o700"
    assert system.create(path, "{}") is False  # exclusive create
    assert os.listdir(tmp_path / "d") == ["j.json"]  # no temp file left
    assert system.pid_alive(os.getpid()) and system.ppid(os.getpid()) == os.getppid()
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as handle:
        assert system.cmdline(os.getpid()) == [a.decode() for a in handle.read().split(b"\0") if a]
    assert isinstance(system.start_ticks(os.getpid()), int)
    assert system.cmdline(2**22 + 1) is None and system.pid_alive(2**22 + 1) is False


def _race(path, run_id, queue):
    try:
        res = dj.run(params(path=path, run_id=run_id), dj.LocalSystem())
        queue.put((run_id, "won" if res["action"] == "acquired" else res["action"]))
    except JournalError as exc:
        queue.put((run_id, exc.msg))


def test_local_system_concurrent_acquires_have_one_winner(tmp_path):
    path = str(tmp_path / "race" / "j.json")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, f"run-{n}", queue)) for n in range(8)]
    for proc in procs:
        proc.start()
    outcomes = dict(queue.get(timeout=60) for _proc in procs)
    for proc in procs:
        proc.join(timeout=60)
    winners = [run_id for run_id, what in outcomes.items() if what == "won"]
    assert len(winners) == 1, outcomes
    assert all(what.startswith("another DR run is in progress") for run_id, what in outcomes.items()
               if run_id not in winners), outcomes
    assert json.loads(open(path, encoding="utf-8").read())["run_id"] == winners[0]
    assert os.listdir(tmp_path / "race") == ["j.json"]
