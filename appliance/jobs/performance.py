"""The ``performance_review`` job: growth, slow queries, sizes. The work is in
``appliance.performance``.
"""
from __future__ import annotations

from ..performance import review


def run(rt, run_id, report, **params) -> dict:
    return review(rt, run_id, report, **params)
