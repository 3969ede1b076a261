"""An aiortc viewer: connects like the web page does and records what arrives, with timestamps.

    client = AvatarClient("http://127.0.0.1:8010")
    await client.connect()
    await client.post("/human", text="Hello there", type="echo")
    ...
    await client.close()

It records, per received video frame, the arrival time and a mouth-openness metric (mean
darkness of the avatar's mouth box), and per 20 ms audio frame the arrival time and RMS.
`client.events()` reads the session's `GET /sse` (clients/sse.py) on the same clock.

With `microphone=Microphone()` the offer's audio m-line is sendrecv and carries a microphone:
`client.microphone.say(pcm)` plays a WAV's samples into it at real time (silence otherwise) and
records when its speech started and ended being sent (time.monotonic()), for latencies.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
import numpy as np
import soundfile as sf
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from clients.sse import EventStream
from deployments.common.audio import resample, to_int16
from deployments.rtc.auth import TOKEN_HEADER
from deployments.rtc.ice import configure_host_addresses, rtc_configuration


@dataclass
class Recording:
    video_t: list[float] = field(default_factory=list)
    mouth: list[float] = field(default_factory=list)
    audio_t: list[float] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)
    last_frame: np.ndarray | None = None


MIC_RATE = 48000
MIC_FRAME = MIC_RATE // 50  # 20 ms, as a browser sends
SPEECH_LEVEL = 0.01  # |sample| above this is speech (the WAV's own silence is not)


@dataclass
class Spoken:
    """One `Microphone.say`: when its speech was sent (time.monotonic(); None until then)."""

    speech_start: float | None = None
    speech_end: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Microphone(AudioStreamTrack):
    """A microphone track that plays queued speech at real time in 20 ms frames, silence otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[tuple[np.ndarray, Spoken, int, int]] = deque()
        self._pos = 0
        self._start: float | None = None
        self._sent = 0  # samples sent so far (the frames' timestamps)

    def say(self, pcm: np.ndarray, rate: int = 16000, leading_silence_s: float = 0.3) -> Spoken:
        """Queue speech (mono samples at `rate`) after `leading_silence_s` of silence."""
        audio = resample(pcm, rate, MIC_RATE)
        loud = np.flatnonzero(np.abs(audio) > SPEECH_LEVEL)
        lead = round(leading_silence_s * MIC_RATE)
        audio = np.concatenate([np.zeros(lead, np.float32), audio])
        first, last = (lead + loud[0], lead + loud[-1]) if loud.size else (lead, lead)
        spoken = Spoken()
        self._queue.append((to_int16(audio), spoken, int(first), int(last)))
        return spoken

    def say_wav(self, path: str | Path, leading_silence_s: float = 0.3) -> Spoken:
        """Queue a WAV file (16 or 48 kHz, mono or the mean of its channels)."""
        pcm, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return self.say(pcm.mean(axis=1), rate, leading_silence_s)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:  # real time: frame n leaves at start + n * 20 ms
            await asyncio.sleep(max(0.0, self._start + self._sent / MIC_RATE - time.monotonic()))
        out = np.zeros(MIC_FRAME, np.int16)
        filled = 0
        now = time.monotonic()
        while filled < MIC_FRAME and self._queue:
            audio, spoken, first, last = self._queue[0]
            take = min(MIC_FRAME - filled, audio.size - self._pos)
            out[filled : filled + take] = audio[self._pos : self._pos + take]
            if spoken.speech_start is None and self._pos <= first < self._pos + take:
                spoken.speech_start = now + (filled + first - self._pos) / MIC_RATE
            if spoken.speech_end is None and self._pos <= last < self._pos + take:
                spoken.speech_end = now + (filled + last - self._pos) / MIC_RATE
            filled += take
            self._pos += take
            if self._pos >= audio.size:
                self._queue.popleft()
                self._pos = 0
                spoken.done.set()
        frame = av.AudioFrame.from_ndarray(out[None], format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, MIC_RATE)
        self._sent += MIC_FRAME
        return frame


class AvatarClient:
    """One WebRTC viewer session against a running server."""

    def __init__(self, base_url: str, *, mouth_box: tuple[int, int, int, int] | None = None,
                 ice_addresses: tuple[str, ...] = ("127.0.0.1",), microphone: Microphone | None = None,
                 decode_video: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.mouth_box = mouth_box  # (y1, y2, x1, x2) in full-frame pixels
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=30.0)
        self.rec = Recording()
        self.microphone = microphone  # sent over a sendrecv audio m-line when set
        # False: count the video frames as their last RTP packets arrive, never decode them (a load
        # generator's clients must not eat the CPU the server is measured on); `rec.mouth` stays empty
        self.decode_video = decode_video
        self.sessionid: str | None = None
        self.token: str | None = None  # the session's token from the /offer answer
        self._tasks: list[asyncio.Task] = []
        configure_host_addresses(list(ice_addresses))
        self.pc = RTCPeerConnection(rtc_configuration([]))

    async def connect(self, timeout: float = 20.0) -> dict:
        self.pc.addTransceiver("video", direction="recvonly")
        if self.microphone is not None:
            self.pc.addTransceiver(self.microphone, direction="sendrecv")
        else:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video" and not self.decode_video:
                receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
                receiver._handle_rtp_packet = self._count_video_packet  # instead of jitter buffer + decoder
                return
            reader = self._read_video if track.kind == "video" else self._read_audio
            self._tasks.append(asyncio.create_task(reader(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await self.send_offer(self.pc.localDescription.sdp)
        self.sessionid = answer["sessionid"]
        self.token = answer.get("token")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        deadline = time.monotonic() + timeout
        while not self.rec.video_t:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no video within {timeout} s (state {self.pc.connectionState})")
            await asyncio.sleep(0.05)
        return answer

    async def send_offer(self, sdp: str) -> dict:
        """POST the offer to `/offer`; the answer (sdp, type, sessionid, token)."""
        res = await self.http.post("/offer", json={"sdp": sdp, "type": "offer"})
        res.raise_for_status()
        return res.json()

    def events(self) -> EventStream:
        """A reader of this session's `GET /sse` (not yet open: `await stream.open()`)."""
        assert self.sessionid is not None, "connect first"
        return EventStream(self.http, self.sessionid, self.token)

    async def post(self, path: str, **fields) -> httpx.Response:
        """POST JSON with the session's id and its token (deployments that require tokens check it)."""
        return await self.http.post(path, json={"sessionid": self.sessionid, **fields}, headers=self._token_header())

    async def session_stats(self) -> dict:
        """The server's view of this session (`GET /sessions/{id}`: frames sent and skipped, ...)."""
        res = await self.http.get(f"/sessions/{self.sessionid}", headers=self._token_header())
        res.raise_for_status()
        return res.json()["data"]

    def _token_header(self) -> dict[str, str]:
        return {TOKEN_HEADER: self.token} if self.token else {}

    async def _read_video(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                img = frame.to_ndarray(format="bgr24")
                self.rec.video_t.append(time.monotonic())
                self.rec.mouth.append(self._mouth_darkness(img))
                self.rec.last_frame = img
        except MediaStreamError:
            return

    async def _count_video_packet(self, packet, arrival_time_ms: int) -> None:
        if packet.marker:  # the last packet of a frame
            self.rec.video_t.append(time.monotonic())

    async def _read_audio(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                self.rec.audio_t.append(time.monotonic())
                self.rec.audio_rms.append(float(np.sqrt(np.mean(pcm**2))))
        except MediaStreamError:
            return

    def _mouth_darkness(self, img: np.ndarray) -> float:
        if self.mouth_box is None:
            return 0.0
        y1, y2, x1, x2 = self.mouth_box
        return float(255.0 - img[y1:y2, x1:x2].mean())

    async def close(self) -> None:
        if self.sessionid is not None:
            try:  # hang up explicitly so the server frees the slot at once
                await self.post("/close")
            except httpx.HTTPError:
                pass
        await self.pc.close()
        if self.microphone is not None:
            self.microphone.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
