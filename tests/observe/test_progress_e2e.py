"""The live progress display end to end: ``daskprs run`` in a terminal (tmux) and ``run_job``
in a Jupyter kernel (nbclient). Plain lines in a pipe: ``test_commands_e2e.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import make_files, poll_for, write_job

pytestmark = pytest.mark.slow

# Mini-batches from f002 on wait for a file the test creates: the display is watched while
# two of them run and the others wait.
WAITS = """
import os, time

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if names[0] >= "f002.txt":
        while not os.path.exists(os.environ["GO"]):
            time.sleep(0.05)
    return names
"""


def waiting_job(folder: Path) -> Path:
    make_files(folder / "data", 6)
    return write_job(
        folder,
        WAITS,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  GO: {folder / 'go'}",
    )


class Tmux:
    """A tmux server of this test's own (its socket in the test's folder), ended by the test."""

    def __init__(self, folder: Path):
        self.socket = str(folder / f"tmux-{uuid.uuid4().hex[:8]}.sock")
        self.last = ""

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        self.last = self("capture-pane", "-p", "-t", "job")
        return self.last

    def wait_for(self, text: str) -> str:
        """Poll the screen until it shows ``text``; fail showing the screen."""
        try:
            poll_for(lambda: text in self.screen(), 120)
        except AssertionError as err:
            raise AssertionError(f"{text!r} not on the screen:\n{self.last}") from err
        return self.last


def test_a_progress_bar_in_a_terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run does)")
    job = waiting_job(tmp_path)
    tmux = Tmux(tmp_path)
    command = (
        f"cd {tmp_path} && {sys.executable} -m daskprs run {job} --run-dir run; "
        f"echo exit=$? ; sleep 600"
    )
    env = {
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "TERM": "xterm-256color",
        "DASKPRS_DASHBOARD": ":0",  # asked for: its address is printed above the bar
    }
    exports = " ".join(f"{k}={v!s}" for k, v in env.items())
    tmux(
        "new-session",
        "-d",
        "-s",
        "job",
        "-x",
        "80",
        "-y",
        "24",
        f"env {exports} sh -c '{command}'",
    )
    try:
        # two mini-batches done, two running on the two slots, two queued: the bar says so
        # while they wait (and its clock goes on)
        wait = "2 done  0 failed  2 running  2 queued · 2 items ok, 0 failed"
        screen = tmux.wait_for(wait)
        assert "Dask dashboard: http://127.0.0.1:" in screen
        assert "[score] ━" in screen  # rich's bar, not a plain line
        assert "2/6 mini-batches  33%" in screen
        assert "mini-batches processed" not in screen
        (tmp_path / "go").touch()
        screen = tmux.wait_for("exit=0")
        assert "6/6 mini-batches 100%" in screen
        assert "6 done  0 failed  0 running  0 queued · 6 items ok, 0 failed" in screen
        assert "ETA 0:00" in screen
        assert "job succeeded" in screen
    finally:
        subprocess.run(["tmux", "-S", tmux.socket, "kill-server"], capture_output=True)


def test_a_progress_display_in_a_notebook_ends_at_100_percent(tmp_path):
    import nbclient
    import nbformat

    job = waiting_job(tmp_path)
    (tmp_path / "go").touch()
    nb = nbformat.v4.new_notebook()
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import daskprs\n"
            f"result = daskprs.run_job({str(job)!r}, run_dir='run', workers=2)\n"
            "print('ok' if result.ok else 'failed')"
        )
    )
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = nb.cells[0].outputs
    displays = [o for o in outputs if o.get("output_type") == "display_data"]
    assert len(displays) == 1  # one display, updated in place
    page = displays[0]["data"]["text/html"]
    assert "<b>100%</b>" in page
    assert "6/6 mini-batches (6 done, 0 failed, 0 running, 0 queued)" in page
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "ok" in printed
    assert "mini-batches processed" not in printed  # the display, not plain lines
