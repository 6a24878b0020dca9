"""The steps of a job in order: step reuse, command steps, and parallel steps handed to
:func:`daskprs.execute.step.run_parallel_step`, for a new run, a resume or a rerun of failed
mini-batches.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from daskprs.errors import JobFailed, PlanningError, ResumeRefused, UserInputError
from daskprs.execute.child import PROCESS_MARK, end_marked, marked
from daskprs.execute.cluster import import_dask, open_cluster
from daskprs.execute.commandguard import KILLED_SECONDS, end_command, guard_argv
from daskprs.execute.context import reads_tables, step_context
from daskprs.execute.lazycluster import LazyCluster
from daskprs.execute.preflight import check_command, check_step_script
from daskprs.execute.resume import Mode, input_change
from daskprs.execute.warm import WarmSlots
from daskprs.inputs.batches import FileBatches
from daskprs.inputs.filesystems import missing_package
from daskprs.inputs.plan import Plan, plan_input, same_cuts
from daskprs.inputs.planfile import read_plan, write_plan
from daskprs.job.model import ClusterSpec, CommandStep, DataInput, Job, ParallelStep
from daskprs.observe.progress import Progress
from daskprs.paths import nearest_existing
from daskprs.results import fingerprint, reuse
from daskprs.results.jobresult import JobResult, StepOutcome
from daskprs.results.ledger import snapshot_path
from daskprs.results.output import store_unwritable
from daskprs.results.storage import full_disk
from daskprs.rundir import RunDir, StepDir, write_json
from daskprs.settings import EnvSettings

__all__ = [
    "ClusterChoice",
    "JobSession",
    "StepsRunner",
    "check_before_running",
    "check_writable",
    "plan_step",
]

T = TypeVar("T")
# how long an interrupted command step has after SIGTERM to end before it is killed
COMMAND_GRACE_SECONDS = 5.0
# a step's processes started before it planned, and the check of its imports (a thread's)
_Early = tuple[WarmSlots, concurrent.futures.Future[None]]


def plan_step(step: ParallelStep) -> Plan:
    """Plan a step's mini-batches, failing when it takes longer than
    ``--first_task_creation_timeout``."""
    limit = step.settings.first_task_creation_timeout
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daskprs-plan")
    future = pool.submit(plan_input, step.input_data, step.mini_batch_size, step.partition_keys)
    try:
        return future.result(timeout=limit)
    except concurrent.futures.TimeoutError as err:
        raise JobFailed(
            f"planning the mini-batches of step {step.name} took longer than "
            f"first_task_creation_timeout ({limit:g} s). Raise --first_task_creation_timeout, "
            "or give a larger mini_batch_size."
        ) from err
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _run_command(step: CommandStep, run: RunDir, echo: Callable[[str], None]) -> str | None:
    """Run a command step in its code folder; return a failure message or None."""
    for output in step.outputs.values():
        if "://" not in output.path:
            target = output.path if output.type != "uri_file" else os.path.dirname(output.path)
            os.makedirs(target, exist_ok=True)
    env = command_environment(step)
    check_command(
        step.name, step.code_dir, step.command, env, step.environment, step.python is not None
    )
    log_dir = run.logs.command(step.name)
    os.makedirs(log_dir, exist_ok=True)
    # every process of the command carries it: a later session finds them by it
    token = uuid.uuid4().hex
    env[PROCESS_MARK] = token
    echo(f"[{step.name}] running command: {step.command}")
    with (
        open(os.path.join(log_dir, "stdout.txt"), "wb") as out,
        open(os.path.join(log_dir, "stderr.txt"), "wb") as err,
    ):
        proc = subprocess.Popen(
            # under a watchdog that ends the command if this process is killed (SIGKILL)
            guard_argv(os.getpid(), token, COMMAND_GRACE_SECONDS, step.command),
            cwd=step.code_dir,
            env=env,
            stdout=out,
            stderr=err,
            # its own session and process group: an interrupt ends the shell and everything
            # the command started with it, none of it left writing into the outputs
            start_new_session=True,
        )
        try:
            _record_command(run.step(step.name).command, proc.pid, token)
            returncode = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM: the driver ends only once the command has
            ended = end_process_group(proc, COMMAND_GRACE_SECONDS)
            end_marked(token)  # what left the group
            if not ended:
                echo(
                    f"[{step.name}] warning: processes of the command (process group "
                    f"{proc.pid}) were still there {KILLED_SECONDS:g} s after SIGKILL"
                )
            raise
    if returncode != 0:
        return _command_failed(step, returncode, run, os.path.join(log_dir, "stderr.txt"))
    return None


def _command_failed(step: CommandStep, returncode: int, run: RunDir, stderr: str) -> str:
    """The failure of a command step that exited with ``returncode``: its last line on
    stderr, where the rest is, and a full disk of the run directory or of an output (the
    likely cause, its messages maybe lost with it)."""
    message = f"command step {step.name} exited with code {returncode}"
    last = _last_line(stderr)
    message += f"; its last line on stderr: {last}" if last else "; it wrote nothing on stderr"
    message += f" (see {stderr})"
    places = [run.root] + [o.path for o in step.outputs.values() if "://" not in o.path]
    full = next((p for p in places if full_disk(p)), None)
    if full is not None:
        message += (
            f". The disk of {full} has no room left: the command may have failed for that "
            "(and lost its messages). Free space on it, then continue with: "
            f"daskprs run --resume {run.root}"
        )
    return message


def _last_line(path: str, limit: int = 300) -> str:
    """The last non-empty line of the file at ``path`` (its last 4 KiB read), cut to
    ``limit`` characters; empty when there is none or it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read()
    except OSError:
        return ""
    lines = [line.strip() for line in tail.decode("utf-8", "replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    return last if len(last) <= limit else last[: limit - 3] + "..."


def _record_command(path: str, pgid: int, token: str) -> None:
    """Write ``steps/<step>/command.json``: the running command's process group and the mark
    its processes carry, for a later session to end what a killed driver left running
    (:func:`end_earlier_command`)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json(path, {"pgid": pgid, "token": token, "driver": os.getpid(), "started": started})


def end_earlier_command(step: CommandStep, run: RunDir, echo: Callable[[str], None]) -> None:
    """End what is still running of the command of ``step`` that an earlier session started
    (its driver killed with SIGKILL, its watchdog with it), saying so: found by the mark that
    ``steps/<step>/command.json`` records, SIGTERM to its process group, SIGKILL after
    :data:`COMMAND_GRACE_SECONDS`."""
    try:
        with open(run.step(step.name).command, encoding="utf-8") as f:
            record = json.load(f)
        token = str(record["token"])
    except (OSError, ValueError, TypeError, KeyError):  # never started, or not by daskprs
        return
    if not marked(token):
        return
    echo(
        f"[{step.name}] the command an earlier session started is still running (process "
        f"group {record.get('pgid')}): ending it (SIGTERM, then SIGKILL after "
        f"{COMMAND_GRACE_SECONDS:g} s) before it runs again"
    )
    if not end_command(token, COMMAND_GRACE_SECONDS):
        echo(
            f"[{step.name}] warning: processes of the earlier command were still there "
            f"{KILLED_SECONDS:g} s after SIGKILL"
        )


def end_process_group(proc: subprocess.Popen[bytes], grace: float) -> bool:
    """End ``proc``, started in a session of its own, and every process of its group.

    Parameters
    ----------
    proc : subprocess.Popen
        The group's leader (started with ``start_new_session=True``).
    grace : float
        Seconds the group has after SIGTERM before what is left of it gets SIGKILL (a second
        Ctrl-C meanwhile cuts them short).

    Returns
    -------
    bool
        Whether the group is gone (its leader reaped); False if processes were still there
        a few seconds after SIGKILL (stuck in the kernel).
    """
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        ended = _group_ended(proc, grace)
    except KeyboardInterrupt:  # asked again: no more grace
        ended = False
    if not ended:
        _signal_group(proc.pid, signal.SIGKILL)
        ended = _group_ended(proc, KILLED_SECONDS)
    return ended


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:  # every process of it has ended already
        pass


def _group_ended(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll until ``proc`` is reaped and no process is left in its group, for at most
    ``timeout`` seconds; whether they are."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def command_environment(step: CommandStep) -> dict[str, str]:
    """The environment a command step runs in: this process's, its ``environment_variables``,
    and the folder of the interpreter its ``environment`` maps to first on ``PATH``."""
    env = {**os.environ, **{k: str(v) for k, v in step.environment_variables.items()}}
    if step.python is not None:
        folder = os.path.dirname(step.python)
        env["PATH"] = os.pathsep.join(p for p in (folder, env.get("PATH", "")) if p)
    return env


def check_writable(job: Job) -> None:
    """Raise :class:`UserInputError` naming every output location of ``job`` that cannot be
    written, before anything runs: a local one on a read-only filesystem, without
    permissions, a file where a folder must be; one on an object store that cannot be
    reached, refuses the credentials or the write, or whose bucket does not exist (an empty
    object written there and removed: :func:`store_unwritable`)."""
    problems = []
    elsewhere = False  # a problem the output's path is the fix of
    # the stores found unreachable, by their URL's protocol and bucket: their other outputs
    # would wait for the same retries to say the same
    unreachable: set[str] = set()
    for step in job.steps:
        places = {f"{step.name}.{o.name}": (o.path, _is_file(o)) for o in step.outputs.values()}
        if isinstance(step, ParallelStep) and step.output_dir:
            places[f"{step.name} output_dir"] = (step.output_dir, False)
        for name, (path, is_file) in places.items():
            if "://" in path:
                missing = missing_package(path)
                if missing is not None:
                    problems.append(f"cannot write the output {path} ({name}): {missing}")
                    continue
                store = path.split("/", 3)[2] if path.count("/") >= 2 else path
                root = f"{path.partition('://')[0]}://{store}"
                if root in unreachable:
                    continue
                problem = store_unwritable(path, is_file)
                if problem is not None:
                    problems.append(f"cannot write the output {name}: {problem}")
                    if "cannot reach" in problem or "does not exist" in problem:
                        unreachable.add(root)
                continue
            problem = _unwritable(os.path.abspath(path), is_file)
            if problem is not None:
                problems.append(f"cannot write the output {path} ({name}): {problem}")
                elsewhere = True
    if problems:
        hint = (
            "\nGive the output a path that can be written "
            "(`--set jobs.<step>.outputs.<name>.path=...` or in the job file)."
            if elsewhere
            else ""
        )
        raise UserInputError("\n".join(problems) + hint)


def _is_file(out: Any) -> bool:
    """Whether output ``out`` is written as a file at its path (an explicit ``uri_file``),
    not as a folder there (as :meth:`StepsRunner._make_output_folders` makes them)."""
    return bool(out.explicit and out.type == "uri_file")


def _unwritable(path: str, is_file: bool) -> str | None:
    """Why the output at ``path`` (absolute; a file or a folder) cannot be made, or None.

    The nearest folder that exists is tried for real (a folder made there and removed): root
    passes every permission check, and a file system such as ``/proc`` takes no new folder."""
    there = nearest_existing(path)
    if there == path:
        if is_file and os.path.isdir(there):
            return f"{there} is a folder, not a file"
        if not is_file and not os.path.isdir(there):
            return f"{there} is a file, not a folder"
        if is_file:  # the file is written beside its place and renamed over it
            there = os.path.dirname(there)
    elif not os.path.isdir(there):
        return f"{there} is a file, so no folder can be made inside it"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".daskprs-check-", dir=there))
    except OSError as err:
        return f"{there} takes no new file or folder ({err.strerror})"
    return None


def _made_by_earlier_step(step: ParallelStep, job: Job, path: str | None = None) -> str | None:
    """The step whose output ``step`` reads as its input data, or at ``path`` (it does not
    exist before that step runs)."""
    path = step.input_data.path if path is None else path
    for other in job.steps:
        if other.name == step.name:
            return None
        for out in other.outputs.values():
            if path == out.path or path.startswith(out.path.rstrip("/") + "/"):
                return other.name
    return None


def _side_inputs_made_by(step: ParallelStep, job: Job) -> set[str]:
    """The earlier steps whose outputs ``step`` reads through an input other than its input
    data (a model folder, a lookup table): not fingerprinted, so a session that writes one
    again runs ``step`` again."""
    paths = {v.path for v in step.inputs.values() if isinstance(v, DataInput)}
    paths.discard(step.input_data.path)
    return {m for m in (_made_by_earlier_step(step, job, p) for p in paths) if m is not None}


def _set_aside(where: StepDir, why: str) -> None:
    """Move a step's ledger (and its snapshot), claims and parts aside
    (``<name>.<why>-<time>``): the step starts over, and the try report is written again
    without the old tries (:mod:`daskprs.observe.processed`). The claims and parts go with
    the ledger: the new session's tries reuse their names."""
    suffix = f".{why}-{int(time.time())}"
    for old in (where.ledger, snapshot_path(where.ledger), where.claims, where.parts):
        if os.path.exists(old):
            os.replace(old, old + suffix)


def check_before_running(job: Job) -> tuple[list[str], list[str]]:
    """What can be checked of ``job`` in seconds without running anything: each parallel
    step's input planned from its metadata (the MLTable file, its transformations, a pattern
    that matches no file, a mini_batch_size that does not fit the input), its entry script's
    imports in the Python it will run in (this machine's, or the one its environment maps
    to), and the output locations. Returns ``(problems, notes)``."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        check_writable(job)
    except UserInputError as err:
        problems.append(str(err))
    for command in job.steps:
        if isinstance(command, CommandStep):
            try:
                check_command(
                    command.name,
                    command.code_dir,
                    command.command,
                    command_environment(command),
                    command.environment,
                    command.python is not None,
                )
            except UserInputError as err:
                problems.append(str(err))
    for step in job.parallel_steps:
        maker = _made_by_earlier_step(step, job)
        if maker is not None:
            notes.append(
                f"step {step.name}: its input is made by step {maker}; it is planned when it runs"
            )
            continue
        tabular = False
        try:
            plan = plan_step(step)
            tabular = plan.kind == "tabular"
            if not plan.batches:
                problems.append(
                    f"step {step.name}: the input {step.input_data.path} gives no mini-batches"
                )
            notes += plan.notes
        except (UserInputError, JobFailed) as err:
            problems.append(str(err))
        try:
            check_step_script(step, tabular=tabular)
        except UserInputError as err:
            problems.append(str(err))
    return problems, notes


@dataclass(frozen=True)
class ClusterChoice:
    """Where the job runs: a given client, a scheduler's address, a cluster class that
    ``daskprs.yaml`` names, or else the embedded cluster of ``n_workers`` processes."""

    scheduler: str | None = None
    client: Any = None
    n_workers: int = 1
    security: Any = None
    cluster_spec: ClusterSpec | None = None

    @property
    def embedded(self) -> bool:
        """Whether the job runs on the embedded cluster (whose workers are threads of this
        process)."""
        return self.scheduler is None and self.client is None and self.cluster_spec is None

    @property
    def on_this_machine(self) -> bool:
        """Whether the workers run here (the embedded cluster, or a client of an in-process
        cluster), so that this machine's Python is theirs."""
        if self.scheduler is not None or self.cluster_spec is not None:
            return False
        return self.client is None or getattr(self.client, "cluster", None) is not None

    def lazy(self, echo: Callable[[str], None], settings: EnvSettings) -> LazyCluster:
        """The cluster, opened when a step first needs it (or in advance)."""
        kwargs = {
            "scheduler": self.scheduler,
            "client": self.client,
            "n_workers": self.n_workers,
            "security": self.security,
            "cluster_spec": self.cluster_spec,
            "settings": settings,
        }
        return LazyCluster(
            lambda: open_cluster(**kwargs),
            echo,
            given=self.client is not None,
            connects=self.scheduler is not None,
        )


def _drop_stats(batches: Any) -> None:
    """Let a file list's stats go (see ``StepsRunner._plan``)."""
    if isinstance(batches, FileBatches):
        batches.stats = None


def _reuse_marker(path: str) -> dict[str, Any] | None:
    """What ``reused.json`` says of the earlier run a step was reused from; None when it
    cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and isinstance(found.get("run_dir"), str) and "outcome" in found
    return found if ok else None


def _in_thread(fn: Callable[..., T], *args: Any, name: str = "key") -> concurrent.futures.Future[T]:
    """``fn(*args)`` started in a thread of its own (``daskprs-<name>``); its result (or
    error) from the future."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"daskprs-{name}")
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)


@dataclass
class JobSession:
    """One session of a job (a new run, ``--resume`` or ``rerun-failed``).

    Attributes
    ----------
    job : Job
        The resolved job.
    run : RunDir
        Its run directory.
    mode : Mode
        Which session this is.
    record : dict
        The run record (``run.json``); the input fingerprints are added as steps plan.
    echo : callable
        Where notes go.
    settings : EnvSettings
        The ``DASKPRS_*`` settings, read once.
    progress : Progress, optional
        The live display.
    force : bool
        ``--force``: continue although the job or an input changed.
    reuse_roots : tuple of str
        Folders of run directories to reuse steps from (a new run only).
    force_rerun : bool
        Run every step, reusing none (each still leaves a record for later runs).
    staging : str
        ``--staging URL``: where workers without the run directory leave their files.
    keep_staged : bool
        Keep the staged files after a step's output is assembled.
    """

    job: Job
    run: RunDir
    mode: Mode
    record: dict[str, Any]
    echo: Callable[[str], None]
    settings: EnvSettings = field(default_factory=EnvSettings)
    progress: Progress | None = None
    force: bool = False
    reuse_roots: tuple[str, ...] = ()
    force_rerun: bool = False
    staging: str = ""
    keep_staged: bool = False


class StepsRunner:
    """Runs the steps of a job in order: reused, command or parallel.

    Parameters
    ----------
    session : JobSession
        The job and this session of its run.
    cluster : ClusterChoice
        Where parallel steps run.
    result : JobResult
        Filled as the steps end.
    """

    def __init__(self, session: JobSession, cluster: ClusterChoice, result: JobResult):
        self.s = session
        self.choice = cluster
        self.result = result
        self.force_rerun = session.force_rerun or session.job.force_rerun
        # the step keys being taken in a thread, by step (see _plan)
        self._keying: dict[str, concurrent.futures.Future[str | None]] = {}
        # the steps that wrote their outputs in this session (see _rewrote)
        self._wrote: set[str] = set()

    def run(self) -> None:
        """Run every step, stopping at the first failure unless the job continues on step
        failure; the cluster is closed at the end, whatever ended it."""
        check_writable(self.s.job)  # before any cluster starts
        with self.choice.lazy(self.s.echo, self.s.settings) as cluster:
            for step in self.s.job.steps:
                failure = self._step(step, cluster)
                if failure is not None:
                    self.result.failure = self.result.failure or failure
                    if not self.s.job.continue_on_step_failure:
                        return

    def _step(self, step: ParallelStep | CommandStep, cluster: LazyCluster) -> str | None:
        """Run a step, or reuse it (a new run only; see :mod:`daskprs.results.reuse`)."""
        marker = self.s.run.step(step.name).reused
        if self.s.mode != Mode.RUN and os.path.exists(marker):
            found = _reuse_marker(marker)
            if found is not None:
                self._reused(step, found, marker, copy=False)
                return None
            raise ResumeRefused(
                f"{marker} cannot be read (cut short by a crash, or changed by hand): which "
                f"earlier run step {step.name} was reused from is not known. Run the job anew "
                "in a new run directory (the step is reused again there if it can be)"
            )
        reusable = self.s.mode == Mode.RUN and step.is_deterministic
        parallel = isinstance(step, ParallelStep)
        # Nothing to look up first (or nothing recorded to find): the cluster starts while
        # the step plans and digests its input. Otherwise it waits for the lookup, which
        # may make it unneeded.
        may_reuse = (
            reusable
            and not self.force_rerun
            and reuse.recorded(self.s.reuse_roots, step, self.s.run.root)
        )
        if parallel and not may_reuse and not self._plans_first(step):
            cluster.prestart()
        # a file list's processes need nothing of its plan: they start before it is made,
        # and the cluster with them
        early = self._warm_early(step) if parallel and not may_reuse else None
        if early is not None:
            cluster.prestart()
        try:
            plan = None
            key = None
            keying: concurrent.futures.Future[str | None] | None = None
            if reusable:
                if isinstance(step, ParallelStep):
                    plan = plan_step(step)
                batches = plan.batches if plan else ()
                if may_reuse:
                    key = reuse.step_key(step, self.s.run.root, batches)
                    found = None
                    if key is not None:
                        found = reuse.lookup(self.s.reuse_roots, key, step, self.s.run.root)
                    if key is not None and found is not None:
                        self._reused(step, found, marker, copy=True)
                        reuse.remember(self.s.run.root, key, step, found["outcome"])  # a source
                        return None
                else:
                    # nothing to look up: the key (a stat of every input file) is only
                    # recorded at the end, so it is taken in a thread while the step runs
                    keying = _in_thread(reuse.step_key, step, self.s.run.root, batches)
                    self._keying[step.name] = keying
            if isinstance(step, CommandStep):
                failure = self._command(step)
                outcome = None
            else:
                outcome = self._parallel(step, plan, cluster, early)
                failure = f"step {step.name}: {outcome.failure}" if outcome.failure else None
        except BaseException:
            if early is not None:  # (closed already when the step got as far as running)
                early[0].close(kill=True, forget=True)
            raise
        if keying is not None:
            key = keying.result()
        saved = outcome.to_dict() if outcome is not None else None
        if failure is None and key is not None:
            reuse.remember(self.s.run.root, key, step, saved)
        elif failure is None and self.s.mode != Mode.RUN:
            reuse.remember_again(self.s.run.root, step, saved)
        return failure

    def _plans_first(self, step: ParallelStep | CommandStep) -> bool:
        """Whether the cluster waits for the step's processes: the embedded cluster, when the
        driver starts them (:meth:`_warm`) and plans a local input. A file list's start
        before it is planned (:meth:`_warm_early`), an MLTable's once it is; the cluster
        starts with them, during their ``init()``. An object store's listing may take
        seconds: the cluster starts while the step plans."""
        return isinstance(step, ParallelStep) and self._warms and "://" not in step.input_data.path

    @property
    def _warms(self) -> bool:
        """Whether a new step's processes are started by the driver (:meth:`_warm`)."""
        return self.choice.embedded and self.s.mode == Mode.RUN and not self.s.staging

    def _warm(self, step: ParallelStep, plan: Plan) -> WarmSlots | None:
        """On the embedded cluster, a new step's entry-script processes, started once it is
        planned (with mini-batches): they load the script and run ``init()`` while its
        imports are checked, Dask is imported and the cluster starts
        (:mod:`daskprs.execute.warm`); a script that imports what is not installed stops
        them again. None elsewhere, on a resume, or with ``--staging``."""
        if not self._warms or not plan.batches:
            return None
        warm = self._start_processes(step, tables=reads_tables(plan.batches))
        try:
            # the check (a Python started to look the imports up) runs while the processes
            # start, not before them: 0.1 s sooner to the first run()
            check_step_script(step, tabular=plan.kind == "tabular")
        except BaseException:
            warm.close(kill=True, forget=True)  # they never ran a try
            raise
        return warm

    def _warm_early(self, step: ParallelStep | CommandStep) -> _Early | None:
        """:meth:`_warm` before the step plans, for a new file list (a ``uri_folder`` or
        ``uri_file`` input, on this machine: its mini-batches are files whatever the plan
        holds), with the check of its imports in a thread: the processes' start and
        ``init()`` overlap the listing too. :meth:`_parallel` takes the check's verdict once
        the step is planned."""
        if not (self._plans_first(step) and isinstance(step, ParallelStep)):
            return None
        if step.input_data.type == "mltable":  # tabular or not: its plan tells
            return None
        warm = self._start_processes(step, tables=False)
        return warm, _in_thread(check_step_script, step, False, name="check")

    def _start_processes(self, step: ParallelStep, tables: bool) -> WarmSlots:
        self._make_output_folders(step)
        ctx = step_context(
            step,
            self.s.run,
            slots=self.choice.n_workers,
            local=True,
            tables=tables,
            settings=self.s.settings,
        )
        return WarmSlots(ctx, self.choice.n_workers)

    def _make_output_folders(self, step: ParallelStep) -> None:
        for out in step.outputs.values():
            if "://" not in out.path:
                os.makedirs(os.path.dirname(out.path) if _is_file(out) else out.path, exist_ok=True)
        if step.output_dir and "://" not in step.output_dir:
            os.makedirs(step.output_dir, exist_ok=True)

    def _reused(
        self, step: ParallelStep | CommandStep, found: dict[str, Any], marker: str, copy: bool
    ) -> None:
        """Take an earlier run's outputs and outcome of ``step`` as this run's."""
        earlier = found["run_dir"]
        echo = self.s.echo
        if copy:
            reuse.copy_outputs(found, step.outputs)
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            write_json(marker, found)  # (a later session reads it: whole or not at all)
            echo(
                f"[{step.name}] reused: inputs, code and settings unchanged since the run "
                f"{earlier}; its outputs are copied from there (--force-rerun runs it again)"
            )
        else:
            echo(f"[{step.name}] reused from the run {earlier} when this run started")
        self.result.reused[step.name] = earlier
        if isinstance(step, ParallelStep):
            outcome = StepOutcome.from_dict(found["outcome"] or {"step": step.name})
            if step.append_row_to:
                outcome = replace(outcome, output=step.append_row_to)
            self._finished(step, outcome)
        else:
            self._outputs(step)

    def _outputs(self, step: ParallelStep | CommandStep, unwritten: str | None = None) -> None:
        """Name the step's outputs in the result (a parallel step's ``append_row_to`` file
        for the folder that holds it), but ``unwritten``: an ``append_row_to`` file the step
        could not write (its disk full), which does not exist."""
        append = getattr(step, "append_row_to", None)
        for out in step.outputs.values():
            shown = out.path
            if append and os.path.dirname(append) == out.path:
                shown = append
            if shown != unwritten:
                self.result.outputs[f"{step.name}.{out.name}"] = shown

    def _finished(self, step: ParallelStep, outcome: StepOutcome) -> None:
        unwritten = step.append_row_to if outcome.output is None else None
        self._outputs(step, unwritten)
        self.result.steps.append(outcome)
        if outcome.wrote:
            self._rewrote(step)

    def _command(self, step: CommandStep) -> str | None:
        done = self.s.run.step(step.name).done
        self._outputs(step)
        if self.s.mode != Mode.RUN and os.path.exists(done):
            self.s.echo(f"[{step.name}] command step already done in an earlier session")
            return None
        end_earlier_command(step, self.s.run, self.s.echo)
        if self._clear_outputs(step):
            self.s.echo(
                f"[{step.name}] the command did not finish in an earlier session: it runs "
                "again in empty output folders (what it had written is removed)"
            )
        self._rewrote(step)  # (before it runs: a command killed midway has written too)
        failure = _run_command(step, self.s.run, self.s.echo)
        if failure is None:
            os.makedirs(os.path.dirname(done), exist_ok=True)
            open(done, "w").close()
        return failure

    def _rewrote(self, step: ParallelStep | CommandStep) -> None:
        """Note that ``step`` writes its outputs in this session: the later steps that read
        one and were planned over what it held before run again over it, from scratch (see
        :meth:`_plan`). The run record keeps them (``rewritten``) until they do, for a later
        session when this one ends before them (an interrupt, a crash, a failed step)."""
        self._wrote.add(step.name)
        planned = self.s.record.get("inputs", {})
        later = [
            s.name
            for s in self.s.job.parallel_steps
            if s.name in planned
            and (
                _made_by_earlier_step(s, self.s.job) == step.name
                or step.name in _side_inputs_made_by(s, self.s.job)
            )
        ]
        if later:
            self.s.record.setdefault("rewritten", {}).update(dict.fromkeys(later, step.name))
            self.s.run.write_record(self.s.record)

    def _rewritten_by(self, step: ParallelStep) -> str | None:
        """The earlier step that wrote ``step``'s input again since ``step`` was planned (see
        :meth:`_rewrote`); None if none did."""
        by = self.s.record.get("rewritten", {}).get(step.name)
        return str(by) if by is not None else None

    def _replanned(self, step: ParallelStep) -> None:
        """Take ``step`` off the run record's list of :meth:`_rewritten_by`: its input is
        fingerprinted again (the caller writes the record)."""
        marks = self.s.record.get("rewritten", {})
        marks.pop(step.name, None)
        if not marks:
            self.s.record.pop("rewritten", None)

    def _clear_outputs(self, step: CommandStep) -> bool:
        """Remove what an unfinished earlier run of a command step left in its outputs that
        the run directory holds (``<run dir>/outputs/<step>/<output>``), as Azure runs a
        command in fresh output folders; an output given a path of its own is the user's
        folder, left as it is. Whether anything was removed."""
        removed = False
        for out in step.outputs.values():
            path = out.path
            if path != self.s.run.output(step.name, out.name) or not os.path.lexists(path):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed = True
        return removed

    def _plan(self, step: ParallelStep, fresh: Plan | None = None) -> Plan:
        """The step's plan: planned now for a new run; the saved one for a resume or rerun,
        once its input is checked against the fingerprint taken when the run started. An
        input that the earlier step making it wrote again since (:meth:`_rewritten_by`) is
        planned anew, and the step starts over (its ledger, claims and parts set aside); one
        changed otherwise is refused unless ``--force`` (which also starts over a step whose
        input an earlier step makes)."""
        where = self.s.run.step(step.name)
        fresh = fresh or plan_step(step)
        inputs = self.s.record.setdefault("inputs", {})
        new = fingerprint.input_digest(fresh.batches)
        # the listing's stats served this digest and the step's key (maybe still being taken
        # in its thread): let them go once both have, 16 bytes a file
        keying = self._keying.pop(step.name, None)
        if keying is not None:
            keying.add_done_callback(lambda _: _drop_stats(fresh.batches))
        else:
            _drop_stats(fresh.batches)
        if self.s.mode != Mode.RUN and os.path.exists(where.plan):
            saved = read_plan(where.plan)
            what = input_change(inputs.get(step.name), new)
            rewriter = self._rewritten_by(step)
            # (an input other than the input data is not fingerprinted: written again, it
            # is taken as changed)
            aside = rewriter is not None and rewriter in _side_inputs_made_by(step, self.s.job)
            if rewriter is not None and (what is not None or aside):
                # what it did was done over the output that step had before: as an
                # uninterrupted run would, it runs again over the new one, from scratch
                when = "in this session" if rewriter in self._wrote else "in an earlier session"
                self.s.echo(
                    f"note: step {step.name} runs again: its input, the output of step "
                    f"{rewriter}, was written again {when}"
                )
                _set_aside(where, "before-rerun")
            else:
                made = _made_by_earlier_step(step, self.s.job) is not None
                if what is not None:
                    over = made or (
                        os.path.exists(where.ledger) and not same_cuts(saved.batches, fresh.batches)
                    )
                    self._input_changed(step, what, new, over)
                if what is not None and made:
                    # (--force) a step's output is written whole: what was done over the old
                    # one is stale, however the new one is cut
                    _set_aside(where, "before-force")
                elif saved.batches == fresh.batches or not self.s.force:
                    self._replanned(step)  # (the same input: nothing to run again)
                    return saved
                elif os.path.exists(where.ledger) and not same_cuts(saved.batches, fresh.batches):
                    # the mini-batch ids no longer mean the same inputs: start the step over
                    # (with the same cuts the fresh plan only brings the files' new sizes and
                    # times, which the reads of the rest check)
                    _set_aside(where, "before-force")
        self._replanned(step)
        inputs[step.name] = new
        os.makedirs(where.root, exist_ok=True)
        write_plan(where.plan, fresh)
        self.s.run.write_record(self.s.record)
        return fresh

    def _input_changed(
        self, step: ParallelStep, what: str, new: dict[str, Any], over: bool
    ) -> None:
        """Refuse a step's input that changed since the run started, not by the step that
        makes it, unless ``--force``: then note it and record the new fingerprint. ``over``:
        accepted, the change starts the step over (an earlier step of the job makes the
        input, or its mini-batches are cut otherwise)."""
        if not self.s.force:
            kept = (
                "the step starts over: every mini-batch runs again"
                if over
                else "mini-batches already done are kept as they are"
            )
            how = (
                f"accept it with `daskprs run --resume {self.s.run.root} --force` ({kept}), "
                "then rerun the failed mini-batches"
                if self.s.mode == Mode.RERUN_FAILED  # (which takes no --force)
                else f"add --force to continue ({kept})"
            )
            raise ResumeRefused(
                f"the input of step {step.name} ({step.input_data.path}) changed since "
                f"the run started ({what}). Run it anew, or {how}."
            )
        starts = ": the step starts over" if over else ""
        self.s.echo(f"note: the input of step {step.name} changed ({what}); --force given{starts}")
        self.s.record.setdefault("inputs", {})[step.name] = new
        self.s.run.write_record(self.s.record)

    def _parallel(
        self,
        step: ParallelStep,
        fresh: Plan | None,
        cluster: LazyCluster,
        early: _Early | None = None,
    ) -> StepOutcome:
        # planned already (a new run): the cluster starts, and the step's processes, before
        # its plan is digested and written
        cluster.prestart()
        warm = early[0] if early is not None else None
        if warm is None and fresh is not None:
            warm = self._warm(step, fresh)
        ran = False
        try:
            plan = self._plan(step, fresh)
            echo = self.s.echo
            echo(
                f"[{step.name}] planned {len(plan.batches)} mini-batches ({plan.kind} input) "
                f"in {plan.seconds:.2f} s"
            )
            for note in plan.notes:
                echo(f"note: {note}")
            if not plan.batches:
                raise PlanningError(
                    f"step {step.name}: the input {step.input_data.path} gave no mini-batches"
                )
            if early is not None:
                early[1].result()  # the check of its imports: raises what it found
            warm = warm or self._warm(step, plan)
            if warm is None:  # (a warm start made them)
                self._make_output_folders(step)
            # Dask is imported here, not before: on the embedded cluster the step's
            # processes were started first, and the cluster starts (importing it) in its
            # thread meanwhile
            import_dask()
            from daskprs.execute.step import StepRequest, run_parallel_step

            request = StepRequest(
                step=step,
                plan=plan,
                run=self.s.run,
                mode=self.s.mode,
                settings=self.s.settings,
                echo=echo,
                progress=self.s.progress,
                workers_here=self.choice.on_this_machine,
                resume_hint=f"daskprs run --resume {self.s.run.root}",
                staging=self.s.staging,
                keep_staged=self.s.keep_staged,
                context=warm.ctx if warm is not None else None,
            )
            ran = True
            outcome = run_parallel_step(request, cluster.get)
        finally:
            if warm is not None:  # killed when they never ran a try (bad input, no plan)
                warm.close(kill=not ran, forget=not ran)
        self._finished(step, outcome)
        return outcome
