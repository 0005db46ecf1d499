/* vitalcast charts: small SVG charts drawn from JSON, each with its numbers as a table.

   No library: three chart kinds (sparkline, time series, diverging bars) are all the UI
   needs, and drawing them by hand keeps the page free of third-party code and requests.
   Every chart is a <figure> whose SVG has a title and a description, followed by a
   <details> table of the values it shows (WCAG 1.1.1: a text alternative). */
(function () {
  "use strict";
  var VC = (window.VC = window.VC || {});
  var NS = "http://www.w3.org/2000/svg";
  var HOUR = 3600000;
  var uid = 0;

  function svgEl(name, attrs, parent, text) {
    var el = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) el.textContent = text;
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
     quarantined [{t: Date|null, reason}], xMin/xMax (Date), height, width, and the
     variable's drawing rule (web/charting.py): style "line" (default), "state" (a held
     0/1 state drawn as steps, labelled with opts.states), "setting" (a number held until
     changed, FiO₂: steps on a numeric axis) or "interval" (each value is a
     volume collected since the previous one: a bar over that interval as high as the
     hourly rate, so that its area is the volume), and gapHours: neighbouring values
     further apart are not joined. */
  VC.timeChart = function (container, opts) {
    var id = "chart" + (++uid);
    var style = opts.style || "line";
    var gapMs = opts.gapHours ? opts.gapHours * HOUR : 0;
    var fig = htmlEl("figure", { class: "tchart tchart-" + style }, null, container);
    htmlEl("figcaption", { id: id + "-t" }, chartTitle(opts, style), fig);
    var W = opts.width || 640, H = opts.height || 180, L = 48, R = 12, B = 28;
    var T = opts.markers && opts.markers.length ? 30 : 10; // marker labels sit above the plot
    var s = style === "interval" ? withIntervals(opts.series, gapMs) : opts.series;
    var times = s.map(function (p) { return +(p.start || p.t); })
      .concat(s.map(function (p) { return +p.t; }))
      .concat((opts.markers || []).map(function (m) { return +m.t; }))
      .concat((opts.quarantined || []).filter(function (q) { return q.t; }).map(function (q) { return +q.t; }));
    var xMin = opts.xMin ? +opts.xMin : Math.min.apply(null, times);
    var xMax = opts.xMax ? +opts.xMax : Math.max.apply(null, times);
    if (!isFinite(xMin) || !isFinite(xMax)) { xMax = Date.now(); xMin = xMax - 86400000; }
    if (xMax - xMin < HOUR) xMin = xMax - HOUR;
    var scale = valueScale(s, opts, style);
    var lo = scale.lo, hi = scale.hi;
    function x(t) { return L + ((t - xMin) / (xMax - xMin)) * (W - L - R); }
    function y(v) { return T + (1 - (v - lo) / (hi - lo)) * (H - T - B); }
    var box = { W: W, H: H, L: L, R: R, T: T, B: B, x: x, y: y };

    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-labelledby": id + "-t " + id + "-d", class: "tsvg", preserveAspectRatio: "xMinYMin meet" }, fig);
    svgEl("desc", { id: id + "-d" }, svg).textContent = describe(s, opts, style);
    scale.ticks.forEach(function (tick) {
      svgEl("line", { x1: L, x2: W - R, y1: y(tick.v), y2: y(tick.v), class: "grid" }, svg);
      svgEl("text", { x: L - 6, y: y(tick.v) + 4, class: "tick ytick", "text-anchor": "end" }, svg, tick.label);
    });
    timeAxis(svg, box, xMin, xMax);
    if (opts.threshold !== undefined && opts.threshold !== null) {
      svgEl("line", { x1: L, x2: W - R, y1: y(opts.threshold), y2: y(opts.threshold), class: "thr-line" }, svg);
      keepInside(svgEl("text", { x: W - R - 4, y: y(opts.threshold) - 4, class: "thr-label", "text-anchor": "end" }, svg,
        "alert threshold " + VC.thresholdPct(opts.threshold)), W);
    }
    // markers (admission, acknowledgements, ...): a label that would run past the right
    // edge opens to the left of its line instead
    (opts.markers || []).forEach(function (m, i) {
      var mx = x(+m.t);
      svgEl("line", { x1: mx, x2: mx, y1: T, y2: H - B, class: "marker" }, svg);
      var label = svgEl("text", { x: mx + 3, y: 10 + (i % 2) * 11, class: "marker-label" }, svg, m.label);
      if (mx + 3 + textWidth(label) > W - 1) { label.setAttribute("x", mx - 3); label.setAttribute("text-anchor", "end"); }
      keepInside(label, W);
    });
    if (style === "interval") drawIntervals(svg, box, s, opts);
    else drawRuns(svg, box, runs(s, gapMs), opts, style);
    // quarantined values: a cross on the time axis (the value itself was rejected)
    (opts.quarantined || []).forEach(function (q) {
      if (!q.t) return;
      var qx = x(+q.t), qy = H - B - 6;
      var g = svgEl("g", { class: "quarantined" }, svg);
      svgEl("path", { d: "M" + (qx - 4) + "," + (qy - 4) + "L" + (qx + 4) + "," + (qy + 4) + "M" + (qx + 4) + "," + (qy - 4) + "L" + (qx - 4) + "," + (qy + 4) }, g);
      svgEl("title", {}, g).textContent = "Quarantined " + VC.localTime(q.t) + ": " + q.reason;
    });
    valuesTable(fig, s, opts, style, gapMs);
    return fig;
  };

  function chartTitle(opts, style) {
    if (style === "interval") return opts.title + " (" + rateUnit(opts) + " over each collection interval)";
    return opts.title + (opts.unit ? " (" + opts.unit + ")" : "");
  }

  /* The value axis: percentages and rates from 0, states as their names, other values
     with round steps around their range. */
  function valueScale(s, opts, style) {
    if (style === "state") {
      var names = opts.states && opts.states.length ? opts.states : ["0", "1"];
      return { lo: -0.3, hi: names.length - 0.7, ticks: names.map(function (n, i) { return { v: i, label: n }; }) };
    }
    var vals = s.map(function (p) { return style === "interval" ? p.rate : p.v; })
      .filter(function (v) { return v !== null && v !== undefined; });
    var lo = opts.percent || style === "interval" ? 0 : Math.min.apply(null, vals);
    var hi = Math.max.apply(null, vals.concat(opts.threshold ? [opts.threshold * 1.15] : []));
    if (!isFinite(lo) || !isFinite(hi)) { lo = 0; hi = 1; }
    if (hi === lo) { hi = lo + (Math.abs(lo) || 1) * 0.1; lo = style === "interval" ? 0 : lo - (Math.abs(lo) || 1) * 0.1; }
    var step = niceStep(hi - lo, 4);
    lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
    if (opts.percent) hi = Math.min(1, Math.max(hi, step));
    var decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    var ticks = [];
    for (var v = lo; v <= hi + step / 2; v += step) {
      ticks.push({ v: v, label: opts.percent ? Math.round(v * 100) + " %" : v.toFixed(decimals) });
    }
    return { lo: lo, hi: hi, ticks: ticks };
  }

  /* x axis: time ticks on local hours, with the day where it changes; a label at either
     edge is kept inside the chart. */
  function timeAxis(svg, box, xMin, xMax) {
    var tstep = niceHours(xMax - xMin, Math.max(2, Math.floor((box.W - box.L - box.R) / 64)));
    var offset = new Date().getTimezoneOffset() * 60000;
    var first = Math.ceil((xMin - offset) / tstep) * tstep + offset;
    for (var t = first; t <= xMax; t += tstep) {
      svgEl("line", { x1: box.x(t), x2: box.x(t), y1: box.H - box.B, y2: box.H - box.B + 4, class: "axis" }, svg);
      var d = new Date(t);
      var midnight = d.getHours() === 0 && d.getMinutes() === 0;
      keepInside(svgEl("text", { x: box.x(t), y: box.H - 8, class: midnight ? "tick tick-day" : "tick", "text-anchor": "middle" }, svg,
        midnight || tstep >= 86400000 ? dayFmt.format(d) : timeFmt.format(d)), box.W);
    }
    svgEl("line", { x1: box.L, x2: box.W - box.R, y1: box.H - box.B, y2: box.H - box.B, class: "axis" }, svg);
  }

  /* Lines (or, for a state or a setting, steps that hold each value until the next)
     within each run, and a dot on every value. */
  function drawRuns(svg, box, parts, opts, style) {
    var n = parts.reduce(function (a, r) { return a + r.length; }, 0);
    parts.forEach(function (run) {
      if (run.length < 2) return;
      if (style === "state" || style === "setting") {
        var d = "M" + box.x(+run[0].t).toFixed(1) + "," + box.y(run[0].v).toFixed(1);
        for (var i = 1; i < run.length; i++) d += "H" + box.x(+run[i].t).toFixed(1) + "V" + box.y(run[i].v).toFixed(1);
        svgEl("path", { d: d, class: "series series-step" }, svg);
      } else {
        svgEl("polyline", { points: run.map(function (p) { return box.x(+p.t).toFixed(1) + "," + box.y(p.v).toFixed(1); }).join(" "), class: "series" }, svg);
      }
    });
    parts.forEach(function (run) {
      run.forEach(function (p) {
        var c = svgEl("circle", { cx: box.x(+p.t), cy: box.y(p.v), r: n > 80 ? 1.5 : 2.5, class: "pt" }, svg);
        svgEl("title", {}, c).textContent = VC.localTime(p.t) + ": " + valueText(p.v, opts);
      });
    });
  }

  /* One bar per collection, from the previous collection to this one, as high as the
     hourly rate: its area is the volume, so a two-hour collection does not look like
     twice the output. A rate of 0 (an anuric interval) stays visible on the baseline. A
     collection whose interval is not known has no rate: an open diamond on the time
     axis marks it (its volume is in the table). */
  function drawIntervals(svg, box, s, opts) {
    var base = box.y(0);
    s.forEach(function (p) {
      var x1 = box.x(+p.t), shape;
      if (p.start) {
        var x0 = box.x(+p.start) + 0.5;
        var top = Math.min(box.y(p.rate), base - 1.5);
        shape = svgEl("rect", { x: x0.toFixed(1), y: top.toFixed(1), width: Math.max(x1 - x0 - 0.5, 2).toFixed(1), height: (base - top).toFixed(1), class: "vbar" }, svg);
      } else {
        var my = base - 6;
        shape = svgEl("path", { d: "M" + x1.toFixed(1) + "," + (my - 5) + "l5,5l-5,5l-5,-5z", class: "vmark-unknown" }, svg);
      }
      svgEl("title", {}, shape).textContent = intervalText(p) + ": " + fmtNum(p.v) + " " + (opts.unit || "") +
        (p.start ? " (" + fmtNum(p.rate) + " " + rateUnit(opts) + ")" : "");
    });
  }

  function rateUnit(opts) { return (opts.unit || "amount") + "/h"; }

  /* Runs of the series in which neighbours are at most gapMs apart (no limit: one run). */
  function runs(s, gapMs) {
    var out = [];
    s.forEach(function (p, i) {
      if (i === 0 || (gapMs && +p.t - +s[i - 1].t > gapMs)) out.push([]);
      out[out.length - 1].push(p);
    });
    return out;
  }
  VC.runs = runs;

  /* Each collection with the start of its interval (the previous collection, when that
     was at most gapMs earlier; else unknown) and its hourly rate. */
  function withIntervals(series, gapMs) {
    return series.map(function (p, i) {
      var prev = series[i - 1];
      var start = prev && (!gapMs || +p.t - +prev.t <= gapMs) && +p.t > +prev.t ? prev.t : null;
      return { t: p.t, v: p.v, start: start, rate: start ? p.v / ((+p.t - +start) / HOUR) : null, note: p.note };
    });
  }

  function valueText(v, opts) {
    if (opts.percent) return Math.round(v * 100) + " %";
    if (opts.states && opts.states.length && opts.states[v] !== undefined) return opts.states[v];
    return fmtNum(v);
  }

  function duration(ms) {
    var min = Math.round(ms / 60000);
    if (min < 60) return min + " min";
    var h = Math.floor(min / 60), m = min % 60;
    return h < 48 ? h + " h" + (m ? " " + m + " min" : "") : Math.round(h / 24) + " d";
  }
  VC.duration = duration;

  /* "29 Nov 2026, 14:00 UTC (1 h, from 13:00)": the collection's end, then how long it
     ran and from when (with the day when that was another day). */
  function intervalText(p) {
    if (!p.start) return VC.localTime(p.t) + " (start not known)";
    var start = new Date(p.start), end = new Date(p.t);
    var from = start.toDateString() === end.toDateString() ? timeFmt.format(start) : dayFmt.format(start) + " " + timeFmt.format(start);
    return VC.localTime(p.t) + " (" + duration(+p.t - +p.start) + ", from " + from + ")";
  }

  function describe(s, opts, style) {
    if (!s.length) return "No values.";
    var last = s[s.length - 1];
    if (style === "interval") {
      return s.length + " collections; latest " + fmtNum(last.v) + " " + (opts.unit || "") +
        (last.start ? " over " + duration(+last.t - +last.start) + " (" + fmtNum(last.rate) + " " + rateUnit(opts) + ")" : "") +
        ". The table below lists them.";
    }
    var unit = opts.percent || style === "state" ? "" : " " + (opts.unit || "");
    return s.length + " values; latest " + valueText(last.v, opts) + unit + ". The table below lists them.";
  }

  /* The chart's numbers as a table, saying what the drawing says: where the line
     breaks, each collection's interval and rate, what was quarantined. */
  function valuesTable(fig, s, opts, style, gapMs) {
    var det = htmlEl("details", { "data-chart": opts.title }, null, fig);
    var q = opts.quarantined || [];
    htmlEl("summary", {}, "Values of " + inSentence(opts.title) + " (" + s.length + (q.length ? ", " + q.length + " quarantined" : "") + ")", det);
    var table = htmlEl("table", { class: "data" }, null, det);
    var hr = htmlEl("tr", {}, null, htmlEl("thead", {}, null, table));
    var unit = opts.unit ? " (" + opts.unit + ")" : "";
    htmlEl("th", { scope: "col" }, style === "interval" ? "Collection interval" : "Time", hr);
    htmlEl("th", { scope: "col" }, opts.percent ? "Risk" : style === "interval" ? "Volume" + unit : style === "state" ? "State" : "Value" + unit, hr);
    htmlEl("th", { scope: "col" }, "Note", hr);
    var tb = htmlEl("tbody", {}, null, table);
    var rows = s.map(function (p, i) {
      return { t: p.t, when: style === "interval" ? intervalText(p) : null, v: valueText(p.v, opts), note: rowNote(s, i, opts, style, gapMs) };
    })
      .concat(q.map(function (item) { return { t: item.t, v: "✕ not used", note: "quarantined: " + item.reason, q: true }; }))
      .concat((opts.markers || []).map(function (m) { return { t: m.t, v: "", note: m.label }; }));
    rows.sort(function (a, b) { return (a.t ? +a.t : 0) - (b.t ? +b.t : 0); });
    rows.forEach(function (r) {
      var tr = htmlEl("tr", r.q ? { class: "q" } : {}, null, tb);
      htmlEl("td", {}, r.when || (r.t ? VC.localTime(r.t) : "time unknown"), tr);
      htmlEl("td", {}, r.v, tr);
      htmlEl("td", {}, r.note, tr);
    });
  }

  /* A title inside a sentence: "heart rate", but "PaO₂", "ALT" and "inspired oxygen
     (FiO₂)" keep their capitals (lower-casing all of it wrote "fio₂"). */
  function inSentence(title) {
    var word = title.split(" ")[0];
    var plain = word.slice(1) === word.slice(1).toLowerCase();
    return plain ? title.charAt(0).toLowerCase() + title.slice(1) : title;
  }

  function rowNote(s, i, opts, style, gapMs) {
    var p = s[i], prev = s[i - 1];
    var notes = p.note ? [p.note] : [];
    if (style === "interval") {
      if (p.start) notes.push(fmtNum(p.rate) + " " + rateUnit(opts));
      else notes.push(prev ? "interval not known: previous collection " + duration(+p.t - +prev.t) + " earlier (over " + opts.gapHours + " h)" : "interval not known: first collection shown");
    } else if (prev && gapMs && +p.t - +prev.t > gapMs) {
      notes.push("line broken: " + duration(+p.t - +prev.t) + " since the previous value (over " + opts.gapHours + " h)");
    }
    return notes.join("; ");
  }

  /* Text width in the chart's units (measured when the chart is on screen). */
  function textWidth(el) {
    var w = 0;
    try { w = el.getComputedTextLength(); } catch (e) { w = 0; }
    return w || el.textContent.length * 6.5;
  }

  /* An SVG clips what lies outside its box: move a label that would cross an edge
     back inside, anchored at that edge. */
  function keepInside(el, W) {
    var w = textWidth(el), xx = Number(el.getAttribute("x"));
    var anchor = el.getAttribute("text-anchor") || "start";
    var left = anchor === "start" ? xx : anchor === "end" ? xx - w : xx - w / 2;
    if (left < 1) { el.setAttribute("x", 1); el.setAttribute("text-anchor", "start"); }
    else if (left + w > W - 1) { el.setAttribute("x", W - 1); el.setAttribute("text-anchor", "end"); }
    return el;
  }

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
