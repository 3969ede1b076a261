"""SessionHost's metrics: gauges from the sessions, counters growing by what is new since the last sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from deployments.rtc.metrics import HostMetrics

pytestmark = pytest.mark.unit


class Recorder:
    """Stands in for a Ray metric: records set/inc/observe calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set(self, value, tags=None):
        self.calls.append(("set", value, tags))

    def inc(self, value=1.0, tags=None):
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags=None):
        self.calls.append(("observe", value, tags))


@dataclass
class FakeSession:
    id: str
    stats: dict = field(default_factory=dict)

    def media_stats(self) -> dict:
        return {"queued_slots": 0, "render_lead_s": 0.0, "av_lead_s": 0.0, "speech_chunks": 0,
                "idle_chunks": 0, "errors": {}, **self.stats}


@pytest.fixture
def m() -> HostMetrics:
    metrics = HostMetrics()
    for name in ("latency", "sessions", "queued_slots", "render_lead", "av_lead", "chunks", "errors"):
        setattr(metrics, name, Recorder())
    return metrics


def test_gauges_sum_queues_and_take_the_worst_lead(m: HostMetrics) -> None:
    a = FakeSession("a", {"queued_slots": 8, "render_lead_s": 0.32, "av_lead_s": 0.02})
    b = FakeSession("b", {"queued_slots": 4, "render_lead_s": 0.16, "av_lead_s": -0.04})
    m.sample([a, b])
    assert m.sessions.calls == [("set", 2, None)]
    assert m.queued_slots.calls == [("set", 12, None)]
    assert m.render_lead.calls == [("set", 0.32, None)]
    assert m.av_lead.calls == [("set", -0.04, None)]  # the largest offset either way


def test_counters_add_only_the_growth_since_the_last_sample(m: HostMetrics) -> None:
    s = FakeSession("s", {"speech_chunks": 3, "idle_chunks": 10, "errors": {"tts": 1}})
    m.sample([s])
    s.stats.update(speech_chunks=5, idle_chunks=10, errors={"tts": 1, "render": 2})
    m.sample([s])
    assert m.chunks.calls == [("inc", 3, {"kind": "speech"}), ("inc", 10, {"kind": "idle"}),
                              ("inc", 2, {"kind": "speech"})]
    assert m.errors.calls == [("inc", 1, {"stage": "tts"}), ("inc", 2, {"stage": "render"})]


def test_a_closed_session_is_forgotten_and_an_empty_replica_reads_zero(m: HostMetrics) -> None:
    m.sample([FakeSession("s", {"speech_chunks": 2})])
    m.sample([])
    assert m.sessions.calls[-1] == ("set", 0, None) and m.queued_slots.calls[-1] == ("set", 0, None)
    m.sample([FakeSession("s", {"speech_chunks": 2})])  # a new session reusing the id counts afresh
    assert m.chunks.calls[-1] == ("inc", 2, {"kind": "speech"})


def test_latency_is_tagged_by_stage(m: HostMetrics) -> None:
    m.observe("render", 0.012)
    assert m.latency.calls == [("observe", 0.012, {"stage": "render"})]
