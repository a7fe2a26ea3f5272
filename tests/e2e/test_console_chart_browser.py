"""The symbol chart in headless Chromium with minute data: the timeframe
switcher draws bars for every timeframe, and dragging the chart back in time
loads older bars, without moving the view, until the start of history."""
from __future__ import annotations

import pytest

from tests.minute_store import store_minutes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1w", "1d")


@pytest.fixture
def minutes(server, runtime):
    """NVDA's minutes of 13 sessions (three 1m pages), one session left out."""
    return store_minutes(runtime, "NVDA", "2024-05-28", "2024-06-14", drop=["2024-06-04"],
                         split_date="2024-06-10")


def _chart(page, key: str) -> str:
    return page.evaluate(f"() => document.querySelector('#chart').dataset.{key}")


def _wait_drawn(page, timeframe: str) -> None:
    page.wait_for_function(
        "tf => { const d = document.querySelector('#chart').dataset;"
        "        return d.timeframe === tf && Number(d.loaded) > 0; }", arg=timeframe)


def test_switching_timeframes_draws_bars_for_each(page, server, minutes):
    page.goto(f"{server}/symbols/NVDA")
    page.wait_for_selector("#chart canvas")
    _wait_drawn(page, "1d")
    shots = {}
    for tf in TIMEFRAMES:
        page.click(f"#chart-timeframes a[data-timeframe='{tf}']")
        _wait_drawn(page, tf)
        button = page.locator(f"#chart-timeframes a[data-timeframe='{tf}']")
        assert button.get_attribute("aria-pressed") == "true"
        assert page.locator("#chart-timeframes a[aria-pressed='true']").count() == 1
        assert page.url.endswith("/symbols/NVDA" if tf == "1d" else f"?timeframe={tf}")
        assert f"({tf})" in page.inner_text("#chart-status")
        breaks = int(_chart(page, "breaks"))
        assert (breaks > 0) if tf not in ("1d", "1w") else breaks == 0
        page.mouse.move(0, 0)
        shots[tf] = page.locator("#chart").screenshot()
    assert len(set(shots.values())) == len(TIMEFRAMES), "every timeframe draws other bars"
    # the prices toggle keeps the timeframe
    page.click("#chart-timeframes a[data-timeframe='1h']")
    _wait_drawn(page, "1h")
    page.click("a[data-adjusted='1']")
    page.wait_for_function("() => document.querySelector('#chart').dataset.adjusted === '1'")
    _wait_drawn(page, "1h")
    assert page.url.endswith("/symbols/NVDA?timeframe=1h&adjusted=1")
    assert not page.watch.errors, page.watch.errors
    assert not page.watch.failed, page.watch.failed
    assert not page.watch.offsite(), page.watch.offsite()


def test_dragging_back_loads_older_bars_until_the_start_of_history(page, server, minutes):
    held = []
    page.route("**/console/api/chart/NVDA?*end=*", lambda route: held.append(route))
    page.goto(f"{server}/symbols/NVDA?timeframe=1m")
    page.wait_for_selector("#chart canvas")
    _wait_drawn(page, "1m")
    page.wait_for_timeout(300)
    assert not held, "an older page was asked for before the user scrolled back"
    assert _chart(page, "more") == "1"
    assert page.inner_text("#chart-history") == "scroll left for older bars"
    box = page.locator("#chart").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pages_seen = 0
    for _ in range(60):
        if _chart(page, "more") == "0" and not held:
            break
        if held:
            # an older page is on its way: once it is prepended, the chart
            # still shows the same bars (the rightmost one stays in place)
            first, loaded = _chart(page, "first"), int(_chart(page, "loaded"))
            shown = _chart(page, "lastVisible")
            assert page.inner_text("#chart-history") == "loading older bars…"
            held.pop().continue_()
            page.wait_for_function(
                "f => document.querySelector('#chart').dataset.first !== f", arg=first)
            assert int(_chart(page, "loaded")) > loaded
            assert int(_chart(page, "first")) < int(first)
            assert _chart(page, "lastVisible") == shown, "the view moved"
            pages_seen += 1
            continue
        page.mouse.move(cx - 300, cy)
        page.mouse.down()
        page.mouse.move(cx + 500, cy, steps=8)
        page.mouse.up()
        page.wait_for_timeout(100)
    assert pages_seen == 2                       # 13 sessions: three pages of five
    assert _chart(page, "more") == "0"
    assert page.inner_text("#chart-history") == "start of history"
    with_minutes = minutes
    first_bar = int(with_minutes.t[0]) - 4 * 3600  # EDT: wall time read as UTC
    assert int(_chart(page, "first")) == first_bar
    assert int(_chart(page, "loaded")) == len(with_minutes)
    assert not page.watch.errors, page.watch.errors


def test_the_switcher_fits_a_phone(browser, server, minutes):
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                has_touch=True, device_scale_factor=2)
    pp = phone.new_page()
    try:
        pp.goto(f"{server}/symbols/NVDA?timeframe=15m")
        _wait_drawn(pp, "15m")
        assert pp.locator("#chart-timeframes a").count() == len(TIMEFRAMES)
        assert pp.evaluate("document.documentElement.scrollWidth") <= 390
        pp.tap("#chart-timeframes a[data-timeframe='1h']")
        _wait_drawn(pp, "1h")
    finally:
        phone.close()


def test_the_download_links_follow_the_timeframe_prices_and_visible_range(page, server,
                                                                         minutes):
    import io
    import urllib.parse

    import pyarrow.parquet as pq
    page.goto(f"{server}/symbols/NVDA")
    page.wait_for_selector("#chart canvas")
    page.click("#chart-timeframes a[data-timeframe='15m']")
    _wait_drawn(page, "15m")
    page.click("a[data-adjusted='1']")
    page.wait_for_function("() => document.querySelector('#chart').dataset.adjusted === '1'")
    _wait_drawn(page, "15m")
    page.wait_for_function("() => document.querySelector('#download-parquet')"
                           ".href.includes('timeframe=15m')")
    href = page.locator("#download-parquet").get_attribute("href")
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(href).query))
    assert (q["timeframe"], q["adjusted"], q["format"]) == ("15m", "true", "parquet")
    # the view shows the last sessions of the history
    assert "2024-05-28" <= q["start"] <= q["end"] == "2024-06-14"
    r = page.request.get(server + href)
    assert r.status == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    t = pq.read_table(io.BytesIO(r.body()))
    sessions = {d.isoformat() for d in t.column("session").to_pylist()}
    assert min(sessions) >= q["start"] and max(sessions) == q["end"]
    csv = page.locator("#download-csv").get_attribute("href")
    assert "format=csv" in csv and "timeframe=15m" in csv
    assert not page.watch.errors, page.watch.errors
