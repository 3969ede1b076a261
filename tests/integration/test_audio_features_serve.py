"""``AudioFeatures`` on a real Ray Serve instance: results, batching, errors, config.

``@serve.batch`` does not work in ``_local_testing_mode`` (NOTES.md), so this starts Ray.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import ray
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.asr.deployment import AudioFeatures, AudioFeaturesConfig
from deployments.asr.features import mel_frame_windows, pcm_samples_for

pytestmark = pytest.mark.integration

APP_NAME = "asr-features-test"
BATCH_WAIT_S = 0.05  # long enough that 8 concurrent calls share batches on a busy 2-core box
N_CONCURRENT = 8


@pytest.fixture(scope="module")
def handle() -> Iterator[DeploymentHandle]:
    """One AudioFeatures replica configured through ``user_config``."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        app = AudioFeatures.options(
            user_config={"max_batch_size": N_CONCURRENT, "batch_wait_timeout_s": BATCH_WAIT_S}
        ).bind()
        yield serve.run(app, name=APP_NAME, route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def _pcm(n_frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(pcm_samples_for(n_frames))).astype(np.float32)


def test_concurrent_calls_are_batched_and_exact(handle: DeploymentHandle) -> None:
    before = handle.stats.remote().result()
    # n_frames differ per call; 50 frames is 153.6 KB, so it arrives as a read-only buffer.
    frame_counts = [1, 2, 3, 4, 5, 8, 16, 50]
    pcms = [_pcm(n, seed) for seed, n in enumerate(frame_counts)]
    responses = [handle.mel_windows.remote(p, n) for p, n in zip(pcms, frame_counts, strict=True)]
    results = [r.result(timeout_s=30) for r in responses]
    for pcm, n, got in zip(pcms, frame_counts, results, strict=True):
        assert got.shape == (n, 80, 16) and got.dtype == np.float32
        np.testing.assert_array_equal(got, mel_frame_windows(pcm, n))
    after = handle.stats.remote().result()
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == N_CONCURRENT
    assert batches < requests, after
    assert after["largest_batch"] > 1


def test_bad_request_fails_alone(handle: DeploymentHandle) -> None:
    good = _pcm(4, seed=99)
    bad = handle.mel_windows.remote(good[:-1], 4)
    ok = handle.mel_windows.remote(good, 4)
    with pytest.raises(ValueError, match="8960 samples"):
        bad.result(timeout_s=30)
    np.testing.assert_array_equal(ok.result(timeout_s=30), mel_frame_windows(good, 4))


def test_config_model_validates() -> None:
    assert AudioFeaturesConfig.model_validate({}).max_batch_size == 8
    for bad in ({"max_batch_size": 0}, {"batch_wait_timeout_s": -1}, {"max_batch": 4}):
        with pytest.raises(ValidationError):
            AudioFeaturesConfig.model_validate(bad)
