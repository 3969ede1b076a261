"""`SpeechRecognizer` on a real Ray Serve instance (127.0.0.1:8137) with the real Whisper tiny.en.

Two sessions transcribed at the same time, bad input answered with a clear 400, and partials of a
session superseded by newer ones while the workers are busy with other sessions' finals.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import soundfile as sf
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.asr.deployment import SpeechRecognizer
from deployments.common.audio import to_float32
from deployments.common.errors import BadRequest
from deployments.common.timing import SAMPLE_RATE

pytestmark = pytest.mark.integration

APP_NAME = "asr_test"
PORT = 8137
WORKERS = 2
DATA = Path(__file__).resolve().parents[1] / "data"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


@pytest.fixture(scope="module")
def wavs() -> dict[str, tuple[np.ndarray, str]]:
    texts = json.loads((DATA / "speech_wavs.json").read_text())
    return {name: (to_float32(sf.read(DATA / name, dtype="int16")[0]), text) for name, text in texts.items()}


@pytest.fixture(scope="module")
def handle() -> Iterator[DeploymentHandle]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        app = SpeechRecognizer.bind({"num_workers": WORKERS})
        yield serve.run(app, name=APP_NAME, route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def wait_for(handle: DeploymentHandle, condition: Callable[[dict[str, Any]], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition(stats := handle.stats.remote().result(timeout_s=10)):
        assert time.monotonic() < deadline, f"never held; stats {stats}"
        time.sleep(0.005)


def test_two_sessions_at_once(handle: DeploymentHandle, wavs: dict[str, tuple[np.ndarray, str]]) -> None:
    (lights, lights_text), (weather, weather_text) = wavs["speech_lights.wav"], wavs["speech_weather.wav"]
    start = time.perf_counter()
    a = handle.transcribe.remote(lights, session_id="100000000000001")
    b = handle.transcribe.remote(weather, True, "100000000000002")
    ra, rb = a.result(timeout_s=60), b.result(timeout_s=60)
    print(f"two sessions at once: {time.perf_counter() - start:.2f} s round trip; "
          f"in the replica {ra['seconds']:.2f} s and {rb['seconds']:.2f} s")
    assert words(ra["text"]) == words(lights_text) and words(rb["text"]) == words(weather_text)
    assert ra["final"] and not ra["superseded"] and ra["audio_s"] == pytest.approx(lights.size / SAMPLE_RATE)
    assert set(ra) == {"text", "seconds", "audio_s", "final", "superseded"}


@pytest.mark.parametrize("pcm, match", [
    (np.zeros(0, np.float32), "pcm is empty"),
    (np.full(800, np.nan, np.float32), "NaN or infinite"),
    (np.zeros(800, np.int16), "1-D float32"),
    (np.zeros(31 * SAMPLE_RATE, np.float32), "the limit is 30 s"),
    ("hello", "numpy array"),
])
def test_bad_input_is_a_clear_bad_request(handle: DeploymentHandle, pcm: object, match: str) -> None:
    with pytest.raises(BadRequest, match=match) as raised:
        handle.transcribe.remote(pcm).result(timeout_s=30)
    assert raised.value.status == 400


def test_partials_are_superseded_while_the_workers_are_busy(
    handle: DeploymentHandle, wavs: dict[str, tuple[np.ndarray, str]]
) -> None:
    (lights, lights_text), (weather, _) = wavs["speech_lights.wav"], wavs["speech_weather.wav"]
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    long_turn = np.concatenate([lights, pause, weather, pause] * 6)[: 28 * SAMPLE_RATE]  # ~2 s+ to decode
    before = handle.stats.remote().result(timeout_s=10)
    finals = [handle.transcribe.remote(long_turn, True, f"20000000000000{i}") for i in range(WORKERS)]
    wait_for(handle, lambda s: s["busy"] == WORKERS)
    sid = "300000000000001"
    partials = []
    for k in range(3):  # the turn so far, growing, as SessionHost sends it
        partials.append(handle.transcribe.remote(lights[: (k + 2) * lights.size // 4], False, sid))
        wait_for(handle, lambda s, k=k: s["superseded"] - before["superseded"] == k and s["queued"] == 1)
    stale = [p.result(timeout_s=60) for p in partials[:2]]
    assert all(r["superseded"] and r["text"] == "" and not r["final"] for r in stale), stale
    assert handle.stats.remote().result(timeout_s=10)["busy"] == WORKERS, "answered while the workers were busy"
    newest = partials[2].result(timeout_s=60)
    assert not newest["superseded"] and words(newest["text"]) == words(lights_text)
    assert all(f.result(timeout_s=60)["text"] for f in finals)
    stats = handle.stats.remote().result(timeout_s=10)
    assert stats["partial"] - before["partial"] == 1 and stats["final"] - before["final"] == WORKERS
    assert stats["queued"] == 0 and stats["busy"] == 0


def test_health(handle: DeploymentHandle) -> None:
    handle.check_health.remote().result(timeout_s=10)
    assert handle.stats.remote().result(timeout_s=10)["workers"] == WORKERS
