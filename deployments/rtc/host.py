"""SessionHost: holds the peer connections; every session-bound request is routed here by id."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from aiortc import RTCPeerConnection
from pydantic import BaseModel, Field, field_validator
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from deployments.asr.vad import VadSettings
from deployments.avatar.assets import load_avatar
from deployments.avatar.paste import make_paster
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.errors import (
    BadRequest,
    NotConfigured,
    Overloaded,
    SessionGone,
    SessionNotFound,
    TooManyRequests,
)
from deployments.common.logs import SessionLog, adopt_serve_logging
from deployments.llm import LlmChat, LlmSettings, make_client
from deployments.rtc import host_registry
from deployments.rtc.conductor import Conductor, ConductorConfig
from deployments.rtc.conversation import NO_CHAT, Conversation, ConversationSettings
from deployments.rtc.encoders import FAST_VP8, configure_video_bitrate, configure_vp8_options
from deployments.rtc.events import HEARTBEAT_S, MAX_LISTENERS, OPENED, EventBus, delayed, sse_stream
from deployments.rtc.host_registry import Owner
from deployments.rtc.ice import (
    announce_public_addresses,
    check_public_addresses,
    configure_host_addresses,
    resolve_host_addresses,
    rtc_configuration,
)
from deployments.rtc.metrics import HostMetrics
from deployments.rtc.session import Session
from deployments.rtc.session_ids import new_session_id, owner_tag, tag_of
from deployments.rtc.timeline import MediaClock, MediaTimeline
from deployments.rtc.tracks import AvatarAudioTrack, AvatarVideoTrack

log = logging.getLogger(__name__)
GIL_SWITCH_INTERVAL_S = 0.001  # Python's default is 0.005 (see SessionHost.__init__)


class HostSettings(BaseModel):
    """What every SessionHost replica needs to know (from `serve_app.build`)."""

    avatar_id: str = "astronaut"
    data_dir: str = "data/avatars"
    # WebRTC host candidate addresses (env ICE_HOST_ADDRESSES wins); empty = all interfaces;
    # "node" = the IP Ray knows this replica's node by (one cluster config, each node its own).
    ice_host_addresses: list[str] = Field(default_factory=list)
    # {private IP: public IP} announced instead, for nodes behind 1:1 NAT (docs/CLUSTER.md).
    ice_public_addresses: dict[str, str] = Field(default_factory=dict)
    ice_servers: list[str] = Field(default_factory=list)  # STUN/TURN URLs; empty = no STUN traffic
    max_sessions: int = Field(4, ge=1)
    chunk_frames: int = Field(4, ge=2, le=8)
    lead_chunks: int = Field(2, ge=1, le=4)
    video_bitrate_kbps: int = Field(1000, ge=100, le=20000)
    # libvpx options over aiortc's (encoders.FAST_VP8: half the encode time); {} = aiortc's own
    vp8_options: dict[str, str] = Field(default_factory=lambda: dict(FAST_VP8))
    # An offer that has not connected by then is dropped and frees its slot (aiortc never gives up
    # on an offer whose ICE does not complete, so replayed or candidate-less offers would pile up).
    connect_timeout_s: float = Field(30.0, gt=0, le=600)
    # An offer from a client with this many sessions here that never reached "connected" gets 429:
    # one client cannot hold every slot with offers it never completes.
    max_pending_offers_per_client: int = Field(2, ge=1)
    # Deadlines (docs/decisions.md "Deadlines from play time"): a render may answer this late after
    # its chunk was due to play, else its audio plays over idle frames. Slow CPU models
    # (MuseTalk, Ultralight on a CPU) take seconds per chunk: raise it for them.
    render_late_s: float = Field(1.0, gt=0, le=3600)
    render_retry_s: float = Field(1.0, ge=0, le=600)  # after a failed render, chunks skip the renderer this long
    tts_first_audio_s: float = Field(5.0, gt=0, le=600)  # TTS's first audio of an utterance
    tts_stall_s: float = Field(5.0, gt=0, le=600)  # a later piece, once playback has caught up
    tts_lead_s: float = Field(4.0, gt=0, le=60)  # unplayed speech buffered ahead per utterance
    # Per-session speech queue; past it /human and /humanaudio get 429 (an interrupt empties it).
    max_queued_utterances: int = Field(8, ge=1)
    max_queued_chars: int = Field(4000, ge=1)
    max_queued_audio_s: float = Field(240.0, gt=0)
    # Event streams (GET /sse): listeners per session (each holds a request slot of this replica),
    # and the quiet time after which a heartbeat comment keeps proxies from closing the stream.
    max_event_listeners: int = Field(MAX_LISTENERS, ge=1, le=64)
    sse_heartbeat_s: float = Field(HEARTBEAT_S, gt=0, le=300)
    # Sentence events go out this long after their slot is sent: a receiver holds audio about as
    # long in its jitter buffer (aiortc 4 packets = 80 ms; browsers 40-100 ms on a quiet network).
    playout_delay_s: float = Field(0.08, ge=0, le=1)
    # Conversation (microphone and chat): "auto" chats when an LLM is configured, else echoes
    # what it recognised; the user's speech held barge_in_min_speech_ms stops the avatar.
    conversation_mode: Literal["auto", "echo", "chat"] = "auto"
    barge_in: bool = True
    barge_in_min_speech_ms: int = Field(200, ge=0, le=5000)
    partial_interval_s: float = Field(0.5, ge=0.1, le=10)
    # The reply is prepared (transcript, LLM, TTS) this far into a pause and heard only if the
    # pause ends the turn; prepare_reply false waits for the turn's end to answer.
    early_final_s: float | None = Field(0.1, ge=0, le=5)
    prepare_reply: bool = True

    @field_validator("ice_public_addresses")
    @classmethod
    def _ip_pairs(cls, value: dict[str, str]) -> dict[str, str]:
        return check_public_addresses(value)


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    # A dead replica is replaced once the controller's probe finds it: probe every second, not
    # Serve's 10 s (a probe costs ~1 ms of CPU here and in the controller). The timeout only
    # matters for a replica that hangs (3 misses in a row): aiortc's encoders may hold the loop.
    health_check_period_s=1,
    health_check_timeout_s=5,
    request_router_config=RequestRouterConfig(
        request_router_class="deployments.rtc.router:SessionAffinityRouter",
        request_routing_stats_period_s=1,
        request_routing_stats_timeout_s=5,
    ),
)
class SessionHost:
    """Peer connections and conductors of the sessions this replica owns."""

    def __init__(self, tts: DeploymentHandle, renderer: DeploymentHandle, settings: dict | None = None,
                 asr: DeploymentHandle | None = None, vad: dict[str, Any] | None = None,
                 llm: LlmSettings | None = None) -> None:
        """Args: the TTS and renderer handles; `HostSettings` fields; the SpeechRecognizer (None:
        microphones are not listened to); `VadSettings` fields; the LLM (chat when enabled).
        """
        adopt_serve_logging()
        # aiortc encodes every video frame (and audio, when not Opus) on an executor thread and hands
        # it back to the event loop: with Python's 5 ms GIL switch interval each handoff can wait
        # 5 ms behind the other encoder threads, and the senders fall behind.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self.settings = HostSettings(**(settings or {}))
        self._tts, self._renderer, self._asr = tts, renderer, asr
        self._llm = llm or LlmSettings()
        if self.settings.conversation_mode == "chat" and not self._llm.enabled:
            raise ValueError("conversation_mode 'chat' needs an LLM: set llm.base_url and llm.model")
        chat = self.settings.conversation_mode == "chat" or (
            self.settings.conversation_mode == "auto" and self._llm.enabled)
        self._conversation = ConversationSettings(
            mode="chat" if chat else "echo", barge_in=self.settings.barge_in,
            partial_interval_s=self.settings.partial_interval_s,
            early_final_s=self.settings.early_final_s, prepare_reply=self.settings.prepare_reply,
            vad=VadSettings(**{**(vad or {}), "min_speech_ms": self.settings.barge_in_min_speech_ms}))
        # One SDK client (one connection pool) for every session's chat on this replica.
        self._llm_client = make_client(self._llm) if self._llm.enabled else None
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._tag = owner_tag(self._replica_id)
        self._avatar = load_avatar(Path(self.settings.data_dir) / self.settings.avatar_id)
        self._paster = make_paster(self._avatar)
        self._sessions: dict[str, Session] = {}
        self._warm_up_task: asyncio.Task | None = None
        self._pending = 0  # offers being negotiated count against max_sessions too
        self._reapers: set[asyncio.Task] = set()  # one per session until it connects
        self._negotiating: Counter[str] = Counter()  # offers being answered, by client
        self._metrics = HostMetrics()
        configure_host_addresses(resolve_host_addresses(self.settings.ice_host_addresses))
        configure_video_bitrate(self.settings.video_bitrate_kbps)
        configure_vp8_options(self.settings.vp8_options)

    # ---- routing & health ----------------------------------------------------------------
    async def ping(self) -> bool:
        """Answers at once: the Api's readiness probe (`GET /health`)."""
        return True

    def record_routing_stats(self) -> dict:
        """Sessions held (and being negotiated) for the router; samples the metrics too (every 1 s)."""
        self._metrics.sample(self._sessions.values())
        return {"sessions": len(self._sessions) + self._pending}

    async def check_health(self) -> None:
        """Serve's probe. The first one, as soon as the replica runs, registers its owner tag, so
        that its sessions answer 410 rather than 404 once it has died (host_registry).
        """
        if not getattr(self, "_tag_registered", False):
            try:
                await asyncio.to_thread(host_registry.register_this_replica, self._tag)
                self._tag_registered = True
            except Exception as exc:  # the GCS is briefly unreachable: try again at the next probe,
                log.warning("registering owner tag %s failed: %s", self._tag, exc)  # never fail it

    def _session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        tag = tag_of(session_id)
        if tag != self._tag:  # routed here because its owner is not a live replica
            owner = host_registry.for_this_app().owner(tag)
            if owner is Owner.DEAD:
                raise SessionGone(f"session {session_id} is gone: its host replica died")
            if owner is Owner.ALIVE:  # the caller's view of the replicas is behind (or it is stopping)
                raise Overloaded(f"session {session_id} is not reachable right now: retry")
        # A foreign tag no replica of this app had answers exactly like an unknown id on its host.
        raise SessionNotFound(f"unknown session {session_id}")

    # ---- session lifecycle ---------------------------------------------------------------
    async def _warm_up(self) -> None:
        """First calls pay for handle set-up and the avatar load in the renderer: pay them while
        the first viewer connects, not at its first sentence.
        """
        calls = [self._tts.sample_rate.remote(), self._renderer.avatar_info.remote(self.settings.avatar_id)]
        if self._asr is not None:  # Whisper's first decode costs several times a later one
            calls.append(self._asr.transcribe.remote(np.zeros(8000, np.float32), final=False, session_id="warm-up"))
        try:
            await asyncio.gather(*calls)
        except Exception as exc:  # a real failure shows up again, with its context, when used
            log.warning("warm-up failed: %s", exc)

    async def offer(self, sdp: str, sdp_type: str, client: str = "") -> dict:
        """Answer an SDP offer from `client` (its address; "" when unknown) with a new session."""
        if self._warm_up_task is None:
            self._warm_up_task = asyncio.create_task(self._warm_up())
        if len(self._sessions) + self._pending >= self.settings.max_sessions:
            raise Overloaded(f"this host is full ({self.settings.max_sessions} sessions): try again later")
        self._check_pending_offers(client)
        self._pending += 1
        self._negotiating[client] += 1
        try:
            session = self._new_session(client)
            try:
                answer = await session.answer(sdp, sdp_type)
            except Exception:
                await session.aclose()
                raise
            self._sessions[session.id] = session
            session.start(on_failure=self._forget)
            reaper = asyncio.create_task(self._drop_unless_connected(session), name=f"reaper-{session.id}")
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)
            SessionLog(log, session.id).info("started (%d on this replica)", len(self._sessions))
            announced = announce_public_addresses(answer.sdp, self.settings.ice_public_addresses)
            return {"sdp": announced, "type": answer.type, "sessionid": session.id}
        finally:
            self._pending -= 1
            self._negotiating[client] -= 1
            if self._negotiating[client] <= 0:
                del self._negotiating[client]

    def _check_pending_offers(self, client: str) -> None:
        """429 for a client that already has `max_pending_offers_per_client` sessions not yet connected."""
        if not client:
            return  # caller did not say who asked: only max_sessions applies
        pending = self._negotiating[client] + sum(
            1 for s in self._sessions.values() if s.client == client and not s.connected)
        if pending >= self.settings.max_pending_offers_per_client:
            raise TooManyRequests(f"too many pending offers from {client}: {pending} not yet connected "
                                  f"(max {self.settings.max_pending_offers_per_client}); connect or close them first")

    def _conductor_config(self) -> ConductorConfig:
        """The conductor's fields that HostSettings carries (chunking, deadlines, queue caps)."""
        shared = {f.name for f in dataclasses.fields(ConductorConfig)} & set(HostSettings.model_fields)
        return ConductorConfig(**self.settings.model_dump(include=shared))

    def _new_session(self, client: str = "") -> Session:
        session_id = new_session_id(self._replica_id)
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        clock, timeline = MediaClock(), MediaTimeline()
        events = EventBus(max_listeners=self.settings.max_event_listeners)
        conductor = Conductor(
            avatar_id=self.settings.avatar_id,
            full_frames=self._avatar.full_frames,
            paste=self._paster.paste,
            clock=clock,
            timeline=timeline,
            render=self._render,
            speech=functools.partial(self._speech, session_id=session_id),
            config=self._conductor_config(),
            observe=self._metrics.observe,
            publish=delayed(events.publish, self.settings.playout_delay_s),
            session_id=session_id,
        )
        video = AvatarVideoTrack(clock, timeline, self._avatar.full_frames[0])
        audio = AvatarAudioTrack(clock, timeline)
        chat = LlmChat(self._llm, client=self._llm_client, session_id=session_id) \
            if self._llm_client is not None else None
        conversation = Conversation(
            session_id=session_id, conductor=conductor, publish=events.publish,
            transcribe=self._transcribe if self._asr is not None else None, chat=chat,
            settings=self._conversation)  # chat mode only when an LLM (and so `chat`) is configured
        session = Session(session_id, pc, conductor, clock, timeline, video, audio, client=client, events=events,
                          conversation=conversation)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                session.connected = True
            if pc.connectionState in ("failed", "closed"):
                await self._drop(session_id)

        return session

    def _forget(self, session_id: str, reason: str) -> None:
        """A session that closed itself (its conductor died) leaves the table: later calls get 404."""
        if self._sessions.pop(session_id, None) is not None:
            SessionLog(log, session_id).warning("removed: %s", reason)

    async def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            await session.aclose()
            SessionLog(log, session_id).info("closed")

    async def _drop_unless_connected(self, session: Session) -> None:
        """Drop `session` if its peer connection is not connected within `connect_timeout_s`."""
        await asyncio.sleep(self.settings.connect_timeout_s)
        if session.id in self._sessions and session.pc.connectionState != "connected":
            SessionLog(log, session.id).info("never connected (%s after %g s): dropped",
                                             session.pc.connectionState, self.settings.connect_timeout_s)
            await self._drop(session.id)

    async def close_session(self, session_id: str) -> dict:
        self._session(session_id)
        await self._drop(session_id)
        return {}

    # ---- speech --------------------------------------------------------------------------
    async def human(self, session_id: str, text: str, interrupt: bool, kind: str = "echo") -> dict:
        """Speak `text` ("echo") or answer it with the LLM ("chat"; NotConfigured without one)."""
        session = self._session(session_id)
        conversation = session.conversation
        if kind == "chat" and (conversation is None or not conversation.can_chat):
            raise NotConfigured(NO_CHAT)  # before anything is interrupted
        if interrupt:
            self._interrupt(session)
        if kind == "chat":
            assert conversation is not None
            conversation.ask(text)
        else:
            session.conductor.say(text)
        return {}

    @staticmethod
    def _interrupt(session: Session) -> None:
        """Stop speech, TTS and a running reply (its LLM stream too)."""
        if session.conversation is not None:
            session.conversation.interrupt(reason="api")
        else:
            session.conductor.interrupt(reason="api")

    async def human_audio(self, session_id: str, pcm: np.ndarray, interrupt: bool) -> dict:
        session = self._session(session_id)
        if pcm.size == 0:
            raise BadRequest("the audio upload holds no samples")
        if interrupt:
            self._interrupt(session)
        session.conductor.play(np.array(pcm, np.float32))
        return {"seconds": round(pcm.size / 16000, 3)}

    async def interrupt(self, session_id: str) -> dict:
        self._interrupt(self._session(session_id))
        return {}

    async def events(self, session_id: str) -> AsyncIterator[str]:
        """The session's events as Server-Sent Events text; call with `handle.options(stream=True)`.

        The first message (a comment) says the session was found: an unknown or dead session
        raises before it, so the Api can answer 404/410 as JSON. The stream ends when the session
        closes; a caller that goes away closes this generator, which unregisters its listener.

        Raises:
            SessionNotFound, SessionGone, Overloaded: as every session call.
            TooManyRequests: the session already has `max_event_listeners` streams.
        """
        session = self._session(session_id)
        with session.events.listen() as listener:
            yield OPENED
            async for message in sse_stream(listener, self.settings.sse_heartbeat_s):
                yield message

    async def is_speaking(self, session_id: str) -> bool:
        return self._session(session_id).conductor.speaking

    async def session_stats(self, session_id: str) -> dict:
        return self._session(session_id).stats()

    # ---- calls to the other deployments --------------------------------------------------
    async def _speech(self, text: str, session_id: str = "") -> AsyncIterator[np.ndarray]:
        """Speech for `text`, one TTS request per piece, each asked for only when the conductor
        pulls: a Serve stream would run ahead of playback (its replica-side generator fills an
        unbounded queue), so per-piece calls are what bounds TTS work and memory per session.
        """
        first, rest = await self._tts.begin.remote(text, session_id)
        yield first
        for piece in rest:
            yield await self._tts.synthesize.remote(piece, session_id)

    async def _transcribe(self, pcm: np.ndarray, final: bool, session_id: str) -> dict:
        assert self._asr is not None
        return await self._asr.transcribe.remote(pcm, final=final, session_id=session_id)

    async def _render(self, req: RenderRequest) -> RenderResult:
        return await self._renderer.render.remote(req)

    async def __del__(self) -> None:
        for reaper in self._reapers:
            reaper.cancel()
        await asyncio.gather(*(s.aclose() for s in self._sessions.values()), return_exceptions=True)
        self._sessions.clear()
        if self._llm_client is not None:
            await self._llm_client.close()
