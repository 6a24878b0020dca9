"""A failure inside the Dask task of a try is a failed try of that mini-batch alone: it is
retried within about its timeout, and nothing else is affected."""

from __future__ import annotations

import pytest
from conftest import make_files, output_of, write_job

from daskprs.api import run_job

pytestmark = pytest.mark.slow

JUNK_ON_THE_PHASE_PIPE = """
import os, time

def _phase_fd():
    # the process's own command line: python -m daskprs.execute.child IN OUT PHASE
    args = open("/proc/self/cmdline", "rb").read().split(b"\\0")
    return int(args[-2])

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    flag = os.path.join(os.environ["FLAGS"], "junk-once")
    if "f001.txt" in names and not os.path.exists(flag):
        open(flag, "w").close()
        os.write(_phase_fd(), b"junk that is no phase\\n")
        time.sleep(600)  # stuck: killed at its deadline, then retried
    return names
"""


def test_junk_on_the_control_pipe_leaves_the_deadline_in_force(tmp_path):
    make_files(tmp_path / "data", 4)
    flags = tmp_path / "flags"
    flags.mkdir()
    job = write_job(
        tmp_path,
        JUNK_ON_THE_PHASE_PIPE,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=(
            "retry_settings:\n  max_retries: 1\n  timeout: 3\n"
            f"environment_variables:\n  FLAGS: {flags}"
        ),
        program_arguments="--progress_update_timeout 60",
    )
    result = run_job(job, run_dir=tmp_path / "run", workers=1, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().split() == [f"f{i:03d}.txt" for i in range(4)]
    assert (flags / "junk-once").exists()


INIT_FAILS = """
def init():
    raise RuntimeError("no model here")

def run(mini_batch):
    return mini_batch
"""


def test_an_init_traceback_starts_with_the_users_frames(tmp_path):
    make_files(tmp_path / "data", 2)
    job = write_job(tmp_path, INIT_FAILS, input_yaml="type: uri_folder\npath: ./data")
    result = run_job(job, run_dir=tmp_path / "run", workers=1, echo=lambda s: None)
    assert not result.ok and "init() failed everywhere" in (result.failure or "")
    traceback = (result.failure or "").split("Traceback (most recent call last):", 1)[1]
    assert traceback.lstrip().startswith('File "'), traceback
    first_frame = traceback.strip().splitlines()[0]
    assert "score.py" in first_frame and "daskprs" not in traceback, traceback
