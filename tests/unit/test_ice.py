"""ICE addresses on a cluster: "node" resolves per node; 1:1 NAT nodes announce their public IP."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.rtc.host import HostSettings
from deployments.rtc.ice import announce_public_addresses, resolve_host_addresses

pytestmark = pytest.mark.unit

ANSWER = "\r\n".join([
    "v=0",
    "o=- 3913 3913 IN IP4 0.0.0.0",
    "m=video 40001 UDP/TLS/RTP/SAVPF 96",
    "c=IN IP4 10.0.0.5",
    "a=candidate:a1 1 udp 2130706431 10.0.0.5 40001 typ host",
    "a=candidate:b2 1 udp 2130706431 172.17.0.2 40002 typ host",
    "a=candidate:c3 1 udp 1694498815 198.51.100.7 40001 typ srflx raddr 10.0.0.5 rport 40001",
    "",
])


def test_node_becomes_this_nodes_ip_once() -> None:
    assert resolve_host_addresses(["node", "127.0.0.1"], node_ip="10.0.0.5") == ["10.0.0.5", "127.0.0.1"]
    assert resolve_host_addresses(["node", "10.0.0.5"], node_ip="10.0.0.5") == ["10.0.0.5"]
    assert resolve_host_addresses(["192.0.2.1"], node_ip="10.0.0.5") == ["192.0.2.1"]


def test_public_address_replaces_the_private_one_in_host_candidates_and_c_lines() -> None:
    out = announce_public_addresses(ANSWER, {"10.0.0.5": "203.0.113.9"}).split("\r\n")
    assert "c=IN IP4 203.0.113.9" in out
    assert "a=candidate:a1 1 udp 2130706431 203.0.113.9 40001 typ host" in out
    # other interfaces and the related address of a reflexive candidate are left alone
    assert "a=candidate:b2 1 udp 2130706431 172.17.0.2 40002 typ host" in out
    assert "a=candidate:c3 1 udp 1694498815 198.51.100.7 40001 typ srflx raddr 10.0.0.5 rport 40001" in out


def test_no_mapping_leaves_the_answer_as_it_is() -> None:
    assert announce_public_addresses(ANSWER, {}) == ANSWER


@pytest.mark.parametrize("mapping", [{"10.0.0.5": "node"}, {"my-host": "203.0.113.9"}, {"10.0.0.5": "::1"}])
def test_public_addresses_must_be_ipv4_pairs(mapping: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="not an IPv4 address"):
        HostSettings(ice_public_addresses=mapping)
