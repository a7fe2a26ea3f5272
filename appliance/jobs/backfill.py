"""The ``backfill`` job: every configured symbol (or ``symbols``) up to the latest
completed session. The work is in ``appliance.backfill``.
"""
from __future__ import annotations

from ..backfill import run_backfill


def run(rt, run_id, report, **params) -> dict:
    return run_backfill(rt, run_id, report, **params)
