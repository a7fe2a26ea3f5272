"""Reliability scenarios: each test states what survived, in numbers.

``survived("…")`` records one line per scenario in the test's report; the
lines are printed at the end of the run (``reliability: what survived``, by
tests/conftest.py), so a CI log shows the figures, not only the pass marks.
"""
from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    # every scenario here is long (a thousand slow clients, PostgreSQL
    # restarts): ``slow`` keeps them out of ``make test-quick``, as documented
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def survived(request):
    def note(text: str) -> None:
        request.node.user_properties.append(("survived", text))
    return note
