"""Many symbols' intraday bars read ahead (the bulk answer, the export): a
thread reads the stored sessions of each symbol in turn on the answer's
connection while the caller decodes and encodes the ones before
(``ops.arrowbars``), a bounded number of groups ahead."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing

import pyarrow as pa

from appliance.core.prefetch import ahead
from appliance.ops.arrowbars import Batches, symbol_batches
from appliance.store import adjustment
from appliance.store.columnar import kind_of, session_arrays

#: Groups of about ``chunk`` bars read ahead of the decoding.
AHEAD = 2


def _groups(conn, symbols: Sequence[str], timeframe: str, adjust: str, params: dict,
            chunk: int) -> Iterator[tuple]:
    """Every symbol's stored sessions in turn on ``conn``: ("symbol", symbol,
    its adjustment steps), then ("rows", sessions) in groups of about
    ``chunk`` bars. Closed early, the query being read is cancelled."""
    for sym in symbols:
        p = {**params, "symbol": sym}
        yield ("symbol", sym, adjustment.steps(conn, sym, adjust, tz=p["tz"]))
        group: list[tuple] = []
        n = 0
        with closing(session_arrays(conn, timeframe, p)) as rows:
            for row in rows:
                group.append(row)
                n += row[-1]  # its bars
                if n >= chunk:
                    yield ("rows", group)
                    group, n = [], 0
        if group:
            yield ("rows", group)


class _ReadAhead:
    """``_groups`` read by a thread (``core.prefetch.ahead``) at most
    ``AHEAD`` groups ahead while the caller decodes and encodes the previous
    ones: PostgreSQL sends the arrays, psycopg receives them (the GIL
    released while it waits) and numpy and pyarrow work (also without the
    GIL) at the same time."""

    def __init__(self, conn, symbols: Sequence[str], timeframe: str, adjust: str,
                 params: dict, chunk: int):
        self.items = ahead(_groups(conn, symbols, timeframe, adjust, params, chunk), AHEAD,
                           "bars-read-ahead")
        self.pending: tuple = ()

    def next_symbol(self) -> tuple | None:
        """(symbol, steps) of the next symbol, None at the end."""
        item = self.pending or next(self.items, None)
        self.pending = ()
        return None if item is None else item[1:]

    def rows(self) -> Iterator[tuple]:
        """The current symbol's sessions."""
        for item in self.items:
            if item[0] != "rows":
                self.pending = item
                return
            yield from item[1]

    def close(self) -> None:
        """Stop the thread (its query cancelled) and wait for it: the
        connection is the caller's again."""
        self.items.close()


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
