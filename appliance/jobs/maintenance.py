"""The ``maintenance`` job: statistics, bloated indexes, partitions ahead,
retention by partition. The work is in ``appliance.maintenance``.
"""
from __future__ import annotations

from ..maintenance import maintain


def run(rt, run_id, report, **params) -> dict:
    return maintain(rt, run_id, report, **params)
