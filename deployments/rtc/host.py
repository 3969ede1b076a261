"""SessionHost: holds the peer connections; every session-bound request is routed here by id."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
from aiortc import RTCPeerConnection
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from deployments.avatar.assets import load_avatar
from deployments.avatar.paste import make_paster
from deployments.avatar.types import RenderRequest, RenderResult
from deployments.common.errors import (
    BadRequest,
    Overloaded,
    SessionGone,
    SessionNotFound,
)
from deployments.common.logs import SessionLog, adopt_serve_logging
from deployments.rtc.conductor import Conductor, ConductorConfig
from deployments.rtc.ice import configure_host_addresses, rtc_configuration
from deployments.rtc.metrics import HostMetrics
from deployments.rtc.session import Session, configure_video_bitrate
from deployments.rtc.session_ids import new_session_id, owner_tag, tag_of
from deployments.rtc.timeline import MediaClock, MediaTimeline
from deployments.rtc.tracks import AvatarAudioTrack, AvatarVideoTrack

log = logging.getLogger(__name__)


class HostSettings(BaseModel):
    """What every SessionHost replica needs to know (from `serve_app.build`)."""

    avatar_id: str = "astronaut"
    data_dir: str = "data/avatars"
    # WebRTC host candidate addresses (env ICE_HOST_ADDRESSES wins); empty = all interfaces.
    ice_host_addresses: list[str] = Field(default_factory=list)
    ice_servers: list[str] = Field(default_factory=list)  # STUN/TURN URLs; empty = no STUN traffic
    max_sessions: int = Field(4, ge=1)
    chunk_frames: int = Field(4, ge=2, le=8)
    lead_chunks: int = Field(2, ge=1, le=4)
    video_bitrate_kbps: int = Field(1000, ge=100, le=20000)
    # An offer that has not connected by then is dropped and frees its slot (aiortc never gives up
    # on an offer whose ICE does not complete, so replayed or candidate-less offers would pile up).
    connect_timeout_s: float = Field(30.0, gt=0, le=600)


@serve.deployment(
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    request_router_config=RequestRouterConfig(
        request_router_class="deployments.rtc.router:SessionAffinityRouter",
        request_routing_stats_period_s=1,
        request_routing_stats_timeout_s=5,
    ),
)
class SessionHost:
    """Peer connections and conductors of the sessions this replica owns."""

    def __init__(self, tts: DeploymentHandle, renderer: DeploymentHandle, settings: dict | None = None) -> None:
        adopt_serve_logging()
        self.settings = HostSettings(**(settings or {}))
        self._tts, self._renderer = tts, renderer
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._tag = owner_tag(self._replica_id)
        self._avatar = load_avatar(Path(self.settings.data_dir) / self.settings.avatar_id)
        self._paster = make_paster(self._avatar)
        self._sessions: dict[str, Session] = {}
        self._warm_up_task: asyncio.Task | None = None
        self._pending = 0  # offers being negotiated count against max_sessions too
        self._reapers: set[asyncio.Task] = set()  # one per session until it connects
        self._metrics = HostMetrics()
        configure_host_addresses(self.settings.ice_host_addresses)
        configure_video_bitrate(self.settings.video_bitrate_kbps)

    # ---- routing & health ----------------------------------------------------------------
    def record_routing_stats(self) -> dict:
        """Sessions held (and being negotiated) for the router; samples the metrics too (every 1 s)."""
        self._metrics.sample(self._sessions.values())
        return {"sessions": len(self._sessions) + self._pending}

    async def check_health(self) -> None:
        return None

    def _session(self, session_id: str) -> Session:
        if tag_of(session_id) != self._tag:
            raise SessionGone(f"session {session_id} is gone: its host replica no longer exists")
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"unknown session {session_id}")
        return session

    # ---- session lifecycle ---------------------------------------------------------------
    async def _warm_up(self) -> None:
        """First calls pay for handle set-up and the avatar load in the renderer: pay them while
        the first viewer connects, not at its first sentence.
        """
        try:
            await asyncio.gather(
                self._tts.sample_rate.remote(),
                self._renderer.avatar_info.remote(self.settings.avatar_id),
            )
        except Exception as exc:  # a real failure shows up again, with its context, when used
            log.warning("warm-up failed: %s", exc)

    async def offer(self, sdp: str, sdp_type: str) -> dict:
        if self._warm_up_task is None:
            self._warm_up_task = asyncio.create_task(self._warm_up())
        if len(self._sessions) + self._pending >= self.settings.max_sessions:
            raise Overloaded(f"this host is full ({self.settings.max_sessions} sessions): try again later")
        self._pending += 1
        try:
            session = self._new_session()
            try:
                answer = await session.answer(sdp, sdp_type)
            except Exception:
                await session.aclose()
                raise
            self._sessions[session.id] = session
            session.start()
            reaper = asyncio.create_task(self._drop_unless_connected(session), name=f"reaper-{session.id}")
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)
            SessionLog(log, session.id).info("started (%d on this replica)", len(self._sessions))
            return {"sdp": answer.sdp, "type": answer.type, "sessionid": session.id}
        finally:
            self._pending -= 1

    def _new_session(self) -> Session:
        session_id = new_session_id(self._replica_id)
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        clock, timeline = MediaClock(), MediaTimeline()
        conductor = Conductor(
            avatar_id=self.settings.avatar_id,
            full_frames=self._avatar.full_frames,
            paste=self._paster.paste,
            clock=clock,
            timeline=timeline,
            render=self._render,
            speech=self._speech,
            config=ConductorConfig(chunk_frames=self.settings.chunk_frames, lead_chunks=self.settings.lead_chunks),
            observe=self._metrics.observe,
            session_id=session_id,
        )
        video = AvatarVideoTrack(clock, timeline, self._avatar.full_frames[0])
        audio = AvatarAudioTrack(clock, timeline)
        session = Session(session_id, pc, conductor, clock, timeline, video, audio)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._drop(session_id)

        return session

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
    async def human(self, session_id: str, text: str, interrupt: bool) -> dict:
        session = self._session(session_id)
        if interrupt:
            session.conductor.interrupt()
        session.conductor.say(text)
        return {}

    async def human_audio(self, session_id: str, pcm: np.ndarray, interrupt: bool) -> dict:
        session = self._session(session_id)
        if pcm.size == 0:
            raise BadRequest("the audio upload holds no samples")
        if interrupt:
            session.conductor.interrupt()
        session.conductor.play(np.array(pcm, np.float32))
        return {"seconds": round(pcm.size / 16000, 3)}

    async def interrupt(self, session_id: str) -> dict:
        self._session(session_id).conductor.interrupt()
        return {}

    async def is_speaking(self, session_id: str) -> bool:
        return self._session(session_id).conductor.speaking

    async def session_stats(self, session_id: str) -> dict:
        return self._session(session_id).stats()

    # ---- calls to the other deployments --------------------------------------------------
    async def _speech(self, text: str):
        async for pcm in self._tts.options(stream=True).stream.remote(text):
            yield pcm

    async def _render(self, req: RenderRequest) -> RenderResult:
        return await self._renderer.render.remote(req)

    async def __del__(self) -> None:
        for reaper in self._reapers:
            reaper.cancel()
        await asyncio.gather(*(s.aclose() for s in self._sessions.values()), return_exceptions=True)
        self._sessions.clear()
