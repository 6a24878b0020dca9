"""The cluster taken when a step first needs it: started in advance, closed at the end, and
what the console says about it."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from daskprs.execute.cluster import ClusterHandle
from daskprs.execute.lazycluster import LazyCluster


def handle(local: bool, address: str = "tcp://10.1.2.3:8786") -> ClusterHandle:
    client = SimpleNamespace(
        scheduler=SimpleNamespace(address=address),
        scheduler_info=lambda: {},  # no dashboard
    )
    return ClusterHandle(client, n_workers=2, local=local, start_seconds=0.3)


def opener(h: ClusterHandle, events: list[str]):
    @contextlib.contextmanager
    def opened():
        events.append("open")
        yield h
        events.append("close")

    return opened


def test_a_cluster_connected_to_is_not_said_to_be_started():
    lines: list[str] = []
    events: list[str] = []
    with LazyCluster(opener(handle(False), events), lines.append, connects=True) as lazy:
        lazy.get()
    assert lines == ["cluster at tcp://10.1.2.3:8786: 2 worker slots, connected in 0.3 s"]
    assert events == ["open", "close"]


def test_the_embedded_cluster_is_started_in_advance_and_closed_unused():
    lines: list[str] = []
    events: list[str] = []
    with LazyCluster(opener(handle(True), events), lines.append) as lazy:
        lazy.prestart()
    assert events == ["open", "close"]  # started in a thread, never taken, closed
    assert lines == []
    with LazyCluster(opener(handle(True), events), lines.append) as lazy:
        lazy.prestart()
        assert lazy.get() is lazy.get()
    assert lines == ["embedded local cluster: 2 worker slots, started in 0.3 s"]
