"""Many symbols' intraday bars read ahead (the bulk answer, the export): a
thread reads the stored sessions of each symbol in turn on the answer's
connection while the caller decodes and encodes the ones before
(``ops.arrowbars``), a bounded number of groups ahead."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing

import pyarrow as pa

from appliance.ops.arrowbars import Batches, symbol_batches
from appliance.store import adjustment
from appliance.store.columnar import kind_of, session_arrays


class _ReadAhead:
    """A thread that reads every symbol's stored sessions in turn on ``conn``
    (their adjustment steps first), in groups of about ``chunk`` bars, while
    the caller decodes and encodes the previous ones: PostgreSQL sends the
    arrays, psycopg receives them (the GIL released while it waits) and numpy
    and pyarrow work (also without the GIL) at the same time. It stays at
    most ``AHEAD`` groups ahead, so memory does not grow with the answer."""

    AHEAD = 2

    def __init__(self, conn, symbols: Sequence[str], timeframe: str, adjust: str,
                 params: dict, chunk: int):
        self.queue: queue.Queue = queue.Queue(self.AHEAD)
        self.stop = threading.Event()
        self.pending: tuple = ()
        self.thread = threading.Thread(
            target=self._read, args=(conn, symbols, timeframe, adjust, params, chunk),
            name="bars-read-ahead", daemon=True)
        self.thread.start()

    def _put(self, item: tuple) -> bool:
        """Hand ``item`` over; False when the reader is told to stop."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, conn, symbols, timeframe: str, adjust: str, params: dict,
              chunk: int) -> None:
        try:
            for sym in symbols:
                p = {**params, "symbol": sym}
                if not self._put(("symbol", sym, adjustment.steps(conn, sym, adjust,
                                                                  tz=p["tz"]))):
                    return
                group: list[tuple] = []
                n = 0
                # closed on the way out: a query stopped early is cancelled
                with closing(session_arrays(conn, timeframe, p)) as rows:
                    for row in rows:
                        group.append(row)
                        n += row[-1]  # its bars
                        if n >= chunk:
                            if not self._put(("rows", group)):
                                return
                            group, n = [], 0
                if group and not self._put(("rows", group)):
                    return
            self._put(("end",))
        except BaseException as e:  # noqa: BLE001 - raised again by the caller's thread
            self._put(("error", e))

    def next_symbol(self) -> tuple | None:
        """(symbol, steps) of the next symbol, None at the end."""
        item = self.pending or self.queue.get()
        self.pending = ()
        if item[0] == "error":
            raise item[1]
        return None if item[0] == "end" else item[1:]

    def rows(self) -> Iterator[tuple]:
        """The current symbol's sessions."""
        while True:
            item = self.queue.get()
            if item[0] != "rows":
                self.pending = item
                return
            yield from item[1]

    def close(self) -> None:
        """Stop the thread (its query cancelled) and wait for it: the
        connection is the caller's again."""
        self.stop.set()
        self.thread.join()


def read_ahead(conn, batches: Batches, symbols: Sequence[str], timeframe: str, *, adjust: str,
               include_invalid: bool, params: dict, chunk: int = 65536,
               keep=None) -> Iterator[pa.RecordBatch]:
    """Every symbol's bars in turn as ``symbol_batches`` gives them
    (``params`` without the symbol, no limit); intraday bars read by a
    ``_ReadAhead`` thread on ``conn`` while this one decodes. Closing the
    iterator early stops the thread before it returns."""
    if kind_of(timeframe) != "intraday":
        for sym in symbols:
            yield from symbol_batches(conn, batches, sym, timeframe, adjust=adjust,
                                      include_invalid=include_invalid,
                                      params={**params, "symbol": sym}, chunk=chunk, keep=keep)
        return
    reader = _ReadAhead(conn, symbols, timeframe, adjust, params, chunk)
    try:
        while (nxt := reader.next_symbol()) is not None:
            sym, steps = nxt
            yield from batches.session_batches(
                sym, reader.rows(), steps=steps, tz=params["tz"],
                include_invalid=include_invalid, after=params.get("after"),
                rows_per_batch=chunk)
    finally:
        reader.close()
