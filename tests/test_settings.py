"""The ``DASKPRS_*`` variables: read once into ``EnvSettings``, every bad value reported."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_files, write_job

import daskprs
from daskprs.cli import cli
from daskprs.errors import SettingsError, UserInputError
from daskprs.settings import VARIABLES, EnvSettings, describe, parse_gpu_devices, parse_size

REPO = Path(daskprs.__file__).resolve().parent.parent
MiB = 2**20


def test_the_defaults_are_the_ones_the_code_had():
    from azureml_user import parallel_run
    from daskprs.execute import handback
    from daskprs.execute.deadlines import SHUTDOWN_SECONDS

    settings = EnvSettings.from_env({})
    assert settings == EnvSettings()
    assert settings == EnvSettings(
        connect_timeout=10.0,
        cluster_timeout=300.0,
        dashboard="off",
        handback_seconds=5.0,
        shutdown_timeout=30.0,
        child_memory_limit=None,
        user_log_limit=64 * MiB,
        lease_seconds=60.0,
        gpu_devices=None,
    )
    assert settings.handback_seconds == handback._DEFAULT_WAIT
    assert settings.shutdown_timeout == SHUTDOWN_SECONDS
    assert settings.user_log_limit == parallel_run._DEFAULT_LOG_LIMIT


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("DASKPRS_LEASE_SECONDS", "2")
    assert EnvSettings.from_env().lease_seconds == 2.0


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DASKPRS_CONNECT_TIMEOUT", "1", 1.0),
        ("DASKPRS_CONNECT_TIMEOUT", " 2.5 ", 2.5),
        ("DASKPRS_CLUSTER_TIMEOUT", "1e3", 1000.0),
        ("DASKPRS_DASHBOARD", ":8787", ":8787"),
        ("DASKPRS_DASHBOARD", " Off ", "off"),
        ("DASKPRS_DASHBOARD", "8787", "8787"),
        ("DASKPRS_DASHBOARD", "127.0.0.1:0", "127.0.0.1:0"),
        ("DASKPRS_DASHBOARD", "localhost:8787", "localhost:8787"),
        ("DASKPRS_DASHBOARD", "0.0.0.0:8787", "0.0.0.0:8787"),
        ("DASKPRS_DASHBOARD", ":8787, :8788", ":8787,:8788"),
        ("DASKPRS_HANDBACK_SECONDS", "0", 0.0),
        ("DASKPRS_HANDBACK_SECONDS", "1", 1.0),
        ("DASKPRS_SHUTDOWN_TIMEOUT", "2.5", 2.5),
        ("DASKPRS_CHILD_MEMORY_LIMIT", "150MiB", 150 * MiB),
        ("DASKPRS_CHILD_MEMORY_LIMIT", "2GB", 2_000_000_000),
        ("DASKPRS_CHILD_MEMORY_LIMIT", "0", 0),  # no limit, as it always was
        ("DASKPRS_USER_LOG_LIMIT", "1kB", 1000),
        ("DASKPRS_USER_LOG_LIMIT", "256KiB", 256 * 1024),
        ("DASKPRS_USER_LOG_LIMIT", "0", None),
        ("DASKPRS_LEASE_SECONDS", "120", 120.0),
        ("DASKPRS_GPU_DEVICES", "4,5", ("4", "5")),
        ("DASKPRS_GPU_DEVICES", "GPU-aa, GPU-bb", ("GPU-aa", "GPU-bb")),
        ("DASKPRS_GPU_DEVICES", "-1", ()),
        ("DASKPRS_GPU_DEVICES", "", ()),  # empty: no GPU, as CUDA_VISIBLE_DEVICES=""
    ],
)
def test_each_variable_takes_its_good_values(name, value, expected):
    settings = EnvSettings.from_env({name: value})
    assert settings == dataclasses.replace(EnvSettings(), **{VARIABLES[name].field: expected})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DASKPRS_CONNECT_TIMEOUT", "ten"),
        ("DASKPRS_CONNECT_TIMEOUT", "0"),
        ("DASKPRS_CONNECT_TIMEOUT", "-1"),
        ("DASKPRS_CONNECT_TIMEOUT", "10s"),
        ("DASKPRS_CLUSTER_TIMEOUT", "inf"),
        ("DASKPRS_CLUSTER_TIMEOUT", "nan"),
        ("DASKPRS_DASHBOARD", ":99999"),
        ("DASKPRS_DASHBOARD", "host:port"),
        ("DASKPRS_DASHBOARD", "[::1]:8787"),
        ("DASKPRS_DASHBOARD", "a b:8787"),
        ("DASKPRS_DASHBOARD", ":8787,"),
        ("DASKPRS_DASHBOARD", "foo"),  # no port, as [HOST]:PORT has (distributed: any port)
        ("DASKPRS_DASHBOARD", "localhost"),
        ("DASKPRS_DASHBOARD", "0.0.0.0"),
        ("DASKPRS_DASHBOARD", ":8787,localhost"),
        ("DASKPRS_HANDBACK_SECONDS", "-0.5"),
        ("DASKPRS_SHUTDOWN_TIMEOUT", "0"),
        ("DASKPRS_SHUTDOWN_TIMEOUT", "30 s"),
        ("DASKPRS_CHILD_MEMORY_LIMIT", "lots"),
        ("DASKPRS_CHILD_MEMORY_LIMIT", "-1GB"),
        ("DASKPRS_CHILD_MEMORY_LIMIT", "2 GBs"),
        ("DASKPRS_USER_LOG_LIMIT", "lots"),
        ("DASKPRS_USER_LOG_LIMIT", "MB"),
        ("DASKPRS_LEASE_SECONDS", "soon"),
        ("DASKPRS_LEASE_SECONDS", "0"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_the_form_and_an_example(name, value):
    var = VARIABLES[name]
    with pytest.raises(SettingsError) as info:
        EnvSettings.from_env({name: value})
    assert list(info.value.problems) == [name]
    message = str(info.value)
    assert f"{name}={value!r} is not {var.form} (for example {name}={var.example})" in message
    assert "unset it for the default" in message


def test_the_message_of_a_bad_lease():
    with pytest.raises(SettingsError) as info:
        EnvSettings.from_env({"DASKPRS_LEASE_SECONDS": "soon"})
    assert str(info.value).startswith(
        "DASKPRS_LEASE_SECONDS='soon' is not a number of seconds > 0 "
        "(for example DASKPRS_LEASE_SECONDS=60)"
    )


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_value_means_the_default(value):
    env = {name: value for name in VARIABLES if name != "DASKPRS_GPU_DEVICES"}
    assert EnvSettings.from_env(env) == EnvSettings()


def test_every_bad_value_is_reported_together():
    env = {
        "DASKPRS_LEASE_SECONDS": "soon",
        "DASKPRS_USER_LOG_LIMIT": "lots",
        "DASKPRS_CONNECT_TIMEOUT": "5",  # good: not reported
        "DASKPRS_DASHBOARD": ":99999",
    }
    with pytest.raises(SettingsError) as info:
        EnvSettings.from_env(env)
    err = info.value
    assert sorted(err.problems) == [
        "DASKPRS_DASHBOARD",
        "DASKPRS_LEASE_SECONDS",
        "DASKPRS_USER_LOG_LIMIT",
    ]
    lines = str(err).splitlines()
    assert lines[0].startswith("3 DASKPRS_* environment variables have bad values")
    assert len(lines) == 4
    assert all(line.startswith("  - DASKPRS_") for line in lines[1:])
    assert "DASKPRS_CONNECT_TIMEOUT" not in str(err)


def test_a_settings_error_is_a_user_error_and_survives_pickling():
    err = SettingsError({"DASKPRS_LEASE_SECONDS": "DASKPRS_LEASE_SECONDS='soon' is not ..."})
    assert isinstance(err, UserInputError) and err.exit_code == 2
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and str(again) == str(err)


def test_settings_are_frozen_and_picklable():
    settings = EnvSettings.from_env({"DASKPRS_GPU_DEVICES": "0,1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lease_seconds = 1.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(settings)) == settings


# (text, bytes): forms users write, all also read by dask.utils.parse_bytes
SIZES = [
    ("0", 0),
    ("123", 123),
    ("1e6", 1_000_000),
    ("1e6 kB", 10**9),
    ("64MiB", 64 * MiB),
    ("200MB", 200_000_000),
    ("1.5 GB", 1_500_000_000),
    ("1.5GiB", 3 * 2**29),
    ("2kb", 2000),
    ("2KB", 2000),
    ("2k", 2000),
    ("1kiB", 1024),
    ("1Ki", 1024),
    ("5.4 kB", 5400),
    ("1.5kiB", 1536),
    ("0.3kB", 300),
    (".5MB", 500_000),
    ("3.", 3),
    ("10b", 10),
    ("1TB", 10**12),
    ("2TiB", 2 * 2**40),
    ("1PB", 10**15),
    ("1pib", 2**50),
    (" 100M ", 100_000_000),
    ("1.0000001KB", 1000),
]


@pytest.mark.parametrize(("text", "size"), SIZES)
def test_sizes_are_read_as_dask_reads_them(text, size):
    from dask.utils import parse_bytes

    assert parse_size(text) == size == parse_bytes(text)


@pytest.mark.parametrize("text", ["lots", "5 foos", "1e", "2EB", "1.2.3MB", "1e400"])
def test_what_is_no_size_is_refused(text):
    from dask.utils import parse_bytes

    with pytest.raises((ValueError, OverflowError)):
        parse_bytes(text)
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["", "MB", "GiB", "-1MB", "-5", "12 34"])
def test_sizes_no_one_means_are_refused_though_dask_takes_them(text):
    from dask.utils import parse_bytes

    parse_bytes(text)  # dask reads these ("" and "MB" as 1 unit, negative sizes, "1234")...
    with pytest.raises(ValueError):
        parse_size(text)  # ...daskprs asks for what was meant


@pytest.mark.parametrize(
    ("text", "devices"),
    [
        ("0,1,2", ("0", "1", "2")),
        ("GPU-aa, GPU-bb", ("GPU-aa", "GPU-bb")),
        ("", ()),
        (" , ", ()),
        ("-1", ()),
        ("NoDevFiles", ()),
        ("3,-1", ("3", "-1")),  # CUDA stops at the -1; the first device is kept
    ],
)
def test_gpu_device_lists(text, devices):
    assert parse_gpu_devices(text) == devices


@pytest.mark.parametrize(
    "address", [":0", ":8787", "8787", "localhost:8787", " :8787 , 127.0.0.1:8788"]
)
def test_dashboard_addresses_taken_are_those_distributed_takes(address):
    from distributed.utils import clean_dashboard_address

    settings = EnvSettings.from_env({"DASKPRS_DASHBOARD": address})
    for where in clean_dashboard_address(settings.dashboard):
        assert where["address"] in ("", "localhost", "127.0.0.1")
        assert 0 <= where["port"] <= 65535


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("nosuchhost.invalid:8787", "the host nosuchhost.invalid is not known here"),
        ("192.0.2.1:8787", "this machine cannot listen on the host 192.0.2.1"),  # TEST-NET-1
        (":8787,192.0.2.1:8788", "this machine cannot listen on the host 192.0.2.1"),
    ],
)
def test_a_dashboard_host_this_machine_cannot_listen_on_is_a_bad_value(value, why):
    """The embedded cluster serves the dashboard here: a host that does not resolve, or is
    none of this machine's, is refused with the settings, not found as the cluster starts."""
    with pytest.raises(SettingsError) as info:
        EnvSettings.from_env({"DASKPRS_DASHBOARD": value})
    assert list(info.value.problems) == ["DASKPRS_DASHBOARD"]
    message = str(info.value)
    assert message.startswith(f"DASKPRS_DASHBOARD={value!r}: {why} (")
    assert "0.0.0.0:8787: every interface" in message and ":8787: 127.0.0.1 only" in message
    assert message.endswith("Fix it, or unset it for the default.")


def test_the_hosts_of_this_machine_are_good_dashboard_hosts():
    for value in ("localhost:0", "127.0.0.1:8787", "0.0.0.0:8787", ":0,localhost:8788"):
        assert EnvSettings.from_env({"DASKPRS_DASHBOARD": value}).dashboard == value


def test_to_env_gives_the_entry_script_process_the_log_limit_in_bytes():
    assert EnvSettings().to_env() == {"DASKPRS_USER_LOG_LIMIT": str(64 * MiB)}
    limited = EnvSettings.from_env({"DASKPRS_USER_LOG_LIMIT": "1.5 kB"})
    assert limited.to_env() == {"DASKPRS_USER_LOG_LIMIT": "1500"}
    unlimited = EnvSettings.from_env({"DASKPRS_USER_LOG_LIMIT": "0"})
    assert unlimited.to_env() == {"DASKPRS_USER_LOG_LIMIT": "0"}


@pytest.mark.parametrize(
    ("value", "limit"),
    [(None, 64 * MiB), ("", 64 * MiB), ("1000", 1000), ("0", None), ("200MB", 200_000_000)]
    + [(bad, 64 * MiB) for bad in ("lots", "-5", "1.5.1", "MB")],
)
def test_the_entry_script_process_reads_its_log_limit_and_never_fails(value, limit):
    from azureml_user.parallel_run import _log_limit

    env = {} if value is None else {"DASKPRS_USER_LOG_LIMIT": value}
    assert _log_limit(env) == limit


def test_the_entry_script_process_reads_back_what_to_env_gives():
    from azureml_user.parallel_run import _log_limit

    for text in ("64MiB", "1.5 kB", "0"):
        settings = EnvSettings.from_env({"DASKPRS_USER_LOG_LIMIT": text})
        assert _log_limit(settings.to_env()) == settings.user_log_limit


def test_the_table_and_the_dataclass_name_the_same_fields_with_the_same_defaults():
    assert [v.field for v in VARIABLES.values()] == [
        f.name for f in dataclasses.fields(EnvSettings)
    ]
    defaults = EnvSettings()
    for name, var in VARIABLES.items():
        assert name == var.name and re.fullmatch(r"DASKPRS_[A-Z_]+", name)
        default = getattr(defaults, var.field)
        if default is not None:  # a value of the same form: it reads back as the default
            assert var.parse(var.default) == default, name
        var.parse(var.example)  # the example in messages is a good value


def _names_in(folder: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r"DASKPRS_[A-Z_]+", text):
            found.setdefault(name.rstrip("_"), []).append(str(path.relative_to(REPO)))
    return found


def test_every_variable_the_source_names_is_in_the_table():
    found = {**_names_in(REPO / "daskprs"), **_names_in(REPO / "azureml_user")}
    assert "DASKPRS_LEASE_SECONDS" in found  # the scan sees the source
    missing = {name: sorted(set(files)) for name, files in found.items() if name not in VARIABLES}
    assert not missing, f"add these to daskprs.settings.VARIABLES: {missing}"


def test_the_docs_page_shows_the_table():
    page = (REPO / "docs/environment.md").read_text(encoding="utf-8")
    lines = describe()
    assert len(lines) == 2 + len(VARIABLES)
    assert "\n".join(lines) + "\n" in page, (
        "docs/environment.md is out of date: paste daskprs.settings.describe() there"
    )


def test_the_settings_module_imports_no_dask():
    import subprocess
    import sys

    code = (
        "import sys, daskprs.settings, azureml_user.parallel_run as p; p._log_limit();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args",
    [
        ["run", "{job}", "--run-dir", "{tmp}/run"],
        ["run", "--resume", "{tmp}/run"],
        ["rerun-failed", "{tmp}/old"],
    ],
)
def test_a_bad_variable_stops_daskprs_run_with_exit_2_before_anything_is_written(
    tmp_path, monkeypatch, args
):
    monkeypatch.chdir(tmp_path)
    make_files(tmp_path / "data", 2)
    job = write_job(
        tmp_path,
        "def run(mini_batch):\n    return mini_batch\n",
        input_yaml="type: uri_folder\npath: ./data",
    )
    (tmp_path / "old").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.setenv("DASKPRS_LEASE_SECONDS", "soon")
    argv = [a.format(job=job, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert "error: DASKPRS_LEASE_SECONDS='soon' is not a number of seconds > 0" in result.output
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "daskprs-runs").exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nosuchhost.invalid:8787", "the host nosuchhost.invalid is not known here"),
        ("192.0.2.1:8787", "this machine cannot listen on the host 192.0.2.1"),
        ("foo", "is not `off`, or an address [HOST]:PORT"),
    ],
)
def test_a_dashboard_daskprs_cannot_serve_stops_the_run_with_exit_2_before_anything(
    tmp_path, value, message
):
    """In a process of its own, as a user runs it: no internal error, no traceback."""
    import subprocess
    import sys

    make_files(tmp_path / "data", 2)
    job = write_job(
        tmp_path,
        "def run(mini_batch):\n    return mini_batch\n",
        input_yaml="type: uri_folder\npath: ./data",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", "run"],
        cwd=tmp_path,
        env={**os.environ, "DASKPRS_DASHBOARD": value},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: DASKPRS_DASHBOARD={value!r}")
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
