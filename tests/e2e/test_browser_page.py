"""The web page in headless Chromium (Debian's, driven by Playwright): start, speak, interrupt."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.e2e

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


# ---- the page replaces a session whose SessionHost died ---------------------------------------

RECONNECT_PORT = 8136  # its own app (two SessionHost replicas), not the shared `serve run` server


@pytest.fixture(scope="module")
def two_host_app(tmp_path_factory):
    """The app with two SessionHost replicas, served in this process's own Ray instance."""
    import ray
    from ray import serve

    from deployments.avatar.builder import build_avatar
    from serve_app import AppArgs, bind_graph

    root = tmp_path_factory.mktemp("avatars")
    build_avatar("testface", astronaut=True, out_dir=root, idle_seconds=1.0, progress=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": RECONNECT_PORT})
        cfg = AppArgs(data_dir=str(root), avatar_id="testface", ice_host_addresses=["127.0.0.1"])
        serve.run(bind_graph(cfg, host_replicas=2), name="avatar", route_prefix="/")
        yield f"http://127.0.0.1:{RECONNECT_PORT}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _host_pid_of(session_id: str) -> int:
    """The pid of the SessionHost replica that owns `session_id` (from the GCS's actor table)."""
    import ray

    from deployments.rtc.session_ids import owner_tag

    for actor in ray._private.state.actors().values():
        if actor["State"] == "ALIVE" and actor["ActorClassName"] == "ServeReplica:avatar:SessionHost":
            if owner_tag(actor["Name"].rsplit("#", 1)[-1]) == session_id[1:7]:
                return int(actor["Pid"])
    raise LookupError(f"no live SessionHost owns {session_id}")


async def test_page_replaces_a_session_whose_host_died(two_host_app):
    import asyncio
    import os
    import signal
    import time

    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page, errors = await started_page(browser, two_host_app)
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
