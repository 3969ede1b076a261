"""ICE host candidates as configuration.

aioice gathers host candidates from every interface except loopback, and aiortc falls back to
Google's public STUN server when no ICE servers are given. Neither fits a server: the operator
chooses the addresses to announce, and nothing may contact a third party unasked.
"""

from __future__ import annotations

import ipaddress

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


NODE_ADDRESS = "node"  # in ice_host_addresses: the IP Ray knows this replica's node by


def resolve_host_addresses(addresses: list[str], node_ip: str | None = None) -> list[str]:
    """`addresses` with "node" replaced by this node's IP, so one cluster config makes each
    SessionHost announce its own node (`node_ip` for tests; else Ray's view of the node).
    """
    if NODE_ADDRESS not in addresses:
        return list(addresses)
    if node_ip is None:
        import ray

        node_ip = ray.util.get_node_ip_address()
    return list(dict.fromkeys(node_ip if a == NODE_ADDRESS else a for a in addresses))


def announce_public_addresses(sdp: str, public: dict[str, str]) -> str:
    """Rewrite host candidates (and `c=` lines) from a node's private IP to its public one.

    For nodes behind 1:1 NAT (a cloud VM's public IP maps every port to its private IP): the
    client sends its checks to the public address, the NAT forwards them to the same port here,
    and ICE answers from the socket that has that port. aioice cannot bind a public IP that is not
    on an interface, so the answer is rewritten instead (as mediasoup's `announcedIp`).
    """
    if not public:
        return sdp
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            parts = line.split(" ")
            if len(parts) > 4 and parts[4] in public:  # foundation component transport priority ADDRESS port
                parts[4] = public[parts[4]]
                line = " ".join(parts)
        elif line.startswith("c=IN IP4 ") and line[9:] in public:
            line = "c=IN IP4 " + public[line[9:]]
        lines.append(line)
    return "\r\n".join(lines)


def check_public_addresses(public: dict[str, str]) -> dict[str, str]:
    """Validate `{private IP: public IP}`: both literal IPv4 addresses (SDP `c=IN IP4`)."""
    for private, announced in public.items():
        for address in (private, announced):
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ValueError(f"ice_public_addresses: {address!r} is not an IPv4 address") from None
    return public
