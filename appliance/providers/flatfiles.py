"""The vendor's flat files: one gzip CSV per trading day holding every ticker,
on S3-compatible storage (``provider.polygon.flat_files``).

Keys are ``{prefix}/day_aggs_v1/{YYYY}/{MM}/{YYYY-MM-DD}.csv.gz`` and
``{prefix}/minute_aggs_v1/…``; the header is
``ticker,volume,open,close,high,low,window_start,transactions`` with
``window_start`` in Unix nanoseconds of the bar's start, prices unadjusted, no
vwap, and recent files carry a fractional volume.

``FlatFiles.list`` asks ``ListObjectsV2`` which days exist (a holiday has no
file; a day's file appears the next morning) with each file's ETag and size;
``FlatFiles.batches`` streams one file: the S3 body is gunzipped as it comes
(by Arrow's zlib, outside the GIL) and parsed by pyarrow's streaming CSV reader
in blocks, by header name (a reordered file reads the same; a missing column
is an error), so a file of millions of rows is never held whole, neither its
bytes nor its rows.

boto3 (the S3 client) and pyarrow (the CSV reader, already the appliance's
Arrow library) are used rather than hand-written HTTP and parsing: request
signing (signature v4), retries and a C-speed CSV parser are theirs.
"""
from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from appliance.core.errors import ProviderAuthError, ProviderDataError, ProviderError
from appliance.core.prefetch import ahead

#: The stored resolution each dataset holds.
DATASETS = {"1d": "day_aggs_v1", "1m": "minute_aggs_v1"}
#: The columns a file must have (in any order); there is no vwap column.
COLUMNS = ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions")
#: Bytes of CSV text parsed at a time (a block of about 30,000 minute rows).
BLOCK_BYTES = 1 << 21
SOURCE = "polygon-flatfile"


@dataclass(frozen=True)
class FileInfo:
    """One day's file as the listing shows it."""

    timeframe: str
    day: dt.date
    key: str
    etag: str
    size: int


@dataclass
class Block:
    """Parsed rows of one file, as columns (``window_start`` in Unix seconds).
    The tickers come dictionary-encoded: ``codes`` into ``names`` (no Python
    string per row: a minute file has millions of rows and thousands of
    tickers)."""

    codes: np.ndarray  # int32: the row's ticker, in ``names``
    names: list[str]
    t: np.ndarray  # int64 Unix seconds of the bar's start
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    trades: np.ndarray  # int64, -1 when empty

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @property
    def ticker(self) -> np.ndarray:
        """Each row's ticker (object array of str)."""
        return np.asarray(self.names, dtype=object)[self.codes]


class FlatFileError(ProviderDataError):
    """A file is not what the vendor's layout promises (corrupt or truncated
    gzip, a missing column, a value that is not a number). Permanent for
    that file's version: the rest of the run goes on."""

    code = "flat_file_bad"
    permanent = True


class OutsidePlan(ProviderAuthError):
    """403 for one day's file: the vendor plan of these credentials does not
    reach that date. That file fails; the others go on."""

    code = "flat_file_outside_plan"


class FlatFiles:
    """A client of the vendor's flat-file bucket (``provider.polygon.flat_files``)."""

    def __init__(self, settings: Mapping, *, client=None):
        self.endpoint = settings["endpoint"].rstrip("/")
        self.bucket = settings["bucket"]
        self.prefix = (settings.get("prefix") or "us_stocks_sip").strip("/")
        self._client = client or _client(settings)

    # -- keys --------------------------------------------------------------------

    def key(self, timeframe: str, day: dt.date) -> str:
        return f"{self.prefix}/{DATASETS[timeframe]}/{day:%Y}/{day:%m}/{day.isoformat()}.csv.gz"

    def where(self, key: str | None = None) -> str:
        """``s3://bucket/key at endpoint``, for messages."""
        return f"s3://{self.bucket}/{key or ''} at {self.endpoint}"

    # -- listing -----------------------------------------------------------------

    def list(self, timeframe: str, start: dt.date, end: dt.date) -> list[FileInfo]:
        """The files of ``start``..``end`` (both inclusive) that exist, by day:
        one ``ListObjectsV2`` (paged) per month."""
        out: list[FileInfo] = []
        m = start.replace(day=1)
        while m <= end:
            for f in self.list_month(timeframe, m.year, m.month):
                if start <= f.day <= end:
                    out.append(f)
            m = (m + dt.timedelta(days=32)).replace(day=1)
        return sorted(out, key=lambda f: f.day)

    def list_month(self, timeframe: str, year: int, month: int) -> list[FileInfo]:
        prefix = f"{self.prefix}/{DATASETS[timeframe]}/{year:04d}/{month:02d}/"
        out = []
        token = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list", prefix, lambda kw=kw: self._client.list_objects_v2(**kw))
            for o in page.get("Contents") or ():
                name = o["Key"].rsplit("/", 1)[-1]
                if not name.endswith(".csv.gz"):
                    continue
                try:
                    day = dt.date.fromisoformat(name[:-len(".csv.gz")])
                except ValueError:
                    continue  # not a day's file
                out.append(FileInfo(timeframe, day, o["Key"], o["ETag"].strip('"'),
                                    int(o["Size"])))
            if not page.get("IsTruncated"):
                return out
            token = page.get("NextContinuationToken")

    def newest(self, timeframe: str, today: dt.date, months: int = 2) -> FileInfo | None:
        """The newest file of the last ``months`` months (None: none there)."""
        start = (today.replace(day=1) - dt.timedelta(days=31 * (months - 1))).replace(day=1)
        files = self.list(timeframe, start, today)
        return files[-1] if files else None

    def head(self, timeframe: str, day: dt.date) -> FileInfo | None:
        """The current version of ``day``'s file (None: there is none yet)."""
        from botocore.exceptions import ClientError
        key = self.key(timeframe, day)
        try:
            h = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            err = e.response.get("Error") or {}
            if str(err.get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(e, "head", key, day) from None
        return FileInfo(timeframe, day, key, h["ETag"].strip('"'), int(h["ContentLength"]))

    # -- reading -----------------------------------------------------------------

    def batches(self, f: FileInfo, counter=None) -> Iterator[Block]:
        """The rows of file ``f``, in blocks, as they stream in. ``counter``
        (a dict) gets ``bytes`` (compressed bytes read so far). Raises
        FlatFileError for a corrupt or truncated gzip or a missing column,
        ProviderAuthError for refused credentials or a date outside the plan,
        ProviderError when the file went away."""

        obj = self._call("get", f.key, lambda: self._client.get_object(
            Bucket=self.bucket, Key=f.key, IfMatch=f'"{f.etag}"'), day=f.day)
        body = _Counting(obj["Body"], counter if counter is not None else {})
        # gunzipped by Arrow's own zlib, in its reader thread, outside the GIL
        # (Python's GzipFile held it for a third of the file's parse);
        # truncated or not gzip raise OSError like it
        text = pa.CompressedInputStream(pa.PythonFile(body, mode="r"), "gzip")
        types = {"ticker": pa.dictionary(pa.int32(), pa.string()), "volume": pa.float64(),
                 "open": pa.float64(),
                 "close": pa.float64(), "high": pa.float64(), "low": pa.float64(),
                 "window_start": pa.int64(), "transactions": pa.int64()}
        try:
            reader = pacsv.open_csv(
                text, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
                convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""],
                                                     strings_can_be_null=False,
                                                     quoted_strings_can_be_null=False))
            names = reader.schema.names
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise FlatFileError(
                    f"{f.key}: the header lacks column(s) {', '.join(missing)} (it has "
                    f"{','.join(names)}; expected {','.join(COLUMNS)} in any order)",
                    permanent=True)
            yield from ahead((_block(batch, f) for batch in reader), AHEAD,
                             "flat-file-read-ahead", join_timeout=5)
        except FlatFileError:
            raise
        except (EOFError, OSError, zlib.error) as e:
            raise FlatFileError(f"{f.key}: the gzip stream is corrupt or truncated "
                                f"({e.__class__.__name__}: {e}); none of its bars is kept",
                                permanent=True) from None
        except pa.ArrowInvalid as e:
            raise FlatFileError(f"{f.key}: not the vendor's CSV layout: {_short(e)}",
                                permanent=True) from None
        finally:
            body.close()

    # -- errors ------------------------------------------------------------------

    def _call(self, what: str, key: str, fn, *, day: dt.date | None = None):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn()
        except ClientError as e:
            raise self._error(e, what, key, day) from None
        except BotoCoreError as e:
            raise ProviderError(f"flat files: {what} {self.where(key)} failed: {e}") from None

    def _error(self, e, what: str, key: str, day: dt.date | None) -> ProviderError:
        err = e.response.get("Error") or {}
        code = str(err.get("Code") or "")
        status = int((e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0) or None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"):
            return ProviderAuthError(
                f"flat files: the S3 credentials were refused ({code}) by {self.endpoint}: "
                f"check provider.polygon.flat_files.access_key_id and secret_access_key (the "
                f"S3 keys of the vendor's dashboard, not the REST API key)", status=status)
        if code == "NoSuchBucket":
            return ProviderAuthError(f"flat files: bucket {self.bucket!r} does not exist at "
                                     f"{self.endpoint} (provider.polygon.flat_files.bucket; "
                                     f"the vendor's is 'flatfiles')", status=status)
        if code in ("AccessDenied", "Forbidden", "403") or status == 403:
            if what in ("get", "head") and day is not None:
                return OutsidePlan(
                    f"flat files: access denied to {key} ({day}): the vendor plan of these "
                    f"credentials does not include this date (plans differ in how many years "
                    f"of flat files they hold); set universe.daily_start / minute_start or "
                    f"history.start within the plan", status=status, permanent=True)
            return ProviderAuthError(f"flat files: access denied to {self.where(key)} "
                                     f"({code or status}): the plan of these credentials "
                                     f"does not include flat files", status=status)
        if code in ("NoSuchKey", "404"):
            return ProviderError(f"flat files: {key} is not there (any more)", status=status)
        if code in ("PreconditionFailed", "412"):
            return ProviderError(f"flat files: {key} was re-published while it was read "
                                 f"(its ETag changed); it is read again", status=status)
        return ProviderError(f"flat files: {what} {self.where(key)} failed: {code} "
                             f"{err.get('Message') or ''}".strip(), status=status)


def _client(settings: Mapping):
    import boto3
    from botocore.config import Config
    cfg = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                 connect_timeout=float(settings.get("timeout_seconds") or 60),
                 read_timeout=float(settings.get("timeout_seconds") or 60),
                 retries={"max_attempts": int(settings.get("max_retries") or 0) + 1,
                          "mode": "standard"})
    return boto3.session.Session().client(
        "s3", endpoint_url=settings["endpoint"], region_name="us-east-1",
        aws_access_key_id=settings.get("access_key_id") or None,
        aws_secret_access_key=settings.get("secret_access_key") or None, config=cfg)


class _Counting:
    """A read-only file over an S3 body that counts the bytes read."""

    def __init__(self, body, counter: dict):
        self._body = body
        self._counter = counter
        self._closed = False
        counter.setdefault("bytes", 0)

    def read(self, n: int = -1) -> bytes:
        b = self._body.read(n if n is not None and n >= 0 else None)
        self._counter["bytes"] += len(b)
        return b

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        try:
            self._body.close()
        except Exception:  # noqa: BLE001 - closing a half-read body may complain
            pass


#: Blocks parsed ahead of the caller (about 45,000 rows each): Arrow's
#: streaming CSV reader parses a block only when asked for it, so without a
#: thread asking ahead the ingest waited for every block's download, gunzip
#: and parse (a fifth of a minute file's time), all of them work done
#: outside the GIL.
AHEAD = 2


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:300]


def _block(batch, f: FileInfo) -> Block:
    cols = {n: batch.column(n) for n in COLUMNS}
    for n in ("ticker", "open", "high", "low", "close", "volume", "window_start"):
        if cols[n].null_count:
            raise FlatFileError(f"{f.key}: {cols[n].null_count} row(s) with no value for {n}",
                                permanent=True)
    ns = cols["window_start"].to_numpy()
    t = ns // 1_000_000_000
    trades = pc.fill_null(cols["transactions"], -1).to_numpy()
    tickers = cols["ticker"]
    if isinstance(tickers, pa.ChunkedArray):
        tickers = tickers.combine_chunks()
    return Block(tickers.indices.to_numpy(), tickers.dictionary.to_pylist(), t,
                 cols["open"].to_numpy(), cols["high"].to_numpy(), cols["low"].to_numpy(),
                 cols["close"].to_numpy(), cols["volume"].to_numpy(), trades.astype(np.int64))
