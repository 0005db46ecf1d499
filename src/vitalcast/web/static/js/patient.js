/* Patient page: the factor bars, risk over time (threshold line, admission and feedback
   markers) and the vital-sign and laboratory charts, drawn from the patient JSON API and
   redrawn when a live risk event for this patient arrives. */
(function () {
  "use strict";
  var VC = window.VC;

  function readJSON(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function drawFactors(factors) {
    var chart = document.getElementById("factors-chart");
    if (chart && factors && factors.length) VC.factorBars(chart, factors);
  }

  function factorsFromTable() {
    var out = [];
    document.querySelectorAll("#factors-table tbody tr").forEach(function (tr) {
      out.push({
        label: tr.getAttribute("data-label"),
        text: tr.getAttribute("data-text"),
        contribution: Number(tr.getAttribute("data-contribution")),
      });
    });
    return out;
  }

  /* Live updates redraw the charts; a table the reader opened stays open. */
  function openTables(boxes) {
    var open = {};
    boxes.forEach(function (b) {
      b.querySelectorAll("details[data-chart][open]").forEach(function (d) { open[d.getAttribute("data-chart")] = true; });
    });
    return open;
  }
  function reopenTables(boxes, open) {
    boxes.forEach(function (b) {
      b.querySelectorAll("details[data-chart]").forEach(function (d) { if (open[d.getAttribute("data-chart")]) d.open = true; });
    });
  }

  function drawRisk(box, items, ctx) {
    var open = openTables([box]);
    drawRiskChart(box, items, ctx);
    reopenTables([box], open);
  }

  function drawRiskChart(box, items, ctx) {
    box.textContent = "";
    var since = ctx.admitted ? +ctx.admitted : 0;
    var series = items.map(function (p) { return { t: new Date(p.as_of), v: p.probability, note: p.band + (p.model_version ? " · model " + p.model_version : "") }; })
      .filter(function (p) { return +p.t >= since; });
    var markers = [];
    if (ctx.admitted) markers.push({ t: ctx.admitted, label: "Admission" });
    (ctx.landmarks || []).forEach(function (m) { markers.push({ t: new Date(m.at), label: m.label }); });
    var versions = [];
    items.forEach(function (p, i) {
      if (i > 0 && p.model_version !== items[i - 1].model_version) versions.push({ t: new Date(p.as_of), label: "Model " + p.model_version });
    });
    if (!series.length) { box.textContent = "No scores during this stay yet."; return; }
    VC.timeChart(box, {
      title: "Risk during this stay", series: series, percent: true, threshold: ctx.threshold,
      markers: markers.concat(versions), xMin: ctx.admitted || null, xMax: new Date(), height: 220,
      gapHours: ctx.riskGapHours,
    });
  }

  function drawObservations(vitalsBox, labsBox, data, ctx) {
    var vars = ctx.variables;
    var byCode = {};
    data.items.forEach(function (o) {
      if (o.value === null || o.value === undefined) return;
      (byCode[o.code] = byCode[o.code] || { obs: [], q: [] }).obs.push({ t: new Date(o.effective_at), v: o.value });
    });
    var orphans = [];
    data.quarantined.forEach(function (q) {
      var item = { t: q.effective_at ? new Date(q.effective_at) : null, reason: q.reason };
      if (q.code && vars[q.code]) (byCode[q.code] = byCode[q.code] || { obs: [], q: [] }).q.push(item);
      else orphans.push(item);
    });
    var open = openTables([vitalsBox, labsBox]);
    [vitalsBox, labsBox].forEach(function (b) { b.textContent = ""; });
    var order = Object.keys(vars);
    order.forEach(function (code) {
      var entry = byCode[code];
      var spec = vars[code];
      if (!entry || spec.kind === "descriptor") return;
      var target = spec.kind === "lab" ? labsBox : vitalsBox;
      VC.timeChart(target, {
        title: spec.label, unit: spec.unit, series: entry.obs, quarantined: entry.q,
        markers: ctx.admitted ? [{ t: ctx.admitted, label: "Admission" }] : [],
        xMin: ctx.admitted || null, xMax: new Date(), height: 150, width: 460,
        style: spec.style, gapHours: spec.gap_hours, states: spec.states,
      });
    });
    if (!vitalsBox.children.length) vitalsBox.textContent = "No vital signs recorded.";
    if (!labsBox.children.length) labsBox.textContent = "No laboratory results recorded.";
    if (orphans.length) {
      var p = document.createElement("p");
      p.className = "small";
      p.textContent = orphans.length + " other quarantined item(s) without a known variable: " +
        orphans.slice(0, 5).map(function (o) { return o.reason; }).join("; ");
      vitalsBox.appendChild(p);
    }
    reopenTables([vitalsBox, labsBox], open);
  }

  function updateRiskBox(latest, threshold) {
    var pct = document.querySelector(".riskbox .bigpct");
    if (!pct || !latest) return;
    pct.textContent = VC.riskPct(latest.probability, threshold);
    var band = document.querySelector(".riskbox .band");
    if (band) {
      band.className = "band band-" + latest.band;
      band.textContent = latest.band.charAt(0).toUpperCase() + latest.band.slice(1);
    }
    var thr = document.querySelector(".riskbox .thr");
    if (thr && threshold !== null) {
      thr.textContent = (latest.probability >= threshold ? "at or above" : "below") + " the alert threshold of " + VC.thresholdPct(threshold);
    }
  }

  /* A disagreement needs a reason: say so in the form before it is sent, instead of
     leaving the page for the server's error (which still checks). */
  function requireReasonToDisagree() {
    var form = document.querySelector("form.verdict");
    if (!form) return;
    var reason = form.querySelector("#reason");
    form.querySelectorAll('input[name="kind"]').forEach(function (radio) {
      radio.addEventListener("change", function () {
        reason.required = form.querySelector('input[name="kind"]:checked').value === "disagree";
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    requireReasonToDisagree();
    var root = document.getElementById("patient");
    if (!root) return;
    var ctx = {
      id: root.getAttribute("data-patient"),
      threshold: root.getAttribute("data-threshold") ? Number(root.getAttribute("data-threshold")) : null,
      admitted: root.getAttribute("data-admitted") ? new Date(root.getAttribute("data-admitted")) : null,
      landmarks: readJSON("landmarks") || [],
      variables: readJSON("variables") || {},
    };
    var riskBox = document.getElementById("risk-chart");
    ctx.riskGapHours = Number(riskBox.getAttribute("data-gap-hours")) || null;
    var vitalsBox = document.getElementById("vitals-charts");
    var labsBox = document.getElementById("labs-charts");
    drawFactors(factorsFromTable());

    function loadRisk(background) {
      return VC.getJSON(riskBox.getAttribute("data-src"), background).then(function (data) {
        drawRisk(riskBox, data.items, ctx);
        return data.items;
      }).catch(function (err) { riskBox.textContent = "Could not load the risk history (" + err.message + ")."; return []; });
    }
    function loadObservations(background) {
      return VC.getJSON(vitalsBox.getAttribute("data-src"), background).then(function (data) {
        drawObservations(vitalsBox, labsBox, data, ctx);
      }).catch(function (err) { vitalsBox.textContent = "Could not load observations (" + err.message + ")."; });
    }
    var shown = null; // risk points on the chart once the page's own load has drawn them
    loadRisk(false).then(function (items) { shown = items.length; });
    loadObservations(false);

    /* Redraw from the server. On a risk event for this patient, and whenever the live
       stream (re)opens: events sent while it was closed are not replayed, so a new score
       shows up either way. */
    function refresh(live) {
      loadRisk(true).then(function (items) {
        var last = items[items.length - 1];
        if (live || (shown !== null && items.length > shown)) {
          if (last && last.factors) drawFactors(last.factors);
          var note = document.getElementById("live-note");
          if (note) note.textContent = "Updated live " + VC.localTime(new Date()) + ". The factor table shows the score at page load; the chart shows the newest.";
        }
        shown = items.length;
      });
      loadObservations(true);
    }

    if (window.EventSource) {
      VC.liveEvents("/api/v1/events", { risk: function (msg) {
        var ev = JSON.parse(msg.data);
        if (ev.patient_id !== ctx.id) return;
        updateRiskBox(ev, ctx.threshold);
        refresh(true);
      } }, function (state) { if (state === "on") refresh(false); });
    }
  });
})();
