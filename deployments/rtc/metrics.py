"""SessionHost's Prometheus metrics (ARCHITECTURE.md §8), named by Prometheus conventions.

Tagged by stage or kind, never by session, so their cardinality stays fixed however many
sessions come and go. Latencies are observed as they happen; counters and gauges are sampled
from the sessions once per routing-stats period (1 s), off the media path.

    avatar_stage_latency_seconds{stage}   histogram: tts_first_audio, render, paste
    avatar_sessions                       gauge: sessions on this replica
    avatar_queued_slots                   gauge: frame slots queued ahead of playback, all sessions
    avatar_render_lead_seconds            gauge: the furthest any session's media runs ahead of playback
    avatar_av_lead_seconds                gauge: audio track position minus video track position, worst session
    avatar_chunks_total{kind}             counter: speech / idle chunks produced
    avatar_stage_errors_total{stage}      counter: failed stage calls (tts, render)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ray.serve import metrics

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]


class HostMetrics:
    """The metrics of one SessionHost replica."""

    def __init__(self) -> None:
        self.latency = metrics.Histogram("avatar_stage_latency_seconds", "per-stage latency of the session pipeline",
                                         boundaries=LATENCY_BOUNDARIES_S, tag_keys=("stage",))
        self.sessions = metrics.Gauge("avatar_sessions", "sessions held by this SessionHost replica")
        self.queued_slots = metrics.Gauge("avatar_queued_slots", "frame slots queued ahead of playback")
        self.render_lead = metrics.Gauge("avatar_render_lead_seconds", "how far the media runs ahead of playback")
        self.av_lead = metrics.Gauge("avatar_av_lead_seconds", "audio track position minus video track position")
        self.chunks = metrics.Counter("avatar_chunks_total", "chunks produced", tag_keys=("kind",))
        self.errors = metrics.Counter("avatar_stage_errors_total", "failed stage calls", tag_keys=("stage",))
        self._counted: dict[str, tuple[int, int, dict]] = {}  # session -> (speech, idle, errors by stage) counted

    def observe(self, stage: str, seconds: float) -> None:
        """One latency sample of `stage`."""
        self.latency.observe(seconds, tags={"stage": stage})

    def sample(self, sessions: Iterable[Any]) -> None:
        """Set the gauges and add the counters' growth since the last sample (from `Session.media_stats`)."""
        queued, render_lead, av_lead = 0, 0.0, 0.0
        seen: dict[str, tuple[int, int, dict]] = {}
        for session in sessions:
            media = session.media_stats()
            queued += media["queued_slots"]
            render_lead = max(render_lead, media["render_lead_s"])
            av_lead = max(av_lead, media["av_lead_s"], key=abs)
            speech, idle, errors = self._counted.get(session.id, (0, 0, {}))
            if media["speech_chunks"] > speech:
                self.chunks.inc(media["speech_chunks"] - speech, tags={"kind": "speech"})
            if media["idle_chunks"] > idle:
                self.chunks.inc(media["idle_chunks"] - idle, tags={"kind": "idle"})
            for stage, n in media["errors"].items():
                if n > errors.get(stage, 0):
                    self.errors.inc(n - errors.get(stage, 0), tags={"stage": stage})
            seen[session.id] = (media["speech_chunks"], media["idle_chunks"], dict(media["errors"]))
        self._counted = seen
        self.sessions.set(len(seen))
        self.queued_slots.set(queued)
        self.render_lead.set(render_lead)
        self.av_lead.set(av_lead)
