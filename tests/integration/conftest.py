"""Integration fixtures: a small avatar built once for the whole run; the app on Ray Serve."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import ray
from ray import serve

from clients import analysis
from clients.avatar_client import AvatarClient
from deployments.avatar.builder import build_avatar
from serve_app import AppArgs, bind_graph

# Async tests here fail too if they leave asyncio tasks running (the unit tier's guard; Serve
# handles awaited from a test's loop and the aiortc client leave none behind).
from tests.leak_guard import _fail_on_leaked_tasks, _leaked_task_guard  # noqa: F401


@pytest.fixture(scope="session")
def avatar_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars")
    build_avatar("testface", astronaut=True, out_dir=root, idle_seconds=1.0, progress=False)
    return root


@pytest.fixture(scope="module")
def start_app() -> Iterator[Callable[..., str]]:
    """`start(cfg, port, **bind_kwargs)`: Ray, Serve on 127.0.0.1:`port` and the app of `cfg`
    (`bind_graph`), shut down after the module; returns the app's URL."""
    started = False

    def start(cfg: AppArgs, port: int, **bind_kwargs: Any) -> str:
        nonlocal started
        # "local": a Ray of our own, never a cluster another run on this machine has started
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(bind_graph(cfg, **bind_kwargs), name="avatar", route_prefix="/")
        return f"http://127.0.0.1:{port}"

    yield start
    if started:
        serve.shutdown()
        ray.shutdown()


async def _say_and_render(app_url: str, avatar_id: str, min_frames: int = 8, timeout_s: float = 60.0
                          ) -> dict[str, Any]:
    """Say one sentence in a WebRTC session of the app "avatar"; the renderer's stats after.

    Asserts what any lip-sync model must give: `min_frames`+ rendered frames, speech audio at the
    client, 20-30 fps of video over the last 3 s while the model rendered (a slow CPU model is
    covered by filler frames), and frames of the avatar's frame size.
    """
    client = AvatarClient(app_url)
    try:
        await client.connect()
        t_send = time.monotonic()
        res = await client.post("/human", text="Hello there.", type="echo")
        assert res.status_code == 200, res.text
        renderer = serve.get_deployment_handle("AvatarRenderer", app_name="avatar")
        for _ in range(round(timeout_s / 0.5)):  # networks render a few frames per second on this CPU
            stats = await renderer.stats.remote()
            if stats["frames"] >= min_frames and analysis.first_speech_after(client.rec, t_send):
                break
            await asyncio.sleep(0.5)
        assert stats["frames"] >= min_frames, stats
        assert analysis.first_speech_after(client.rec, t_send) is not None, "speech audio arrived"
        fps, _ = analysis.video_rate(client.rec, time.monotonic() - 3.0, time.monotonic())
        assert 20 <= fps <= 30, f"video kept its rate while the model rendered: {fps:.1f} fps"
        info = await renderer.avatar_info.remote(avatar_id)
        assert client.rec.last_frame.shape[:2] == tuple(info["frame_size"])
        return stats
    finally:
        await client.close()


@pytest.fixture
def say_and_render() -> Callable[..., Awaitable[dict[str, Any]]]:
    """`await say_and_render(app_url, avatar_id)`: see `_say_and_render`."""
    return _say_and_render
