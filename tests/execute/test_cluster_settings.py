"""``open_cluster`` takes its timeouts and dashboard address from ``EnvSettings``."""

from __future__ import annotations

import socket

import pytest

from daskprs.errors import SettingsError, UserInputError
from daskprs.execute.cluster import open_cluster
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
