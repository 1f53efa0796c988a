"""Type stub of the C extension (native/seccomp/seccomp.c)."""

from collections.abc import Sequence

Rule = tuple[str, int | None, tuple[int, int, int] | None]

def load(rules: Sequence[Rule], default_errno: int | None, /) -> None: ...
