"""Sessions one SessionHost holds at 25 fps on this machine, idle and talking, and where the CPU goes.

    scripts/loopback_only.sh .venv/bin/python -m bench.capacity_bench [--sessions 2 4 8] [--seconds 15]
    scripts/loopback_only.sh .venv/bin/python -m bench.capacity_bench --vp8-options '{}'   # aiortc's libvpx options

For each N, N aiortc clients connect to a real Serve app (default renderer, Piper) and are held
for `--seconds`: first idle, then talking (each session is sent a sentence every ~3 s with
`/human` echo, so about 80% of its time is speech). The clients count video frames as their RTP
packets arrive and never decode them, and run at Ray's worker niceness, so the server, not the
client, is measured. Per N: the video and audio the server sent per session (its own counters),
slots it skipped (its tracks fell behind by more than their catch-up bound), what the clients
received, and the CPU seconds per wall second of each server process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import ray
from ray import serve

from bench import procstat
from clients import analysis
from clients.avatar_client import AvatarClient
from deployments.avatar.builder import build_avatar
from serve_app import AppArgs, bind_graph

PORT = 8145
RAY_WORKER_NICENESS = 15  # raylet's default `worker_niceness`
SENTENCE = "Our new spring collection is in store now, with twenty percent off every jacket this week."
DEPLOYMENTS = ("SessionHost", "AvatarRenderer", "TTSService", "Api", "SpeechRecognizer")


async def _stats(clients: list[AvatarClient]) -> list[dict]:
    return [await c.session_stats() for c in clients]


async def _hold(clients: list[AvatarClient], seconds: float, talking: bool) -> dict[str, float]:
    pids = {name: procstat.find_pids(f":avatar:{name}") for name in DEPLOYMENTS}
    cpu0 = {name: sum(procstat.cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    before, t0 = await _stats(clients), time.monotonic()
    while time.monotonic() - t0 < seconds:
        if talking:
            for client in clients:
                await client.post("/human", text=SENTENCE, type="echo", interrupt=True)
                await asyncio.sleep(3.0 / len(clients))
        else:
            await asyncio.sleep(0.5)
    after, t1 = await _stats(clients), time.monotonic()
    wall = t1 - t0
    pairs = list(zip(after, before, strict=True))
    cpu = {name: (sum(procstat.cpu_seconds(p) for p in ps) - cpu0[name]) / wall for name, ps in pids.items()}
    sent = [(a["video_frames_sent"] - b["video_frames_sent"]) / wall for a, b in pairs]
    received = [analysis.video_rate(c.rec, t0, t1)[0] for c in clients]
    return {
        "sent_fps_min": min(sent), "sent_fps_median": statistics.median(sent),
        "received_fps_min": min(received),
        "frames_skipped": sum(a["video_frames_skipped"] - b["video_frames_skipped"] for a, b in pairs),
        "packets_skipped": sum(a["audio_packets_skipped"] - b["audio_packets_skipped"] for a, b in pairs),
        **{f"cpu_{name}": value for name, value in cpu.items()},
    }


async def measure(n: int, seconds: float) -> None:
    clients = [AvatarClient(f"http://127.0.0.1:{PORT}", decode_video=False) for _ in range(n)]
    try:
        for client in clients:
            await client.connect()
        await asyncio.sleep(2.0)
        for label, talking in (("idle", False), ("talking", True)):
            r = await _hold(clients, seconds, talking)
            cpu = ", ".join(f"{name} {r[f'cpu_{name}']:.2f}" for name in DEPLOYMENTS if r[f"cpu_{name}"] >= 0.005)
            print(f"{n:3d} sessions {label:7s}: sent {r['sent_fps_min']:.1f}-{r['sent_fps_median']:.1f} fps "
                  f"(min-median), received >= {r['received_fps_min']:.1f} fps; skipped {r['frames_skipped']} frames, "
                  f"{r['packets_skipped']} audio packets; CPU s/s: {cpu}")
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.sleep(2.0)  # closed sessions' conductors stop


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--vp8-options", default=None,
                        help='libvpx options as JSON, e.g. "{}" for aiortc\'s own (default: the app\'s)')
    args = parser.parse_args()
    data = Path("/tmp/capacity_bench_avatars")
    if not (data / "testface").is_dir():
        build_avatar("testface", astronaut=True, out_dir=data, idle_seconds=1.0, progress=False)
    vp8 = {} if args.vp8_options is None else {"vp8_options": json.loads(args.vp8_options)}
    cfg = AppArgs(data_dir=str(data), avatar_id="testface", ice_host_addresses=["127.0.0.1"],
                  max_sessions=max(args.sessions), **vp8)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        serve.run(bind_graph(cfg), name="avatar", route_prefix="/")
        os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))  # the clients do not outrank the server
        for n in args.sessions:
            asyncio.run(measure(n, args.seconds))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    run()
