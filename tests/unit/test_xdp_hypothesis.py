"""The reference classifier (tests/support/reference_classifier.py) against the hand-written
fixture table in tests/support/xdp_cases.py, so the fuzzer's oracle is itself checked (no root).

The fuzzing of the XDP program against this reference: tests/kernel/test_xdp_hypothesis.py.
"""

from __future__ import annotations

import pytest

from hyperion.policy.loading import parse_policy
from tests.support import xdp_cases as fixtures
from tests.support.reference_classifier import (
    ReferenceFastPath,
)


@pytest.mark.parametrize("case", fixtures.CASES, ids=[c.description for c in fixtures.CASES])
def test_reference_agrees_with_the_hand_written_fixtures(case: fixtures.Case) -> None:
    """The reference is checked against the fixture table, not only against the program."""
    reference = ReferenceFastPath(parse_policy(fixtures.POLICY))
    assert reference.judge(fixtures.raw_bytes(case.packet)) == (case.verdict, case.reason)
