"""`hyperion top` from fabricated snapshots: exact rates, resets, rendering and the live loop, no kernel needed."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Callable, Iterator

import pytest
from rich.console import Console

from hyperion.cli.top import Snapshot, human, rates, render, run_top
from hyperion.errors import NotAttachedError


def snap(taken_at: float = 10.0, **changes: object) -> Snapshot:
    base = Snapshot(
        taken_at=taken_at,
        interface="eth0",
        mode="enforce",
        policy_generation=7,
        counters={("pass", "no_match"): (1_000, 1_500_000), ("drop", "blocklist_ip"): (100, 6_400)},
        classes={"udp/53": {"redirected": 40, "failed": 0}},
        queues={0: {"packets": 1_100, "drops": 100, "redirects": 40, "redirect_failures": 0}},
        maps={"blocklist_v4": (950, 1_000), "flows": (10, 1_000)},
        events={"emitted": 20, "suppressed": 4, "ring_full": 0},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def later() -> Snapshot:
    """2.0 s after snap(): 500 more blocklist drops, 2000 more passes, a new redirect counter, a failing class."""
    return snap(
        12.0,
        counters={
            ("pass", "no_match"): (3_000, 4_500_000),
            ("drop", "blocklist_ip"): (600, 38_400),
            ("redirect", "class_match"): (80, 8_000),
        },
        classes={"udp/53": {"redirected": 120, "failed": 7}},
        queues={0: {"packets": 3_680, "drops": 600, "redirects": 120, "redirect_failures": 7}},
        events={"emitted": 30, "suppressed": 4, "ring_full": 3},
    )


def rows(text: str) -> list[list[str]]:
    """The body rows of every table in rendered text, as lists of cells."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def row(text: str, first: str) -> list[str]:
    """The first table row whose first cell is first."""
    return next(cells for cells in rows(text) if cells[0] == first)


def text_of(renderable: object, styles: bool = False) -> str:
    console = Console(record=True, width=140, file=io.StringIO(), force_terminal=True, color_system="standard")
    console.print(renderable)
    return console.export_text(styles=styles)


def test_rates_are_exact_per_second_differences() -> None:
    r = rates(snap(), later())
    assert r.seconds == 2.0
    assert r.counters[("drop", "blocklist_ip")] == (250.0, 16_000.0)
    assert r.counters[("pass", "no_match")] == (1_000.0, 1_500_000.0)
    assert r.packets_per_s == 1_000.0 + 250.0 + 40.0
    assert r.bits_per_s == 8 * (1_500_000.0 + 16_000.0 + 4_000.0)
    assert r.drops_per_s == 250.0
    assert r.redirects_per_s == 40.0
    assert r.classes["udp/53"] == {"redirected": 40.0, "failed": 3.5}
    assert r.queues[0] == {"packets": 1_290.0, "drops": 250.0, "redirects": 40.0, "redirect_failures": 3.5}
    assert r.events == {"emitted": 5.0, "suppressed": 0.0, "ring_full": 1.5}
    assert not r.reset


def test_new_counter_counts_from_zero() -> None:
    assert rates(snap(), later()).counters[("redirect", "class_match")] == (40.0, 4_000.0)


def test_counter_that_went_down_is_zero_and_flags_reset() -> None:
    reattached = snap(12.0, counters={("pass", "no_match"): (10, 600), ("drop", "blocklist_ip"): (300, 19_200)})
    r = rates(snap(), reattached)
    assert r.counters[("pass", "no_match")] == (0.0, 0.0)
    assert r.counters[("drop", "blocklist_ip")] == (100.0, 6_400.0)
    assert r.reset
    assert all(pps >= 0 and bps >= 0 for pps, bps in r.counters.values())


@pytest.mark.parametrize(
    "changes",
    [
        {"queues": {0: {"packets": 5, "drops": 0, "redirects": 0, "redirect_failures": 0}}},
        {"queues": {}},  # a queue with non-zero counters vanished
        {"classes": {"udp/53": {"redirected": 1, "failed": 0}}},
        {"events": {"emitted": 0, "suppressed": 4, "ring_full": 0}},
    ],
)
def test_reset_is_detected_in_every_table(changes: dict[str, object]) -> None:
    assert rates(snap(), snap(11.0, **changes)).reset


def test_rates_need_time_to_advance() -> None:
    with pytest.raises(ValueError, match="time order"):
        rates(snap(), snap())


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (0.5, "0.5"), (3.5, "3.5"), (250.0, "250"), (999, "999"), (999.7, "1.0k"), (35_400, "35.4k"),
     (999_949, "999.9k"), (999_990, "1.0M"), (1_234_567, "1.2M"), (12e9, "12.0G")],
)
def test_human(value: float, text: str) -> None:
    assert human(value) == text


def test_render_shows_rows_rates_and_totals() -> None:
    out = text_of(render(later(), rates(snap(), later())))
    header = out.splitlines()[0]
    assert "eth0" in header and "enforce" in header and "policy gen 7" in header
    assert "1.3k pkt/s" in header and "12.2 Mbit/s" in header and "drop 250 pkt/s" in header
    # sorted by rate, descending: pass (1000/s), drop (250/s), redirect (40/s)
    assert rows(out)[:3] == [
        ["pass", "no_match", "1.0k", "3.0k"],
        ["drop", "blocklist_ip", "250", "600"],
        ["redirect", "class_match", "40", "80"],
    ]
    assert row(out, "udp/53") == ["udp/53", "40", "3.5", "7"]
    assert row(out, "0") == ["0", "1.3k", "250", "40", "3.5"]
    assert row(out, "blocklist_v4") == ["blocklist_v4", "950", "1,000", "95.0%"]
    assert row(out, "flows") == ["flows", "10", "1,000", "1.0%"]
    assert "emitted 5/s" in out and "suppressed 0/s" in out and "ring_full 3" in out
    assert "counters reset" not in out


def test_render_highlights_failures_and_full_maps() -> None:
    styled = text_of(render(later(), rates(snap(), later())), styles=True)

    def highlighted(cell: str) -> list[str]:
        return re.findall(rf"\x1b\[1;31m *{re.escape(cell)}\x1b\[0m", styled)

    assert len(highlighted("95.0%")) == 1
    assert not highlighted("1.0%")
    assert len(highlighted("3.5")) == 2  # udp/53 failed/s and queue 0 redirect-fail/s
    assert len(highlighted("7")) == 1  # udp/53 total failed
    assert len(highlighted("3")) == 1  # ring_full


def test_render_hides_zero_counters_and_first_frame_has_no_rates() -> None:
    cur = snap(counters={("pass", "no_match"): (1_000, 1_500_000), ("drop", "bad_ihl"): (0, 0)}, mode=None)
    out = text_of(render(cur, None))
    assert "bad_ihl" not in out
    assert "no policy" in out
    assert "- pkt/s" in out and "- Mbit/s" in out and "total 1.0k packets" in out
    assert rows(out)[0] == ["pass", "no_match", "-", "1.0k"]
    assert row(out, "udp/53") == ["udp/53", "-", "-", "0"]
    assert row(out, "0") == ["0", "-", "-", "-", "-"]


def test_render_flags_reset() -> None:
    reattached = snap(12.0, counters={("pass", "no_match"): (10, 600)})
    assert "counters reset" in text_of(render(reattached, rates(snap(), reattached)))


def snapshots(*items: Snapshot | BaseException) -> Callable[[], Snapshot]:
    """A snapshot function returning (or raising) items in turn."""
    feed: Iterator[Snapshot | BaseException] = iter(items)

    def take() -> Snapshot:
        item = next(feed)
        if isinstance(item, BaseException):
            raise item
        return item

    return take


def recording_console() -> Console:
    return Console(record=True, width=140, file=io.StringIO(), force_terminal=True)


def test_run_top_once_prints_one_frame() -> None:
    console = recording_console()
    assert run_top(snapshots(snap(), later()), interval=0.01, once=True, console=console) == 0
    out = console.export_text()
    assert out.count("policy gen 7") == 1
    assert "blocklist_ip" in out and "250" in out


def test_run_top_once_lets_errors_propagate() -> None:
    with pytest.raises(NotAttachedError):
        run_top(snapshots(snap(), NotAttachedError("eth0 is not attached")), interval=0.01, once=True,
                console=recording_console())


def test_run_top_live_survives_errors_until_ctrl_c() -> None:
    console = recording_console()
    take = snapshots(NotAttachedError("no Hyperion state for eth0"), later(), KeyboardInterrupt())
    assert run_top(take, interval=0.01, console=console) == 0
    out = console.export_text()
    assert "fast path unavailable: no Hyperion state for eth0" in out
    assert "retrying every 0.01s" in out
    assert "policy gen 7" in out  # the frame after recovery, without rates since the error dropped prev


def test_run_top_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        run_top(snapshots(), interval=0)

