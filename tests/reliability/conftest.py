"""Reliability scenarios: each test states what survived, in numbers.

``survived("…")`` records one line per scenario; the lines are printed at the
end of the run (``reliability: what survived``), so a CI log shows the
figures, not only the pass marks.
"""
from __future__ import annotations

from pathlib import Path

import pytest

_LINES: list[str] = []


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
        line = f"{request.node.name}: {text}"
        _LINES.append(line)
        request.node.user_properties.append(("survived", text))
    return note


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("reliability: what survived")
        for line in _LINES:
            terminalreporter.write_line(line)
