"""The web page in headless Chromium (Debian's, driven by Playwright): start, speak, interrupt, captions,
the microphone (a WAV as Chromium's fake capture device) and reconnecting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-loopback-in-peer-connection", "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]

# Reads the <video>'s frame counter and the inbound audio level from WebRTC stats.
STATS_JS = """async () => {
  const v = document.getElementById('video');
  const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {totalVideoFrames: 0};
  return {frames: q.totalVideoFrames, width: v.videoWidth, speaking: document.getElementById('speaking').textContent};
}"""


CODEC_JS = """async () => {
  const stats = await pc.getStats();
  let mime = null;
  stats.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video' && r.codecId) mime = stats.get(r.codecId).mimeType; });
  return mime;
}"""


async def started_page(browser, url: str, codec: str | None = None):
    """A page on `url` whose Start was clicked and whose video plays; and the list of its JS errors."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url + "/")
    if codec is not None:
        await page.select_option("#codec", codec)
    await page.click("#start")
    await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=20_000)
    return page, errors


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_page_starts_speaks_and_interrupts(server, tmp_path, codec):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page, errors = await started_page(browser, server, codec)
            await page.wait_for_timeout(2000)
            a = await page.evaluate(STATS_JS)
            await page.wait_for_timeout(2000)
            b = await page.evaluate(STATS_JS)
            fps = (b["frames"] - a["frames"]) / 2.0
            assert fps >= 20, f"the page shows {fps:.1f} fps"
            assert await page.evaluate(CODEC_JS) == f"video/{codec}"
            await page.fill("#text", "Hello from the browser test, I am speaking now, can you see my lips move?")
            await page.click("#send")
            await page.wait_for_function("document.getElementById('speaking').textContent === 'speaking'", timeout=10_000)
            await page.screenshot(path=str(tmp_path / f"speaking-{codec}.png"))
            await page.click("#interrupt")
            await page.wait_for_function("document.getElementById('speaking').textContent === 'silent'", timeout=5_000)
            await page.click("#stop")
            assert not errors, errors
        finally:
            await browser.close()


# ---- the app these tests start themselves (two SessionHost replicas, port 8144) ------------------

APP_PORT = 8144  # its own app, not the shared `serve run` server


@pytest.fixture(scope="module")
def own_app(tmp_path_factory):
    """The app with two SessionHost replicas, served in this process's own Ray instance.

    One per module: the conversation tests and the reconnect test share it (start-up is the slow part).
    """
    import ray
    from ray import serve

    from deployments.avatar.builder import build_avatar
    from serve_app import AppArgs, bind_graph

    root = tmp_path_factory.mktemp("avatars")
    build_avatar("testface", astronaut=True, out_dir=root, idle_seconds=1.0, progress=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": APP_PORT})
        cfg = AppArgs(data_dir=str(root), avatar_id="testface", ice_host_addresses=["127.0.0.1"])
        serve.run(bind_graph(cfg, host_replicas=2), name="avatar", route_prefix="/")
        yield f"http://127.0.0.1:{APP_PORT}"
    finally:
        serve.shutdown()
        ray.shutdown()


# ---- conversation: captions from /sse, the state badge, the microphone --------------------------

# Every value the state badge takes, in order (a MutationObserver, so no poll misses a short one).
WATCH_STATES_JS = """() => {
  const el = document.getElementById('state');
  window.__states = [el.dataset.state];
  new MutationObserver(() => window.__states.push(el.dataset.state))
    .observe(el, {attributes: true, attributeFilter: ['data-state']});
}"""
STATE_IS = "(s) => document.getElementById('state').dataset.state === s"
SSE_OPEN = "#captions[data-sse='open']"


def _in_order(seen: list[str], wanted: list[str]) -> bool:
    """`wanted` is a subsequence of `seen`."""
    it = iter(seen)
    return all(state in it for state in wanted)


async def test_typed_echo_is_captioned_when_it_plays(own_app):
    from playwright.async_api import async_playwright

    text = "Captions follow the voice of the avatar."
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page, errors = await started_page(browser, own_app)
            await page.wait_for_selector(SSE_OPEN, timeout=10_000)
            await page.evaluate(WATCH_STATES_JS)
            await page.fill("#text", text)
            await page.click("#send")  # echo is the default mode
            # The caption appears with the server's `status: start`, i.e. when the sentence plays.
            await page.wait_for_function(STATE_IS, arg="speaking", timeout=15_000)
            assert await page.text_content("#captions .avatar.playing") == text
            assert await page.text_content("#speaking") in ("speaking", "silent")  # the old badge still works
            await page.wait_for_function(STATE_IS, arg="idle", timeout=20_000)
            assert await page.text_content("#captions .avatar.done") == text
            states = await page.evaluate("window.__states")
            assert _in_order(states, ["idle", "speaking", "idle"]), states
            # Mid-session the mic joins and leaves the same session's audio sender (replaceTrack).
            await page.click("#mic")
            await page.wait_for_function(STATE_IS, arg="listening", timeout=5_000)
            assert await page.evaluate(MIC_SENT_JS) == {"direction": "sendrecv", "track": "live"}
            await page.click("#mic")
            await page.wait_for_function(STATE_IS, arg="idle", timeout=5_000)
            assert (await page.evaluate(MIC_SENT_JS))["track"] is None
            await page.click("#stop")
            assert await page.get_attribute("#captions", "data-sse") == "closed"
            assert not errors, errors
        finally:
            await browser.close()


async def test_chat_without_an_llm_shows_the_servers_answer(own_app):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page, errors = await started_page(browser, own_app)
            await page.select_option("#mode", "chat")
            await page.fill("#text", "What can you do?")
            async with page.expect_response(lambda r: r.url.endswith("/human")) as answer:
                await page.click("#send")
            status = (await answer.value).status
            if status != 501:
                pytest.skip(f"this server has an LLM configured (POST /human chat answered {status})")
            msg = (await (await answer.value).json())["msg"]
            await page.wait_for_selector("#captions .error", timeout=5_000)
            assert msg in await page.text_content("#captions .error")
            await page.click("#stop")
            assert not errors, errors
        finally:
            await browser.close()


SPOKEN = "tests/data/speech_lights.wav"  # "Please turn on the kitchen lights." (tests/data/speech_wavs.json)
LEAD_SILENCE_S, TAIL_SILENCE_S = 1.5, 2.5


@pytest.fixture(scope="module")
def spoken_question(tmp_path_factory) -> str:
    """A 16-bit WAV for Chromium's fake microphone: silence, the sentence, silence (the end of the turn)."""
    import numpy as np
    import soundfile as sf

    pcm, rate = sf.read(str(REPO / SPOKEN), dtype="int16")
    silence = lambda s: np.zeros(int(s * rate), dtype=np.int16)  # noqa: E731
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    sf.write(str(path), np.concatenate([silence(LEAD_SILENCE_S), pcm, silence(TAIL_SILENCE_S)]), rate, subtype="PCM_16")
    return str(path)


# The audio transceiver carries the microphone (sendrecv, a live track on its sender).
MIC_SENT_JS = """() => {
  const t = pc.getTransceivers().find((t) => t.receiver.track.kind === 'audio');
  return {direction: t.currentDirection, track: t.sender.track && t.sender.track.readyState};
}"""


async def test_microphone_question_is_captioned_and_echoed(own_app, spoken_question):
    from playwright.async_api import async_playwright

    mic_flags = FLAGS + [f"--use-file-for-fake-audio-capture={spoken_question}%noloop"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=mic_flags)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(own_app + "/")
            await page.click("#mic")  # before Start: the device opens with the session
            assert await page.get_attribute("#mic", "aria-pressed") == "true"
            await page.evaluate(WATCH_STATES_JS)
            await page.click("#start")
            await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=20_000)
            assert await page.evaluate(MIC_SENT_JS) == {"direction": "sendrecv", "track": "live"}
            await page.wait_for_function(STATE_IS, arg="listening", timeout=5_000)
            # The user's words settle into a caption, then the avatar says them back (echo mode).
            await page.wait_for_selector("#captions .user:not(.partial)", timeout=30_000)
            heard = (await page.text_content("#captions .user:not(.partial)")).lower()
            assert "kitchen lights" in heard, heard
            await page.wait_for_selector("#captions .avatar", timeout=20_000)
            said = (await page.text_content("#captions .avatar")).lower()
            assert "kitchen lights" in said, said
            await page.wait_for_function(STATE_IS, arg="listening", timeout=30_000)
            states = await page.evaluate("window.__states")
            print(f"heard {heard!r}, said {said!r}; states {states}")
            assert _in_order(states, ["listening", "thinking", "speaking", "listening"]), states
            await page.click("#stop")
            assert not errors, errors
        finally:
            await browser.close()


# ---- the page replaces a session whose SessionHost died ---------------------------------------


def _host_pid_of(session_id: str) -> int:
    """The pid of the SessionHost replica that owns `session_id` (from the GCS's actor table)."""
    import ray

    from deployments.rtc.session_ids import owner_tag

    for actor in ray._private.state.actors().values():
        if actor["State"] == "ALIVE" and actor["ActorClassName"] == "ServeReplica:avatar:SessionHost":
            if owner_tag(actor["Name"].rsplit("#", 1)[-1]) == session_id[1:7]:
                return int(actor["Pid"])
    raise LookupError(f"no live SessionHost owns {session_id}")


async def test_page_replaces_a_session_whose_host_died(own_app):
    import asyncio
    import os
    import signal
    import time

    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page, errors = await started_page(browser, own_app)
            first = await page.input_value("#sessionid")
            os.kill(_host_pid_of(first), signal.SIGKILL)
            t_kill = time.monotonic()
            statuses: set[str] = set()
            while (sid := await page.input_value("#sessionid")) in ("", first):
                statuses.add(await page.text_content("#status"))
                assert time.monotonic() - t_kill < 30, f"no new session 30 s after its host died: {statuses}"
                await asyncio.sleep(0.1)
            took = time.monotonic() - t_kill
            print(f"page on a new session {took:.1f} s after its host died; status line: {sorted(statuses)}")
            assert any("reconnect" in s for s in statuses), statuses
            await page.wait_for_function("document.getElementById('status').textContent === 'connected'",
                                         timeout=20_000)
            a = await page.evaluate(STATS_JS)
            await page.wait_for_timeout(2000)
            b = await page.evaluate(STATS_JS)
            assert (b["frames"] - a["frames"]) / 2.0 >= 20, "video flows on the new session"
            assert sid[1:7] != first[1:7], "the new session is on the live replica"
            await page.click("#stop")
            assert not errors, errors
        finally:
            await browser.close()
