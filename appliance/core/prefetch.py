"""An iterator's items produced by a thread of its own, a few ahead of the
caller: the work of producing them (a download, a parse, a database's
answer, all done outside the GIL) overlaps the caller's work on the items
before. Used by the flat files' parser (``providers.flatfiles``) and the
bulk reads of stored sessions (``ops.readahead``)."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar, cast

T = TypeVar("T")

_END = object()


def ahead(items: Iterable[T], n: int, name: str, *,
          join_timeout: float | None = None) -> Iterator[T]:
    """``items`` in order, taken by a thread named ``name`` at most ``n``
    ahead of the caller (memory stays bounded). An exception of theirs is
    raised here, in the caller's thread. Closing this iterator (or leaving
    it early) stops the thread, which closes ``items`` itself when it is a
    generator (so that its cleanup, a query's cancellation, runs in the
    thread that used it), and waits for it (at most ``join_timeout`` s)."""
    handed: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(n)
    stop = threading.Event()

    def put(item: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                handed.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put((x, None)):
                    return
            put((_END, None))
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            put((_END, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            x, error = handed.get()
            if error is not None:
                raise error
            if x is _END:
                return
            yield cast(T, x)
    finally:
        stop.set()
        thread.join(join_timeout)
