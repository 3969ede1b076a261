"""An aiortc viewer: connects like the web page does and records what arrives, with timestamps.

    client = AvatarClient("http://127.0.0.1:8010")
    await client.connect()
    await client.post("/human", text="Hello there", type="echo")
    ...
    await client.close()

It records, per received video frame, the arrival time and a mouth-openness metric (mean
darkness of the avatar's mouth box), and per 20 ms audio frame the arrival time and RMS.
`client.events()` reads the session's `GET /sse` (clients/sse.py) on the same clock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from clients.sse import EventStream
from deployments.rtc.ice import configure_host_addresses, rtc_configuration


@dataclass
class Recording:
    video_t: list[float] = field(default_factory=list)
    mouth: list[float] = field(default_factory=list)
    audio_t: list[float] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)
    last_frame: np.ndarray | None = None


class AvatarClient:
    """One WebRTC viewer session against a running server."""

    def __init__(self, base_url: str, *, mouth_box: tuple[int, int, int, int] | None = None,
                 ice_addresses: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.base_url = base_url.rstrip("/")
        self.mouth_box = mouth_box  # (y1, y2, x1, x2) in full-frame pixels
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=30.0)
        self.rec = Recording()
        self.sessionid: str | None = None
        self.token: str | None = None  # the session's token from the /offer answer
        self._tasks: list[asyncio.Task] = []
        configure_host_addresses(list(ice_addresses))
        self.pc = RTCPeerConnection(rtc_configuration([]))

    async def connect(self, timeout: float = 20.0) -> dict:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:
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
        return await self.http.post(path, json={"sessionid": self.sessionid, **fields})

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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
