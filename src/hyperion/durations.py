"""Human-friendly durations ("10m", "1h30m", "500ms") for policy TTLs and CLI options.

Kept separate from the policy module because the CLI and the block-list expiry code
need the same parsing and display rules.
"""

from __future__ import annotations

import math
import re

__all__ = ["MAX_DURATION_SECONDS", "format_duration", "parse_duration"]

# The longest duration accepted (100 years): expiries are u64 nanoseconds on CLOCK_BOOTTIME, and
# the slow path converts a TTL to nanoseconds in C, where a larger double would not fit.
MAX_DURATION_SECONDS = 100 * 365 * 86400.0

_UNIT_SECONDS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_COMPONENT = re.compile(rf"({_NUMBER})(ms|s|m|h|d)", re.IGNORECASE | re.ASCII)
# One or more number+unit components, optionally separated by spaces ("1h30m", "1h 30m").
_COMPOUND = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d)\s*)+", re.IGNORECASE | re.ASCII)
_PLAIN = re.compile(_NUMBER, re.ASCII)

_HINT = "expected seconds (e.g. 45) or a duration like '30s', '10m', '1h30m', '2d', '500ms'"


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` in seconds; plain numbers are seconds, strings may carry units.

    Raises ValueError (never TypeError) so pydantic validators can use it directly.
    """
    if isinstance(value, bool):  # bool is an int subclass; `ttl: yes` is a mistake
        raise ValueError(f"invalid duration {_shown(value)}: {_HINT}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float: too long (or too negative)
            seconds = 2 * MAX_DURATION_SECONDS if value > 0 else -1.0
    elif isinstance(value, str):
        seconds = _parse_string(value)
        if seconds == math.inf:  # digits beyond any float: too long
            seconds = 2 * MAX_DURATION_SECONDS
    else:
        raise ValueError(f"invalid duration {_shown(value)}: {_HINT}")
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {_shown(value)}: must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError(f"invalid duration {_shown(value)}: must be greater than zero")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"invalid duration {_shown(value)}: longer than the longest allowed, "
                         f"{format_duration(MAX_DURATION_SECONDS)} (100 years)")
    return seconds


def _shown(value: object) -> str:
    """repr() of the value, shortened: a 400-digit TTL should not make a 400-character error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_string(value: str) -> float:
    text = value.strip()
    if not text:
        raise ValueError(f"invalid duration {_shown(value)}: empty; {_HINT}")
    if text.startswith("-"):
        raise ValueError(f"invalid duration {_shown(value)}: must be greater than zero")
    if _PLAIN.fullmatch(text):
        return float(text)
    if _COMPOUND.fullmatch(text):
        return sum(
            float(number) * _UNIT_SECONDS[unit.lower()] for number, unit in _COMPONENT.findall(text)
        )
    raise ValueError(f"invalid duration {_shown(value)}: {_HINT}")


def format_duration(seconds: float) -> str:
    """Render seconds compactly ("10m", "1h30m", "2.5s", "500ms"); parse_duration reads it back.

    Values are rounded to whole milliseconds except below one millisecond.
    """
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    total_ms = round(seconds * 1000)
    if total_ms == 0:
        return f"{seconds * 1000:g}ms"
    if total_ms < 1000:
        return f"{total_ms}ms"
    whole, ms = divmod(total_ms, 1000)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if ms:
        parts.append(f"{secs}.{ms:03d}".rstrip("0") + "s")
    elif secs:
        parts.append(f"{secs}s")
    return "".join(parts)
