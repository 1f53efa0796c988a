"""The worker interface is defined once on each side: native/slowpath/control.h for the extension,
hyperion.slowpath.protocol for Python. These tests compare the two through what the extension
exports (as tests/test_abi.py does for the BPF ABI), and check that every record, spec and message
survives its trip through JSON. Root-free: nothing here opens a socket."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import mmap
from ipaddress import ip_network
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from hyperion import _slowpath
from hyperion.daemon import metrics
from hyperion.errors import HyperionError
from hyperion.policy.loading import parse_policy
from hyperion.slowpath import protocol
from hyperion.slowpath.protocol import (
    CONTROL_BYTES,
    LATENCY_BUCKETS,
    STAT_NAMES,
    ControlBlock,
    ControlLayout,
    Error,
    Event,
    Exiting,
    MessageType,
    ProtocolError,
    Ready,
    RegisterCommand,
    Registered,
    Report,
    Retired,
    RulesApplied,
    RulesCommand,
    RulesOffer,
    RuleSpec,
    StatName,
    StopCommand,
    decode_command,
    decode_message,
    decode_rules,
    encode_command,
    encode_message,
    encode_rules,
)
from hyperion.slowpath.rules import compile_rules

# ---- the two definitions agree --------------------------------------------------------------------


def test_control_layout_matches_the_c_struct_field_by_field() -> None:
    layout = dict(_slowpath.CONTROL_LAYOUT)
    size = layout.pop("size")
    assert ctypes.sizeof(ControlLayout) == size <= CONTROL_BYTES
    # Same fields, same order, same offsets.
    assert [name for name, _ in ControlLayout._fields_] == list(layout)
    assert {name: getattr(ControlLayout, name).offset for name in layout} == layout
    assert ControlLayout.stats.size == 8 * len(_slowpath.STAT_NAMES)
    assert ControlLayout.latency.size == 8 * len(_slowpath.LATENCY_BOUNDS)


def test_stat_names_match_the_c_list_in_order() -> None:
    assert STAT_NAMES == _slowpath.STAT_NAMES
    assert tuple(StatName) == _slowpath.STAT_NAMES
    assert len(_slowpath.LATENCY_BOUNDS) == LATENCY_BUCKETS
    assert _slowpath.LATENCY_BOUNDS[-1] == float("inf")


def test_the_metrics_name_only_counters_the_workers_have() -> None:
    used = set(metrics.SLOWPATH_OUTCOMES) | set(metrics.BLOCK_SOURCE_OUTCOMES.values())
    used |= {f"csum_{outcome}" for outcome in metrics.CHECKSUM_OUTCOMES} | {"rx", "busy_ns"}
    assert used <= set(STAT_NAMES), used - set(STAT_NAMES)


def test_event_fields_match_the_c_record_in_order() -> None:
    assert Event._fields == _slowpath.EVENT_FIELDS


def test_rule_spec_fields_match_the_rules_constructor_in_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(RuleSpec)) == _slowpath.RULE_SPEC_FIELDS
    # to_args() follows the fields: each field a distinct value, found at its own position.
    spec = RuleSpec([(0, 1, 2.0)], [(0, _slowpath.EXACT, "a.test")], [(0, "^b$")], [(17, 53, [(0, "c")])],
                    _slowpath.REFUSE, [(4, "c0000200", "c00002ff")], [9])
    assert spec.to_args() == tuple(getattr(spec, f.name) for f in dataclasses.fields(RuleSpec))
    # The extension takes them by these names too (its keywords come from the same C list).
    rules = _slowpath.Rules(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(RuleSpec)})
    assert rules.block_limits() == [9]


def test_the_control_block_is_read_by_field_name() -> None:
    block = mmap.mmap(-1, CONTROL_BYTES)
    try:
        view = ControlLayout.from_buffer(block)
        view.heartbeat_ns = 123_456_789
        view.stat_count = len(STAT_NAMES)
        view.stats[STAT_NAMES.index(StatName.CSUM_BAD)] = 4
        view.latency[LATENCY_BUCKETS - 1] = 2
        del view  # releases the buffer, so the mmap can close
        control = ControlBlock(block)
        assert control.heartbeat_ns() == 123_456_789
        counters = control.counters()
        assert counters["csum_bad"] == 4 and counters["rx"] == 0
        assert counters["latency_buckets"][-1] == (float("inf"), 2)
    finally:
        block.close()
    # A block whose stat count is not ours (another build's worker): no counters rather than wrong ones.
    other = mmap.mmap(-1, CONTROL_BYTES)
    try:
        view = ControlLayout.from_buffer(other)
        view.stat_count = len(STAT_NAMES) + 1
        del view
        assert ControlBlock(other).counters() == {}
    finally:
        other.close()


# ---- the rule spec and the rules blob -------------------------------------------------------------


POLICY = """
fast_path:
  redirect_ports: [{protocol: udp, port: 53}, {protocol: udp, port: 9999}]
slow_path:
  malformed_dns_action: alert
  never_block: ['203.0.113.0/24', '2001:db8:53::/48']
  dns_rules:
    - {match: exact.test, action: drop}
    - {match: '*.suffix.test', action: nxdomain, qtype: AAAA}
    - {regex: '^x[0-9]+\\.regex\\.test$', action: alert}
    - {match: c2.test, action: block_source, ttl: 10m, max_blocks_per_second: 4}
  signatures:
    - {class: {protocol: udp, port: 9999}, literal: 'MAGIC', action: drop}
"""


def _dns_query(name: str, qtype: str = "A") -> bytes:
    frame = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2")
             / UDP(sport=40000, dport=53) / DNS(rd=1, qd=DNSQR(qname=name, qtype=qtype)))
    return bytes(frame)


def _udp(port: int, payload: bytes) -> bytes:
    frame = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2")
             / UDP(sport=40000, dport=port) / payload)
    return bytes(frame)


# Expected rule per frame: the policy's own order (dns_rules first, then signatures); then the rule
# a worker decides: the name rules but block_source ones run in XDP, so a worker has none of them.
FRAMES = [(_dns_query("exact.test"), 0, None), (_dns_query("a.suffix.test", "AAAA"), 1, None),
          (_dns_query("x42.regex.test"), 2, 2), (_dns_query("c2.test"), 3, 3), (_udp(9999, b"..MAGIC.."), 4, 4),
          (_dns_query("good.test"), None, None), (_udp(9999, b"nothing"), None, None)]


def _same_rules(a: Any, b: Any) -> None:
    """a: the compiled rules (the whole policy); b: a worker's, built from the spec."""
    for frame, rule, in_worker in FRAMES:
        assert a.inspect(frame)["rule"] == rule
        assert b.inspect(frame)["rule"] == in_worker
    assert a.block_limits() == b.block_limits() == [0, 0, 0, 4, 0]
    for address in ("203.0.113.9", "2001:db8:53::1"):
        packed = ip_network(address).network_address.packed
        assert a.never_blocked(packed) and b.never_blocked(packed)


def test_a_rule_spec_survives_json_and_builds_the_same_rules() -> None:
    compiled = compile_rules(parse_policy(POLICY))
    spec = compiled.spec
    assert spec.malformed_action == _slowpath.ALERT
    again = RuleSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    _same_rules(compiled.rules, again.build())


def test_a_malformed_rule_spec_is_an_error_naming_the_field() -> None:
    good = compile_rules(parse_policy(POLICY)).spec.to_json()
    with pytest.raises(ProtocolError, match=r"rule spec: expected the fields"):
        RuleSpec.from_json({k: v for k, v in good.items() if k != "block_limits"})
    with pytest.raises(ProtocolError, match=r"rule spec: names: malformed"):
        RuleSpec.from_json({**good, "names": [[0, 1]]})
    with pytest.raises(ProtocolError, match=r"rule spec: malformed_action: malformed"):
        RuleSpec.from_json({**good, "malformed_action": "drop"})
    assert issubclass(ProtocolError, HyperionError) and issubclass(ProtocolError, ValueError)


def test_the_rules_blob_round_trips_generation_spec_and_databases() -> None:
    compiled = compile_rules(parse_policy(POLICY))
    databases = compiled.rules.serialize()
    command = decode_rules(encode_rules(12, compiled.spec, databases))
    assert isinstance(command, RulesCommand)
    assert (command.generation, command.spec, command.databases) == (12, compiled.spec, databases)
    before = _slowpath.compile_count()
    _same_rules(compiled.rules, command.spec.build(command.databases))
    assert _slowpath.compile_count() == before, "built from the databases, nothing compiled"


def test_a_rules_blob_with_a_bad_spec_names_it() -> None:
    compiled = compile_rules(parse_policy(POLICY))
    blob = encode_rules(1, compiled.spec, compiled.rules.serialize())
    # A field renamed in the header (the same length: the header's size stays right).
    with pytest.raises(ProtocolError, match=r"rules blob: rule spec: expected the fields"):
        decode_rules(blob.replace(b'"names"', b'"namez"'))
    with pytest.raises(ProtocolError, match=r"rules blob: bad magic"):
        decode_rules(b"HYPRULE1" + blob[8:])


# ---- commands and messages ------------------------------------------------------------------------


def test_every_command_round_trips_through_a_stdin_line() -> None:
    spec = compile_rules(parse_policy(POLICY)).spec
    for command in (RulesCommand(3, spec), RegisterCommand(), StopCommand()):
        line = encode_command(command)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert decode_command(line) == command
    # The wire format, written out: what a worker built from another checkout would send.
    assert decode_command('{"cmd":"register"}') == RegisterCommand()
    assert decode_command('{"cmd":"stop"}') == StopCommand()
    with pytest.raises(ProtocolError, match="unknown cmd 'reboot'"):
        decode_command('{"cmd":"reboot"}')
    with pytest.raises(ProtocolError, match="generation must be an integer"):
        decode_command(json.dumps({"cmd": "rules", "spec": spec.to_json()}))
    with pytest.raises(ProtocolError, match="not JSON"):
        decode_command("{cmd")


def test_a_rules_offer_carries_its_generation() -> None:
    assert RulesOffer.decode(RulesOffer(41).encode()) == RulesOffer(41)
    assert RulesOffer.decode(b'{"cmd": "rules", "generation": 41}').generation == 41
    with pytest.raises(ProtocolError, match="rules offer: generation"):
        RulesOffer.decode(b'{"cmd": "rules"}')


EVENT = Event(3, _slowpath.DROP, 0, 4, 17, 40000, 53, 1, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), "evil.test")

# One of each message type, as a worker writes it (the JSON is the contract, written out here).
WIRE = {
    MessageType.READY: ('{"type":"ready","zerocopy":true,"generation":2,"compiles":0}', Ready(True, 2, 0)),
    MessageType.REPORT: ('{"type":"report","generation":2,"stats":{"rx":5},"hits":[[0,1]],"events":'
                         f'[[3,{_slowpath.DROP},0,4,17,40000,53,1,"c0000201","c0000202","evil.test"]]}}',
                         Report(2, {"rx": 5}, [(0, 1)], [EVENT])),
    MessageType.RETIRED: ('{"type":"retired","generation":1,"hits":[[0,7]]}', Retired(1, [(0, 7)])),
    MessageType.RULES_APPLIED: ('{"type":"rules_applied","generation":2}', RulesApplied(2)),
    MessageType.REGISTERED: ('{"type":"registered"}', Registered()),
    MessageType.EXITING: ('{"type":"exiting","signal":"SIGTERM"}', Exiting("SIGTERM")),
    MessageType.ERROR: ('{"type":"error","message":"rules: bad","fatal":true}', Error("rules: bad", fatal=True)),
}


def test_a_message_of_each_type_decodes_and_round_trips() -> None:
    assert set(WIRE) == set(MessageType), "a message type without a sample here"
    for kind, (line, message) in WIRE.items():
        assert message.type is kind
        assert decode_message(line) == message
        encoded = encode_message(message)
        assert encoded.endswith("\n") and encoded.count("\n") == 1
        assert decode_message(encoded) == message
        assert json.loads(encoded)["type"] == kind.value


def test_a_malformed_message_is_an_error_naming_what_is_wrong() -> None:
    with pytest.raises(ProtocolError, match="unknown type 'hello'"):
        decode_message('{"type":"hello"}')
    with pytest.raises(ProtocolError, match="rules_applied message: generation must be an integer"):
        decode_message('{"type":"rules_applied","generation":"2"}')
    with pytest.raises(ProtocolError, match="report message: hits"):
        decode_message('{"type":"report","generation":2,"stats":{},"hits":null}')
    with pytest.raises(ProtocolError, match="event: expected a list of 11 fields"):
        decode_message('{"type":"report","generation":2,"stats":{},"hits":[],"events":[[1,2,3]]}')
    with pytest.raises(ProtocolError, match="event: bad address"):
        decode_message('{"type":"report","generation":2,"stats":{},"hits":[],"events":'
                       '[[3,0,0,4,17,1,53,1,"zz","c0000202","x"]]}')
    with pytest.raises(ProtocolError, match="expected a JSON object"):
        decode_message("[1, 2]")


def test_an_event_is_built_from_the_extensions_record() -> None:
    record = (None, _slowpath.REFUSE, 1, 6, 17, 5353, 53, 0, bytes(16), bytes(15) + b"\x01", "")
    event = Event.from_native(record)
    assert (event.rule, event.malformed, event.ip_version, event.daddr[-1]) == (None, 1, 6, 1)
    assert Event.from_json(json.loads(json.dumps(event.to_json()))) == event
    with pytest.raises(ProtocolError, match="event record: 10 fields, expected 11"):
        Event.from_native(record[:10])


def test_protocol_is_the_only_definition() -> None:
    """Nothing else in the slow path spells the control block's offsets or the wire's keys."""
    import inspect

    from hyperion.slowpath import supervisor, worker
    for module in (worker, supervisor):
        source = inspect.getsource(module)
        for needle in ('"type":', '"cmd":', "json.dumps(", "json.loads(", ".offset", ".hex()"):
            assert needle not in source, f"{module.__name__} spells {needle!r}: use hyperion.slowpath.protocol"
    assert protocol.ControlLayout is ControlLayout
