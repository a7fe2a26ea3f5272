"""Candle validation, gap, split and dividend detection, quality scores.

Pure functions on numpy columns (no I/O, no per-candle Python objects), so a
whole symbol's history is checked with a few dozen vectorised operations.

Rules (bit ``i`` of ``issue_mask`` is ``RULES[i]``)
---------------------------------------------------
* ``missing_field``      open, high, low, close or volume is missing (NaN)
* ``non_finite``         one of them is +/-infinity
* ``non_positive_price`` open, high, low or close <= 0
* ``ohlc_inconsistent``  not ``low <= min(open, close) <= max(open, close) <= high``
* ``negative_volume``    volume < 0
* ``not_a_session``      the date is not a session of the calendar
* ``future``             the date is after ``today``
* ``duplicate``          a second bar for the same session (the first is kept clean)

A candle is ``valid`` when its mask is 0. Invalid candles are stored all the
same, with ``validated = false``.

Candle score (in [0, 1])
------------------------
``score = 0`` when the prices are unusable (an OHLC value missing, infinite
or <= 0). Otherwise ``score = max(0, 1 - sum(PENALTY[rule] for each failed
rule))`` with penalties: ohlc_inconsistent 0.5, not_a_session 0.5, future
0.5, duplicate 0.5, negative_volume 0.3, missing_field 0.3 and non_finite 0.3
(these two then concern the volume only). A valid candle scores 1.0. Gaps do
not lower the score: a jump can be a real market move.

Symbol score (in [0, 1])
------------------------
``symbol_score = 0.5 * validity + 0.3 * completeness + 0.2 * mean_candle_score``
where ``validity = n_valid / n_total``, ``completeness = min(1, n_present /
n_expected)`` (sessions with a bar / calendar sessions expected since the
symbol's first bar; 1 when none are expected) and ``mean_candle_score`` is the
mean candle score. A symbol without candles scores 0.

Gaps
----
For each candle whose prices are usable, the reference is the close of the
previous usable candle (``prev_close`` for the first one). The close-to-open
and close-to-close moves are computed in percent; ``gap_pct`` is the larger
in magnitude (signed) and ``gap_detected`` is ``|gap_pct| > gap_threshold_pct``.
``gap_kind`` is ``"split"`` when a split executes on that session and explains
the move, i.e. once the reference is scaled by the split ratio either

* the open, the close, or the session's low-high range (widened by
  ``split_tolerance_pct``) is within ``split_tolerance_pct`` of it, or
* the remaining move is no longer above ``gap_threshold_pct``;

otherwise, ``"dividend"`` when cash dividends go ex on that session (an
ex-date after the previous bar's session and at most this one: an ex-date on
a non-session takes effect at the next session) and explain the move the same
way, the reference lowered by their cash (``ref - sum(cash)``: the price a
holder of the share without the dividend expects); otherwise ``"jump"``. A
dividend-explained drop is never a jump. Sessions with no bar between a symbol's first and last
bar are ``missing_sessions`` (holidays are never sessions, so never missing).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.core.candles import Bars, Dividend, Split

RULES: tuple[str, ...] = (
    "missing_field",
    "non_finite",
    "non_positive_price",
    "ohlc_inconsistent",
    "negative_volume",
    "not_a_session",
    "future",
    "duplicate",
)
BIT = {name: np.uint16(1 << i) for i, name in enumerate(RULES)}
PENALTY = {
    "missing_field": 0.3,
    "non_finite": 0.3,
    "non_positive_price": 1.0,
    "ohlc_inconsistent": 0.5,
    "negative_volume": 0.3,
    "not_a_session": 0.5,
    "future": 0.5,
    "duplicate": 0.5,
}
GAP_SPLIT = "split"
GAP_JUMP = "jump"
GAP_DIVIDEND = "dividend"
GAP_MISSING = "missing"
#: every kind a gap has (the API's and the console's ``kind`` filter)
GAP_KINDS = (GAP_SPLIT, GAP_DIVIDEND, GAP_JUMP, GAP_MISSING)


def _score_table() -> np.ndarray:
    n = 1 << len(RULES)
    t = np.ones(n, dtype=np.float64)
    for m in range(n):
        pen = sum(PENALTY[r] for i, r in enumerate(RULES) if m >> i & 1)
        t[m] = max(0.0, 1.0 - pen)
    return t


_SCORES = _score_table()
_NAMES = [tuple(r for i, r in enumerate(RULES) if m >> i & 1) for m in range(1 << len(RULES))]


def issues_of(mask: int) -> list[str]:
    """Rule names set in one ``issue_mask`` value."""
    return list(_NAMES[int(mask) & ((1 << len(RULES)) - 1)])


@dataclass
class Checked:
    """Per-candle results, aligned with the validated ``Bars``."""

    valid: np.ndarray  # bool
    issue_mask: np.ndarray  # uint16, bits per RULES
    score: np.ndarray  # float64 in [0, 1]
    gap_detected: np.ndarray  # bool
    gap_kind: np.ndarray  # object: None / "split" / "jump"
    gap_pct: np.ndarray  # float64, signed percent (NaN when not computed)

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def issues(self, i: int) -> list[str]:
        return issues_of(self.issue_mask[i])

    def issues_lists(self) -> list[list[str]]:
        """Rule names per candle (e.g. for a ``text[]`` column)."""
        names = _NAMES
        return [list(names[m]) for m in self.issue_mask.tolist()]

    @property
    def n_valid(self) -> int:
        return int(np.count_nonzero(self.valid))

    @property
    def mean_score(self) -> float:
        return float(self.score.mean()) if len(self) else 0.0


def _d64(x: Any) -> np.datetime64:
    if isinstance(x, dt.datetime):
        x = x.date()
    return np.datetime64(x, "D")


def _split_arrays(splits: Iterable[Split]) -> tuple[np.ndarray, np.ndarray]:
    """(dates ascending, combined ratio per date)."""
    by_day: dict[np.datetime64, float] = {}
    for s in splits:
        d = _d64(s.execution_date)
        by_day[d] = by_day.get(d, 1.0) * s.ratio
    if not by_day:
        return np.empty(0, dtype="datetime64[D]"), np.empty(0)
    days = sorted(by_day)
    return np.array(days, dtype="datetime64[D]"), np.array([by_day[d] for d in days])


def _in_sorted(values: np.ndarray, sorted_ref: np.ndarray) -> np.ndarray:
    if sorted_ref.size == 0:
        return np.zeros(values.shape, dtype=bool)
    i = np.searchsorted(sorted_ref, values)
    np.minimum(i, sorted_ref.size - 1, out=i)
    return sorted_ref[i] == values


def _gap_kinds(gap: np.ndarray, sess: np.ndarray, ref: np.ndarray, o: np.ndarray,
               h: np.ndarray, lo: np.ndarray, c: np.ndarray, splits: Sequence[Split],
               gap_threshold_pct: float,
               split_tolerance_pct: float) -> np.ndarray:
    """``jump`` for each gap, ``split`` where a stored split on that session
    explains it (the reference close, scaled by the split, fits the bar)."""
    gap_kind = np.full(len(gap), None, dtype=object)
    if not gap.any():
        return gap_kind
    gap_kind[gap] = GAP_JUMP
    sdays, sratio = _split_arrays(splits)
    if not sdays.size:
        return gap_kind
    gi = np.nonzero(gap)[0]
    gi = gi[_in_sorted(sess[gi], sdays)]
    if gi.size:
        ratio = sratio[np.searchsorted(sdays, sess[gi])]
        scaled = ref[gi] * ratio  # the reference in post-split terms
        explained = _explained(scaled, o[gi], h[gi], lo[gi], c[gi], gap_threshold_pct,
                               split_tolerance_pct)
        gap_kind[gi[explained]] = GAP_SPLIT
    return gap_kind


def _explained(scaled: np.ndarray, o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray,
               gap_threshold_pct: float, split_tolerance_pct: float) -> np.ndarray:
    """Where a reference ``scaled`` to the post-event terms fits the bar."""
    tol = split_tolerance_pct / 100.0
    thr = gap_threshold_pct / 100.0
    co_a = np.abs(o / scaled - 1.0)
    cc_a = np.abs(c / scaled - 1.0)
    in_range = (scaled >= lo * (1 - tol)) & (scaled <= h * (1 + tol))
    return (co_a <= tol) | (cc_a <= tol) | in_range | (np.maximum(co_a, cc_a) <= thr)


def _dividend_kinds(gap_kind: np.ndarray, gap: np.ndarray, sess: np.ndarray,
                    prev_sess: np.ndarray, ref: np.ndarray, o: np.ndarray, h: np.ndarray,
                    lo: np.ndarray, c: np.ndarray, dividends: Iterable[Dividend], gap_threshold_pct: float,
                    split_tolerance_pct: float) -> None:
    """``dividend`` (in place) for each ``jump`` that the cash of the
    dividends going ex at that bar explains."""
    gi = np.nonzero(gap & (gap_kind == GAP_JUMP))[0]
    divs = [(_d64(d.ex_dividend_date), float(d.cash_amount)) for d in dividends
            if d.cash_amount is not None and np.isfinite(d.cash_amount) and d.cash_amount > 0]
    if not gi.size or not divs:
        return
    ex = np.array([d for d, _ in divs], dtype="datetime64[D]")
    cash = np.array([x for _, x in divs])
    order = np.argsort(ex, kind="stable")
    ex, csum = ex[order], np.concatenate([[0.0], np.cumsum(cash[order])])
    # cash going ex in (previous bar's session, this session]
    hi = np.searchsorted(ex, sess[gi], side="right")
    lo_i = np.searchsorted(ex, prev_sess[gi], side="right")
    d_cash = csum[hi] - csum[lo_i]
    has = d_cash > 0
    gi, d_cash = gi[has], d_cash[has]
    if gi.size:
        scaled = ref[gi] - d_cash
        ok = scaled > 0
        gi, scaled = gi[ok], scaled[ok]
        explained = _explained(scaled, o[gi], h[gi], lo[gi], c[gi], gap_threshold_pct,
                               split_tolerance_pct)
        gap_kind[gi[explained]] = GAP_DIVIDEND


def _gap_of(o: np.ndarray, c: np.ndarray, ref: np.ndarray, usable: np.ndarray,
            gap_threshold_pct: float) -> tuple[np.ndarray, np.ndarray]:
    """(gap_pct, gap) of each bar against its reference close ``ref``: the
    larger move of its open or close, in percent (NaN where the prices are
    unusable), and whether it exceeds ``gap_threshold_pct``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        co = (o / ref - 1.0) * 100.0
        cc = (c / ref - 1.0) * 100.0
        gap_pct = np.where(np.abs(co) >= np.abs(cc), co, cc)
        gap_pct[~usable] = np.nan
        return gap_pct, np.abs(gap_pct) > gap_threshold_pct


def _bar_checks(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray,
                v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rules one candle is checked by on its own: (issue mask of the
    first five RULES, usable prices)."""
    prices = np.stack((o, h, lo, c))  # 4 x n
    nan_p = np.isnan(prices).any(axis=0)
    inf_p = np.isinf(prices).any(axis=0)
    nan_v = np.isnan(v)
    inf_v = np.isinf(v)
    with np.errstate(invalid="ignore"):
        nonpos = (prices <= 0).any(axis=0)
        usable = ~(nan_p | inf_p | nonpos)
        body_lo = np.minimum(o, c)
        body_hi = np.maximum(o, c)
        ohlc_bad = usable & ~((lo <= body_lo) & (body_hi <= h))
        negvol = v < 0
    mask = (nan_p | nan_v).astype(np.uint16)
    mask |= (inf_p | inf_v).astype(np.uint16) << 1
    mask |= nonpos.astype(np.uint16) << 2
    mask |= ohlc_bad.astype(np.uint16) << 3
    mask |= negvol.astype(np.uint16) << 4
    return mask, usable


def validate_day(session: Any, o: Any, h: Any, lo: Any, c: Any, v: Any,
                 prev_close: np.ndarray, cal_sessions: np.ndarray,
                 today: Any, splits: dict[int, Sequence[Split]] | None = None,
                 gap_threshold_pct: float = 20.0, split_tolerance_pct: float = 2.0) -> Checked:
    """``validate``'s rules for one session's daily bars of many symbols (a
    whole-market day, one bar per symbol): the same per-candle rules, the
    session against the calendar and ``today``, and each bar's gap against
    its symbol's previous close (``prev_close``, NaN when none), explained by
    that symbol's split on the session (``splits``: {row index: splits})."""
    o, h, lo, c, v = (np.asarray(a, dtype=np.float64) for a in (o, h, lo, c, v))
    n = len(o)
    sess = np.full(n, _d64(session), dtype="datetime64[D]")
    mask, usable = _bar_checks(o, h, lo, c, v)
    cal = np.asarray(cal_sessions).astype("datetime64[D]", copy=False)
    mask |= (~_in_sorted(sess, cal)).astype(np.uint16) << 5
    mask |= (sess > _d64(today)).astype(np.uint16) << 6
    valid = mask == 0
    score = _SCORES[mask]
    score[~usable] = 0.0
    ref = np.asarray(prev_close, dtype=np.float64)
    ref = np.where(np.isfinite(ref) & (ref > 0), ref, np.nan)
    gap_pct, gap = _gap_of(o, c, ref, usable, gap_threshold_pct)
    gap_kind = np.full(n, None, dtype=object)
    gap_kind[gap] = GAP_JUMP
    for i, sp in (splits or {}).items():
        if gap[i]:
            gap_kind[i] = _gap_kinds(gap[i:i + 1], sess[i:i + 1], ref[i:i + 1], o[i:i + 1],
                                     h[i:i + 1], lo[i:i + 1], c[i:i + 1], sp,
                                     gap_threshold_pct, split_tolerance_pct)[0]
    return Checked(valid, mask, score, gap, gap_kind, gap_pct)


def validate(bars: Bars, cal_sessions: np.ndarray, today: Any, prev_close: float | None = None,
             splits: Sequence[Split] = (), gap_threshold_pct: float = 20.0,
             split_tolerance_pct: float = 2.0, dividends: Sequence[Dividend] = (),
             prev_session: Any = None) -> Checked:
    """Check every candle of ``bars`` (one symbol, ideally sorted by session).

    ``cal_sessions``: the calendar's sessions (sorted ``datetime64[D]``)
    covering at least the bars' range. ``prev_close``: the close of the
    stored candle just before the first one, for its gap check;
    ``prev_session`` its session (None: the day before the first bar).
    ``dividends``: the symbol's applicable cash dividends."""
    n = len(bars)
    sess = bars.session.astype("datetime64[D]", copy=False)
    o, h, lo, c, v = bars.open, bars.high, bars.low, bars.close, bars.volume
    if n == 0:
        e = np.empty(0)
        return Checked(np.empty(0, bool), np.empty(0, np.uint16), e, np.empty(0, bool),
                       np.empty(0, object), e.copy())

    mask, usable = _bar_checks(o, h, lo, c, v)
    cal = np.asarray(cal_sessions).astype("datetime64[D]", copy=False)
    mask |= (~_in_sorted(sess, cal)).astype(np.uint16) << 5
    mask |= (sess > _d64(today)).astype(np.uint16) << 6
    # duplicates: every occurrence of a session after its first
    dup = np.zeros(n, dtype=bool)
    if n > 1:
        if np.all(sess[1:] >= sess[:-1]):
            dup[1:] = sess[1:] == sess[:-1]
        else:
            order = np.argsort(sess, kind="stable")
            s_sorted = sess[order]
            dup[order[1:]] = s_sorted[1:] == s_sorted[:-1]
    mask |= dup.astype(np.uint16) << 7

    valid = mask == 0
    score = _SCORES[mask]
    score[~usable] = 0.0

    # -- gaps against the previous usable close -----------------------------------
    idx = np.where(usable, np.arange(n), -1)
    np.maximum.accumulate(idx, out=idx)
    prev_idx = np.empty(n, dtype=np.int64)
    prev_idx[0] = -1
    prev_idx[1:] = idx[:-1]
    first_ref = np.nan if prev_close is None or not np.isfinite(prev_close) or prev_close <= 0 \
        else float(prev_close)
    ref = np.where(prev_idx >= 0, c[np.maximum(prev_idx, 0)], first_ref)
    gap_pct, gap = _gap_of(o, c, ref, usable, gap_threshold_pct)
    gap_kind = _gap_kinds(gap, sess, ref, o, h, lo, c, splits, gap_threshold_pct,
                          split_tolerance_pct)
    if dividends:
        first_prev = sess[0] - 1 if prev_session is None else _d64(prev_session)
        ref_sess = np.where(prev_idx >= 0, sess[np.maximum(prev_idx, 0)], first_prev)
        _dividend_kinds(gap_kind, gap, sess, ref_sess, ref, o, h, lo, c, dividends,
                        gap_threshold_pct, split_tolerance_pct)
    return Checked(valid, mask, score, gap, gap_kind, gap_pct)


def missing_sessions(stored_sessions: np.ndarray, cal_sessions: np.ndarray, first: Any,
                     last: Any) -> np.ndarray:
    """Calendar sessions in ``first``..``last`` (inclusive) that have no bar."""
    cal = np.asarray(cal_sessions).astype("datetime64[D]", copy=False)
    a = np.searchsorted(cal, _d64(first), side="left")
    b = np.searchsorted(cal, _d64(last), side="right")
    expected = cal[a:b]
    stored = np.unique(np.asarray(stored_sessions).astype("datetime64[D]", copy=False))
    return expected[~_in_sorted(expected, stored)]


def symbol_score(n_valid: int, n_total: int, n_present: int, n_expected: int,
                 mean_candle_score: float) -> float:
    """``0.5 * validity + 0.3 * completeness + 0.2 * mean_candle_score`` (see module doc)."""
    if n_total <= 0:
        return 0.0
    validity = min(1.0, max(0.0, n_valid / n_total))
    completeness = 1.0 if n_expected <= 0 else min(1.0, max(0.0, n_present / n_expected))
    m = float(mean_candle_score)
    m = 0.0 if not np.isfinite(m) else min(1.0, max(0.0, m))
    return round(0.5 * validity + 0.3 * completeness + 0.2 * m, 6)


def split_factors(sessions: np.ndarray, splits: Iterable[Split]) -> np.ndarray:
    """Per session, the product of the ratios of every split executing *after*
    it (1.0 from the last split on): multiply raw prices by it to adjust."""
    sess = np.asarray(sessions).astype("datetime64[D]", copy=False)
    days, ratio = _split_arrays(splits)
    if days.size == 0:
        return np.ones(sess.shape[0])
    # suffix[k] = product of ratios of splits k.. (splits at/after days[k])
    suffix = np.ones(days.size + 1)
    suffix[:-1] = np.cumprod(ratio[::-1])[::-1]
    return suffix[np.searchsorted(days, sess, side="right")]


# -- intraday -------------------------------------------------------------------

#: Relative tolerance of the daily-versus-minutes rule on high and low, and
#: on volume (vendors count a day's volume from a wider set of trades).
DAILY_PRICE_TOLERANCE = 0.005
DAILY_VOLUME_TOLERANCE = 0.10


def minute_rules(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray,
                 v: np.ndarray) -> np.ndarray:
    """Per minute bar: True when its OHLC is consistent (finite, positive,
    low <= open/close <= high, volume >= 0). Session hours are checked where
    the bars are kept (``intraday.in_session``)."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) \
            & np.isfinite(v)
        return finite & (lo > 0) & (lo <= np.minimum(o, c)) & (h >= np.maximum(o, c)) \
            & (v >= 0)


def daily_agrees(daily_high: float, daily_low: float, daily_volume: float,
                 minutes_high: float, minutes_low: float, minutes_volume: float) -> bool:
    """The daily bar against the aggregate of its regular-hours minute bars:
    high and low within ``DAILY_PRICE_TOLERANCE``, volume within
    ``DAILY_VOLUME_TOLERANCE`` (the daily bar never takes Form T trades, the
    pre- and after-hours minutes do, so only regular hours are compared)."""
    def close(a: float, b: float, tol: float) -> bool:
        return abs(a - b) <= tol * max(abs(a), abs(b), 1e-12)
    return close(daily_high, minutes_high, DAILY_PRICE_TOLERANCE) and \
        close(daily_low, minutes_low, DAILY_PRICE_TOLERANCE) and \
        close(daily_volume, minutes_volume, DAILY_VOLUME_TOLERANCE)
