"""`hyperion top`: a live terminal view of a running fast path.

The fast path only keeps cumulative counters, so every rate shown here is the
difference between two snapshots divided by the time between them. Snapshots
come from an injected callable, which keeps this module free of BPF and root:
the CLI passes a function reading the pinned maps, tests pass fabricated data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hyperion.errors import HyperionError

K = TypeVar("K", bound=Hashable)

FAILURE_STYLE = "bold red"
MAP_FULL_PERCENT = 90.0
VERDICT_STYLES = {
    "pass": "green",
    "drop": "red",
    "redirect": "cyan",
    "would_drop": "yellow",
    "would_redirect": "yellow",
    "answer": "magenta",  # a DNS rule's answer, sent back from XDP
    "would_answer": "yellow",
}
_SUFFIXES = ("k", "M", "G", "T")


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counters of one fast path at one instant."""

    taken_at: float                                        # time.monotonic() seconds
    interface: str
    mode: str | None                                       # "enforce" / "monitor" / None (no policy)
    policy_generation: int
    counters: Mapping[tuple[str, str], tuple[int, int]]    # (verdict, reason) -> (packets, bytes)
    classes: Mapping[str, Mapping[str, int]]               # "udp/53" -> {"redirected": n, "failed": n}
    queues: Mapping[int, Mapping[str, int]]                # rx queue -> {"packets", "drops", "redirects", ...}
    maps: Mapping[str, tuple[int, int]]                    # map name -> (entries, capacity)
    events: Mapping[str, int]                              # {"emitted", "suppressed", "ring_full"}


@dataclass(frozen=True)
class Rates:
    """Per-second rates between two snapshots, keyed like the later snapshot.

    reset is True when any counter went down (or a non-zero one vanished),
    e.g. because the fast path was re-attached; such counters show rate 0.
    """

    seconds: float
    counters: Mapping[tuple[str, str], tuple[float, float]]  # (verdict, reason) -> (packets/s, bytes/s)
    classes: Mapping[str, Mapping[str, float]]
    queues: Mapping[int, Mapping[str, float]]
    events: Mapping[str, float]
    packets_per_s: float
    bits_per_s: float
    drops_per_s: float
    redirects_per_s: float
    reset: bool


def _record_rates(prev: Mapping[str, int], cur: Mapping[str, int], seconds: float) -> tuple[dict[str, float], bool]:
    """Rates of one record of named counters; a missing earlier value counts from 0, a decrease is a reset."""
    reset = any(value > 0 for name, value in prev.items() if name not in cur)
    out: dict[str, float] = {}
    for name, value in cur.items():
        before = prev.get(name, 0)
        if value < before:
            reset = True
            out[name] = 0.0
        else:
            out[name] = (value - before) / seconds
    return out, reset


def _table_rates(
    prev: Mapping[K, Mapping[str, int]], cur: Mapping[K, Mapping[str, int]], seconds: float
) -> tuple[dict[K, dict[str, float]], bool]:
    """_record_rates for every row of cur; a row that vanished with non-zero counters is a reset too."""
    out: dict[K, dict[str, float]] = {}
    reset = any(value > 0 for key in prev.keys() - cur.keys() for value in prev[key].values())
    for key, record in cur.items():
        out[key], row_reset = _record_rates(prev.get(key, {}), record, seconds)
        reset = reset or row_reset
    return out, reset


def rates(prev: Snapshot, cur: Snapshot) -> Rates:
    """Per-second rates of every counter, class and queue between prev and cur (never negative)."""
    seconds = cur.taken_at - prev.taken_at
    if seconds <= 0:
        raise ValueError(f"snapshots are not in time order ({prev.taken_at} -> {cur.taken_at})")

    def as_records(counters: Mapping[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], dict[str, int]]:
        return {key: {"packets": packets, "bytes": size} for key, (packets, size) in counters.items()}

    counter_rates, counters_reset = _table_rates(as_records(prev.counters), as_records(cur.counters), seconds)
    class_rates, classes_reset = _table_rates(prev.classes, cur.classes, seconds)
    queue_rates, queues_reset = _table_rates(prev.queues, cur.queues, seconds)
    event_rates, events_reset = _record_rates(prev.events, cur.events, seconds)

    def verdict_pps(verdict: str) -> float:
        return sum(r["packets"] for (v, _), r in counter_rates.items() if v == verdict)

    return Rates(
        seconds=seconds,
        counters={key: (r["packets"], r["bytes"]) for key, r in counter_rates.items()},
        classes=class_rates,
        queues=queue_rates,
        events=event_rates,
        packets_per_s=sum(r["packets"] for r in counter_rates.values()),
        bits_per_s=8 * sum(r["bytes"] for r in counter_rates.values()),
        drops_per_s=verdict_pps("drop"),
        redirects_per_s=verdict_pps("redirect"),
        reset=counters_reset or classes_reset or queues_reset or events_reset,
    )


def human(value: float) -> str:
    """Compact number (1.2M, 35.4k, 250, 0.5) so columns stay narrow at line rate."""
    number, suffix = value, ""
    for bigger in _SUFFIXES:
        if abs(round(number, 1 if suffix else 0)) < 1000:  # would not print as 1000 in this unit
            break
        number, suffix = number / 1000, bigger
    if suffix:
        return f"{number:.1f}{suffix}"
    return f"{number:.0f}" if number == int(number) or abs(number) >= 100 else f"{number:.1f}"


def _rate(value: float | None) -> str:
    """A rate cell; "-" on the first frame, when there is no earlier snapshot yet."""
    return "-" if value is None else human(value)


def _failure(text: str, count: float | None) -> Text:
    """A cell highlighted when it counts failures."""
    return Text(text, style=FAILURE_STYLE if count else "")


def _header(cur: Snapshot, r: Rates | None) -> Text:
    total_packets = sum(packets for packets, _ in cur.counters.values())
    pps, drops, redirects = (None, None, None) if r is None else (r.packets_per_s, r.drops_per_s, r.redirects_per_s)
    header = Text.assemble(
        (cur.interface, "bold"),
        "  mode ",
        (cur.mode or "no policy", "bold"),
        f"  policy gen {cur.policy_generation}  |  {_rate(pps)} pkt/s  ",
        f"{'-' if r is None else f'{r.bits_per_s / 1e6:.1f}'} Mbit/s  drop ",
        (_rate(drops), "red"),
        f" pkt/s  redirect {_rate(redirects)} pkt/s  |  total {human(total_packets)} packets",
    )
    if r is not None and r.reset:
        header.append("  counters reset (fast path re-attached?)", style="yellow")
    return header


def _verdict_table(cur: Snapshot, r: Rates | None) -> Table:
    def pps(key: tuple[str, str]) -> float | None:
        return None if r is None else r.counters.get(key, (0.0, 0.0))[0]

    table = Table(title="verdicts", title_justify="left")
    for name in ("verdict", "reason", "pkt/s", "packets"):
        table.add_column(name, justify="left" if name in ("verdict", "reason") else "right")
    rows = [(key, packets) for key, (packets, _) in cur.counters.items() if packets]
    rows.sort(key=lambda row: (-(pps(row[0]) or 0.0), -row[1], row[0]))
    for (verdict, reason), packets in rows:
        table.add_row(Text(verdict, style=VERDICT_STYLES.get(verdict, "")), reason, _rate(pps((verdict, reason))),
                      human(packets))
    return table


def _class_table(cur: Snapshot, r: Rates | None) -> Table:
    table = Table(title="redirect classes", title_justify="left")
    table.add_column("class")
    for name in ("redirected/s", "failed/s", "total failed"):
        table.add_column(name, justify="right")
    for label, counts in sorted(cur.classes.items()):
        rate = None if r is None else r.classes.get(label, {})
        failed = counts.get("failed", 0)
        failed_rate = None if rate is None else rate.get("failed", 0.0)
        table.add_row(label, _rate(None if rate is None else rate.get("redirected", 0.0)),
                      _failure(_rate(failed_rate), failed_rate), _failure(human(failed), failed))
    return table


def _queue_table(cur: Snapshot, r: Rates | None) -> Table:
    table = Table(title="rx queues", title_justify="left")
    table.add_column("queue", justify="right")
    columns = {"pkt/s": "packets", "drop/s": "drops", "redirect/s": "redirects", "redirect-fail/s": "redirect_failures"}
    for name in columns:
        table.add_column(name, justify="right")
    for queue in sorted(cur.queues):
        rate = None if r is None else r.queues.get(queue, {})
        cells = [None if rate is None else rate.get(field, 0.0) for field in columns.values()]
        table.add_row(str(queue), *map(_rate, cells[:-1]), _failure(_rate(cells[-1]), cells[-1]))
    return table


def _map_table(cur: Snapshot) -> Table:
    table = Table(title="maps", title_justify="left")
    table.add_column("map")
    for name in ("entries", "capacity", "fill"):
        table.add_column(name, justify="right")
    for name, (entries, capacity) in sorted(cur.maps.items()):
        percent = 100.0 * entries / capacity if capacity else None
        fill = Text("-" if percent is None else f"{percent:.1f}%")
        if percent is not None and percent >= MAP_FULL_PERCENT:
            fill.stylize(FAILURE_STYLE)
        table.add_row(name, f"{entries:,}", f"{capacity:,}", fill)
    return table


def _events_line(cur: Snapshot, r: Rates | None) -> Text:
    ring_full = cur.events.get("ring_full", 0)
    return Text.assemble(
        "events  emitted ",
        _rate(None if r is None else r.events.get("emitted", 0.0)),
        "/s  suppressed ",
        _rate(None if r is None else r.events.get("suppressed", 0.0)),
        "/s  ring_full ",
        _failure(human(ring_full), ring_full),
    )


def render(cur: Snapshot, rates: Rates | None) -> RenderableType:
    """One frame of `hyperion top`; rates=None (first frame) shows totals only, "-" for rates."""
    return Group(
        _header(cur, rates),
        _verdict_table(cur, rates),
        _class_table(cur, rates),
        _queue_table(cur, rates),
        _map_table(cur),
        _events_line(cur, rates),
    )


def _error_view(error: HyperionError, interval: float) -> RenderableType:
    """Shown instead of a frame while the fast path cannot be read (e.g. detached), until it can again."""
    return Text.assemble(("fast path unavailable: ", FAILURE_STYLE), str(error),
                         f"\nretrying every {interval:g}s (Ctrl-C to quit)")


def _frame(prev: Snapshot | None, cur: Snapshot) -> RenderableType:
    """cur rendered with rates since prev; without an earlier snapshot (or time not advancing) totals only."""
    if prev is None or cur.taken_at <= prev.taken_at:
        return render(cur, None)
    return render(cur, rates(prev, cur))


def _next_frame(snapshot: Callable[[], Snapshot], prev: Snapshot | None,
                interval: float) -> tuple[Snapshot | None, RenderableType]:
    """Takes a snapshot and renders it against prev; after an error prev is dropped, so that
    counters of a re-attached fast path are never subtracted from the old one's."""
    try:
        cur = snapshot()
    except HyperionError as error:
        return None, _error_view(error, interval)
    return cur, _frame(prev, cur)


def run_top(snapshot: Callable[[], Snapshot], interval: float = 1.0, once: bool = False,
            console: Console | None = None) -> int:
    """Shows the fast path's rates every interval seconds until Ctrl-C, or one frame with once=True.

    With once=True a HyperionError from snapshot() propagates; otherwise it is shown and retried.
    """
    if interval <= 0:
        raise ValueError(f"interval must be positive, not {interval}")
    console = console or Console()
    if once:
        first = snapshot()
        time.sleep(interval)
        console.print(_frame(first, snapshot()))
        return 0
    last: Snapshot | None = None
    with Live(Text("reading the fast path..."), console=console, auto_refresh=False) as live:
        try:
            while True:
                deadline = time.monotonic() + interval
                last, frame = _next_frame(snapshot, last, interval)
                live.update(frame, refresh=True)
                time.sleep(max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            return 0
