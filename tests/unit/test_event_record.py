"""The decoded drop event (hyperion.daemon.events.EventRecord), root-free: EventDecoder turns a
struct hyp_event into exactly the record the type names, in the order `run --events` writes it."""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import socket
import time
from typing import get_type_hints

from hyperion.daemon.events import EventDecoder, EventRecord, json_lines_sink
from hyperion.kernel.abi import load_abi


def _event(**fields: object) -> bytes:
    abi = load_abi()
    event = abi.Event()
    for name, value in fields.items():
        if isinstance(value, bytes):  # an address: 16 bytes, an IPv4 one in the first 4
            getattr(event, name)[: len(value)] = list(value)
        else:
            setattr(event, name, value)
    return bytes(event)


def _code(names: dict[int, str], name: str) -> int:
    return next(code for code, n in names.items() if n == name)


def test_tcp_event_decodes_to_the_record_the_type_names() -> None:
    abi = load_abi()
    src, dst = ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("198.51.100.20")
    raw = _event(timestamp_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME), ifindex=1, rx_queue=3, rule_id=7,
                 pkt_len=74, verdict=_code(abi.verdicts, "drop"), reason=_code(abi.reasons, "blocklist_ip"),
                 ip_version=4, protocol=socket.IPPROTO_TCP, src_port=40000, dst_port=443,
                 saddr=src.packed, daddr=dst.packed)
    named: list[tuple[str, int]] = []

    def namer(reason: str, rule_id: int) -> str | None:
        named.append((reason, rule_id))
        return "drop_ips[7]"

    record = EventDecoder(abi, namer).decode(raw)
    assert list(record) == list(get_type_hints(EventRecord))  # the keys, in the written order
    when = datetime.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert abs(when.timestamp() - time.time()) < 60
    assert {k: v for k, v in record.items() if k != "time"} == {
        "ifindex": 1, "interface": socket.if_indextoname(1), "queue": 3, "verdict": "drop",
        "reason": "blocklist_ip", "src": "192.0.2.10", "dst": "198.51.100.20", "protocol": "tcp",
        "src_port": 40000, "dst_port": 443, "length": 74, "rule_id": 7, "rule": "drop_ips[7]"}
    assert named == [("blocklist_ip", 7)]


def test_non_ip_event_has_no_addresses_ports_or_rule() -> None:
    abi = load_abi()
    record = EventDecoder(abi).decode(_event(ifindex=2**31 - 1, verdict=_code(abi.verdicts, "drop"),
                                             reason=_code(abi.reasons, "non_ip"), pkt_len=60))
    assert list(record) == list(get_type_hints(EventRecord))
    assert (record["interface"], record["src"], record["dst"], record["protocol"], record["src_port"],
            record["dst_port"], record["rule"]) == (None, None, None, None, None, None, None)


def test_ipv6_udp_event_and_its_json_line() -> None:
    abi = load_abi()
    src, dst = ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::53")
    record = EventDecoder(abi).decode(_event(
        ifindex=1, verdict=_code(abi.verdicts, "would_drop"), reason=_code(abi.reasons, "blocklist_cidr"),
        ip_version=6, protocol=socket.IPPROTO_UDP, src_port=5353, dst_port=53, saddr=src.packed,
        daddr=dst.packed, pkt_len=90))
    out = io.StringIO()
    json_lines_sink(out)(record)
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1 and ", " not in line and '": ' not in line  # compact
    assert json.loads(line) == record
    assert (record["src"], record["dst"], record["protocol"], record["src_port"], record["dst_port"]) == (
        "2001:db8::1", "2001:db8::53", "udp", 5353, 53)
