"""Failure injection: `hyperion chaos SCENARIO` runs a fault against a live daemon under steady
traffic and measures what happened.

Each scenario builds its own sandbox (client and host namespaces over a veth
pair), starts `hyperion run` on the host side (as hyperion.lab.chaosdaemon: its workers have
the fault hook) with a policy redirecting
udp/5300 to the slow path (on_failure as asked), and sends two paced UDP flows
from the client: one to the redirected class, one to a port the fast path
passes (udp/5400). A second in, it injects the fault, and reports:
- detection: time from injection to the watchdog's first transition, and why;
- recovery: time from injection until the queue was active again;
- for each flow, datagrams sent, received and lost, and the longest outage;
- whether inspection resumed (the queue's worker received packets after recovery);
- the final state and every transition.
The tests run the same scenarios and assert their documented outcomes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyperion.daemon import control
from hyperion.errors import HyperionError
from hyperion.fastpath.program import FastPath
from hyperion.lab.sandbox import CLIENT_V4, HOST_V4, Sandbox, entered_netns
from hyperion.slowpath.telemetry import QueueStatus
from hyperion.slowpath.watchdog import QueueAction, TransitionRecord

CLASS_PORT = 5300     # redirected to the slow path
PLAIN_PORT = 5400     # passed by the fast path
INJECT_AFTER = 1.0    # seconds of steady traffic before the fault

SCENARIOS: dict[str, str] = {
    "sigterm": "the worker gets SIGTERM from outside: it exits cleanly, unasked",
    "sigkill": "the worker is killed (SIGKILL)",
    "sigstop": "the worker is stopped (SIGSTOP) and continued (SIGCONT) 1 s later",
    "sigstop_brief": "the worker is stopped for 100 ms, less than the deadline, then continued",
    "fill_starvation": "the worker stops refilling its fill ring (fault hook, SIGUSR1)",
    "xsk_map_delete": "the queue's xsk_map entry is deleted behind the daemon's back",
    "steering_withdraw": "the operator withdraws queue 1 from steering (ethtool -L), restores it after 1 s",
    "umem_rebind": "the operator asks for a live re-bind: fresh worker, socket and UMEM on the queue",
    "overload": "a live-frames flood on the redirected class, far above what the slow path inspects",
}


class ChaosError(HyperionError):
    """A scenario could not be set up or run."""


@dataclass
class FlowResult:
    sent: int
    received: int
    longest_outage_ms: float

    @property
    def lost(self) -> int:
        return self.sent - self.received


@dataclass
class ScenarioResult:
    scenario: str
    description: str
    on_failure: str
    deadline_ms: float
    detected_ms: float | None
    detection: str | None
    recovered_ms: float | None
    final_state: str
    redirected: FlowResult
    plain: FlowResult
    inspection_resumed: bool
    fault_queue: int
    # Fast-path fallbacks taken during the run: "pass/queue_fenced", "drop/redirect_failed", ...
    fallbacks: dict[str, int] = field(default_factory=dict)
    transitions: list[TransitionRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["redirected"]["lost"] = self.redirected.lost
        data["plain"]["lost"] = self.plain.lost
        return data


def _policy(on_failure: str) -> str:
    return (f"fast_path:\n  redirect_ports:\n    - {{protocol: udp, port: {CLASS_PORT}, on_failure: {on_failure}}}\n")


class PacedFlow:
    """Numbered UDP datagrams from the client to one port at a fixed rate; the receiver (in the host
    namespace) records which arrived."""

    def __init__(self, sb: Sandbox, port: int, rate: int, duration: float) -> None:
        self.rate, self.duration, self.port = rate, duration, port
        with entered_netns(sb.host_ns):
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.rx.bind((HOST_V4, port))
        with entered_netns(sb.client_ns):
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.tx.bind((CLIENT_V4, 0))
        self.rx.settimeout(0.2)
        self.sent = 0
        self.arrived: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]

    def start(self) -> PacedFlow:
        for thread in self._threads:
            thread.start()
        return self

    def _send(self) -> None:
        interval = 1.0 / self.rate
        start = time.monotonic()
        total = int(self.rate * self.duration)  # bounded in count and time
        for seq in range(total):
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with contextlib.suppress(OSError):
                self.tx.sendto(seq.to_bytes(4, "big") + b"hyperion-chaos", (HOST_V4, self.port))
                self.sent += 1

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.rx.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if data.endswith(b"hyperion-chaos"):
                self.arrived.add(int.from_bytes(data[:4], "big"))

    def finish(self) -> FlowResult:
        self._threads[0].join(self.duration + 5)
        time.sleep(0.5)  # the last datagrams in flight
        self._stop.set()
        self._threads[1].join(2)
        self.rx.close()
        self.tx.close()
        missing_run = longest = 0
        for seq in range(self.sent):
            missing_run = 0 if seq in self.arrived else missing_run + 1
            longest = max(longest, missing_run)
        return FlowResult(self.sent, len(self.arrived & set(range(self.sent))), longest * 1000.0 / self.rate)


class DaemonUnderTest:
    """`hyperion run` in the host namespace, and its control socket."""

    def __init__(self, sb: Sandbox, policy: Path, deadline_ms: float, log_path: Path,
                 extra: Sequence[str] = ()) -> None:
        self.sb = sb
        self.log = log_path.open("w")
        # The product's daemon, its workers the lab's fault worker (SIGUSR1 starves the fill ring).
        argv = [sys.executable, "-m", "hyperion.lab.chaosdaemon", "--iface", sb.host_if, "--policy", str(policy),
                "--no-metrics", "--no-watch", "--watchdog-deadline", f"{deadline_ms:g}ms", *extra]
        self.proc = sb.popen(sb.host_ns, argv, stdout=self.log, stderr=subprocess.STDOUT)

    def queues(self) -> list[QueueStatus]:
        with entered_netns(self.sb.host_ns):
            return list(control.request(self.sb.host_if, {"cmd": "queues"}, timeout=5)["queues"])

    def request(self, action: QueueAction, queue: int | None = None) -> control.ControlReply:
        with entered_netns(self.sb.host_ns):
            return control.request(self.sb.host_if, {"cmd": action, "queue": queue}, timeout=20)

    def wait_active(self, timeout: float = 30.0) -> list[QueueStatus]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise ChaosError(f"the daemon exited ({self.proc.returncode}); see {self.log.name}")
            with contextlib.suppress(control.ControlError, OSError, ValueError):
                queues = self.queues()
                if queues and all(q["state"] == "active" for q in queues):
                    return queues
            time.sleep(0.1)
        raise ChaosError(f"queues not active within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class TransitionRecorder:
    """Polls the daemon's queue status and keeps every transition seen."""

    def __init__(self, daemon: DaemonUnderTest, interval: float = 0.02) -> None:
        self.daemon, self.interval = daemon, interval
        self.transitions: dict[tuple[int, float, str], TransitionRecord] = {}
        self.last: list[QueueStatus] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TransitionRecorder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        with contextlib.suppress(control.ControlError, OSError, ValueError):
            self.last = self.daemon.queues()
            for q in self.last:
                for t in q.get("transitions", []):
                    self.transitions[(t["queue"], t["time"], t["to_state"])] = t

    def stop(self) -> list[TransitionRecord]:
        self._stop.set()
        self._thread.join(2)
        self.poll()
        return sorted(self.transitions.values(), key=lambda t: t["time"])


def _worker_pid(queues: list[QueueStatus], queue: int) -> int:
    for q in queues:
        if q["queue"] == queue and q["descriptors"]["worker_pid"]:
            return int(q["descriptors"]["worker_pid"])
    raise ChaosError(f"queue {queue} has no worker")


def _fallback_counters(sb: Sandbox) -> dict[str, int]:
    with entered_netns(sb.host_ns), FastPath.open(sb.host_if) as fastpath:
        counters = fastpath.counters()
    return {f"{verdict}/{reason}": counters.get((verdict, reason), (0, 0))[0]
            for verdict in ("pass", "drop") for reason in ("queue_fenced", "redirect_failed")}


def _redirects(queues: list[QueueStatus]) -> int:
    return sum(int(q["redirect"].get("redirects", 0)) for q in queues)


def _inject(name: str, sb: Sandbox, daemon: DaemonUnderTest, queue: int, notes: list[str],
            effective: list[float]) -> Callable[[], None]:
    """Injects the fault; returns what to do after one more second (undo, if the scenario has one).
    When the fault takes hold later than the injection starts, the time it did is appended to effective."""
    queues = daemon.queues()
    nothing: Callable[[], None] = lambda: None  # noqa: E731
    if name in ("sigterm", "sigkill", "sigstop", "sigstop_brief", "fill_starvation"):
        pid = _worker_pid(queues, queue)
        sig = {"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL, "sigstop": signal.SIGSTOP,
               "sigstop_brief": signal.SIGSTOP, "fill_starvation": signal.SIGUSR1}[name]
        if name != "fill_starvation":
            os.kill(pid, sig)
        if name == "fill_starvation":
            # The fill ring still holds ring_size frames: a paced burst uses them up (paced, so that
            # it does not overflow the veth ring the other flows share), after which every datagram
            # of the redirected flow finds the fill ring empty.
            _flood(sb, notes, count=1024, chunks=5, started=effective, before=lambda: os.kill(pid, sig))
        if name == "sigstop_brief":
            time.sleep(0.1)
            os.kill(pid, signal.SIGCONT)
        if name == "sigstop":
            def resume() -> None:
                try:
                    os.kill(pid, signal.SIGCONT)
                    notes.append(f"SIGCONT sent to {pid}, which was still there")
                except ProcessLookupError:
                    notes.append(f"worker {pid} was already gone at SIGCONT (killed by the watchdog)")
            return resume
        return nothing
    if name == "xsk_map_delete":
        with entered_netns(sb.host_ns), FastPath.open(sb.host_if) as fastpath:
            fastpath.maps["xsk_map"].delete(queue.to_bytes(4, "little"))
        return nothing
    if name == "steering_withdraw":
        from hyperion.kernel.netdev import set_channels

        # veth with XDP wants at least as many RX queues as its peer has TX queues: the client
        # side goes first (on a NIC, the switch or RSS decides instead).
        with entered_netns(sb.client_ns):
            set_channels(sb.client_if, queue)
        answer = daemon.request(QueueAction.WITHDRAW, queue)
        notes.append(f"withdraw: channels {answer.get('was')} -> {answer.get('channels')}")

        def restore() -> None:
            notes.append(f"restore: channels -> {daemon.request(QueueAction.RESTORE).get('channels')}")
            # Steer traffic back only once the queue serves again, as an operator would: until
            # then it is fenced, and a fail-closed class would drop what reaches it.
            daemon.wait_active(timeout=10)
            with entered_netns(sb.client_ns):
                set_channels(sb.client_if, queue + 1)
        return restore
    if name == "umem_rebind":
        daemon.request(QueueAction.RESTART, queue)
        return nothing
    if name == "overload":
        drops_before = softnet_drops(), veth_rx_dropped(sb)
        flood = threading.Thread(target=_flood, args=(sb, notes, 3_000_000, effective), daemon=True)
        flood.start()

        def finish() -> None:
            flood.join(10)
            notes.append(f"kernel drops during the flood: softnet backlog {softnet_drops() - drops_before[0]}, "
                         f"host veth rx_dropped {veth_rx_dropped(sb) - drops_before[1]}")
        return finish
    raise ChaosError(f"unknown scenario {name!r}; one of: {', '.join(SCENARIOS)}")


def softnet_drops() -> int:
    """Packets the kernel dropped because a CPU's input backlog was full (all CPUs)."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f if line.strip())


def veth_rx_dropped(sb: Sandbox) -> int:
    out = sb.exec(sb.host_ns, ["ip", "-j", "-s", "link", "show", "dev", sb.host_if]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["dropped"])


def _flood(sb: Sandbox, notes: list[str], count: int = 3_000_000, started: list[float] | None = None,
           chunks: int = 1, before: Callable[[], None] | None = None) -> None:
    from hyperion.lab.generator import FrameSpec, Generator, build_frame

    with entered_netns(sb.client_ns):
        frame = build_frame(FrameSpec(CLIENT_V4, HOST_V4, sb.mac(sb.host_ns, sb.host_if),
                                      sb.mac(sb.client_ns, sb.client_if), dport=CLASS_PORT, sport=40001))
        with Generator(sb.client_if) as gen:
            if before is not None:
                before()  # the fault, once the generator is loaded
            if started is not None:
                started.append(time.time())
            sent, begin = 0, time.perf_counter()
            for _ in range(chunks):
                sent += gen.send([frame], count=count, duration=1.0).sent
            seconds = time.perf_counter() - begin
    notes.append(f"flood: {sent} frames in {seconds:.2f} s ({sent / seconds / 1e6:.2f} Mpps offered)")


def run_scenario(name: str, on_failure: str = "pass", rate: int = 500, duration: float = 4.0,
                 deadline_ms: float = 200.0, workdir: Path | None = None) -> ScenarioResult:
    if name not in SCENARIOS:
        raise ChaosError(f"unknown scenario {name!r}; one of: {', '.join(SCENARIOS)}")
    if on_failure not in ("pass", "drop"):
        raise ChaosError("on_failure must be pass or drop")
    queue = 1 if name == "steering_withdraw" else 0
    with contextlib.ExitStack() as stack:
        tmp = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hyp-chaos-")))
        sb = stack.enter_context(Sandbox(rx_queues=2 if name == "steering_withdraw" else 1))
        policy = tmp / "policy.yaml"
        policy.write_text(_policy(on_failure))
        daemon = DaemonUnderTest(sb, policy, deadline_ms, tmp / f"daemon-{name}.log")
        try:
            daemon.wait_active()
            # Traffic goes to queue 0 on this veth; for steering, the fault's queue is 1.
            flows = [PacedFlow(sb, port, rate, duration) for port in (CLASS_PORT, PLAIN_PORT)]
            recorder = TransitionRecorder(daemon).start()
            for flow in flows:
                flow.start()
            time.sleep(INJECT_AFTER)
            notes: list[str] = []
            counters_before = _fallback_counters(sb)
            injected_wall = time.time()
            effective: list[float] = []
            undo = _inject(name, sb, daemon, queue, notes, effective)
            time.sleep(1.0)
            undo()
            injected_wall = effective[0] if effective else injected_wall
            redirected, plain = (flow.finish() for flow in flows)
            counters_after = _fallback_counters(sb)
            # Inspection resumed: redirects into the queue's socket after the last transition.
            before = _redirects(daemon.queues())
            time.sleep(0.05)
            probe = PacedFlow(sb, CLASS_PORT, 200, 0.5).start()
            probe_result = probe.finish()
            resumed = _redirects(daemon.queues()) > before
            transitions = recorder.stop()
            final = recorder.last
        finally:
            daemon.stop()
    after = [t for t in transitions if t["time"] >= injected_wall - 0.001 and t["queue"] == queue]
    first = next((t for t in after if t["to_state"] in ("pressured", "degraded", "fenced")), None)
    recovered = next((t for t in after if first is not None and t["time"] >= first["time"]
                      and t["to_state"] == "active"), None)
    final_state = next((q["state"] for q in final if q["queue"] == queue), "unknown")
    if not resumed:
        notes.append(f"inspection probe: {probe_result.received}/{probe_result.sent} delivered, "
                     "none through the slow path")
    return ScenarioResult(
        scenario=name, description=SCENARIOS[name], on_failure=on_failure, deadline_ms=deadline_ms,
        detected_ms=None if first is None else round((first["time"] - injected_wall) * 1000, 1),
        detection=None if first is None else f"{first['to_state']} ({first['reason']})",
        recovered_ms=None if recovered is None else round((recovered["time"] - injected_wall) * 1000, 1),
        final_state=final_state, redirected=redirected, plain=plain, inspection_resumed=resumed,
        fault_queue=queue, transitions=after, notes=notes,
        fallbacks={key: counters_after.get(key, 0) - value for key, value in counters_before.items()
                   if counters_after.get(key, 0) - value},
    )


def markdown(results: Sequence[ScenarioResult]) -> str:
    lines = [
        "| scenario | on_failure | detected (ms) | as | recovered (ms) | final | redirected lost | "
        "longest outage (ms) | plain lost | inspection resumed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        def ms(value: float | None) -> str:
            return "—" if value is None else f"{value:.0f}"
        lines.append(
            f"| {r.scenario} | {r.on_failure} | {ms(r.detected_ms)} | {r.detection or 'no detection'} | "
            f"{ms(r.recovered_ms)} | {r.final_state} | {r.redirected.lost}/{r.redirected.sent} | "
            f"{r.redirected.longest_outage_ms:.0f} | {r.plain.lost}/{r.plain.sent} | "
            f"{'yes' if r.inspection_resumed else 'no'} |")
    notes = [f"- **{r.scenario}**: {'; '.join(r.notes)}" for r in results if r.notes]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    import logging

    level = logging.root.level
    logging.root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logging.root.setLevel(level)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="+", help=f"one or more of: {', '.join(SCENARIOS)}, or 'all'")
    parser.add_argument("--on-failure", choices=["pass", "drop", "both"], default="pass",
                        help="the redirected class's fallback (default pass; both: every scenario with each)")
    parser.add_argument("--rate", type=int, default=500, help="datagrams per second per flow (default 500)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of traffic (default 4)")
    parser.add_argument("--deadline", type=float, default=200.0, help="watchdog deadline in ms (default 200)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the results as a Markdown table")


def run_from_args(args: argparse.Namespace) -> int:
    names = list(SCENARIOS) if args.scenario == ["all"] else args.scenario
    for name in names:
        if name not in SCENARIOS:
            raise ChaosError(f"unknown scenario {name!r}; one of: {', '.join(SCENARIOS)}, all")
    if not 1 <= args.rate <= 20000 or not 2.5 <= args.duration <= 60:
        raise ChaosError("--rate must be 1..20000 and --duration 2.5..60 s")
    results, failed = [], []
    fallbacks = ["pass", "drop"] if args.on_failure == "both" else [args.on_failure]
    load_before = os.getloadavg()
    for on_failure in fallbacks:
        for name in names:
            print(f"chaos: {name} (on_failure {on_failure}): {SCENARIOS[name]} ...", file=sys.stderr, flush=True)
            try:
                results.append(run_scenario(name, on_failure, args.rate, args.duration, args.deadline))
            except HyperionError as exc:
                print(f"chaos: {name} could not run: {exc}", file=sys.stderr)
                failed.append(name)
    table = markdown(results)
    uname = os.uname()
    header = (f"Generated by `hyperion chaos {' '.join(args.scenario)} --on-failure {args.on_failure} "
              f"--rate {args.rate} --duration {args.duration:g} --deadline {args.deadline:g}` on "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {uname.release}, "
              f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before and "
              f"{os.getloadavg()[0]:.2f} after. Each flow: {args.rate} datagrams/s for {args.duration:g} s; "
              f"the fault {INJECT_AFTER:g} s in. Times in ms from the fault.\n\n")
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(header + table)
    return 2 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperion chaos", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        return run_from_args(parser.parse_args(argv))
    except HyperionError as exc:
        print(f"hyperion chaos: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
