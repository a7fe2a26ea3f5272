/* The symbol page's candlestick chart (lightweight-charts, vendored).
 * Every colour comes from the stylesheet's custom properties (--chart-*,
 * --border, --text-muted), so the chart follows the light and dark themes;
 * the chart data gives each marker and invalid candle a role, never a colour.
 *
 * Timeframes 1m..1w (the buttons in #chart-timeframes) and raw,
 * split-adjusted or total-return prices (data-adjusted 0, 1 or total); the
 * URL follows the choice. Data comes a page at a
 * time from the console's chart endpoint (data-src): the latest page first,
 * then, when the user scrolls back near the first loaded bar, the page before
 * it (end = the page's "older" date), prepended without moving the view, until
 * the page says there is nothing older. Intraday timeframes draw a faint
 * column at the first bar of each session (a histogram on its own hidden
 * scale: the library has no vertical lines).
 *
 * For tests, #chart carries data-timeframe, data-adjusted, data-loaded (bars
 * drawn), data-first (the earliest loaded bar's time), data-last-visible (the
 * time of the rightmost bar in view), data-breaks (session breaks drawn) and
 * data-more ("1" while older bars remain). */
(function () {
  "use strict";
  var el = document.getElementById("chart");
  var status = document.getElementById("chart-status");
  var historyNote = document.getElementById("chart-history");
  if (!el || !window.LightweightCharts) { return; }
  var LC = window.LightweightCharts;
  var css = getComputedStyle(document.documentElement);
  function v(name) { return css.getPropertyValue(name).trim(); }
  var text = v("--text-muted"), grid = v("--border");
  var role = {
    invalid: v("--chart-invalid"), split: v("--chart-split"), jump: v("--chart-jump"),
    missing: v("--chart-missing"), dividend: v("--chart-dividend"), exdiv: v("--chart-exdiv")
  };
  var INTRADAY = { "1m": 1, "5m": 1, "15m": 1, "30m": 1, "1h": 1, "4h": 1 };
  var NEAR = 40;          // bars from the left edge that fetch the page before
  var INITIAL_BARS = 300; // intraday: bars shown at first, the latest ones

  var chart = LC.createChart(el, {
    autoSize: true,
    layout: { background: { type: "solid", color: "transparent" }, textColor: text },
    grid: { vertLines: { color: grid }, horzLines: { color: grid } },
    rightPriceScale: { borderColor: grid },
    timeScale: { borderColor: grid },
    crosshair: { mode: 0 }
  });
  // added first, so drawn beneath the candles
  var breaks = chart.addSeries(LC.HistogramSeries, {
    color: v("--chart-session"), priceScaleId: "sessions", lastValueVisible: false,
    priceLineVisible: false, base: 0
  });
  chart.priceScale("sessions").applyOptions({ visible: false,
                                             scaleMargins: { top: 0, bottom: 0 } });
  var up = v("--chart-up"), down = v("--chart-down");
  var series = chart.addSeries(LC.CandlestickSeries, {
    upColor: up, downColor: down, borderVisible: false, wickUpColor: up, wickDownColor: down
  });
  var markers = LC.createSeriesMarkers(series, []);
  var tfButtons = document.querySelectorAll("#chart-timeframes [data-timeframe]");
  var adjButtons = document.querySelectorAll(".chart-toolbar [data-adjusted]");

  var state = {
    timeframe: el.dataset.timeframe || "1d", adjusted: el.dataset.adjusted || "0",
    candles: [], markers: [], breaks: [], older: null, loading: false, placing: false,
    generation: 0
  };

  function coloured(d) {
    d.candles.forEach(function (c) {
      if (c.role === "invalid") {
        c.color = v("--chart-invalid-body");
        c.borderColor = c.wickColor = role.invalid;
      }
      delete c.role;
    });
    d.markers.forEach(function (m) { m.color = role[m.role]; delete m.role; });
    return d;
  }

  function pageUrl(s) {
    var q = [];
    if (s.timeframe !== "1d") { q.push("timeframe=" + encodeURIComponent(s.timeframe)); }
    if (s.adjusted === "1") { q.push("adjusted=1"); }
    if (s.adjusted === "total") { q.push("adjust=total"); }
    return location.pathname + (q.length ? "?" + q.join("&") : "");
  }

  function markButtons() {
    tfButtons.forEach(function (b) {
      var on = b.dataset.timeframe === state.timeframe;
      b.classList.toggle("primary", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
      b.href = pageUrl({ timeframe: b.dataset.timeframe, adjusted: state.adjusted });
    });
    adjButtons.forEach(function (b) {
      var adj = b.dataset.adjusted;
      var on = adj === state.adjusted;
      b.classList.toggle("primary", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
      b.href = pageUrl({ timeframe: state.timeframe, adjusted: adj });
    });
  }

  function bars() {
    return state.candles.filter(function (c) { return c.open !== undefined; }).length;
  }

  function showStatus() {
    status.textContent = bars() + " bars (" + state.timeframe + "), " +
      state.markers.length + " markers, " +
      ({ "1": "split-adjusted", total: "total-return" }[state.adjusted] || "raw") + " prices";
    historyNote.textContent = state.loading ? "loading older bars…" :
      (state.older ? "scroll left for older bars" : "start of history");
    el.dataset.loaded = String(bars());
    el.dataset.first = state.candles.length ? String(state.candles[0].time) : "";
    el.dataset.breaks = String(state.breaks.length);
    el.dataset.more = state.older ? "1" : "0";
    el.dataset.timeframe = state.timeframe;
    el.dataset.adjusted = state.adjusted;
  }

  /* Markers go last: their places are worked out against the time scale,
   * which every series' data (the session breaks' too) makes up. A new
   * timeframe starts from an empty chart (its times may be of another kind). */
  function draw(reset) {
    if (reset) {
      markers.setMarkers([]);
      series.setData([]);
      breaks.setData([]);
    }
    breaks.setData(state.breaks.map(function (t) { return { time: t, value: 1 }; }));
    series.setData(state.candles);
    markers.setMarkers(state.markers);
  }

  function fetchPage(end) {
    var q = "?timeframe=" + encodeURIComponent(state.timeframe) +
      (state.adjusted === "total" ? "&adjust=total" : "&adjusted=" + state.adjusted) +
      (end ? "&end=" + end : "");
    return fetch(el.dataset.src + q,
                 { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(coloured);
  }

  function failed(e) {
    state.loading = false;
    status.textContent = "Could not load the chart: " + e.message;
    historyNote.textContent = "";
  }

  /* The latest page of the current timeframe and prices, replacing the chart. */
  function load() {
    var gen = ++state.generation;
    state.loading = true;
    status.textContent = "Loading…";
    historyNote.textContent = "";
    markButtons();
    fetchPage(null).then(function (d) {
      if (gen !== state.generation) { return; }
      state.candles = d.candles;
      state.markers = d.markers;
      state.breaks = d.breaks || [];
      state.older = d.older;
      state.loading = false;
      state.placing = true;
      chart.applyOptions({ timeScale: { timeVisible: !!INTRADAY[state.timeframe],
                                        secondsVisible: false } });
      draw(true);
      var n = state.candles.length;
      if (INTRADAY[state.timeframe] && n > INITIAL_BARS) {
        chart.timeScale().setVisibleLogicalRange({ from: n - INITIAL_BARS, to: n + 2 });
      } else {
        chart.timeScale().fitContent();
      }
      state.placing = false;
      showStatus();
      maybeOlder();
    }).catch(function (e) { if (gen === state.generation) { failed(e); } });
  }

  /* The page before the earliest loaded bar, prepended; the view keeps
   * showing the same bars (their logical indexes move by the bars added). */
  function loadOlder() {
    if (state.loading || !state.older) { return; }
    var gen = state.generation;
    state.loading = true;
    showStatus();
    fetchPage(state.older).then(function (d) {
      if (gen !== state.generation) { return; }
      var first = state.candles.length ? state.candles[0].time : null;
      var older = d.candles.filter(function (c) { return first === null || c.time < first; });
      var range = chart.timeScale().getVisibleLogicalRange();
      state.candles = older.concat(state.candles);
      state.markers = d.markers.filter(function (m) { return first === null || m.time < first; })
        .concat(state.markers);
      state.breaks = (d.breaks || []).filter(function (t) { return first === null || t < first; })
        .concat(state.breaks);
      state.older = d.older;
      state.loading = false;
      state.placing = true;
      draw(false);
      if (range && older.length) {
        chart.timeScale().setVisibleLogicalRange({ from: range.from + older.length,
                                                   to: range.to + older.length });
      }
      state.placing = false;
      showStatus();
      maybeOlder();
    }).catch(function (e) { if (gen === state.generation) { failed(e); } });
  }

  /* On every move of the view (and after a page is drawn): fetch the page
   * before when the first loaded bar is near. Not while a page is being put
   * in place, and judged by where the view is now (the library may report a
   * move after the page has placed the view). */
  function maybeOlder() {
    if (state.placing) { return; }
    var ts = chart.timeScale(), range = ts.getVisibleLogicalRange(), shown = ts.getVisibleRange();
    el.dataset.lastVisible = shown ? String(shown.to) : "";
    downloads(shown);
    if (range && range.from < NEAR && state.older && !state.loading) { loadOlder(); }
  }
  chart.timeScale().subscribeVisibleLogicalRangeChange(maybeOlder);

  /* The Download links ask the API for the sessions the view shows, in the
   * chart's timeframe and prices (a bar's time: a date string, or New York
   * wall-clock seconds). */
  function day(t) {
    if (typeof t === "string") { return t.slice(0, 10); }
    if (typeof t === "object") {  /* a business day {year, month, day} */
      return t.year + "-" + String(t.month).padStart(2, "0") + "-" + String(t.day).padStart(2, "0");
    }
    return new Date(t * 1000).toISOString().slice(0, 10);
  }
  function downloads(shown) {
    if (!shown) { return; }
    document.querySelectorAll("#downloads a[data-format]").forEach(function (a) {
      var u = new URL(a.href, window.location.href);
      u.searchParams.set("timeframe", state.timeframe);
      if (state.adjusted === "total") {
        u.searchParams.delete("adjusted");
        u.searchParams.set("adjust", "total");
      } else {
        u.searchParams.delete("adjust");
        u.searchParams.set("adjusted", state.adjusted === "1" ? "true" : "false");
      }
      u.searchParams.set("start", day(shown.from));
      u.searchParams.set("end", day(shown.to));
      a.href = u.pathname + u.search;
    });
  }

  function choose(ev, change) {
    ev.preventDefault();
    change();
    history.replaceState(null, "", pageUrl(state));
    load();
  }
  tfButtons.forEach(function (b) {
    b.addEventListener("click", function (ev) {
      choose(ev, function () { state.timeframe = b.dataset.timeframe; });
    });
  });
  adjButtons.forEach(function (b) {
    b.addEventListener("click", function (ev) {
      choose(ev, function () { state.adjusted = b.dataset.adjusted; });
    });
  });
  load();
})();
