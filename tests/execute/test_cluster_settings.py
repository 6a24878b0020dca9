"""``open_cluster`` takes its timeouts and dashboard address from ``EnvSettings``."""

from __future__ import annotations

import socket

import pytest

from daskprs.errors import SettingsError, UserInputError
from daskprs.execute.cluster import dashboard_address, open_cluster
from daskprs.job.model import ClusterSpec
from daskprs.settings import EnvSettings


def test_a_bad_variable_stops_open_cluster_before_a_cluster_starts(monkeypatch):
    monkeypatch.setenv("DASKPRS_DASHBOARD", ":99999")
    monkeypatch.setenv("DASKPRS_CONNECT_TIMEOUT", "soon")
    with pytest.raises(SettingsError) as info, open_cluster(n_workers=1):
        pytest.fail("a cluster was opened")
    assert sorted(info.value.problems) == ["DASKPRS_CONNECT_TIMEOUT", "DASKPRS_DASHBOARD"]


def test_settings_passed_in_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("DASKPRS_DASHBOARD", ":99999")  # not read: settings are given
    with pytest.raises(UserInputError, match="cannot reach the Dask scheduler"):
        with open_cluster(scheduler="tcp://127.0.0.1:1", settings=EnvSettings(connect_timeout=0.5)):
            pytest.fail("connected")


@pytest.mark.slow
def test_the_embedded_cluster_serves_its_dashboard_where_the_settings_say():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = EnvSettings(dashboard=f"127.0.0.1:{port}")
    with open_cluster(n_workers=1, settings=settings) as handle:
        assert handle.local
        assert f":{port}/" in handle.client.dashboard_link


@pytest.mark.slow
def test_the_embedded_cluster_serves_no_dashboard_unless_asked():
    before = _listening()
    with open_cluster(n_workers=1, settings=EnvSettings()) as handle:
        assert handle.local and not handle.dashboard
        opened = _listening() - before
        status = handle.client.dashboard_link  # the scheduler's HTTP server: no bokeh app
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(status, timeout=10).close()
    assert ("127.0.0.1", 8787) not in opened  # a free port, not the dashboard's usual one
    assert {ip for ip, _ in opened} == {"127.0.0.1"}, sorted(opened)
    assert dashboard_address("off") is None


@pytest.mark.slow
def test_a_configured_cluster_without_workers_waits_the_cluster_timeout():
    spec = ClusterSpec(
        name="empty",
        cls="distributed.LocalCluster",
        kwargs={"n_workers": 0, "dashboard_address": None},
    )
    settings = EnvSettings(cluster_timeout=0.2)
    with pytest.raises(UserInputError, match="started no worker in 0 s"):
        with open_cluster(cluster_spec=spec, connect_timeout=0.1, settings=settings):
            pytest.fail("a cluster without workers was used")


def _listening() -> set[tuple[str, int]]:
    """The (address, port) pairs this process and its descendants listen on."""
    import psutil

    me = psutil.Process()
    found = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:  # a process that just ended
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


@pytest.mark.slow
def test_the_embedded_cluster_listens_on_the_loopback_only():
    """The dashboard and the workers' HTTP endpoints: none is reachable from another machine
    unless DASKPRS_DASHBOARD says so (the printed link says 127.0.0.1). The scheduler and
    the workers talk in memory: no port of theirs is open at all."""
    before = _listening()
    with open_cluster(n_workers=2, settings=EnvSettings(dashboard=":0")) as handle:
        opened = _listening() - before
        port = int(handle.client.dashboard_link.split(":")[2].split("/")[0])
        assert handle.client.scheduler.address.startswith("inproc://")
    assert port in {p for _, p in opened}  # the dashboard is among them
    assert len(opened) == 3  # the dashboard, and each worker's HTTP endpoint
    assert {ip for ip, _ in opened} == {"127.0.0.1"}, sorted(opened)


@pytest.mark.slow
def test_a_dashboard_address_with_a_host_opens_the_dashboard_there():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = _listening()
    with open_cluster(n_workers=1, settings=EnvSettings(dashboard=f"0.0.0.0:{port}")):
        opened = _listening() - before
    assert ("0.0.0.0", port) in opened
    assert {ip for ip, p in opened if p != port} == {"127.0.0.1"}


def test_a_dashboard_address_without_a_host_is_on_the_loopback():
    assert dashboard_address(":0") == "127.0.0.1:0"
    assert dashboard_address("8787") == "127.0.0.1:8787"
    assert dashboard_address(":8787,:8788") == "127.0.0.1:8787,127.0.0.1:8788"
    assert dashboard_address("0.0.0.0:8787") == "0.0.0.0:8787"
    assert dashboard_address("localhost:0") == "localhost:0"


@pytest.mark.parametrize("value", ["192.0.2.1:8787", "nosuchhost.invalid:8787"])
def test_a_dashboard_host_the_embedded_cluster_cannot_listen_on_is_a_settings_error(value):
    """Settings given as they are (not checked by from_env): the cluster's failure to start
    is the user's error naming the variable (exit 2), not an internal one."""
    with pytest.raises(SettingsError) as info:
        with open_cluster(n_workers=1, settings=EnvSettings(dashboard=value)):
            pytest.fail("a cluster was opened")
    assert list(info.value.problems) == ["DASKPRS_DASHBOARD"]
    message = str(info.value)
    assert message.startswith(f"DASKPRS_DASHBOARD={value!r}: the dashboard cannot be served there")
    assert ":8787: 127.0.0.1 only" in message


@pytest.mark.slow
def test_a_run_whose_dashboard_cannot_be_served_stops_with_the_variable_named(
    tmp_path, monkeypatch
):
    """A host that passed the settings' check and fails as the cluster starts: the run ends
    with the settings error (exit 2), its records say so, and its folder can be given again."""
    import daskprs.settings
    from daskprs.api import run_job
    from daskprs.testing import output_of, write_job

    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.txt").write_text("a\n")
    job = write_job(
        tmp_path,
        "def run(mini_batch):\n    return mini_batch\n",
        input_yaml="type: uri_folder\npath: ./data",
    )
    monkeypatch.setattr(daskprs.settings, "_check_dashboard_host", lambda host: None)
    monkeypatch.setenv("DASKPRS_DASHBOARD", "192.0.2.1:8787")
    with pytest.raises(SettingsError) as info:
        run_job(job, run_dir=tmp_path / "run", echo=lambda line: None)
    assert str(info.value).startswith("DASKPRS_DASHBOARD='192.0.2.1:8787': ")
    result = (tmp_path / "run/logs/job_result.txt").read_text()
    assert "DASKPRS_DASHBOARD='192.0.2.1:8787'" in result and "internal error" not in result
    monkeypatch.delenv("DASKPRS_DASHBOARD")
    again = run_job(job, run_dir=tmp_path / "run", echo=lambda line: None, force_rerun=True)
    assert again.ok, again.failure
    assert output_of(tmp_path / "run").exists()


@pytest.mark.slow
def test_the_dashboard_link_is_given_only_where_a_dashboard_is_served():
    """The scheduler's HTTP server is there with or without a dashboard (/health): a link to
    it is printed only when the dashboard is among what it serves."""
    from daskprs.execute.lazycluster import _dashboard_link

    with open_cluster(n_workers=1, settings=EnvSettings(dashboard=":0")) as handle:
        link = _dashboard_link(handle.client)
        assert link is not None and link.startswith("http://127.0.0.1:")
        assert link == handle.client.dashboard_link
    with open_cluster(n_workers=1, settings=EnvSettings()) as handle:
        assert handle.client.scheduler_info()["services"]["dashboard"]  # /health only
        assert _dashboard_link(handle.client) is None


@pytest.mark.slow
def test_the_embedded_cluster_keeps_no_log_of_task_messages():
    """Dask's low-level message log would keep the last tasks' descriptors alive (hundreds
    of MB in a job of a million tiny mini-batches): the embedded cluster keeps none."""

    def log_lengths(dask_scheduler=None):
        return [c.recent_message_log.maxlen for c in dask_scheduler.client_comms.values()]

    with open_cluster(n_workers=1, settings=EnvSettings()) as handle:
        assert handle.client.run_on_scheduler(log_lengths) == [0]
