"""Logging set-up. Kept apart from ``runtime`` on purpose: the CLI calls it
before every command, and importing ``runtime`` would import psycopg in the
gunicorn master, before the gevent workers patch the standard library (see
``web.server.cooperative_psycopg``)."""
from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("APPLIANCE_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
