"""Integration fixtures: a small avatar built once for the whole run."""

from __future__ import annotations

import pytest

from deployments.avatar.builder import build_avatar


@pytest.fixture(scope="session")
def avatar_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars")
    build_avatar("testface", astronaut=True, out_dir=root, idle_seconds=1.0, progress=False)
    return root
