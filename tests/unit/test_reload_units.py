"""The slow path's reload path without a kernel (issue 12, defects 5-7): compiling without the GIL,
shipping serialized databases to workers, bounded generations, bounded compiles, and a daemon
whose fast path and slow path switch together or not at all. Fakes stand in for workers and maps."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hyperion import _slowpath
from hyperion.daemon import daemon as daemon_module
from hyperion.errors import HyperionError, PolicyError, SlowPathError
from hyperion.policy.loading import parse_policy
from hyperion.slowpath.protocol import ControlLayout, Report, Retired, RulesApplied
from hyperion.slowpath.rules import compile_rules
from hyperion.slowpath.supervisor import ManagedQueue, SlowPath
from hyperion.slowpath.watchdog import QueueHealth, QueueStateMachine

# A DNS class for the DNS rules: a DNS rule no class sees is an error of its own.
DNS_CLASS = "fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"

# A DNS regex set that takes Hyperscan about a second to compile on this class of machine.
SLOW_REGEXES = [(i, rf"(?i)^[a-z0-9-]{{2,20}}\.x{i}[a-f0-9]{{4,12}}\.(com|net|org)$") for i in range(500)]


def _query(name: str) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying a DNS query for name (type A), built by hand."""
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    dns = bytes.fromhex("abcd01000001000000000000") + qname + b"\x00\x01\x00\x01"
    udp = (40000).to_bytes(2, "big") + (53).to_bytes(2, "big") + (8 + len(dns)).to_bytes(2, "big") + b"\0\0" + dns
    ip = bytes([0x45, 0, *(20 + len(udp)).to_bytes(2, "big"), 0, 0, 0, 0, 64, 17, 0, 0,
                192, 0, 2, 1, 192, 0, 2, 2])
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def test_a_big_regex_compile_leaves_other_threads_running() -> None:
    ticks: list[float] = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(ticks) < 2:  # the ticker runs
            assert time.monotonic() < deadline, "the ticker thread never ticked"
            time.sleep(0.005)
        start = time.monotonic()
        _slowpath.Rules([(0, 0, 0.0)] * len(SLOW_REGEXES), [], SLOW_REGEXES, [])
        took = time.monotonic() - start
    finally:
        done.set()
        thread.join()
    during = [t for t in ticks if start <= t <= start + took]
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert took > 0.3, f"the regex set compiled in {took:.2f} s: too fast to show anything"
    # With the GIL held for the whole compile the ticker stops for `took` seconds.
    assert max(gaps) < took / 2, f"longest pause of the other thread {max(gaps):.2f} s of {took:.2f} s"
    assert len(during) >= took / 0.01 / 10


def test_workers_build_rules_from_the_serialized_databases_without_compiling() -> None:
    from hyperion.slowpath.protocol import decode_rules, encode_rules
    from hyperion.slowpath.worker import Worker

    text = DNS_CLASS + "slow_path:\n  dns_rules:\n" + "".join(
        f"    - {{regex: '^x{i}-[a-f0-9]{{4,12}}\\.(com|net)$', action: drop}}\n" for i in range(200))
    text += ("    - {match: 'evil.test', action: nxdomain}\n  signatures:\n"
             "    - {class: {protocol: udp, port: 53}, literal: 'zzz', action: alert}\n")
    compiled = compile_rules(parse_policy(text))
    blob = encode_rules(7, compiled.spec, compiled.rules.serialize())
    before = _slowpath.compile_count()
    start = time.monotonic()
    command = decode_rules(blob)
    rules = Worker.compile(command)
    took = time.monotonic() - start
    assert _slowpath.compile_count() == before, "the worker compiled the databases again"
    assert command.generation == 7
    assert took < 0.5
    # evil.test's nxdomain rule runs in XDP: the worker has no such name rule.
    for name, rule, in_worker in (("x17-beef.com", 17, 17), ("x199-abcd.net", 199, 199), ("evil.test", 200, None),
                                  ("x17-.com", None, None), ("good.test", None, None)):
        assert rules.inspect(_query(name))["rule"] == in_worker, name
        assert compiled.rules.inspect(_query(name))["rule"] == rule, name


def test_a_corrupt_rules_blob_is_an_error_naming_it() -> None:
    from hyperion.slowpath.protocol import decode_rules, encode_rules

    compiled = compile_rules(parse_policy(DNS_CLASS + "slow_path:\n  dns_rules: [{regex: '^a+$', action: drop}]\n"))
    blob = bytearray(encode_rules(1, compiled.spec, compiled.rules.serialize()))
    with pytest.raises(ValueError, match="rules blob"):
        decode_rules(bytes(blob[:20]))
    with pytest.raises(ValueError, match="rules blob"):
        decode_rules(bytes(blob[:-1]))
    blob[-8:] = bytes(b ^ 0xFF for b in blob[-8:])  # inside the Hyperscan database
    with pytest.raises(ValueError, match="rules blob: checksum"):
        decode_rules(bytes(blob))


@pytest.mark.parametrize(("section", "text"), [
    ("slow_path.dns_rules", "slow_path:\n  dns_rules:\n" + "".join(
        f"    - {{regex: '^r{i}$', action: drop}}\n" for i in range(1001))),
    ("slow_path.signatures", "slow_path:\n  signatures:\n" + "".join(
        f"    - {{class: {{protocol: udp, port: 53}}, literal: 's{i}', action: drop}}\n" for i in range(1001))),
    ("slow_path", "slow_path:\n  dns_rules:\n" + "".join(
        f"    - {{regex: '^{'a' * 200}{i}$', action: drop}}\n" for i in range(700))),
])
def test_the_compile_is_bounded_at_validation(section: str, text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    message = str(caught.value)
    assert f"{section}:" in message and "at most" in message, message


# ---- the supervisor, with fake workers ------------------------------------------------------------------


class FakeFastPath:
    def __init__(self) -> None:
        self.states: list[tuple[int, str]] = []
        self.maps: dict[str, Any] = {}

    def set_queue_state(self, queue_id: int, state: str, reason: str, pid: int, restarts: int) -> None:
        self.states.append((queue_id, state))


class FakeWorker:
    """A worker that answers a rules offer at once (as the real one does over its channel)."""

    def __init__(self, slowpath: SlowPath, queue_id: int, generation: int, answers: bool = True) -> None:
        self.slowpath, self.queue_id, self.answers = slowpath, queue_id, answers
        self.generation = self.applied_generation = generation
        self.offered_generation = generation
        self.offered_at = 0.0
        self.live_hits: dict[int, list[tuple[int, int]]] = {generation: [(0, 1)]}
        self.report: dict[str, Any] | None = None
        self.pid = 4242

    def offer_rules(self, generation: int, blob: Any) -> bool:
        self.offered_generation, self.offered_at = generation, time.monotonic()
        if self.answers:
            old, self.generation = self.generation, generation
            self.slowpath._on_message(self.queue_id, self, RulesApplied(generation))  # type: ignore[arg-type]
            self.slowpath._on_message(self.queue_id, self, Retired(old, [(0, 1)]))  # type: ignore[arg-type]
            self.slowpath._on_message(self.queue_id, self, Report(generation, {}, [(0, 1)], []))  # type: ignore[arg-type]
        return True


def _supervisor(queues: int = 2, answers: bool = True) -> SlowPath:
    policy = parse_policy(DNS_CLASS + "slow_path:\n  dns_rules: [{match: 'evil.test', action: drop}]\n")
    sp = SlowPath(FakeFastPath(), "lo", policy)  # type: ignore[arg-type]
    sp.options.reload_deadline = 0.3
    sp.options.start_timeout = 0.5
    for q in range(queues):
        mq = ManagedQueue(q, q, QueueStateMachine(q))
        mq.machine.move("recovering", "starting")
        mq.machine.move("active", "ready")
        mq.worker = FakeWorker(sp, q, sp.generation, answers)  # type: ignore[assignment]
        sp.queues[q] = mq
    return sp


def test_retained_generations_stay_bounded_over_many_reloads() -> None:
    policy = parse_policy(DNS_CLASS + "slow_path:\n  dns_rules: [{match: 'evil.test', action: drop}]\n")
    idle = _supervisor(queues=0)
    for _ in range(20):
        idle.update(policy, compile_rules(policy))
    assert set(idle._rules_by_generation) == {21}  # no worker reports an older one
    sp = _supervisor()
    for _ in range(50):
        sp.update(policy, compile_rules(policy))
    assert sp.generation == 51
    # Only the generations a live worker still reports (here: the current one) are kept.
    assert set(sp._rules_by_generation) == {51}
    label = "slow_path.dns_rules[0] match=evil.test action=drop"
    # Every generation's hits survive: 1 per worker per generation, retired or live.
    assert sp.rule_hits()[label] == ("drop", 2 * 51)


def test_an_update_no_worker_acknowledges_fails_once_the_deadline_passes() -> None:
    sp = _supervisor(queues=1, answers=False)
    policy = parse_policy(DNS_CLASS + "slow_path:\n  dns_rules: [{match: 'other.test', action: drop}]\n")
    start = time.monotonic()
    with pytest.raises(SlowPathError, match="queue 0"):
        sp.update(policy, compile_rules(policy))
    assert time.monotonic() - start < 5


def test_an_update_does_not_hold_the_lifecycle_lock_while_a_worker_is_silent() -> None:
    sp = _supervisor(queues=1, answers=False)
    policy = parse_policy(DNS_CLASS + "slow_path:\n  dns_rules: [{match: 'other.test', action: drop}]\n")
    errors: list[BaseException] = []

    def reload() -> None:
        try:
            sp.update(policy, compile_rules(policy))
        except SlowPathError as exc:
            errors.append(exc)

    worker = sp.queues[0].worker
    assert isinstance(worker, FakeWorker)
    offered = worker.offered_generation
    thread = threading.Thread(target=reload)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while worker.offered_generation == offered:  # until update() waits for the worker's answer
            assert time.monotonic() < deadline, "update() never offered the rules"
            time.sleep(0.005)
        got = sp._lock.acquire(timeout=0.2)  # what the watchdog and /metrics need
        assert got, "update() holds the lifecycle lock while it waits for a worker"
        sp._lock.release()
        assert sp._data.acquire(timeout=0.2)
        sp._data.release()
    finally:
        thread.join(10)
    assert errors


# ---- the daemon: fast path and slow path switch together ------------------------------------------------


class FakeDaemonFastPath:
    def __init__(self) -> None:
        self.generation = 1
        self.applied: list[Any] = []

    def apply(self, compiled: Any) -> int:
        self.generation += 1
        self.applied.append(compiled)
        return self.generation

    def record_applied_policy(self, text: str) -> None:
        pass


class FailingSlowPath:
    started = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        FailingSlowPath.started += 1
        raise SlowPathError("queue 0: worker not ready: bind failed")

    def update(self, *args: Any) -> None:  # a dead supervisor takes anything
        pass

    def stop(self) -> None:
        pass


def test_a_failed_slowpath_start_is_not_kept_for_the_next_reload(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(daemon_module, "SlowPath", FailingSlowPath)
    d = daemon_module.Daemon(daemon_module.DaemonOptions("veth-x", tmp_path / "p.yaml"))
    fast = FakeDaemonFastPath()
    d.fastpath = fast  # type: ignore[assignment]
    # dns_name_rules: slow_path: a policy whose class needs the workers (XDP-only ones start none).
    policy = parse_policy("fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
                          "slow_path:\n  dns_name_rules: slow_path\n"
                          "  dns_rules: [{match: 'evil.test', action: drop}]\n")
    for attempt in (1, 2):
        with pytest.raises(HyperionError):
            d.apply_policy(policy, "text", compiled=object())  # type: ignore[arg-type]
        assert d.slowpath is None
        assert FailingSlowPath.started == attempt
        assert fast.applied == []  # the fast path did not switch without its slow path


class SilentProc:
    """A worker process that is alive and never reads its rules (killed by the watchdog)."""
    pid = 4343
    stdin = stdout = None

    def __init__(self) -> None:
        self.killed = False

    def poll(self) -> int | None:
        return -9 if self.killed else None

    def kill(self) -> None:
        self.killed = True

    def send_signal(self, signum: int) -> None:
        self.killed = True

    def wait(self, timeout: float | None = None) -> int:
        return -9


class BeatingControl:
    """A control block whose heartbeat is always fresh: the loop runs, only the rules are not taken."""

    def __getitem__(self, item: slice) -> bytes:
        return bytes(ControlLayout(heartbeat_ns=time.monotonic_ns()))[item]

    def close(self) -> None:
        pass


class DeletingMap:
    def __init__(self) -> None:
        self.deleted: list[bytes] = []

    def delete(self, key: bytes) -> None:
        self.deleted.append(key)


def test_the_watchdog_replaces_a_worker_that_does_not_acknowledge_new_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperion.slowpath import supervisor as slowpath_module

    monkeypatch.setattr(slowpath_module, "descriptor_convergence", lambda *a: "no driver counters")
    sp = _supervisor(queues=0)
    fast: Any = sp.fastpath
    fast.maps["xsk_map"] = DeletingMap()
    fast.queue_counter = lambda queue: {}
    sp.watchdog.channels = 1
    sp.watchdog._last_steering_check = time.monotonic() + 3600
    mq = ManagedQueue(0, 0, QueueStateMachine(0))
    mq.machine.move("recovering", "starting")
    mq.machine.move("active", "ready")
    worker = slowpath_module.WorkerProcess(SilentProc(), BeatingControl(), time.monotonic(),  # type: ignore[arg-type]
                                           applied_generation=1, offered_generation=1)
    worker.ready.set()
    mq.worker, mq.health = worker, QueueHealth(sp.options.deadline)
    sp.queues[0] = mq
    spawned: list[int] = []

    def spawn(q: ManagedQueue) -> Any:
        spawned.append(sp.generation)
        fresh = slowpath_module.WorkerProcess(SilentProc(), BeatingControl(), time.monotonic(),  # type: ignore[arg-type]
                                              applied_generation=sp.generation, offered_generation=sp.generation)
        fresh.ready.set()
        return fresh

    monkeypatch.setattr(sp, "_spawn", spawn)
    policy = parse_policy(DNS_CLASS + "slow_path:\n  dns_rules: [{match: 'other.test', action: drop}]\n")
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sp.update(policy, compile_rules(policy))))
    thread.start()
    # The watchdog's ticks, from this thread: healthy until the reload deadline passes, then fenced
    # (update() returns: no worker serves older rules) and restarted with the new rules.
    end = time.monotonic() + 10
    while (thread.is_alive() or mq.machine.state != "active") and time.monotonic() < end:
        with sp._lock:
            sp.watchdog.check(mq)
        time.sleep(0.02)
    thread.join(5)
    assert result == [2], "update() did not return once the replacement held the new rules"
    fences = [(t.to_state, t.reason) for t in mq.machine.history if t.to_state == "fenced"]
    assert fences == [("fenced", "rules_not_applied")]
    assert worker.proc.killed and worker.offered_generation == 2  # type: ignore[attr-defined]
    assert spawned == [2] and mq.machine.state == "active" and mq.worker is not None
    assert mq.worker.applied_generation == 2
    assert fast.maps["xsk_map"].deleted == [(0).to_bytes(4, "little")]


class StubbornSlowPath:
    """A running slow path whose queues do not take the first update offered."""

    def __init__(self, rules: Any) -> None:
        self.rules = rules
        self.updates: list[Any] = []

    def update(self, policy: Any, rules: Any) -> int:
        self.updates.append(rules)
        if len(self.updates) == 1:
            raise SlowPathError("rules generation 2 not taken within 17.2 s by queue 0")
        self.rules = rules
        return len(self.updates) + 1


def test_a_slow_path_that_does_not_take_the_rules_keeps_the_running_policy(tmp_path: Path) -> None:
    d = daemon_module.Daemon(daemon_module.DaemonOptions("veth-x", tmp_path / "p.yaml"))
    fast = FakeDaemonFastPath()
    d.fastpath = fast  # type: ignore[assignment]
    running = parse_policy("fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
                           "slow_path:\n  dns_rules: [{match: 'evil.test', action: drop}]\n")
    running_rules = compile_rules(running)
    d.policy = running
    stubborn = StubbornSlowPath(running_rules)
    d.slowpath = stubborn  # type: ignore[assignment]
    new = parse_policy("fast_path:\n  redirect_ports: [{protocol: udp, port: 53}]\n"
                       "slow_path:\n  dns_rules: [{match: 'other.test', action: drop}]\n")
    new_rules = compile_rules(new)
    with pytest.raises(SlowPathError, match="queue 0"):
        d.apply_policy(new, "text", compiled=object(), rules=new_rules)  # type: ignore[arg-type]
    assert fast.applied == []                               # the fast path kept the running policy
    assert stubborn.updates == [new_rules, running_rules]   # and the slow path was given its rules back
    assert d.policy is running and d.slowpath is stubborn  # type: ignore[comparison-overlap]
