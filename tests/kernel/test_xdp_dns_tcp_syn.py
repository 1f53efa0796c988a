"""A SYN on a connection this host holds open does not move where XDP reads the next query.

The server answers such a SYN with a challenge ACK and keeps its stream (RFC 5961 4, RFC 9293
3.10.7.4); if the program restarted its position from that SYN, the client could send a "whole
query" over bytes the server already holds, and the server would read a hidden query from its own
position. The open connection is a real one (the Linux stack's, in a test namespace), found by the
program's socket lookup; frames go through BPF_PROG_TEST_RUN from a thread in that namespace.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from hyperion.fastpath.program import FastPath
from hyperion.lab.sandbox import HOST_V4, Sandbox, entered_netns
from tests.kernel.test_xdp_dns_tcp import RULES, TCP_DNS, Family, State, expect, flow, framed, segment
from tests.support.dns_maps import DnsMaps, query

LOCAL = Family("local", HOST_V4, HOST_V4)  # both ends on this host: the stack holds both sockets
ISN, OTHER_ISN = 0x1000_0000, 0x5555_0000


@pytest.fixture
def maps(detached: tuple[FastPath, int]) -> Iterator[tuple[DnsMaps, int]]:
    fastpath, prog_fd = detached
    writer = DnsMaps(fastpath)
    try:
        yield writer, prog_fd
    finally:
        writer.close()


@pytest.fixture
def host(kernel: None) -> Iterator[Sandbox]:
    sb = Sandbox().up()
    try:
        yield sb
    finally:
        sb.down()


def test_a_syn_on_an_open_connection_keeps_the_stream_position(maps: tuple[DnsMaps, int], host: Sandbox) -> None:
    writer, fd = maps
    writer.install([TCP_DNS], RULES)
    with entered_netns(host.host_ns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((HOST_V4, 53))
            listener.listen(1)
            client.connect((HOST_V4, 53))
            served, _ = listener.accept()
            sport = client.getsockname()[1]

            def syn(isn: int) -> None:
                expect(writer, fd, segment(flags="S", seq=isn, ack=0, family=LOCAL, sport=sport,
                                           tcp_options=[("MSS", 1460)]), "pass", "pass", "dns_tcp_no_data")

            syn(ISN)  # no entry yet: tracked from this SYN
            assert flow(writer, LOCAL, sport) == (ISN + 1, State.XDP)
            first = framed(query("ok.example"))
            expect(writer, fd, segment(first, seq=ISN + 1, family=LOCAL, sport=sport), "pass", "pass", "dns_allow")
            position = ISN + 1 + len(first)
            assert flow(writer, LOCAL, sport) == (position, State.XDP)
            # The connection is open here: a second SYN moves nothing.
            syn(OTHER_ISN)
            assert flow(writer, LOCAL, sport) == (position, State.XDP)
            # A "whole query" where that SYN would have put the position is not judged here.
            expect(writer, fd, segment(framed(query("ok.example")), seq=OTHER_ISN + 1, family=LOCAL, sport=sport),
                   "drop", "drop", "redirect_failed")
            assert flow(writer, LOCAL, sport) == (position, State.SLOWPATH)
            served.close()
        finally:
            client.close()
            listener.close()
        # Closed (the listener too: no socket for the 4-tuple): a SYN starts a new connection.
        syn(OTHER_ISN)
        assert flow(writer, LOCAL, sport) == (OTHER_ISN + 1, State.XDP)
