"""Whole-market history from the vendor's flat files: which tickers are kept
(the universe and the symbols), one file ingested in one transaction, and
the plan that chooses files or REST per resolution.

One file is one trading day of every ticker. It is streamed
(``providers.flatfiles``), its tickers filtered (``Selection``), validated
with the REST bars' rules (``quality.validate_day`` for daily bars,
``quality.minute_rules`` for minutes) and written through the same store:
daily rows into market_data (revisions recorded for changed bars), minute
sessions into minute_bars with their rollups (computed in numpy from the
session arrays, ``core.rollups``, and copied beside them). The file's ``flat_files`` row
(its ETag and size) is written in the same transaction as its bars: a file
that fails leaves none of its bars and no row, and is tried again; a file
whose ETag changed (re-published) is read again, its changed bars recorded
as revisions.

Volume is stored as the files give it: a float (market_data.volume is
double precision; a minute session's values are kept exactly, with as many
decimals as they need, see ``store.minutes``). Bars carry ``source``
``polygon-flatfile``; vwap is NULL (the files have none).
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from appliance import store
from appliance.config.loader import SYMBOL_RE
from appliance.core import calendar as tcal
from appliance.core import quality
from appliance.core.timeframes import session_window
from appliance.ingest import minutes as intraday
from appliance.providers.flatfiles import SOURCE, FileInfo, FlatFileError, FlatFiles
from appliance.store import flatfiles as fstore
from appliance.store import minutes as mstore

log = logging.getLogger("appliance.ingest.flatfiles")

#: How many odd tickers a file's result names (the count has them all).
ODD_SHOWN = 10


def enabled(cfg) -> bool:
    return bool(cfg.get("provider.polygon.flat_files.enabled"))


def client(cfg) -> FlatFiles:
    return FlatFiles(cfg["provider"]["polygon"]["flat_files"])


# --------------------------------------------------------------------------- which tickers

@dataclass
class Selection:
    """The tickers kept from a file of one resolution and day: the universe
    (when enabled and the day is within its start), and the configured
    symbols that store the resolution from their own start."""

    universe: bool
    include: list[re.Pattern] = field(default_factory=list)
    exclude: list[re.Pattern] = field(default_factory=list)
    symbols: frozenset = frozenset()
    _memo: dict = field(default_factory=dict)

    def keep(self, ticker: str) -> bool:
        got = self._memo.get(ticker)
        if got is None:
            got = ticker in self.symbols or (
                self.universe
                and (not self.include or any(p.fullmatch(ticker) for p in self.include))
                and not any(p.fullmatch(ticker) for p in self.exclude))
            self._memo[ticker] = got
        return got

    @property
    def empty(self) -> bool:
        return not self.universe and not self.symbols


def pattern(text: str) -> re.Pattern:
    """A universe rule: a regular expression, or with ``glob:`` a shell
    pattern (``glob:*.WS``), matched against the whole ticker."""
    if text.startswith("glob:"):
        return re.compile(fnmatch.translate(text[len("glob:"):]))
    return re.compile(text)


def universe_start(cfg, timeframe: str) -> dt.date | None:
    """The universe's first day for ``timeframe`` (None: the universe does
    not store it)."""
    if not cfg.get("universe.enabled"):
        return None
    u = cfg["universe"]
    if timeframe == "1d":
        return dt.date.fromisoformat(u["daily_start"]) if u.get("daily_start") \
            else cfg.history_start("1d")
    return dt.date.fromisoformat(u["minute_start"]) if u.get("minute_start") else None


def _symbol_start(cfg, spec, timeframe: str) -> dt.date:
    return intraday.spec_minute_start(cfg, spec) if timeframe == "1m" else spec.since


def selection(cfg, timeframe: str, day: dt.date) -> Selection:
    ustart = universe_start(cfg, timeframe)
    syms = frozenset(s.symbol for s in cfg.symbols
                     if s.active and timeframe in s.timeframes
                     and _symbol_start(cfg, s, timeframe) <= day)
    u = cfg["universe"]
    return Selection(universe=ustart is not None and ustart <= day,
                     include=[pattern(p) for p in u.get("include") or ()],
                     exclude=[pattern(p) for p in u.get("exclude") or ()], symbols=syms)


def selection_key(cfg, timeframe: str) -> str:
    """What decides which tickers a file of ``timeframe`` keeps, as a short
    hash: the universe's rules and start, and the configured symbols its
    rules would not keep (those it keeps are stored either way). A file
    stored under another key is read again (a symbol added later gets its
    history from the files)."""
    u = cfg["universe"]
    start = universe_start(cfg, timeframe)
    inc = [pattern(p) for p in u.get("include") or ()]
    exc = [pattern(p) for p in u.get("exclude") or ()]
    rules = Selection(universe=start is not None, include=inc, exclude=exc)
    own = sorted((s.symbol, _symbol_start(cfg, s, timeframe).isoformat()) for s in cfg.symbols
                 if s.active and timeframe in s.timeframes
                 and not (start is not None and rules.keep(s.symbol)))
    data = {"u": [start.isoformat() if start else None, list(u.get("include") or ()),
                  list(u.get("exclude") or ())] if start else None, "s": own}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def first_day(cfg, timeframe: str) -> dt.date | None:
    """The earliest day any kept ticker stores ``timeframe`` from."""
    days = [_symbol_start(cfg, s, timeframe) for s in cfg.symbols
            if s.active and timeframe in s.timeframes]
    u = universe_start(cfg, timeframe)
    if u is not None:
        days.append(u)
    return min(days) if days else None


# --------------------------------------------------------------------------- one file

def ingest(conn_factory, cfg, files: FlatFiles, info: FileInfo, *, run_id=None,
           today: dt.date | None = None, progress=None) -> Counter:
    """Ingest one file in one transaction (``conn_factory()`` gives a
    connection whose block commits). Returns counts: ``files`` (1 when
    stored, 0 when this version was already), ``rows``, ``bars``,
    ``tickers``, ``skipped``, ``odd_tickers``, ``inserted``, ``updated``,
    ``revised``, ``invalid``, ``bytes``. Raises FlatFileError for a bad
    file (nothing of it stored), ProviderError when it cannot be read."""
    today = today or dt.datetime.now(ZoneInfo(tcal.exchange_tz(cfg["calendar"]))).date()
    counter = {"bytes": 0}
    out = Counter()
    key = selection_key(cfg, info.timeframe)
    with conn_factory() as conn:
        before = fstore.stored(conn, info.timeframe, info.day)
        if before == (info.etag, key):
            return out
        # a new version of the file: its changed bars are revisions
        republished = before is not None and before[0] != info.etag
        sel = selection(cfg, info.timeframe, info.day)
        odd: list[str] = []
        if info.timeframe == "1d":
            _daily(conn, cfg, files, info, sel, out, odd, counter, run_id, today)
        else:
            _minutes(conn, cfg, files, info, sel, out, odd, counter, run_id,
                     revisions=republished, progress=progress)
        out["bytes"] = counter["bytes"]
        out["files"] = 1
        fstore.record(conn, info.timeframe, info.day, info.key, info.etag, info.size,
                      rows=out["rows"], bars=out["bars"], tickers=out["tickers"],
                      skipped=out["skipped"], revised=out["revised"], selection=key,
                      run_id=run_id)
        if odd:
            store.add_event(conn, "warning", "flat_files",
                            f"{info.key}: {out['odd_tickers']} row(s) with a ticker outside the "
                            f"symbol grammar (A-Z, 0-9, '.', '-') left out: "
                            f"{', '.join(repr(t) for t in odd[:ODD_SHOWN])}",
                            {"key": info.key, "tickers": odd[:ODD_SHOWN]})
    return out


def _odd(ticker: str, out: Counter, odd: list) -> bool:
    if SYMBOL_RE.match(ticker):
        return False
    out["odd_tickers"] += 1
    if len(odd) < ODD_SHOWN:
        odd.append(ticker)
    return True


def _daily(conn, cfg, files, info, sel, out, odd, counter, run_id, today) -> None:
    """A day of daily bars: one bar per ticker, held whole (a few thousand
    rows), validated as a cross-section, written in one COPY or upsert."""
    keep_rows: list[tuple] = []
    seen: set[str] = set()
    midnight = tcal.local_midnight_epoch(info.day)
    for b in files.batches(info, counter):
        out["rows"] += len(b)
        for i, tk in enumerate(b.ticker.tolist()):
            if _odd(tk, out, odd) or not sel.keep(tk):
                out["skipped"] += 1
                continue
            if int(b.t[i]) != midnight:
                raise FlatFileError(f"{info.key}: {tk}'s bar starts at {int(b.t[i])} (Unix s), "
                                    f"not at 00:00 New York of {info.day}", permanent=True)
            if tk in seen:
                raise FlatFileError(f"{info.key}: ticker {tk} appears twice", permanent=True)
            seen.add(tk)
            keep_rows.append((tk, b.open[i], b.high[i], b.low[i], b.close[i], b.volume[i],
                              b.trades[i]))
    if not keep_rows:
        return
    syms = [r[0] for r in keep_rows]
    o, h, lo, c, v = (np.array([r[k] for r in keep_rows], dtype=np.float64) for k in range(1, 6))
    n = np.array([r[6] for r in keep_rows], dtype=np.int64)
    out.update(store_day(conn, cfg, info.day, syms, o, h, lo, c, v, n, source=SOURCE,
                         run_id=run_id, today=today))


def store_day(conn, cfg, day: dt.date, syms: list[str], o, h, lo, c, v, n, *, source: str,
              run_id, today) -> Counter:
    """Validate (``quality.validate_day``) and store one session's daily bars
    of many symbols: a file's day, or a grouped-daily answer for a day whose
    file is not there yet. Returns inserted, updated, revised, bars,
    tickers, invalid."""
    out = Counter()
    tz = tcal.exchange_tz(cfg["calendar"])
    prev = fstore.prev_closes(conn, day, syms, tz=tz)
    ref = np.array([prev.get(s, np.nan) for s in syms], dtype=np.float64)
    split_rows = fstore.splits_on(conn, day)
    by_index = {i: split_rows[s] for i, s in enumerate(syms) if s in split_rows}
    q = cfg["quality"]
    cal = tcal.sessions(cfg["calendar"], day, day)
    checked = quality.validate_day(day, o, h, lo, c, v, ref, cal, today, by_index,
                                   gap_threshold_pct=q["gap_threshold_pct"],
                                   split_tolerance_pct=q["split_tolerance_pct"])
    issues = ["{}" if m == 0 else "{" + ",".join(quality.issues_of(m)) + "}"
              for m in checked.issue_mask.tolist()]
    payload = fstore.day_copy_text(day, syms, o, h, lo, c, v, n, source=source,
                                   valid=checked.valid, score=checked.score, issues=issues,
                                   gap=checked.gap_detected, gap_kind=checked.gap_kind,
                                   gap_pct=checked.gap_pct, tz=tz)
    res = fstore.write_day(conn, day, payload, run_id, tz=tz)
    out.update(res)
    out["bars"] += len(syms)
    out["tickers"] += len(syms)
    out["invalid"] += int((~checked.valid).sum())
    return out


def store_grouped(conn, cfg, day: dt.date, grouped: dict, *, source: str, run_id,
                  today) -> Counter:
    """A grouped-daily answer ({symbol: Bars} of one session) for the
    universe's day without a file yet: its tickers kept by the same rules
    as a file's, stored like a file's day (the file, once there, replaces
    them; changed bars become revisions)."""
    sel = selection(cfg, "1d", day)
    keep = sorted(t for t in grouped if SYMBOL_RE.match(t) and sel.keep(t) and len(grouped[t]))
    if not keep:
        return Counter()
    first = [grouped[t].take([0]) for t in keep]
    cols = [np.array([float(getattr(b, k)[0]) for b in first]) for k in
            ("open", "high", "low", "close", "volume")]
    n = np.array([int(b.trades[0]) for b in first], dtype=np.int64)
    return store_day(conn, cfg, day, keep, *cols, n, source=source, run_id=run_id, today=today)


def _minutes(conn, cfg, files, info, sel, out, odd, counter, run_id, *, revisions,
             progress=None) -> None:
    """A day of minute bars: streamed block by block into one COPY, one
    session row per ticker (the files hold a ticker's rows together),
    minutes outside ``session`` dropped; the rollups computed from the same
    arrays and copied after them (``store.minutes.write_days``)."""
    lo_min, hi_min = (int(x[0]) for x in session_window(
        cfg["calendar"], np.array([info.day], dtype="datetime64[D]"), cfg["session"]))
    midnight = tcal.local_midnight_epoch(info.day)
    written: list[str] = []

    def rows():
        done: set[str] = set()
        pending = None  # the last ticker of a block: it may go on in the next
        for b in files.batches(info, counter):
            out["rows"] += len(b)
            codes, names = b.codes, b.names
            cut = np.nonzero(codes[1:] != codes[:-1])[0] + 1
            bounds = np.concatenate(([0], cut, [len(b)])).tolist()
            pre = _Minutes.of(b, midnight, lo_min, hi_min)
            for j in range(len(bounds) - 1):
                a, z = bounds[j], bounds[j + 1]
                name = names[codes[a]]
                part = (pre, a, z)
                if pending is not None and pending[0] == name:
                    pending[1].append(part)
                    continue
                if pending is not None:
                    row = _session_row(pending, info, sel, out, odd)
                    done.add(pending[0])
                    if row is not None:
                        written.append(pending[0])
                        yield row
                if name in done:
                    raise FlatFileError(f"{info.key}: the rows of ticker {name} are not "
                                        f"together (the vendor's files hold each ticker's "
                                        f"rows in one run)", permanent=True)
                pending = (name, [part])
            if progress is not None:
                progress(counter["bytes"], out["rows"])
        if pending is not None:
            row = _session_row(pending, info, sel, out, odd)
            if row is not None:
                written.append(pending[0])
                yield row

    stats: dict = {}
    mstore.ensure_partitions_for(conn, info.day, info.day)  # any year: 2003 as well as today
    # the tickers without a session that day (most of a file, the first time)
    # are copied straight into minute_bars; a re-published file's sessions
    # all go through the upsert, which records their revisions
    have = None if revisions else mstore.symbols_on(conn, info.day)
    # the rollups computed from the arrays in hand (core.rollups), copied with them
    mstore.write_days(conn, rows(), revisions=revisions, run_id=run_id, stats=stats,
                      tz=tcal.exchange_tz(cfg["calendar"]), rollups=True,
                      new=None if have is None else (lambda s: s.symbol not in have))
    out["revised"] += int(stats.get("revised") or 0)
    out["tickers"] += len(written)
    out["sessions"] += len(written)


@dataclass
class _Minutes:
    """A block's minute bars with what every kept ticker needs worked out
    once for the whole block (thousands of tickers), not per ticker: the
    minute of the day, whether the start is a minute of the day at all,
    whether it is in the session, whether the bar passes the minute rules."""

    block: Any
    minute: np.ndarray
    off_grid: np.ndarray
    in_session: np.ndarray
    valid: np.ndarray

    @classmethod
    def of(cls, b, midnight: int, lo_min: int, hi_min: int) -> _Minutes:
        rel = b.t - midnight
        minute = rel // 60
        return cls(b, minute, (rel % 60 != 0) | (minute < 0) | (minute >= 1440),
                   (minute >= lo_min) & (minute < hi_min),
                   quality.minute_rules(b.open, b.high, b.low, b.close, b.volume))


def _session_row(pending, info, sel, out, odd):
    """One ticker's minute bars of the day as a ``MinuteSession``, or
    None when the ticker is not kept or has no bar in the session."""
    name, parts = pending
    n_rows = sum(z - a for _, a, z in parts)
    if _odd(name, out, odd) or not sel.keep(name):
        out["skipped"] += n_rows
        return None

    def col(attr, of_block=True):
        if len(parts) == 1:
            p, a, z = parts[0]
            return getattr(p.block if of_block else p, attr)[a:z]
        return np.concatenate([getattr(p.block if of_block else p, attr)[a:z]
                               for p, a, z in parts])

    off_grid = col("off_grid", False)
    if off_grid.any():
        bad = int(col("t")[off_grid][0])
        raise FlatFileError(f"{info.key}: {name} has a bar starting at {bad} (Unix s), not a "
                            f"minute of {info.day} in New York", permanent=True)
    minute = col("minute", False)
    keep = col("in_session", False)
    n_keep = int(keep.sum())
    out["outside_session"] += len(keep) - n_keep
    if not n_keep:
        return None
    idx = slice(None) if n_keep == len(keep) else np.flatnonzero(keep)
    m = minute[idx]
    if (np.diff(m) <= 0).any():  # out of order or repeated: the last of a minute wins
        idx = np.arange(len(keep))[idx]
        _, last = np.unique(m[::-1], return_index=True)
        idx = idx[len(idx) - 1 - last]
        m = minute[idx]
    o, h, lo, c, v = (col(k)[idx] for k in ("open", "high", "low", "close", "volume"))
    n = col("trades")[idx]
    bad = np.flatnonzero(~col("valid", False)[idx]).tolist()
    out["invalid"] += len(bad)
    out["bars"] += len(m)
    vw = np.full(len(m), np.nan)
    return mstore.MinuteSession(name, info.day, m, o, h, lo, c, v, vw, n, bad, SOURCE)


# --------------------------------------------------------------------------- the plan

#: What one file costs, in seconds, when the plan weighs files against REST:
#: a whole-market day of daily bars is a few hundred KB, one of minute bars
#: tens of MB and millions of rows (bench/bench_flatfiles.py measures both).
FILE_SECONDS = {"1d": 0.5, "1m": 60.0}
#: Marker of a file's chunk in a fanned-out backfill (``chunks``): not a symbol.
FILE_CHUNK = "*"


@dataclass
class FilePlan:
    """Per resolution, whether the flat files serve it and which of them to
    ingest; REST takes only the days after ``covered[tf]`` (the latest
    sessions, before their file exists)."""

    files: list[FileInfo] = field(default_factory=list)
    covered: dict[str, dt.date] = field(default_factory=dict)  # tf -> newest file's day
    chosen: dict[str, str] = field(default_factory=dict)  # tf -> "files" | "rest"
    reasons: dict[str, str] = field(default_factory=dict)
    listed: dict[str, int] = field(default_factory=dict)  # tf -> files that exist

    def uses_files(self, tf: str) -> bool:
        return self.chosen.get(tf) == "files"

    def describe(self) -> str:
        parts = []
        for tf in ("1d", "1m"):
            if tf not in self.chosen:
                continue
            if self.uses_files(tf):
                todo = sum(1 for f in self.files if f.timeframe == tf)
                newest = self.covered.get(tf)
                parts.append(f"{tf}: flat files ({todo} to ingest of {self.listed.get(tf, 0)}"
                             f"{', newest ' + newest.isoformat() if newest else ''}; "
                             f"{self.reasons[tf]})")
            else:
                parts.append(f"{tf}: REST ({self.reasons[tf]})")
        return "; ".join(parts)


def make_plan(conn, cfg, files: FlatFiles | None, *, end: dt.date, start: dt.date | None,
              rest_requests: dict[str, int]) -> FilePlan:
    """Choose, per resolution, flat files or REST by cost: the universe
    (every ticker) only exists in files; for the configured symbols, files
    when ``FILE_SECONDS`` per session costs less than REST's requests at the
    vendor's rate (``rest_requests[tf]`` of them). The files chosen are
    listed; those stored with their current ETag are left out."""
    out = FilePlan()
    if files is None:
        return out
    rpm = float(cfg.get("provider.polygon.requests_per_minute") or 5)
    for tf in ("1d", "1m"):
        first = first_day(cfg, tf)
        if first is None:
            continue
        first = max(first, start) if start else first
        if first > end:
            continue
        n_sessions = len(tcal.sessions(cfg["calendar"], first, end))
        file_s = n_sessions * FILE_SECONDS[tf]
        rest_s = rest_requests.get(tf, 0) * 60.0 / rpm
        if universe_start(cfg, tf) is not None:
            out.chosen[tf], out.reasons[tf] = "files", "the universe: every ticker of the market"
        elif rest_requests.get(tf, 0) and file_s < rest_s:
            out.chosen[tf] = "files"
            out.reasons[tf] = (f"~{file_s / 60:.0f} min of files beat {rest_requests[tf]} "
                               f"REST request(s), ~{rest_s / 60:.0f} min at {rpm:g}/min")
        else:
            out.chosen[tf] = "rest"
            out.reasons[tf] = (f"{rest_requests.get(tf, 0)} request(s), ~{rest_s / 60:.0f} min, "
                               f"beat {n_sessions} file(s), ~{file_s / 60:.0f} min")
            continue
        listed = files.list(tf, first, end)
        out.listed[tf] = len(listed)
        if listed:
            out.covered[tf] = listed[-1].day
        stored = fstore.done(conn, tf, first, end)
        key = selection_key(cfg, tf)
        out.files += [f for f in listed if stored.get(f.day) != (f.etag, key)]
    return out
