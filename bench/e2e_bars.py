"""Measure the foundation's bars against a running server, with our own aiortc viewer.

    ICE_HOST_ADDRESSES=127.0.0.1 make run            # in one shell (or loopback namespace)
    .venv/bin/python -m bench.e2e_bars --trials 5     # in another, same network namespace

Prints a markdown table: video rate and gaps, /human → first speech audio, lip-sync offset,
interrupt → silence, and the CPU and memory of the SessionHost replica (idle and over a soak).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import statistics
import time
from pathlib import Path

from bench.procstat import cpu_seconds, find_pids, rss_mib
from clients import analysis
from clients.avatar_client import AvatarClient

REPO = Path(__file__).resolve().parents[1]
SENTENCE = ("Welcome to our store, I can help you find the right phone, compare prices, "
            "and answer any question you have today.")  # 20 words
LONG_TEXT = " ".join([SENTENCE] * 4)


def mouth_box(avatar_id: str) -> tuple[int, int, int, int]:
    folder = REPO / "data" / "avatars" / avatar_id
    meta = json.loads((folder / "avatar.json").read_text())
    y1, y2, x1, x2 = pickle.loads((folder / "coords.pkl").read_bytes())[0]
    fx, fy, fw, fh = meta["mouth_box"]
    h, w = y2 - y1, x2 - x1
    return int(y1 + fy * h), int(y1 + (fy + fh) * h), int(x1 + fx * w), int(x1 + (fx + fw) * w)


async def speech_trial(client: AvatarClient) -> dict:
    await asyncio.sleep(1.0)
    t_send = time.monotonic()
    await client.post("/human", text=SENTENCE, type="echo")
    await asyncio.sleep(8.0)
    first = analysis.first_speech_after(client.rec, t_send)
    last = analysis.last_speech_after(client.rec, t_send)
    offset, corr = analysis.lip_sync_offset(client.rec, first - 0.5, last + 0.5)
    fps, gap = analysis.video_rate(client.rec, t_send - 1.0, time.monotonic())
    return {"first_audio_s": first - t_send, "sync_offset_ms": offset * 1000, "sync_corr": corr,
            "fps": fps, "max_gap_ms": gap * 1000,
            "talk_motion": analysis.mouth_activity(client.rec, first, last),
            "idle_motion": analysis.mouth_activity(client.rec, t_send - 1.0, t_send)}


async def interrupt_trial(client: AvatarClient) -> float:
    await client.post("/human", text=LONG_TEXT, type="echo")
    await asyncio.sleep(3.0)
    t_int = time.monotonic()
    await client.post("/interrupt_talk")
    await asyncio.sleep(1.5)
    last = analysis.last_speech_after(client.rec, t_int - 2.0)
    return max(0.0, last - t_int)


def host_pids() -> list[int]:
    return find_pids("ServeReplica:avatar:SessionHost")


async def idle_cpu(base: str, box, seconds: float) -> tuple[float, float]:
    """Fraction of a core the SessionHost replica uses: without a session, then with one idle."""
    pids = host_pids()

    async def measure() -> float:
        c0 = sum(cpu_seconds(p) for p in pids)
        await asyncio.sleep(seconds)
        return (sum(cpu_seconds(p) for p in pids) - c0) / seconds

    without = await measure()
    client = AvatarClient(base, mouth_box=box)
    await client.connect()
    await asyncio.sleep(2.0)
    with_one = await measure()
    await client.close()
    return without, with_one


async def soak(base: str, box, minutes: float) -> list[tuple[float, float]]:
    """RSS of all replicas every 30 s over a session that speaks every 20 s."""
    client = AvatarClient(base, mouth_box=box)
    await client.connect()
    samples, t0 = [], time.monotonic()
    next_say = 0.0
    try:
        while time.monotonic() - t0 < minutes * 60:
            elapsed = time.monotonic() - t0
            if elapsed >= next_say:
                await client.post("/human", text=SENTENCE, type="echo")
                next_say += 20
            if not samples or elapsed - samples[-1][0] >= 30:
                rss = sum(rss_mib(p) for p in find_pids("ServeReplica:avatar"))
                samples.append((elapsed, rss))
            # Keep only recent receive history: the soak is about the server's memory.
            for name in ("video_t", "mouth", "audio_t", "audio_rms"):
                del getattr(client.rec, name)[:-3000]
            await asyncio.sleep(1.0)
    finally:
        await client.close()
    return samples


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="http://127.0.0.1:8010")
    ap.add_argument("--avatar", default="astronaut")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--soak-minutes", type=float, default=0.0)
    args = ap.parse_args()
    box = mouth_box(args.avatar)

    client = AvatarClient(args.base, mouth_box=box)
    await client.connect()
    trials = [await speech_trial(client) for _ in range(args.trials)]
    stops = [await interrupt_trial(client) for _ in range(args.trials)]
    await client.close()
    without, with_one = await idle_cpu(args.base, box, 20.0)

    def row(name: str, values: list[float], unit: str, fmt: str = "{:.2f}") -> str:
        return (f"| {name} | {fmt.format(statistics.median(values))} | {fmt.format(min(values))} | "
                f"{fmt.format(max(values))} | {unit} |")

    print(f"trials: {args.trials}\n")
    print("| measure | median | min | max | unit |\n|---|---|---|---|---|")
    print(row("video rate while talking", [t["fps"] for t in trials], "fps", "{:.1f}"))
    print(row("largest video gap", [t["max_gap_ms"] for t in trials], "ms", "{:.0f}"))
    print(row("POST /human → first speech audio (20 words)", [t["first_audio_s"] for t in trials], "s"))
    print(row("mouth motion vs audio envelope offset", [t["sync_offset_ms"] for t in trials], "ms", "{:.0f}"))
    print(row("  correlation at that offset", [t["sync_corr"] for t in trials], "", "{:.2f}"))
    print(row("mouth motion talking / idle (std of mouth darkness)",
              [t["talk_motion"] / max(t["idle_motion"], 1e-3) for t in trials], "×", "{:.0f}"))
    print(row("POST /interrupt_talk → last speech audio", [s * 1000 for s in stops], "ms", "{:.0f}"))
    print(f"\nSessionHost CPU: {without:.3f} cores with no session, {with_one:.3f} with one idle session "
          f"(one idle session costs {with_one - without:.3f} of a core)")
    if args.soak_minutes:
        samples = await soak(args.base, box, args.soak_minutes)
        print("\nreplica RSS over the soak (s → MiB): " + ", ".join(f"{t:.0f}→{m:.0f}" for t, m in samples))


if __name__ == "__main__":
    asyncio.run(main())
