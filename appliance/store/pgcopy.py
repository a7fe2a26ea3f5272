"""PostgreSQL's binary COPY format, built from numpy arrays: a column of
arrays (one per row) is encoded for all rows at once, without a Python
object per value; rows are then assembled from slices of those buffers.

The format (PostgreSQL's "COPY ... (FORMAT binary)"): a signature, then per
row a 16-bit field count and, per field, a 32-bit length (-1: NULL) and the
value in its binary send format (big-endian); an array is ndim, has-null
flag, element type OID, (size, lower bound) per dimension, then per element
a 32-bit length (-1: NULL) and the value.
"""
from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from psycopg import Cursor
from psycopg.copy import QueuedLibpqWriter

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
#: Element types: (OID, big-endian numpy dtype).
TYPES = {"int2": (21, ">i2"), "int4": (23, ">i4"), "int8": (20, ">i8"), "float8": (701, ">f8")}
_PG_EPOCH = dt.date(2000, 1, 1).toordinal()
_I = struct.Struct("!i")
_H = struct.Struct("!h")
_DATE = struct.Struct("!ii")
_INT2 = struct.Struct("!ih")
_HEAD1 = struct.Struct("!iiiiii")  # field length, ndim 1, has null, oid, size, lower bound
_HEAD2 = struct.Struct("!iiiiiiii")  # the same for two dimensions


class Arrays:
    """One array column of many rows: ``values`` holds every row's elements
    one row after another, ``offsets`` (rows + 1) where each row's start;
    ``null`` marks NULL elements (their value is ignored)."""

    def __init__(self, kind: str, values: np.ndarray, offsets: np.ndarray,
                 null: np.ndarray | None = None):
        self.oid, dtype = TYPES[kind]
        width = np.dtype(dtype).itemsize
        n = len(values)
        rec = np.empty(n, dtype=[("l", ">i4"), ("v", dtype)])
        rec["l"] = width
        if null is not None and null.any():
            rec["v"] = np.where(null, 0, values)
            rec["l"][null] = -1
            keep = np.ones((n, 4 + width), dtype=bool)
            keep[null, 4:] = False
            self.buf = rec.view(np.uint8).reshape(n, 4 + width)[keep].tobytes()
            ends = np.concatenate(([0], np.cumsum(np.where(null, 4, 4 + width))))
            nulls = np.concatenate(([0], np.cumsum(null)))
            self.hasnull = (nulls[offsets[1:]] - nulls[offsets[:-1]] > 0).astype(int).tolist()
        else:
            rec["v"] = values
            self.buf = rec.tobytes()
            ends = np.arange(n + 1, dtype=np.int64) * (4 + width)
            self.hasnull = [0] * (len(offsets) - 1)
        self.bounds = ends[offsets].tolist()
        self.sizes = np.diff(offsets).tolist()

    def field(self, i: int, dims: tuple[int, int] | None = None) -> bytes:
        """Row ``i``'s array as one field (length and value); ``dims``: two
        dimensions (rows, columns) instead of one."""
        a, z = self.bounds[i], self.bounds[i + 1]
        n = self.sizes[i]
        if n == 0:
            return _I.pack(12) + struct.pack("!iii", 0, 0, self.oid)
        if dims is not None:
            return _HEAD2.pack(28 + z - a, 2, self.hasnull[i], self.oid, dims[0], 1, dims[1],
                               1) + self.buf[a:z]
        return _HEAD1.pack(20 + z - a, 1, self.hasnull[i], self.oid, n, 1) + self.buf[a:z]


def offsets_of(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(np.asarray(lengths, dtype=np.int64))))


def text(value: str | None) -> bytes:
    if value is None:
        return NULL
    b = value.encode()
    return _I.pack(len(b)) + b


def binary(value: bytes) -> bytes:
    """A ``bytea`` field."""
    return _I.pack(len(value)) + value


def date(value: dt.date) -> bytes:
    return _DATE.pack(4, value.toordinal() - _PG_EPOCH)


def int2(value: int | None) -> bytes:
    return NULL if value is None else _INT2.pack(2, value)


def row(fields: Sequence[bytes]) -> bytes:
    return _H.pack(len(fields)) + b"".join(fields)


#: Blocks (up to 128 KiB each, psycopg's) a ``queued`` writer holds before
#: the encoder waits: 8 MiB at most, where psycopg's own queue takes 128 MiB.
QUEUE_BLOCKS = 64


class _Queued(QueuedLibpqWriter):
    """psycopg's ``QueuedLibpqWriter`` with its queue bounded by ``QUEUE_BLOCKS``."""

    def __init__(self, cursor: Cursor[Any]):
        super().__init__(cursor)
        # psycopg's own queue class (its get() can be interrupted), smaller
        self._queue = type(self._queue)(maxsize=QUEUE_BLOCKS)


def queued(cursor: Cursor[Any]) -> QueuedLibpqWriter:
    """A COPY writer whose sends run in a thread of their own (psycopg's
    ``QueuedLibpqWriter``, its queue bounded by ``QUEUE_BLOCKS``): the
    encoder goes on with the next rows while the server stores these,
    instead of waiting for the server each time libpq's buffer is full."""
    return _Queued(cursor)
