"""A worker slot and its child process, without Dask: init, run, timeouts, deaths, memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import pid_alive, poll_for

from daskprs.execute.child import ChildConfig
from daskprs.execute.deadlines import Deadlines
from daskprs.execute.slot import Slot, wait_exit
from daskprs.execute.wire import RunTask
from daskprs.inputs.batches import FileBatch
from daskprs.rundir import LogsDir

SCRIPT = """
import os, sys, time

def init():
    with open(os.environ["INIT_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    if os.environ.get("INIT_RAISES"):
        raise ValueError("cannot load the model")
    if os.environ.get("INIT_HANGS"):
        time.sleep(600)

def run(mini_batch, context):
    name = os.path.basename(mini_batch[0])
    if name == "hang.txt":
        time.sleep(600)
    if name == "raise.txt":
        raise KeyError("bad input")
    if name == "exit.txt":
        os._exit(7)
    if name == "none.txt":
        return None
    if name == "hog.txt":
        hog = bytearray(400 * 2**20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(600)
    if name == "more.txt":
        return [1, 2, 3]
    print("ran", name, context.minibatch_index)
    return [f"{name} {context.minibatch_index} {sys.argv[1:]} {os.getcwd() != '/'}"]
"""


@pytest.fixture
def setup(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(textwrap.dedent(SCRIPT))
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.txt", "hang.txt", "raise.txt", "exit.txt", "none.txt", "hog.txt", "more.txt"):
        (data / name).write_text("x\n")
    logs = tmp_path / "logs"
    init_log = tmp_path / "init.log"

    def make(**env):
        cfg = ChildConfig(
            code_dir=str(code),
            entry_script="score.py",
            argv=("--model", "m 1"),
            env={"INIT_LOG": str(init_log), **env},
            logs=LogsDir(str(logs)),
            cache_dir=str(tmp_path / "cache"),
        )
        return cfg

    def task(name, index=0, part=None):
        return RunTask(FileBatch(index, (str(data / name),)), 1, str(part) if part else None)

    return make, task, init_log, tmp_path


def init_count(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def one_try(tmp_path, script: str, **config):
    """Run ``script`` as ``code/score.py`` on one file in a slot of its own, then stop the
    slot; return the try's record, its part's text and the process that ran it."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(script)
    (tmp_path / "a.txt").write_text("x\n")
    part = tmp_path / "a.part"
    slot = Slot(ChildConfig(code_dir=str(code), entry_script="score.py", **config))
    try:
        task = RunTask(FileBatch(0, (str(tmp_path / "a.txt"),)), 1, str(part))
        record = slot.run(task, Deadlines(load=30, run=30))
        proc = slot.proc
    finally:
        slot.stop()
    return record, part.read_text() if part.exists() else None, proc


def test_init_once_run_per_task_and_part_written(setup):
    make, task, init_log, tmp = setup
    slot = Slot(make())
    try:
        part = tmp / "p0.part"
        r1 = slot.run(task("a.txt", 0, part), Deadlines())
        r2 = slot.run(task("a.txt", 1), Deadlines())
    finally:
        slot.stop()
    assert r1.status == "RUN_DONE" and r1.succeeded == 1 and r1.total == 1
    assert part.read_text() == "a.txt 0 ['--model', 'm 1'] True\n"
    assert r2.status == "RUN_DONE" and r2.part is None
    assert init_count(init_log) == 1
    stdout = tmp / "logs" / "user" / "stdout" / "node000" / "process000.stdout.txt"
    assert "ran a.txt 0" in stdout.read_text()


def test_init_runs_as_the_process_starts_before_its_first_try(setup):
    """As on Azure, a process loads its script and runs init() as it starts: a model loads
    while the driver still plans and submits. The first try gets init()'s result."""
    make, task, init_log, _ = setup
    slot = Slot(make())
    try:
        slot.start()
        assert poll_for(lambda: init_count(init_log) == 1)  # no try handed to it yet
        r = slot.run(task("a.txt"), Deadlines(run=30))
        assert r.status == "RUN_DONE", r.error
        assert init_count(init_log) == 1
    finally:
        slot.stop()


def test_timeout_kills_and_replacement_runs_init_again(setup):
    make, task, init_log, _ = setup
    slot = Slot(make())
    try:
        first_pid = None
        r = slot.run(task("a.txt"), Deadlines(run=30))
        first_pid = int(init_log.read_text().split()[0])
        r = slot.run(task("hang.txt"), Deadlines(run=1))
        assert r.status == "RUN_TIMEOUT"
        assert "timeout of 1 s" in r.error
        assert not pid_alive(first_pid)
        r = slot.run(task("a.txt"), Deadlines(run=30))
        assert r.status == "RUN_DONE"
        assert init_count(init_log) == 2
    finally:
        slot.stop()


@pytest.mark.parametrize(
    ("name", "status", "text"),
    [
        ("raise.txt", "RUN_EXCEPTION", "KeyError: 'bad input' (at score.py:"),
        ("exit.txt", "PROCESS_DIED", "exited with code 7"),
        ("none.txt", "WRONG_RETURN", "returned NoneType"),
    ],
)
def test_failures_come_back_as_records(setup, name, status, text):
    make, task, _, tmp = setup
    slot = Slot(make())
    try:
        r = slot.run(task(name), Deadlines())
        assert r.status == status
        assert text in r.error
        assert r.failed == 1
        # the slot keeps working afterwards
        assert slot.run(task("a.txt"), Deadlines()).status == "RUN_DONE"
    finally:
        slot.stop()
    if status == "RUN_EXCEPTION":
        assert "KeyError" in r.traceback
        error_log = tmp / "logs" / "user" / "error" / "node000" / "process000.txt"
        assert "bad input" in error_log.read_text()


def test_longer_return_is_counted_with_a_warning(setup):
    make, task, _, _ = setup
    slot = Slot(make())
    try:
        r = slot.run(task("more.txt"), Deadlines())
    finally:
        slot.stop()
    assert r.status == "RUN_DONE" and r.total == 3 and r.succeeded == 3
    assert "returned 3 items" in r.warning


def test_init_failure_ends_the_child(setup):
    make, task, init_log, _ = setup
    slot = Slot(make(INIT_RAISES="1"))
    try:
        r = slot.run(task("a.txt"), Deadlines())
        assert r.status == "INIT_FAILED"
        assert "cannot load the model" in r.error
        assert not slot.alive
        r = slot.run(task("a.txt"), Deadlines())
        assert r.status == "INIT_FAILED"
        assert init_count(init_log) == 2
    finally:
        slot.stop()


def test_memory_limit_kills_only_the_child(setup):
    make, task, _, _ = setup
    slot = Slot(make(), memory_limit=200 * 2**20)
    try:
        r = slot.run(task("hog.txt"), Deadlines(run=120))
        assert r.status == "PROCESS_DIED"
        assert "memory limit of 200 MiB" in r.error
        assert slot.run(task("a.txt"), Deadlines()).status == "RUN_DONE"
    finally:
        slot.stop()


def test_an_init_that_hangs_is_bounded_and_counted_as_an_init_failure(setup):
    make, task, init_log, _ = setup
    slot = Slot(make(INIT_HANGS="1"))
    try:
        r = slot.run(task("a.txt"), Deadlines(load=5, run=5, init=1))
        assert r.status == "INIT_FAILED"
        assert "init() took longer than the timeout of 1 s" in r.error
        assert not slot.alive
        assert not pid_alive(int(init_log.read_text().split()[0]))
    finally:
        slot.stop()


MODULES_SCRIPT = """
import sys

def run(mini_batch):
    return [" ".join(m for m in ("pandas", "numpy") if m in sys.modules) or "-"]
"""


@pytest.mark.parametrize(("tables", "seen"), [(False, "-"), (True, "pandas numpy")])
def test_a_file_list_process_starts_without_pandas(tmp_path, tables, seen):
    """pandas takes a few hundred milliseconds to import: only a step reading tables pays it
    when its process starts (a file-list one never, unless the entry script imports it)."""
    record, part, _ = one_try(tmp_path, MODULES_SCRIPT, tables=tables)
    assert record.status == "RUN_DONE", record.error
    assert part == f"{seen}\n"


START_ENV_SCRIPT = """
def run(mini_batch):
    # the environment the process started with (what glibc read), not os.environ now
    with open("/proc/self/environ", "rb") as f:
        start = dict(v.split(b"=", 1) for v in f.read().split(b"\\0") if b"=" in v)
    return [start.get(b"MALLOC_TRIM_THRESHOLD_", b"-").decode()]
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/environ")
@pytest.mark.parametrize(
    ("step_env", "seen"), [({}, "-"), ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "131072")]
)
def test_an_entry_script_process_does_not_inherit_the_nannys_malloc_trim(
    tmp_path, monkeypatch, step_env, seen
):
    """A Dask nanny sets MALLOC_TRIM_THRESHOLD_=65536 for its worker; the worker's entry-script
    process starts without it (it costs page faults per image), unless the step's
    environment_variables set it: then it is there from the process's start, where glibc
    reads it."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as the nanny leaves it
    record, part, _ = one_try(tmp_path, START_ENV_SCRIPT, env=step_env)
    assert record.status == "RUN_DONE", record.error
    assert part == f"{seen}\n"


EXIT_SCRIPT = """
import atexit, io, os, threading, time

LOG = None
NOTES = None


class Notes(io.TextIOBase):  # a file class of the script's own: flushed too
    def __init__(self, path):
        self.path, self.held = path, []

    def write(self, text):
        self.held.append(text)
        return len(text)

    def flush(self):
        with open(self.path, "a") as f:
            f.write("".join(self.held))
        self.held = []


def init():
    global LOG, NOTES
    LOG = open(os.environ["OPEN_FILE"], "w")  # never closed: flushed as the process ends
    NOTES = Notes(os.environ["NOTES"])
    atexit.register(lambda: open(os.environ["AT_EXIT"], "w").write("ran"))
    if os.environ.get("THREAD"):
        def late():
            time.sleep(0.5)
            with open(os.environ["THREAD"], "w") as f:
                f.write("done")
        threading.Thread(target=late).start()  # not a daemon: the exit waits for it


def run(mini_batch):
    LOG.write("x" * 100)  # stays in the file's buffer
    NOTES.write("noted")
    return ["ok"]
"""


@pytest.mark.parametrize("thread", [False, True])
def test_a_process_ends_with_its_atexit_handlers_and_files_flushed(tmp_path, thread):
    """An entry-script process ends without the interpreter's slow finalization, but as an
    exit would for the script: its atexit handlers run, an unclosed file's buffer is written,
    and a thread it left running (not a daemon) is waited for."""
    env = {"OPEN_FILE": str(tmp_path / "open.txt"), "AT_EXIT": str(tmp_path / "atexit.txt")}
    env["NOTES"] = str(tmp_path / "notes.txt")
    if thread:
        env["THREAD"] = str(tmp_path / "thread.txt")
    record, _, proc = one_try(tmp_path, EXIT_SCRIPT, env=env)
    assert record.status == "RUN_DONE", record.error
    assert proc is not None and proc.returncode == 0
    assert (tmp_path / "open.txt").read_text() == "x" * 100
    if not thread:  # (the interpreter's own finalization may have torn `open` down by then)
        assert (tmp_path / "notes.txt").read_text() == "noted"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    if thread:
        assert (tmp_path / "thread.txt").read_text() == "done"


@pytest.mark.parametrize("pidfd", [True, False])
def test_wait_exit_gives_the_exit_code_or_times_out(monkeypatch, pidfd):
    """A stopping process is waited for by its process file descriptor (or by polling where
    there is none): its exit code once it ends, TimeoutExpired while it runs."""
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    ends = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    assert wait_exit(ends, 60) == 7
    stays = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(stays, 0.2)
    finally:
        stays.kill()
        stays.wait()
    assert wait_exit(stays, 1) == -9  # reaped already: no descriptor, the code it has


# -- several tries, the next handed over while one runs (Slot.run_many) ---------------------


def _files(setup, name, n, index):
    """A task of ``n`` copies of data file ``name`` (a mini-batch of ``n`` files)."""
    _, _, _, tmp = setup
    return RunTask(FileBatch(index, tuple(str(tmp / "data" / name) for _ in range(n))), 1)


def test_tries_handed_over_in_turn_each_keep_their_deadline_and_item_count(setup):
    """A try that hangs behind one that ran, with one waiting behind it: the hung try is
    timed from its own start and counts its own files as failed; the try behind it runs in
    the next process."""
    make, _, _, _ = setup
    slot = Slot(make())
    tries = [_files(setup, "a.txt", 1, 0), _files(setup, "hang.txt", 3, 1)]
    tries += [_files(setup, "a.txt", 2, 2), _files(setup, "more.txt", 1, 3)]
    try:
        records = list(slot.run_many(tries, Deadlines(load=30, run=2)))
    finally:
        slot.stop()
    assert [(r.mb, r.status) for r in records] == [
        (0, "RUN_DONE"),
        (1, "RUN_TIMEOUT"),
        (2, "RUN_DONE"),
        (3, "RUN_DONE"),
    ]
    assert (records[1].total, records[1].failed) == (3, 3)
    assert records[2].total == 2  # its own count, not the hung one's
    assert slot.started == 2  # the hung process was replaced once


def test_a_try_waiting_behind_one_whose_process_dies_runs_in_the_next(setup):
    make, _, init_log, _ = setup
    slot = Slot(make())
    tries = [_files(setup, "exit.txt", 1, 0), _files(setup, "a.txt", 1, 1)]
    tries += [_files(setup, "exit.txt", 1, 2), _files(setup, "a.txt", 1, 3)]
    try:
        records = list(slot.run_many(iter(tries), Deadlines(run=30)))
    finally:
        slot.stop()
    assert [r.status for r in records] == ["PROCESS_DIED", "RUN_DONE"] * 2
    assert "exited with code 7" in (records[0].error or "")
    assert slot.started == 3 and init_count(init_log) == 3


def test_records_given_among_the_tries_pass_through_in_turn(setup):
    """A try that needs no run (its claim was taken: the worker passes its record) comes
    back where it was, between the records of the tries that ran."""
    from daskprs.results.outcome import TryRecord

    make, _, _, _ = setup
    slot = Slot(make())
    given = TryRecord(mb=9, try_no=1, status="DUPLICATE")
    try:
        records = list(
            slot.run_many(
                [_files(setup, "a.txt", 1, 0), given, _files(setup, "a.txt", 1, 1)], Deadlines()
            )
        )
    finally:
        slot.stop()
    assert [r.mb for r in records if r.status == "RUN_DONE"] == [0, 1]
    assert given in records and slot.started == 1


def test_a_try_too_big_to_hand_over_ahead_waits_and_the_one_running_still_times_out(setup):
    """A try whose message would not fit in the pipe is handed over only once the one
    before it ended: handing it over earlier would wait for room while the try before it
    hangs past its deadline."""
    make, _, _, tmp = setup
    slot = Slot(make())
    long_name = "x" * 200
    big = RunTask(FileBatch(1, tuple(str(tmp / "data" / f"{long_name}{i}") for i in range(400))), 1)
    try:
        records = list(
            slot.run_many([_files(setup, "hang.txt", 1, 0), big], Deadlines(load=30, run=1))
        )
    finally:
        slot.stop()
    assert [r.status for r in records[:1]] == ["RUN_TIMEOUT"]
    assert records[1].mb == 1  # handed over afterwards, to the next process


def _pipes() -> set[str]:
    """This process's open pipes (their fd and inode)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own fd)
            continue
        if target.startswith("pipe:"):
            found.add(f"{fd} {target}")
    return found


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_start_interrupted_part_way_leaves_no_pipe_and_no_log_thread(setup, monkeypatch, when):
    """A Ctrl-C in a notebook that lands while a slot starts its process (here: as its
    stderr log's thread starts, before or after the thread began) leaves no pipe open and no
    log-copying thread waiting for the end of one: each leaked such a pair for the rest of
    the process. The slot then starts again as usual."""
    from daskprs.execute import slot as slot_module

    make, task, _, _ = setup
    real_start = slot_module._CappedLog.start

    def interrupted(reader):
        if reader.kind != "stderr":
            return real_start(reader)
        if when == "after":
            real_start(reader)
        raise KeyboardInterrupt

    pipes, threads = _pipes(), set(threading.enumerate())
    slot = Slot(make())
    monkeypatch.setattr(slot_module._CappedLog, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        slot.start()
    monkeypatch.undo()
    slot.kill()

    def left() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in threads and "std" in t.name]

    poll_for(lambda: not left() and _pipes() <= pipes, timeout=10)
    try:
        assert slot.run(task("a.txt"), Deadlines(run=30)).status == "RUN_DONE"
    finally:
        slot.stop()
