"""Spot-check (monthly): stored closes against a second source, and the
intraday rollups against the primary vendor's own 5m and 1h aggregates
(``intraday.rollup_check``, for sampled symbol-days of the symbols keeping
minute bars; under ``rollups`` in the result).

Picks ``spot_check.samples`` random (symbol, session) pairs among the stored
**validated** daily candles, fetches the same sessions from
``spot_check.source`` (``yahoo`` by default, ``tiingo`` with a key) and compares
split-adjusted closes, both adjusted as of today:

* the stored close is raw; it is multiplied by the ratios of the stored splits
  executing after its session (``adjustment_factor(symbol, day, 'splits')``,
  the SQL function every read path adjusts with);
* Yahoo publishes split-adjusted prices (``provider.split_adjusted``) and is
  taken as is; a raw second source is adjusted with the same stored splits.

``diff_pct = |stored_adjusted - other| / |other| * 100``: within
``spot_check.match_pct`` a match, above ``spot_check.mismatch_pct`` a mismatch,
in between "close". The ``spot_check_mismatch`` alert reads ``mismatch_pct``
and ``pairs`` of the latest successful run's result.

Sampling stays cheap on a large store: symbols are drawn from
``symbol_stats`` (weighted by their record count), a random day between the
symbol's first and last session is drawn, and the first validated candle at or
after it (else before it) is found through the primary key, one indexed probe
per sample. When the candidates hold no more candles than ``samples``, all of
them are taken.

Requests are grouped per symbol: one request over the min..max session of that
symbol's samples. A source error for a symbol lists its pairs under
``unavailable`` (status ``partial``); when every symbol fails the run fails
with ``ProviderError``.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
from collections import defaultdict
from typing import Any

import numpy as np

from appliance import store
from appliance.core import calendar as tcal
from appliance.core.errors import ProviderError
from appliance.ingest import minutes as intraday
from appliance.jobs.registry import JobResult
from appliance.providers import make_provider
from appliance.providers.http import MemoryStats

log = logging.getLogger("appliance.spotcheck")

TIMEFRAME = "1d"


def _candidates(conn, symbols) -> list[tuple[str, dt.date, dt.date, int]]:
    rows = store.spotcheck.sampling_candidates(conn, TIMEFRAME, symbols)
    return [(s, a, b, int(n)) for s, a, b, n in rows]


def _all_pairs(conn, symbols: list[str], tz: str) -> list[tuple[str, dt.date, float]]:
    rows = store.spotcheck.validated_closes(conn, TIMEFRAME, symbols, tz=tz)
    return [(s, d, float(c)) for s, d, c in rows]


def _probe(conn, symbol: str, day: dt.date, tz: str):
    """The first validated candle at or after ``day`` (else the last before it)."""
    row = store.spotcheck.validated_close_near(conn, symbol, TIMEFRAME, day, tz=tz)
    return row


def sample_pairs(conn, n: int, *, tz: str, symbols: list[str] | None = None,
                 rng: random.Random | None = None) -> list[tuple[str, dt.date, float]]:
    """Up to ``n`` distinct random (symbol, session, raw close) of validated candles."""
    rng = rng or random.Random()
    cands = _candidates(conn, symbols)
    if not cands or n <= 0:
        return []
    if sum(c[3] for c in cands) <= n:
        return _all_pairs(conn, [c[0] for c in cands], tz)
    weights = [c[3] for c in cands]
    picked: dict[tuple[str, dt.date], float] = {}
    attempts = 0
    while len(picked) < n and attempts < n * 5:
        attempts += 1
        sym, first, last, _ = rng.choices(cands, weights=weights)[0]
        day = first + dt.timedelta(days=rng.randint(0, max(0, (last - first).days)))
        row = _probe(conn, sym, day, tz)
        if row is not None:
            picked.setdefault((sym, row[0]), float(row[1]))
    return sorted((s, d, c) for (s, d), c in picked.items())


def verdict(diff_pct: float, match_pct: float, mismatch_pct: float) -> str:
    if diff_pct <= match_pct:
        return "match"
    if diff_pct > mismatch_pct:
        return "mismatch"
    return "close"


def compare_closes(sym: str, items, other: dict, factors, other_adjusted: bool, source: str,
                   match_pct: float, mismatch_pct: float, unavailable: list) -> list[dict]:
    """One symbol's sampled (session, stored close) pairs against the second
    source's closes; sessions it has no close for go to ``unavailable``."""
    out = []
    for (d, close), f in zip(items, factors.tolist(), strict=False):
        o = other.get(d)
        if o is None or not np.isfinite(o) or o == 0:
            unavailable.append({"symbol": sym, "session": d.isoformat(),
                                "reason": f"no close from {source} for this session"})
            continue
        stored_adj = close * f
        other_adj = o if other_adjusted else o * f
        diff = abs(stored_adj - other_adj) / abs(other_adj) * 100.0
        out.append({"symbol": sym, "session": d.isoformat(), "stored_close": close,
                    "stored_close_adjusted": round(stored_adj, 6),
                    "other_close": round(other_adj, 6), "diff_pct": round(diff, 4),
                    "verdict": verdict(diff, match_pct, mismatch_pct)})
    return out


class SpotCheckResult(JobResult, total=False):
    """The ``spot_check`` job's result."""
    #: the minute bars' rollups compared with the stored daily bars
    rollups: dict[str, Any] | None
    source: str
    samples: int
    compared: int
    matches: int
    close: int
    mismatches: int
    mismatch_pct: float
    match_threshold_pct: float
    mismatch_threshold_pct: float
    #: one per compared close: symbol, session, closes, difference, verdict
    pairs: list[dict[str, Any]]
    #: symbol, session, reason of each sample not compared
    unavailable: list[dict[str, Any]]


#: The first symbols whose requests found no answer at all (no HTTP status:
#: DNS, connection refused, timeouts), every retry spent, after which the
#: rest are not asked: on a host that cannot reach the source each symbol
#: would spend its retries on the same failure.
UNREACHABLE_AFTER = 2


def _ask(provider, source: str, by_symbol: dict, factors_of: dict, other_adjusted: bool,
         thresholds: tuple[float, float], report) -> tuple[list[dict], list[dict]]:
    """Each sampled symbol's closes from the second source, compared: (pairs,
    unavailable). Raises ProviderError when no symbol could be had from it."""
    match_pct, mismatch_pct = thresholds
    out_pairs: list[dict] = []
    unavailable: list[dict] = []
    failed_symbols: list[str] = []
    errors: list[str] = []
    answered, no_answer = False, 0
    for i, (sym, items) in enumerate(sorted(by_symbol.items())):
        report({"phase": "comparing", "symbols_done": i, "symbols": len(by_symbol),
                "source": source})
        if no_answer >= UNREACHABLE_AFTER and not answered:
            failed_symbols.append(sym)
            unavailable.extend({"symbol": sym, "session": d.isoformat(),
                                "reason": f"not asked: {source} is unreachable"}
                               for d, _ in items)
            continue
        lo, hi = min(d for d, _ in items), max(d for d, _ in items)
        try:
            bars = provider.daily_bars(sym, lo, hi)
        except ProviderError as e:
            log.warning("spot-check: %s from %s failed: %s", sym, source, e.message)
            answered = answered or e.status is not None
            no_answer += e.status is None
            failed_symbols.append(sym)
            errors.append(e.message)
            unavailable.extend({"symbol": sym, "session": d.isoformat(),
                                "reason": f"{source} error: {e.message}"} for d, _ in items)
            continue
        answered = True
        other = {s: float(c) for s, c in zip(bars.session.astype(object).tolist(),
                                             bars.close.tolist(), strict=False)}
        out_pairs.extend(compare_closes(sym, items, other, factors_of[sym], other_adjusted,
                                        source, match_pct, mismatch_pct, unavailable))

    report({"phase": "comparing", "symbols_done": len(by_symbol), "symbols": len(by_symbol),
            "source": source}, force=True)
    if by_symbol and len(failed_symbols) == len(by_symbol):
        asked = len(errors)
        raise ProviderError(f"spot-check: every request to {source} failed "
                            f"({asked} symbol(s) asked"
                            + (f", the other {len(failed_symbols) - asked} not: the source is "
                               f"unreachable" if asked < len(failed_symbols) else "")
                            + f"): {errors[0]}")
    return out_pairs, unavailable


def spot_check(rt, run_id, report, samples=None, symbols=None, source=None,
               seed=None) -> SpotCheckResult:
    cfg = rt.config
    sc = cfg["spot_check"]
    n = int(samples if samples is not None else sc["samples"])
    source = source or sc["source"]
    match_pct, mismatch_pct = float(sc["match_pct"]), float(sc["mismatch_pct"])
    rng = random.Random(seed)
    stats = MemoryStats()
    provider = make_provider(cfg["provider"], name=source, stats=stats, redis=rt.redis)
    other_adjusted = bool(getattr(provider, "split_adjusted", False))

    with rt.conn() as conn:
        pairs = sample_pairs(conn, n, symbols=list(symbols) if symbols else None, rng=rng,
                             tz=tcal.exchange_tz(cfg["calendar"]))
        by_symbol: dict[str, list[tuple[dt.date, float]]] = defaultdict(list)
        for sym, d, c in pairs:
            by_symbol[sym].append((d, c))
        factors_of = {sym: np.array(store.spotcheck.split_factors(
            conn, sym, [d for d, _ in items], tz=tcal.exchange_tz(cfg["calendar"])))
            for sym, items in by_symbol.items()}

    out_pairs, unavailable = _ask(provider, source, by_symbol, factors_of, other_adjusted,
                                  (match_pct, mismatch_pct), report)

    compared = len(out_pairs)
    counts = {v: sum(1 for p in out_pairs if p["verdict"] == v)
              for v in ("match", "close", "mismatch")}
    mism_pct = round(counts["mismatch"] / compared * 100.0, 4) if compared else 0.0
    with rt.conn() as conn:
        store.add_vendor_counts(conn, stats.drain())
        if counts["mismatch"]:
            bad = [p for p in out_pairs if p["verdict"] == "mismatch"]
            store.add_event(conn, "warning", "spot_check",
                            f"spot-check: {counts['mismatch']} of {compared} sampled closes "
                            f"differ from {source} by more than {mismatch_pct}%",
                            {"run_id": run_id, "pairs": bad[:50]})
    rollups = _rollups(rt, cfg, n, match_pct, seed, stats, run_id)
    return {
        "status": "partial" if unavailable else "ok",
        "rollups": rollups,
        "source": source,
        "samples": len(pairs),
        "compared": compared,
        "matches": counts["match"],
        "close": counts["close"],
        "mismatches": counts["mismatch"],
        "mismatch_pct": mism_pct,
        "match_threshold_pct": match_pct,
        "mismatch_threshold_pct": mismatch_pct,
        "pairs": out_pairs,
        "unavailable": unavailable,
    }


def _rollups(rt, cfg, samples: int, tolerance_pct: float, seed, stats, run_id) -> dict | None:
    """Our 5m/1h rollups against the primary vendor's own aggregates, for
    sampled symbol-days of the symbols keeping minute bars (None when there
    are none, or the vendor has no such aggregates)."""
    if not cfg.symbols_with("1m"):
        return None
    provider = make_provider(cfg["provider"], stats=stats, redis=rt.redis)
    if not hasattr(provider, "aggregates"):
        return None
    res = intraday.rollup_check(rt.conn, cfg, provider, samples, tolerance_pct=tolerance_pct,
                                seed=None if seed is None else (int(seed) % 1000) / 1000.0)
    if res["mismatches"]:
        with rt.conn() as conn:
            store.add_event(conn, "warning", "spot_check",
                            f"spot-check: {res['mismatches']} of {res['compared']} 5m/1h bars "
                            f"differ from {provider.name}'s own aggregates",
                            {"run_id": run_id, "pairs": res["pairs"]})
    return res
