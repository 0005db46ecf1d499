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

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    return e;
  }
  function agoTime(iso) {
    var t = el("time");
    t.setAttribute("data-ago", "");
    t.setAttribute("datetime", iso);
    t.textContent = VC.ago(iso);
    return t;
  }

  /* A new risk for this patient, shown in the risk box as the server renders one: the
     percentage, its band in words, the threshold comparison and when it was scored. A
     page loaded before the stay's first score said "Not scored yet." under the new
     number; and the response forms, which answer the risk of page load (the factors
     shown are that risk's too), went on filing verdicts against a score no longer shown:
     they are now closed until the page is reloaded. */
  function updateRiskBox(latest, threshold, root) {
    var box = document.querySelector(".riskbox");
    var pct = box && box.querySelector(".bigpct");
    if (!pct || !latest || !latest.prediction_id) return;
    if (latest.prediction_id === root.getAttribute("data-prediction")) return;
    root.setAttribute("data-prediction", latest.prediction_id);
    pct.textContent = VC.riskPct(latest.probability, threshold);
    box.className = box.className.replace(/\bband-box-\S+/, "band-box-" + latest.band);
    var band = box.querySelector(".band");
    var notScored = document.getElementById("not-scored");
    if (!band) {
      var line = el("p");
      band = el("span", "band");
      line.appendChild(band);
      if (threshold !== null) { line.appendChild(document.createTextNode(" ")); line.appendChild(el("span", "thr")); }
      var scored = el("p", "small");
      scored.id = "scored";
      if (notScored) { notScored.replaceWith(line); } else { pct.after(line); }
      line.after(scored);
    }
    band.className = "band band-" + latest.band;
    band.textContent = latest.band.charAt(0).toUpperCase() + latest.band.slice(1);
    var thr = box.querySelector(".thr");
    if (thr && threshold !== null) {
      thr.textContent = (latest.probability >= threshold ? "at or above" : "below") + " the alert threshold of " + VC.thresholdPct(threshold);
    }
    var when = document.getElementById("scored");
    if (when && latest.as_of) {
      when.textContent = "Scored ";
      when.appendChild(agoTime(latest.as_of));
      when.appendChild(document.createTextNode("; newest data "));
      when.appendChild(latest.data_freshness_at ? agoTime(latest.data_freshness_at) : document.createTextNode("none"));
      when.appendChild(document.createTextNode("."));
    }
    closeResponses();
  }

  function closeResponses() {
    var section = document.querySelector("section.feedback");
    if (!section || document.getElementById("responses-closed")) return;
    section.querySelectorAll("form button, form input, form textarea").forEach(function (c) { c.disabled = true; });
    var note = el("p", "notice", "A newer risk has arrived since this page was loaded: ");
    note.id = "responses-closed";
    note.setAttribute("role", "status");
    var reload = el("a", null, "reload the page");
    reload.href = window.location.pathname;
    note.appendChild(reload);
    note.appendChild(document.createTextNode(" to see its factors and respond to it."));
    section.querySelector("h2").after(note);
  }

  /* A vital sign newer than the one the page was loaded with (the live reload of the
     observations): the risk box says so, and a stale warning goes. */
  function showNewestVital(data, vars) {
    var line = document.getElementById("vital-age");
    if (!line) return;
    var newest = null;
    data.items.forEach(function (o) {
      var spec = vars[o.code];
      if (spec && spec.kind === "vital" && o.value !== null && o.value !== undefined) {
        var t = Date.parse(o.effective_at);
        if (newest === null || t > newest) newest = t;
      }
    });
    var shown = line.querySelector("time");
    if (newest === null || (shown && Date.parse(shown.getAttribute("datetime")) >= newest)) return;
    var iso = new Date(newest).toISOString();
    line.textContent = "Newest vital sign ";
    line.appendChild(agoTime(iso));
    if (line.hasAttribute("data-in-progress")) {
      line.setAttribute("data-fresh-vitals-at", iso);
      markStale(Date.now());
    }
  }

  /* Overdue vital signs, noticed while the page is open (see the server's rule). */
  function markStale(now) {
    var line = document.querySelector("#vital-age[data-fresh-vitals-at]");
    if (!line) return;
    var limit = Number(line.getAttribute("data-stale-minutes"));
    if (now - Date.parse(line.getAttribute("data-fresh-vitals-at")) <= limit * 60 * 1000) return;
    line.removeAttribute("data-fresh-vitals-at");
    line.appendChild(document.createTextNode(" "));
    line.appendChild(el("span", "badge badge-stale", "Stale"));
    line.appendChild(document.createTextNode(" no vital sign for more than " + limit + " minutes: this risk may not reflect the patient's state now."));
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
      encounter: root.getAttribute("data-encounter") || null,
      landmarks: readJSON("landmarks") || [],
      variables: readJSON("variables") || {},
    };
    var riskBox = document.getElementById("risk-chart");
    ctx.riskGapHours = Number(riskBox.getAttribute("data-gap-hours")) || null;
    var vitalsBox = document.getElementById("vitals-charts");
    var labsBox = document.getElementById("labs-charts");
    drawFactors(factorsFromTable());
    VC.onAge(markStale);

    function loadRisk(background) {
      return VC.getJSON(riskBox.getAttribute("data-src"), background).then(function (data) {
        drawRisk(riskBox, data.items, ctx);
        return data.items;
      }).catch(function (err) { riskBox.textContent = "Could not load the risk history (" + err.message + ")."; return []; });
    }
    function loadObservations(background) {
      return VC.getJSON(vitalsBox.getAttribute("data-src"), background).then(function (data) {
        drawObservations(vitalsBox, labsBox, data, ctx);
        showNewestVital(data, ctx.variables);
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
        if (ev.encounter_id && ctx.encounter && ev.encounter_id !== ctx.encounter) {
          /* A risk of another stay (the patient was admitted again while this page of an
             earlier one was open): not this stay's risk, so not in its risk box. */
          var note = document.getElementById("live-note");
          if (note) note.textContent = "A new stay of this patient has a risk: reload the page to see it.";
          return;
        }
        updateRiskBox(ev, ctx.threshold, root);
        refresh(true);
      } }, function (state) { if (state === "on") refresh(false); });
    }
  });
})();
