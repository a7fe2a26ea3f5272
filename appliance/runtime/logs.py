"""Logging set-up. Kept apart from ``runtime`` on purpose: the CLI calls it
before every command, and importing ``runtime`` would import psycopg in the
gunicorn master, before the gevent workers patch the standard library (see
``web.server.cooperative_psycopg``)."""
from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler

from appliance.config.redaction import redact


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("APPLIANCE_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class RedactingFilter(logging.Filter):
    """Removes secrets (see ``redaction.redact``) from every record a handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's business
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A rotating log file that only its owner may read (0600, each new file
    after a rotation too), in a folder only its owner may enter (0700),
    whatever the umask: the log names addresses, symbols and job details."""

    def __init__(self, filename, *args, **kw):
        folder = os.path.dirname(os.path.abspath(filename))
        os.makedirs(folder, exist_ok=True)
        if os.stat(folder).st_mode & 0o777 != 0o700:
            try:
                os.chmod(folder, 0o700)
            except PermissionError:  # not ours (a shared mount): leave it
                logging.getLogger("appliance").warning("%s is not ours to chmod", folder)
        super().__init__(filename, *args, **kw)

    def _open(self):
        stream = super()._open()
        try:
            os.chmod(self.baseFilename, 0o600)
        except OSError:
            pass
        return stream
