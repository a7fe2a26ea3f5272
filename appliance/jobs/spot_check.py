"""The ``spot_check`` job: stored closes against a second source. The work is in
``appliance.spotcheck``.
"""
from __future__ import annotations

from ..spotcheck import spot_check


def run(rt, run_id, report, **params) -> dict:
    return spot_check(rt, run_id, report, **params)
