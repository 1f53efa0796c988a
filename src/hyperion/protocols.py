"""IP protocol numbers and the names Hyperion prints for them: the one table every layer uses.

Numbers are IANA's "Assigned Internet Protocol Numbers". Names are lower-case; the IPv6 ICMP is
"icmpv6" (IANA's keyword and /etc/protocols say "ipv6-icmp", which is accepted as an alias), so
socket.getprotobyname cannot stand in for this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Final


class IpProtocol(IntEnum):
    ICMP = 1
    IGMP = 2
    TCP = 6
    UDP = 17
    GRE = 47
    ESP = 50
    AH = 51
    ICMPV6 = 58
    SCTP = 132

    @property
    def label(self) -> str:
        """The name shown in policies, events and metric labels, e.g. "tcp"."""
        return self.name.lower()


# name -> number, the aliases included; every name a policy may spell a protocol with.
PROTOCOL_NUMBERS: Final[Mapping[str, int]] = MappingProxyType(
    {**{p.label: int(p) for p in IpProtocol}, "ipv6-icmp": int(IpProtocol.ICMPV6)}
)

# number -> name (no aliases).
PROTOCOL_NAMES: Final[Mapping[int, str]] = MappingProxyType({int(p): p.label for p in IpProtocol})

# The transport protocols with ports: the only ones a traffic class or redirect can name.
PORT_PROTOCOLS: Final[frozenset[IpProtocol]] = frozenset({IpProtocol.TCP, IpProtocol.UDP})


def protocol_name(number: int) -> str:
    """'tcp' for 6; the decimal number for a protocol the table does not name."""
    return PROTOCOL_NAMES.get(number, str(number))
