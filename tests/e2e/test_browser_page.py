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


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_page_starts_speaks_and_interrupts(server, tmp_path, codec):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(server + "/")
            await page.select_option("#codec", codec)
            await page.click("#start")
            await page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=20_000)
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
