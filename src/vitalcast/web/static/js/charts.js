/* vitalcast charts: small SVG charts drawn from JSON, each with its numbers as a table.

   No library: three chart kinds (sparkline, time series, diverging bars) are all the UI
   needs, and drawing them by hand keeps the page free of third-party code and requests.
   Every chart is a <figure> whose SVG has a title and a description, followed by a
   <details> table of the values it shows (WCAG 1.1.1: a text alternative). */
(function () {
  "use strict";
  var VC = (window.VC = window.VC || {});
  var NS = "http://www.w3.org/2000/svg";
  var uid = 0;

  function svgEl(name, attrs, parent) {
    var el = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    if (parent) parent.appendChild(el);
    return el;
  }
  function htmlEl(name, attrs, text, parent) {
    var el = document.createElement(name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    if (text !== undefined && text !== null) el.textContent = text;
    if (parent) parent.appendChild(el);
    return el;
  }
  function niceStep(span, count) {
    var raw = span / Math.max(count, 1);
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var norm = raw / mag;
    return (norm >= 5 ? 10 : norm >= 2 ? 5 : norm >= 1 ? 2 : 1) * mag;
  }
  function fmtNum(v) {
    if (v === null || v === undefined || isNaN(v)) return "—";
    var a = Math.abs(v);
    // No trailing zeros: a heart rate of 92 reads "92", not "92.0".
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1).replace(/\.0$/, "") : v.toFixed(2).replace(/\.?0+$/, "");
  }
  VC.fmtNum = fmtNum;
  var timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  var dayFmt = new Intl.DateTimeFormat(undefined, { day: "2-digit", month: "short" });

  /* Sparkline: points [[epochSeconds, value], ...] in [0, 1]; decorative (aria-hidden),
     the row carries the same numbers as text. */
  VC.sparkline = function (el, points, threshold) {
    el.textContent = "";
    var w = 96, h = 24, pad = 2;
    var svg = svgEl("svg", { width: w, height: h, viewBox: "0 0 " + w + " " + h, "aria-hidden": "true", focusable: "false", class: "sparksvg" }, el);
    if (!points.length) return;
    var t0 = points[0][0], t1 = points[points.length - 1][0];
    // Scale to the values and the threshold, but never to less than 10 percentage points,
    // so that hourly noise does not look like a trend.
    var vals = points.map(function (p) { return p[1]; }).concat(threshold ? [threshold] : []);
    var vmin = Math.min.apply(null, vals), vmax = Math.max.apply(null, vals);
    var mid = (vmin + vmax) / 2, span = Math.max(vmax - vmin, 0.1);
    vmin = Math.max(0, mid - span / 2); vmax = vmin + span;
    function x(t) { return t1 === t0 ? w - pad : pad + ((t - t0) / (t1 - t0)) * (w - 2 * pad); }
    function y(v) { return h - pad - ((v - vmin) / (vmax - vmin)) * (h - 2 * pad); }
    if (threshold) svgEl("line", { x1: 0, x2: w, y1: y(threshold), y2: y(threshold), class: "spark-thr" }, svg);
    if (points.length > 1) {
      svgEl("polyline", { points: points.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join(" "), class: "spark-line" }, svg);
    }
    var last = points[points.length - 1];
    svgEl("circle", { cx: x(last[0]), cy: y(last[1]), r: 2.5, class: "spark-dot" }, svg);
  };

  /* Time series chart.
     opts: title, unit, series [{t: Date, v: number}], threshold (same scale as v),
     percent (values are probabilities, shown as %), markers [{t: Date, label}],
     quarantined [{t: Date|null, reason}], xMin/xMax (Date), height. */
  VC.timeChart = function (container, opts) {
    var id = "chart" + (++uid);
    var fig = htmlEl("figure", { class: "tchart" }, null, container);
    htmlEl("figcaption", { id: id + "-t" }, opts.title + (opts.unit ? " (" + opts.unit + ")" : ""), fig);
    var W = opts.width || 640, H = opts.height || 180, L = 48, R = 12, B = 28;
    var T = opts.markers && opts.markers.length ? 30 : 10; // marker labels sit above the plot
    var s = opts.series;
    var vals = s.map(function (p) { return p.v; });
    var times = s.map(function (p) { return +p.t; })
      .concat((opts.markers || []).map(function (m) { return +m.t; }))
      .concat((opts.quarantined || []).filter(function (q) { return q.t; }).map(function (q) { return +q.t; }));
    var xMin = opts.xMin ? +opts.xMin : Math.min.apply(null, times);
    var xMax = opts.xMax ? +opts.xMax : Math.max.apply(null, times);
    if (!isFinite(xMin) || !isFinite(xMax)) { xMax = Date.now(); xMin = xMax - 86400000; }
    if (xMax - xMin < 3600000) xMin = xMax - 3600000;
    var lo = opts.percent ? 0 : Math.min.apply(null, vals);
    var hi = Math.max.apply(null, vals.concat(opts.threshold ? [opts.threshold * 1.15] : []));
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi === lo) { hi = lo + (Math.abs(lo) || 1) * 0.1; lo = lo - (Math.abs(lo) || 1) * 0.1; }
    var step = niceStep(hi - lo, 4);
    lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
    if (opts.percent) hi = Math.min(1, Math.max(hi, step));
    function x(t) { return L + ((t - xMin) / (xMax - xMin)) * (W - L - R); }
    function y(v) { return T + (1 - (v - lo) / (hi - lo)) * (H - T - B); }

    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-labelledby": id + "-t " + id + "-d", class: "tsvg", preserveAspectRatio: "xMinYMin meet" }, fig);
    var desc = svgEl("desc", { id: id + "-d" }, svg);
    var lastVal = s.length ? s[s.length - 1].v : null;
    desc.textContent = s.length
      ? s.length + " values; latest " + (opts.percent ? Math.round(lastVal * 100) + " %" : fmtNum(lastVal) + " " + (opts.unit || "")) + ". The table below lists them."
      : "No values.";
    // grid and y axis
    var decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    for (var v = lo; v <= hi + step / 2; v += step) {
      svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
      svgEl("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, svg).textContent =
        opts.percent ? Math.round(v * 100) + " %" : v.toFixed(decimals);
    }
    // x axis: time ticks, with the day where it changes
    var tstep = niceHours(xMax - xMin, Math.max(2, Math.floor((W - L - R) / 64)));
    var offset = new Date().getTimezoneOffset() * 60000; // ticks on local hours
    var first = Math.ceil((xMin - offset) / tstep) * tstep + offset;
    for (var t = first; t <= xMax; t += tstep) {
      svgEl("line", { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 4, class: "axis" }, svg);
      var d = new Date(t);
      var midnight = d.getHours() === 0 && d.getMinutes() === 0;
      svgEl("text", { x: x(t), y: H - 8, class: midnight ? "tick tick-day" : "tick", "text-anchor": "middle" }, svg).textContent =
        midnight || tstep >= 86400000 ? dayFmt.format(d) : timeFmt.format(d);
    }
    svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }, svg);
    // threshold
    if (opts.threshold !== undefined && opts.threshold !== null) {
      svgEl("line", { x1: L, x2: W - R, y1: y(opts.threshold), y2: y(opts.threshold), class: "thr-line" }, svg);
      svgEl("text", { x: W - R - 4, y: y(opts.threshold) - 4, class: "thr-label", "text-anchor": "end" }, svg).textContent =
        "alert threshold " + VC.thresholdPct(opts.threshold);
    }
    // markers (admission, acknowledgements, ...)
    (opts.markers || []).forEach(function (m, i) {
      var mx = x(+m.t);
      svgEl("line", { x1: mx, x2: mx, y1: T, y2: H - B, class: "marker" }, svg);
      var tx = svgEl("text", { x: mx + 3, y: 10 + (i % 2) * 11, class: "marker-label" }, svg);
      tx.textContent = m.label;
    });
    // the series
    if (s.length > 1) {
      svgEl("polyline", { points: s.map(function (p) { return x(+p.t).toFixed(1) + "," + y(p.v).toFixed(1); }).join(" "), class: "series" }, svg);
    }
    s.forEach(function (p) {
      var c = svgEl("circle", { cx: x(+p.t), cy: y(p.v), r: s.length > 80 ? 1.5 : 2.5, class: "pt" }, svg);
      svgEl("title", {}, c).textContent = VC.localTime(p.t) + ": " + (opts.percent ? Math.round(p.v * 100) + " %" : fmtNum(p.v));
    });
    // quarantined values: a cross on the time axis (the value itself was rejected)
    (opts.quarantined || []).forEach(function (q) {
      if (!q.t) return;
      var qx = x(+q.t), qy = H - B - 6;
      var g = svgEl("g", { class: "quarantined" }, svg);
      svgEl("path", { d: "M" + (qx - 4) + "," + (qy - 4) + "L" + (qx + 4) + "," + (qy + 4) + "M" + (qx + 4) + "," + (qy - 4) + "L" + (qx - 4) + "," + (qy + 4) }, g);
      svgEl("title", {}, g).textContent = "Quarantined " + VC.localTime(q.t) + ": " + q.reason;
    });
    // the numbers
    var det = htmlEl("details", { "data-chart": opts.title }, null, fig);
    htmlEl("summary", {}, "Values of " + opts.title.toLowerCase() + " (" + s.length + (opts.quarantined && opts.quarantined.length ? ", " + opts.quarantined.length + " quarantined" : "") + ")", det);
    var table = htmlEl("table", { class: "data" }, null, det);
    var hr = htmlEl("tr", {}, null, htmlEl("thead", {}, null, table));
    htmlEl("th", { scope: "col" }, "Time", hr);
    htmlEl("th", { scope: "col" }, opts.percent ? "Risk" : "Value" + (opts.unit ? " (" + opts.unit + ")" : ""), hr);
    htmlEl("th", { scope: "col" }, "Note", hr);
    var tb = htmlEl("tbody", {}, null, table);
    var rows = s.map(function (p) { return { t: p.t, v: opts.percent ? Math.round(p.v * 100) + " %" : fmtNum(p.v), note: p.note || "" }; })
      .concat((opts.quarantined || []).map(function (q) { return { t: q.t, v: "✕ not used", note: "quarantined: " + q.reason, q: true }; }))
      .concat((opts.markers || []).map(function (m) { return { t: m.t, v: "", note: m.label }; }));
    rows.sort(function (a, b) { return (a.t ? +a.t : 0) - (b.t ? +b.t : 0); });
    rows.forEach(function (r) {
      var tr = htmlEl("tr", r.q ? { class: "q" } : {}, null, tb);
      htmlEl("td", {}, r.t ? VC.localTime(r.t) : "time unknown", tr);
      htmlEl("td", {}, r.v, tr);
      htmlEl("td", {}, r.note, tr);
    });
    return fig;
  };

  function niceHours(spanMs, maxTicks) {
    var h = 3600000;
    var options = [h, 2 * h, 3 * h, 6 * h, 12 * h, 24 * h, 48 * h, 96 * h, 168 * h];
    for (var i = 0; i < options.length; i++) if (spanMs / options[i] <= maxTicks) return options[i];
    return options[options.length - 1];
  }

  /* Diverging horizontal bars: items [{label, value, contribution}] — right raises risk,
     left lowers it; each bar also says so in words (colour is never the only signal). */
  VC.factorBars = function (container, items) {
    container.textContent = "";
    if (!items.length) return;
    var W = 800, rowH = 26, L = 470, R = 8, T = 6;
    var H = T + items.length * rowH + 22;
    var max = Math.max.apply(null, items.map(function (f) { return Math.abs(f.contribution); })) || 1;
    var mid = L + (W - L - R) / 2, half = (W - L - R) / 2 - 92;
    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, class: "barsvg", "aria-hidden": "true", focusable: "false" }, container);
    svgEl("line", { x1: mid, x2: mid, y1: T - 2, y2: H - 20, class: "axis" }, svg);
    items.forEach(function (f, i) {
      var yy = T + i * rowH;
      var len = (Math.abs(f.contribution) / max) * half;
      var up = f.contribution > 0;
      // The factor in clinical words with its value and unit ("Lactate, latest (this
      // stay): 4.1 mmol/L", "Medical ICU: no"), as the server phrased it.
      var text = f.text || (f.label + ": " + (f.value !== null && f.value !== undefined ? (typeof f.value === "number" ? fmtNum(f.value) : f.value) : "not measured"));
      var label = text.length > 62 ? text.slice(0, 61) + "…" : text;
      var el = svgEl("text", { x: L - 8, y: yy + 16, class: "bar-label", "text-anchor": "end" }, svg);
      el.textContent = label;
      if (label !== text) svgEl("title", {}, el).textContent = text;
      svgEl("rect", { x: up ? mid : mid - len, y: yy + 4, width: Math.max(len, 1), height: rowH - 10, class: up ? "bar-up" : "bar-down" }, svg);
      svgEl("text", { x: up ? mid + len + 4 : mid - len - 4, y: yy + 16, class: "bar-value", "text-anchor": up ? "start" : "end" }, svg).textContent =
        (up ? "▲ raises " : "▼ lowers ") + (f.contribution > 0 ? "+" : "") + f.contribution.toFixed(2);
    });
    svgEl("text", { x: mid - 6, y: H - 6, class: "tick", "text-anchor": "end" }, svg).textContent = "← lowers risk";
    svgEl("text", { x: mid + 6, y: H - 6, class: "tick", "text-anchor": "start" }, svg).textContent = "raises risk →";
  };
})();
