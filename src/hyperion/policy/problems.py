"""How policy errors quote what the author wrote: shared by the model's validators and the loader.

A problem is a (location, message) pair; the location is a field path relative to the object
that was checked, joined into ``slow_path.dns_rules[3].ttl`` when the error is reported.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping

MAX_SHOWN = 60  # longest repr of a bad value quoted in an error line

# A location (keys and list indexes) and what is wrong there.
Location = tuple[str | int, ...]
Problem = tuple[Location, str]

# Bounded repr for containers: an aliased value can be a DAG of 10^9 leaves.
_REPR = reprlib.Repr()


_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 6, 6


_REPR.maxstring, _REPR.maxother, _REPR.maxlong = MAX_SHOWN, MAX_SHOWN, MAX_SHOWN


class ProblemListError(ValueError):
    """Problems found by a cross-field check, each at a path relative to the checked object.

    Pydantic keeps the raised ValueError in the error context, which lets a model-level
    validator report ``[2]`` or ``ttl`` instead of only the model's own location.
    """

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


def show_value(value: object) -> str:
    """repr() of a user value, truncated so one error line stays readable."""
    text = _REPR.repr(value) if isinstance(value, list | tuple | dict | set | frozenset) else repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def kind_of(value: object) -> str:
    """Name a YAML value's type the way a policy author would, with its article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"
