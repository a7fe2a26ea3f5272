import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np

from appliance.core import calendar as cal

NY = ZoneInfo("America/New_York")


def ny(*args):
    return dt.datetime(*args, tzinfo=NY)


def test_sessions_are_inclusive_and_skip_weekends_and_holidays():
    s = cal.sessions("XNYS", dt.date(2024, 6, 14), dt.date(2024, 6, 24))
    assert s.dtype == np.dtype("datetime64[D]")
    assert s.astype(dt.date).tolist() == [dt.date(2024, 6, 14), dt.date(2024, 6, 17),
                                          dt.date(2024, 6, 18), dt.date(2024, 6, 20),
                                          dt.date(2024, 6, 21), dt.date(2024, 6, 24)]


def test_juneteenth_and_good_friday_are_not_sessions():
    assert not cal.is_session("XNYS", dt.date(2024, 6, 19))  # Juneteenth
    assert not cal.is_session("XNYS", dt.date(2024, 3, 29))  # Good Friday
    assert not cal.is_session("XNYS", dt.date(2023, 4, 7))  # Good Friday
    assert cal.is_session("XNYS", dt.date(2024, 6, 18))


def test_a_session_is_complete_only_after_its_close():
    assert cal.latest_completed_session("XNYS", ny(2024, 6, 18, 15, 59)) == dt.date(2024, 6, 17)
    assert cal.latest_completed_session("XNYS", ny(2024, 6, 18, 16, 0)) == dt.date(2024, 6, 18)
    assert cal.latest_completed_session("XNYS", ny(2024, 6, 19, 12, 0)) == dt.date(2024, 6, 18)


def test_an_early_close_completes_at_one_pm():
    # the day after Thanksgiving closes at 13:00
    assert cal.latest_completed_session("XNYS", ny(2024, 11, 29, 13, 5)) == dt.date(2024, 11, 29)
    assert cal.latest_completed_session("XNYS", ny(2024, 11, 29, 12, 55)) == dt.date(2024, 11, 27)


def test_now_may_be_in_any_timezone():
    utc = dt.datetime(2024, 6, 18, 20, 0, tzinfo=dt.UTC)  # 16:00 New York
    assert cal.latest_completed_session("XNYS", utc) == dt.date(2024, 6, 18)


def test_monday_morning_with_fridays_session_stored_is_up_to_date():
    assert cal.sessions_behind("XNYS", dt.date(2024, 6, 14), ny(2024, 6, 17, 9, 0)) == 0
    assert cal.sessions_behind("XNYS", dt.date(2024, 6, 14), ny(2024, 6, 17, 16, 30)) == 1


def test_the_day_after_thanksgiving_before_the_close_is_up_to_date():
    assert cal.sessions_behind("XNYS", dt.date(2024, 11, 27), ny(2024, 11, 29, 10, 0)) == 0
    assert cal.sessions_behind("XNYS", dt.date(2024, 11, 27), ny(2024, 11, 30, 10, 0)) == 1


def test_sessions_behind_counts_completed_sessions_only():
    # stored up to Friday 2024-06-14; Monday 17, Tuesday 18 done, 19 is a holiday
    assert cal.sessions_behind("XNYS", dt.date(2024, 6, 14), ny(2024, 6, 20, 8, 0)) == 2
    # a stored date on a holiday counts from the next session
    assert cal.sessions_behind("XNYS", dt.date(2024, 6, 19), ny(2024, 6, 20, 17, 0)) == 1


def test_previous_sessions_are_the_n_before_the_date():
    p = cal.previous_sessions("XNYS", dt.date(2024, 6, 20), 3)
    assert p.astype(dt.date).tolist() == [dt.date(2024, 6, 14), dt.date(2024, 6, 17),
                                          dt.date(2024, 6, 18)]
    assert len(cal.previous_sessions("XNYS", dt.date(1990, 1, 3), 5)) == 1


def test_local_dates_match_zoneinfo_on_both_sides_of_dst():
    rng = np.random.default_rng(5)
    ts = rng.integers(0, 4_000_000_000, 3000)
    inst, _ = cal._transitions("America/New_York")
    ts = np.concatenate([ts, inst[1:] - 1, inst[1:], inst[1:] + 1])
    want = [dt.datetime.fromtimestamp(int(t), NY).date() for t in ts]
    assert cal.local_dates(ts).astype(dt.date).tolist() == want


def test_local_time_epochs_give_the_wall_time_in_new_york():
    days = np.array(["2024-03-08", "2024-03-11", "2024-11-01", "2024-11-04"], dtype="datetime64[D]")
    got = cal.local_time_epochs(days, 9 * 3600 + 1800)
    for d, t in zip(days.astype(dt.date), got, strict=False):
        assert dt.datetime.fromtimestamp(int(t), NY) == ny(d.year, d.month, d.day, 9, 30)
