"""A streamed answer that holds a pooled connection (the historical bars and
the bulk endpoint)."""
from __future__ import annotations

import logging

log = logging.getLogger("appliance.api")


class Stream:
    """The body of a streamed answer that holds a pooled connection; the
    connection goes back to the pool when the server closes the body, whether
    it was sent whole, cut short by the client, or never iterated (HEAD)."""

    def __init__(self, gen, conn, cm, what: str):
        self.gen, self.conn, self.cm, self.what = gen, conn, cm, what
        self.finished = False
        self.failed = False
        self.closed = False

    def __iter__(self):
        try:
            yield from self.gen
            self.finished = True
            self.close()  # everything is sent: the connection goes back at once
        except Exception:
            # the status line is sent: stop, so that the server cuts the
            # connection and the client sees an incomplete answer
            self.failed = True
            log.exception("historical %s: failed while streaming", self.what)
            raise

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            self.gen.close()
            if not self.finished and not self.failed:
                self.conn.cancel_safe()  # stop a query the client no longer wants
        except Exception:  # noqa: BLE001
            pass
        try:
            if self.finished:
                self.cm.__exit__(None, None, None)
            else:
                err = RuntimeError("response not sent whole")
                self.cm.__exit__(RuntimeError, err, None)
        except Exception:  # noqa: BLE001
            pass
