/* The symbol page's candlestick chart (lightweight-charts, vendored).
 * Every colour comes from the stylesheet's custom properties (--chart-*,
 * --border, --text-muted), so the chart follows the light and dark themes;
 * the chart data gives each marker and invalid candle a role, never a colour. */
(function () {
  "use strict";
  var el = document.getElementById("chart");
  var status = document.getElementById("chart-status");
  if (!el || !window.LightweightCharts) { return; }
  var LC = window.LightweightCharts;
  var css = getComputedStyle(document.documentElement);
  function v(name) { return css.getPropertyValue(name).trim(); }
  var text = v("--text-muted"), grid = v("--border");
  var role = {
    invalid: v("--chart-invalid"), split: v("--chart-split"), jump: v("--chart-jump"),
    missing: v("--chart-missing")
  };
  var chart = LC.createChart(el, {
    autoSize: true,
    layout: { background: { type: "solid", color: "transparent" }, textColor: text },
    grid: { vertLines: { color: grid }, horzLines: { color: grid } },
    rightPriceScale: { borderColor: grid },
    timeScale: { borderColor: grid },
    crosshair: { mode: 0 }
  });
  var up = v("--chart-up"), down = v("--chart-down");
  var series = chart.addSeries(LC.CandlestickSeries, {
    upColor: up, downColor: down, borderVisible: false, wickUpColor: up, wickDownColor: down
  });
  var markers = LC.createSeriesMarkers(series, []);
  var buttons = document.querySelectorAll(".chart-toolbar [data-adjusted]");

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

  function load(adjusted) {
    status.textContent = "Loading…";
    fetch(el.dataset.src + "?adjusted=" + (adjusted ? "1" : "0"),
          { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(coloured)
      .then(function (d) {
        series.setData(d.candles);
        markers.setMarkers(d.markers);
        chart.timeScale().fitContent();
        var n = d.candles.filter(function (c) { return c.open !== undefined; }).length;
        status.textContent = n + " candles, " + d.markers.length + " markers, " +
          (d.adjusted ? "split-adjusted" : "raw") + " prices";
        el.dataset.loaded = String(n);
        el.dataset.adjusted = d.adjusted ? "1" : "0";
        buttons.forEach(function (b) {
          var on = (b.dataset.adjusted === "1") === d.adjusted;
          b.classList.toggle("primary", on);
          b.setAttribute("aria-pressed", on ? "true" : "false");
        });
      })
      .catch(function (e) { status.textContent = "Could not load the chart: " + e.message; });
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function (ev) {
      ev.preventDefault();
      history.replaceState(null, "", b.href);
      load(b.dataset.adjusted === "1");
    });
  });
  load(el.dataset.adjusted === "1");
})();
