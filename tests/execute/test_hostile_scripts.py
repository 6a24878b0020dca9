"""Entry scripts that misbehave, in one slot: each is contained to its mini-batch (or its
process) and reported; the slot goes on. A script leaking memory is in ``test_slot.py``
(``test_memory_limit_kills_only_the_child``), the end-to-end run in ``test_failures.py``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import pid_alive, poll_for

from daskprs.errors import SettingsError
from daskprs.execute.child import ChildConfig
from daskprs.execute.deadlines import Deadlines
from daskprs.execute.slot import Slot
from daskprs.execute.wire import RunTask
from daskprs.inputs.batches import FileBatch
from daskprs.rundir import LogsDir
from daskprs.settings import EnvSettings

SCRIPT = """
import os, subprocess, sys, time

def spawn():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(os.path.join(os.environ["MARKS"], f"{child.pid}.pid"), "w"):
        pass

def escape():
    # a daemon: a double fork into a session of its own (the middle process exits at once)
    middle = os.fork()
    if middle == 0:
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            os.execvp("sleep", ["sleep", "600"])
        os.close(os.open(os.path.join(os.environ["MARKS"], f"{daemon}.escaped"), os.O_CREAT))
        os._exit(0)
    os.waitpid(middle, 0)

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    if name == "shout.txt":
        for _ in range(3):
            sys.stdout.write("x" * 2**20 + "\\n")
            sys.stderr.write("y" * 2**20 + "\\n")
        from azureml_user.parallel_run import EntryScript
        for i in range(2000):
            EntryScript().logger.info("%d %s", i, "z" * 100)
    if name == "spawn.txt":
        spawn()
    if name == "spawn-hang.txt":
        spawn()
        time.sleep(3600)
    if name == "escape.txt":
        escape()
    if name == "escape-hang.txt":
        escape()
        time.sleep(3600)
    if name == "mutate.txt":
        os.environ["INJECTED"] = "1"
        os.environ.pop("KEEP", None)
        sys.path.insert(0, "/nowhere")
        sys.argv.append("--injected")
        os.chdir("/")
    if name == "exit.txt":
        sys.exit(3)
    if name == "ctrl-c.txt":
        raise KeyboardInterrupt
    if name == "loud-error.txt":
        raise ValueError("z" * 10**6)
    if name == "huge.txt":
        return list(range(200_000))
    # what a subprocess inherits: the C environment, restored too
    import subprocess
    seen = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getenv('INJECTED'), os.getenv('KEEP'))"],
        capture_output=True, text=True,
    ).stdout.strip() if name == "a.txt" else ""
    return [os.environ.get("INJECTED"), os.environ.get("KEEP"), "/nowhere" in sys.path,
            "--injected" in sys.argv, os.getcwd() != "/", seen]

def shutdown():
    if os.environ.get("SHUTDOWN") == "hang":
        time.sleep(3600)
    if os.environ.get("SHUTDOWN") == "exit":
        sys.exit(5)
"""

NAMES = (
    "a.txt",
    "shout.txt",
    "spawn.txt",
    "spawn-hang.txt",
    "escape.txt",
    "escape-hang.txt",
    "mutate.txt",
    "exit.txt",
    "ctrl-c.txt",
    "loud-error.txt",
    "huge.txt",
)


@pytest.fixture
def hostile(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(textwrap.dedent(SCRIPT))
    data = tmp_path / "data"
    data.mkdir()
    for name in NAMES:
        (data / name).write_text("x\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    logs = LogsDir(str(tmp_path / "logs"))

    def slot(log_limit=64 * 2**20, **env):
        config = ChildConfig(
            code_dir=str(code),
            entry_script="score.py",
            env={"MARKS": str(marks), "KEEP": "kept", **env},
            logs=logs,
            cache_dir=str(tmp_path / "cache"),
            log_limit=log_limit,
        )
        return Slot(config)

    def task(name, part=None):
        return RunTask(FileBatch(0, (str(data / name),)), 1, str(part) if part else None)

    yield slot, task, marks, logs, tmp_path
    for pid in escaped(marks):  # what a failed test left running (a `sleep 600` it started)
        _end_sleep(pid)


def spawned(marks) -> list[int]:
    return [int(p.name.split(".")[0]) for p in marks.glob("*.pid")]


def escaped(marks) -> list[int]:
    """The daemons the script started in sessions of their own (``escape()``)."""
    return [int(p.name.split(".")[0]) for p in marks.glob("*.escaped")]


def _end_sleep(pid: int) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.cmdline() == ["sleep", "600"]:
            proc.kill()
    except psutil.Error:
        pass


def test_user_log_limit_reads_its_variable():
    def limit(env):
        return EnvSettings.from_env(env).user_log_limit

    assert limit({}) == 64 * 2**20
    assert limit({"DASKPRS_USER_LOG_LIMIT": "1kB"}) == 1000
    assert limit({"DASKPRS_USER_LOG_LIMIT": "0"}) is None
    with pytest.raises(SettingsError, match="DASKPRS_USER_LOG_LIMIT='lots'"):
        limit({"DASKPRS_USER_LOG_LIMIT": "lots"})


def test_megabytes_of_output_are_capped_with_a_note(hostile):
    make, task, _, logs, _ = hostile
    slot = make(log_limit=EnvSettings.from_env({"DASKPRS_USER_LOG_LIMIT": "100KiB"}).user_log_limit)
    try:
        for _ in range(2):
            assert slot.run(task("shout.txt"), Deadlines()).status == "RUN_DONE"
        slot.kill()  # a new process appends to the same, full, files
        assert slot.run(task("shout.txt"), Deadlines()).status == "RUN_DONE"
    finally:
        slot.stop()
    for kind in ("stdout", "stderr"):
        text = open(logs.user_output(kind, "node000", "process000"), "rb").read()
        notes = text.count(b"reached its limit of 102400 bytes")
        assert notes == 2, kind  # one note per process whose output was cut
        assert 100 * 2**10 <= len(text) < 100 * 2**10 + 2 * 200
        assert b"DASKPRS_USER_LOG_LIMIT" in text
    # EntryScript().logger's file too: per process, so the second process adds its note
    log = Path(logs.root, "user/entry_script_log/node000/process000.log.txt").read_bytes()
    assert log.count(b"reached its limit of 102400 bytes") == 2
    assert 100 * 2**10 - 200 <= len(log) < 100 * 2**10 + 2 * 200
    assert log.splitlines()[0].endswith(b"process000: 0 " + b"z" * 100)


def test_processes_a_run_leaves_behind_end_with_its_process(hostile):
    make, task, marks, _, _ = hostile
    slot = make()
    try:
        assert slot.run(task("spawn.txt"), Deadlines()).status == "RUN_DONE"
        [left] = spawned(marks)
        assert pid_alive(left)  # a helper process may live as long as the process using it
        record = slot.run(task("spawn-hang.txt"), Deadlines(run=2))
        assert record.status == "RUN_TIMEOUT"
        # the kill took the whole session: both helpers, not only the entry-script process
        for pid in spawned(marks):
            poll_for(lambda pid=pid: not pid_alive(pid), timeout=10)
        assert slot.run(task("spawn.txt"), Deadlines()).status == "RUN_DONE"
    finally:
        slot.stop()
    assert len(spawned(marks)) == 3
    for pid in spawned(marks):  # stopping the slot ends what the last process started
        poll_for(lambda pid=pid: not pid_alive(pid), timeout=10)


def test_processes_that_leave_the_session_end_with_their_process(hostile):
    """A daemon (double fork, ``setsid``) is out of the process group a kill takes; it still
    ends with the entry-script process that started it, and only with that one."""
    make, task, marks, _, _ = hostile
    slot, other = make(), make()
    try:
        assert other.run(task("escape.txt"), Deadlines()).status == "RUN_DONE"
        [theirs] = escaped(marks)
        assert slot.run(task("escape.txt"), Deadlines()).status == "RUN_DONE"
        [first] = set(escaped(marks)) - {theirs}
        assert pid_alive(first)  # it may live as long as the process that started it
        record = slot.run(task("escape-hang.txt"), Deadlines(run=2))
        assert record.status == "RUN_TIMEOUT"
        mine = set(escaped(marks)) - {theirs}
        assert len(mine) == 2
        for pid in mine:  # the killed process's daemons: both
            poll_for(lambda pid=pid: not pid_alive(pid), timeout=10)
        assert pid_alive(theirs)  # another entry-script process's daemon: not touched
        assert slot.run(task("escape.txt"), Deadlines()).status == "RUN_DONE"
        [last] = set(escaped(marks)) - mine - {theirs}
    finally:
        slot.stop()
        other.stop()
    for pid in (last, theirs):  # stopping a slot ends what its last process started
        poll_for(lambda pid=pid: not pid_alive(pid), timeout=10)


WORKER = """
import sys, time
from daskprs.execute.child import ChildConfig
from daskprs.execute.deadlines import Deadlines
from daskprs.execute.slot import Slot
from daskprs.execute.wire import RunTask
from daskprs.inputs.batches import FileBatch

code, data, marks = sys.argv[1:]
slot = Slot(ChildConfig(code_dir=code, entry_script="score.py", env={"MARKS": marks}))
print(slot.run(RunTask(FileBatch(0, (data,)), 1, None), Deadlines()).status, flush=True)
time.sleep(600)
"""


def test_a_daemon_ends_when_the_worker_of_its_process_is_killed(hostile):
    """The worker process (here: a process holding a slot) killed with SIGKILL: its slot
    cannot clean up, so the entry-script process ends what it started, daemons too."""
    import signal
    import subprocess
    import sys

    _, _, marks, _, tmp = hostile
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp / "code"), str(tmp / "data/escape.txt"), str(marks)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout.readline().strip() == "RUN_DONE"
        [daemon] = escaped(marks)
        assert pid_alive(daemon)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        poll_for(lambda: not pid_alive(daemon), timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stdout.close()


@pytest.mark.slow
def test_a_daemon_an_entry_script_starts_ends_with_the_job(tmp_path):
    """On the embedded cluster, through the whole job: the daemon ``run()`` starts in a
    session of its own is gone once the job is over."""
    from conftest import make_files, write_job

    from daskprs.api import run_job

    marks = tmp_path / "marks"
    marks.mkdir()
    make_files(tmp_path / "data", 2)
    script = SCRIPT.replace("name = os.path.basename(mini_batch[0])", 'name = "escape.txt"')
    job = write_job(
        tmp_path,
        script,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        max_concurrency=1,
        extra=f"environment_variables:\n  MARKS: {marks}",
    )
    try:
        result = run_job(job, run_dir=tmp_path / "run", echo=lambda s: None)
        assert result.ok, result.failure
        daemons = escaped(marks)
        assert len(daemons) == 2  # one a mini-batch
        for pid in daemons:
            poll_for(lambda pid=pid: not pid_alive(pid), timeout=30)
    finally:
        for pid in escaped(marks):
            _end_sleep(pid)


def test_changes_to_environ_path_argv_and_cwd_do_not_reach_the_next_mini_batch(hostile):
    make, task, _, _, tmp = hostile
    slot = make()
    try:
        assert slot.run(task("mutate.txt"), Deadlines()).status == "RUN_DONE"
        part = tmp / "next.part"
        assert slot.run(task("a.txt", part), Deadlines()).status == "RUN_DONE"
        assert slot.started == 1  # the same process ran both
    finally:
        slot.stop()
    assert part.read_text().splitlines() == ["None", "kept", "False", "False", "True", "None kept"]


@pytest.mark.parametrize(
    ("name", "error"),
    [("exit.txt", "SystemExit: 3"), ("ctrl-c.txt", "KeyboardInterrupt")],
)
def test_sys_exit_and_keyboard_interrupt_fail_only_their_mini_batch(hostile, name, error):
    make, task, _, logs, _ = hostile
    slot = make()
    try:
        record = slot.run(task(name), Deadlines())
        assert record.status == "RUN_EXCEPTION"
        assert record.error.startswith(error)
        assert "(at score.py:" in record.error
        assert slot.run(task("a.txt"), Deadlines()).status == "RUN_DONE"
        assert slot.started == 1  # the process survived its script's exit
    finally:
        slot.stop()
    assert error in open(logs.user_error("node000", "process000")).read()


def test_a_huge_error_message_is_cut_and_a_huge_return_written_in_full(hostile):
    make, task, _, _, tmp = hostile
    slot = make()
    part = tmp / "huge.part"
    try:
        loud = slot.run(task("loud-error.txt"), Deadlines())
        huge = slot.run(task("huge.txt", part), Deadlines())
    finally:
        slot.stop()
    assert loud.status == "RUN_EXCEPTION"
    assert loud.error.startswith("ValueError: zzz")
    assert "characters cut" in loud.error and len(loud.error) < 2100
    assert "characters cut" in loud.traceback and len(loud.traceback) < 8100
    assert huge.status == "RUN_DONE" and huge.succeeded == huge.total == 200_000
    assert "returned 200000 items" in huge.warning
    assert part.read_text().splitlines() == [str(i) for i in range(200_000)]


def test_a_hanging_shutdown_is_killed_at_its_deadline_and_logged(hostile):
    make, task, marks, logs, _ = hostile
    slot = make(SHUTDOWN="hang")
    assert slot.run(task("spawn.txt"), Deadlines(shutdown=1)).status == "RUN_DONE"
    pid = slot.proc.pid
    slot.stop()  # the deadline of the last try: 1 s
    assert not pid_alive(pid) and slot.proc is None
    for helper in spawned(marks):
        poll_for(lambda helper=helper: not pid_alive(helper), timeout=10)
    error_log = open(logs.user_error("node000", "process000")).read()
    assert "shutdown() did not finish within 1 s; its process was killed" in error_log
    assert "DASKPRS_SHUTDOWN_TIMEOUT" in error_log


def test_sys_exit_in_shutdown_is_logged(hostile):
    make, task, _, logs, _ = hostile
    slot = make(SHUTDOWN="exit")
    assert slot.run(task("a.txt"), Deadlines()).status == "RUN_DONE"
    proc = slot.proc
    slot.stop(timeout=60)
    assert proc.returncode == 0  # it stopped as asked, not killed
    assert "SystemExit: 5" in open(logs.user_error("node000", "process000")).read()


def test_the_shutdown_deadline_comes_from_the_environment():
    from types import SimpleNamespace

    from daskprs.execute.context import _deadlines

    step = SimpleNamespace(settings=SimpleNamespace(task_overhead_timeout=30.0, timeout=60.0))
    deadlines = _deadlines(step, EnvSettings.from_env({}))
    assert deadlines == Deadlines(load=30, run=60, init=90, shutdown=30)
    assert (
        _deadlines(step, EnvSettings.from_env({"DASKPRS_SHUTDOWN_TIMEOUT": "2.5"})).shutdown == 2.5
    )


KEYED = """
def run(mini_batch, context):
    return [repr(context.partition_key_value)]
"""


def test_partition_key_values_are_data_never_paths(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(KEYED)
    (tmp_path / "data.txt").write_text("x\n")
    config = ChildConfig(
        code_dir=str(tmp_path / "code"),
        entry_script="score.py",
        logs=LogsDir(str(tmp_path / "run" / "logs")),
        cache_dir=str(tmp_path / "run" / "cache"),
    )
    keys = {"Store": "../../etc", "Brand": "/abs/x"}
    part = tmp_path / "run" / "00000.s0t1.part"
    slot = Slot(config)
    try:
        batch = FileBatch(0, (str(tmp_path / "data.txt"),), keys=keys)
        record = slot.run(RunTask(batch, 1, str(part)), Deadlines())
    finally:
        slot.stop()
    assert record.status == "RUN_DONE"
    assert part.read_text() == f"{keys!r}\n"  # the script got them as given
    inside = (tmp_path / "run", tmp_path / "code")
    outside = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p != tmp_path / "data.txt" and not any(d in p.parents for d in inside)
    ]
    assert outside == []
    assert not (tmp_path.parent / "etc").exists() and not any(tmp_path.rglob("etc"))
