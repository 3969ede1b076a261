"""ICE host candidates as configuration.

aioice gathers host candidates from every interface except loopback, and aiortc falls back to
Google's public STUN server when no ICE servers are given. Neither fits a server: the operator
chooses the addresses to announce, and nothing may contact a third party unasked.
"""

from __future__ import annotations

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_original_get_host_addresses = aioice.ice.get_host_addresses


def parse_addresses(value: str | list[str] | None) -> list[str]:
    """Accept `"127.0.0.1, 10.0.0.5"` or a list; empty means "all interfaces"."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [a.strip() for a in items if a and a.strip()]


def configure_host_addresses(addresses: list[str]) -> None:
    """Restrict (or, with an empty list, restore) the addresses aioice offers as host candidates."""
    if not addresses:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


def rtc_configuration(ice_servers: list[str]) -> RTCConfiguration:
    """An explicit server list: an empty one means no STUN/TURN traffic at all."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in ice_servers])
