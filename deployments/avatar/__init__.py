"""Avatar assets, idle-loop builder, weight-free lip sync, paste-back and the renderer deployment.

The engines here import nothing from Ray; `AvatarRenderer` (which does) is imported lazily.
"""

from __future__ import annotations

from typing import Any

from deployments.avatar.assets import (
    Avatar,
    AvatarNotFound,
    InvalidAvatar,
    load_avatar,
    mirror_index,
)
from deployments.avatar.parametric import ParametricLipSync
from deployments.avatar.paste import FeatheredPaster
from deployments.avatar.types import RenderRequest, RenderResult

__all__ = [
    "Avatar",
    "AvatarNotFound",
    "AvatarRenderer",
    "FeatheredPaster",
    "InvalidAvatar",
    "ParametricLipSync",
    "RenderRequest",
    "RenderResult",
    "load_avatar",
    "mirror_index",
]


def __getattr__(name: str) -> Any:
    if name == "AvatarRenderer":  # keeps `import deployments.avatar` free of Ray
        from deployments.avatar.deployment import AvatarRenderer

        return AvatarRenderer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
