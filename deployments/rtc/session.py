"""One viewer: its peer connection, the two paced tracks, its conductor, its conversation and its event bus."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from deployments.common.errors import BadOffer
from deployments.common.logs import SessionLog
from deployments.rtc.conductor import Conductor
from deployments.rtc.conversation import Conversation
from deployments.rtc.events import EventBus
from deployments.rtc.microphone import hear_promptly
from deployments.rtc.timeline import FRAME_S, MediaClock, MediaTimeline
from deployments.rtc.tracks import AvatarAudioTrack, AvatarVideoTrack

log = logging.getLogger(__name__)


def audio_codec(sdp: str) -> str | None:
    """The audio codec an SDP answer settled on (its audio m-line's first), e.g. "audio/opus"."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "audio" and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType.lower()
    return None


class Session:
    """Created from an SDP offer; closed on hang-up, failure or shutdown."""

    def __init__(self, session_id: str, pc: RTCPeerConnection, conductor: Conductor, clock: MediaClock,
                 timeline: MediaTimeline, video: AvatarVideoTrack, audio: AvatarAudioTrack,
                 client: str = "", events: EventBus | None = None,
                 conversation: Conversation | None = None) -> None:
        self.id = session_id
        self.client = client  # the address that sent the offer (per-client admission)
        self.connected = False  # set once the peer connection has reached "connected"
        self.pc = pc
        self.conductor = conductor
        self.clock, self.timeline = clock, timeline
        self.video, self.audio = video, audio
        self.events = events or EventBus()  # what `GET /sse` relays; closed with the session
        self.conversation = conversation  # the microphone and chat; None: speech only as sent
        self._task: asyncio.Task | None = None
        self._failing: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.failure: str | None = None  # why the session closed itself, if it did

    def start(self, on_failure: Callable[[str, str], None] | None = None) -> None:
        """Run the conductor. Should it ever end on its own, the session closes itself (no zombie
        streaming a frozen picture) and then calls `on_failure(session_id, reason)`.
        """
        self._task = asyncio.create_task(self.conductor.run(), name=f"conductor-{self.id}")
        self._task.add_done_callback(lambda task: self._conductor_ended(task, on_failure))

    def _conductor_ended(self, task: asyncio.Task, on_failure: Callable[[str, str], None] | None) -> None:
        if self.closed.is_set() or task.cancelled():
            return  # closed on purpose
        exc = task.exception()
        self.failure = f"conductor crashed: {exc!r}" if exc is not None else "conductor stopped on its own"
        SessionLog(log, self.id).error("%s; closing the session", self.failure, exc_info=exc)
        self._failing = asyncio.create_task(self._close_after_failure(on_failure), name=f"fail-{self.id}")

    async def _close_after_failure(self, on_failure: Callable[[str, str], None] | None) -> None:
        try:
            await self.aclose()
        finally:
            if on_failure is not None:
                on_failure(self.id, self.failure or "")

    async def answer(self, sdp: str, sdp_type: str) -> RTCSessionDescription:
        """Apply the client's offer and return our answer (ICE gathered, non-trickle).

        An audio m-line that is sendrecv with a track carries the user's microphone: its track
        goes to the conversation.
        """
        conversation = self.conversation

        @self.pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio" and conversation is not None:
                for transceiver in self.pc.getTransceivers():
                    if transceiver.receiver.track is track:
                        hear_promptly(transceiver.receiver)
                conversation.listen(track)

        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
        except Exception as exc:
            raise BadOffer(f"malformed SDP offer: {exc}") from exc
        kinds = {t.kind for t in self.pc.getTransceivers()}
        if "video" not in kinds:
            raise BadOffer("the offer has no video m-line: add a recvonly video transceiver")
        self.pc.addTrack(self.video)
        if "audio" in kinds:
            self.pc.addTrack(self.audio)
        else:  # nobody plays the audio: let the video track's progress run cues and prune slots
            self.timeline.without_audio()
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:
            raise BadOffer(f"cannot negotiate the offer: {exc}") from exc
        if audio_codec(self.pc.localDescription.sdp) == "audio/opus":
            self.audio.encode_opus()  # packets go out as they are, no encoder-thread round trip
        return self.pc.localDescription

    def stats(self) -> dict:
        return {
            "sessionid": self.id,
            "state": self.pc.connectionState,
            "video_frames_sent": self.video.sent,
            "audio_packets_sent": self.audio.sent,
            "video_frames_skipped": self.video.skipped,  # the sender fell > 120 ms behind (CPU starved)
            "audio_packets_skipped": self.audio.skipped,
            "queued_slots": len(self.timeline),
            "rendered_chunks": self.conductor.rendered_chunks,
            "unrendered_chunks": self.conductor.unrendered_chunks,  # skipped the renderer after a failure
            "idle_chunks": self.conductor.idle_chunks,
            "turn": self.conductor.turn,
            "speaking": self.conductor.speaking,
            "errors": list(self.conductor.errors)[-5:],
            "stage_errors": dict(self.conductor.stage_errors),  # failures by stage since the start
            "event_listeners": self.events.listeners,  # open GET /sse streams
            **({"conversation": self.conversation.stats()} if self.conversation is not None else {}),
        }

    def media_stats(self) -> dict:
        """What the replica's metrics sample: queue depth, lead over playback, A/V offset, counters."""
        ahead = self.timeline.last_slot() - max(self.clock.playing_slot(), 0)
        return {
            "queued_slots": len(self.timeline),
            "render_lead_s": max(ahead, 0) * FRAME_S,
            "av_lead_s": self.audio.position_s - self.video.position_s,
            "speech_chunks": self.conductor.rendered_chunks,
            "idle_chunks": self.conductor.idle_chunks,
            "errors": dict(self.conductor.stage_errors),
        }

    async def aclose(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.events.close()  # every event stream of the session ends
        if self.conversation is not None:
            await self.conversation.aclose()
        await self.conductor.aclose()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.video.stop()
        self.audio.stop()
        await self.pc.close()
