/* Ward page: sparklines, instant name filtering of the listed patients, and live updates.

   A risk event (SSE) for a listed patient — or for a new patient of the shown unit —
   fetches that patient's row as the server renders it and swaps it in, then re-sorts the
   table by risk and recounts the tiles, so the page never needs a reload. */
(function () {
  "use strict";
  var VC = window.VC;

  function drawSparks(root) {
    root.querySelectorAll(".spark[data-spark]").forEach(function (el) {
      var raw = el.getAttribute("data-spark");
      var points = raw ? raw.split(",").map(function (pair) {
        var p = pair.split(":"); return [Number(p[0]), Number(p[1])];
      }) : [];
      VC.sparkline(el, points, Number(el.getAttribute("data-threshold")) || null);
    });
  }

  function rows(tbody) { return Array.prototype.slice.call(tbody.querySelectorAll("tr[data-patient]")); }

  function recount(tbody) {
    var all = rows(tbody).filter(function (r) { return !r.hidden; });
    var high = all.filter(function (r) { var b = r.getAttribute("data-band"); return b === "high" || b === "critical"; });
    var stale = all.filter(function (r) { return r.querySelector(".badge-stale"); });
    setText("count-high", high.length);
    setText("count-total", all.length);
    setText("count-stale", stale.length);
  }
  function setText(id, v) { var el = document.getElementById(id); if (el) el.textContent = String(v); }

  function score(r) {
    var s = r.getAttribute("data-score");
    return s === "" || s === null ? -1 : Number(s);
  }
  function resort(tbody) {
    var list = rows(tbody);
    var sorted = list.slice().sort(function (a, b) { return score(b) - score(a); });
    var same = sorted.every(function (r, i) { return r === list[i]; });
    if (same) return;
    var focused = document.activeElement;
    sorted.forEach(function (r) { tbody.appendChild(r); });
    if (focused && tbody.contains(focused)) focused.focus();
  }

  /* A row turns stale while the page is open: no vital sign for longer than the stale
     limit since the one it showed (a new one would have brought a fresh row). The badge
     is the server's (_ward_row.html); the row no longer waits for it. */
  function markStale(table, tbody, now) {
    var limitMs = Number(table.getAttribute("data-stale-minutes")) * 60 * 1000;
    var changed = false;
    tbody.querySelectorAll("tr[data-fresh-vitals-at]").forEach(function (r) {
      if (now - Date.parse(r.getAttribute("data-fresh-vitals-at")) <= limitMs) return;
      r.removeAttribute("data-fresh-vitals-at");
      var cell = r.querySelector("td.fresh");
      if (!cell || cell.querySelector(".badge-stale")) return;
      var badge = document.createElement("span");
      badge.className = "badge badge-stale";
      badge.title = "No vital sign for more than " + table.getAttribute("data-stale-minutes") + " minutes";
      badge.textContent = "Stale";
      cell.appendChild(document.createTextNode(" "));
      cell.appendChild(badge);
      changed = true;
    });
    if (changed) recount(tbody);
  }

  function nameFilter(tbody) {
    var input = document.getElementById("name");
    if (!input) return;
    input.addEventListener("input", function () {
      var needle = input.value.trim().toLowerCase();
      rows(tbody).forEach(function (r) {
        var name = r.getAttribute("data-name") || "";
        r.hidden = needle !== "" && name.indexOf(needle) === -1;
      });
      recount(tbody);
    });
  }

  function live(table, tbody) {
    var status = document.getElementById("live-status");
    var unit = table.getAttribute("data-unit");
    var searching = table.hasAttribute("data-searched");
    var pending = {};
    if (!window.EventSource) { status.textContent = "Live updates: not supported by this browser"; return; }
    VC.liveEvents("/api/v1/events", { risk: onRisk }, function (state) {
      status.textContent = state === "on" ? "Live updates: on" : "Live updates: reconnecting…";
    });
    function onRisk(msg) {
      var ev = JSON.parse(msg.data);
      if (!ev.patient_id) return;
      var existing = tbody.querySelector('tr[data-patient="' + ev.patient_id + '"]');
      if (!existing && (searching || (unit && ev.unit !== unit))) return;
      if (pending[ev.patient_id]) return; // one fetch per burst of events
      pending[ev.patient_id] = true;
      window.setTimeout(function () {
        VC.getHTML("/ward/rows/" + encodeURIComponent(ev.patient_id), true).then(function (html) {
          delete pending[ev.patient_id];
          var tpl = document.createElement("template");
          tpl.innerHTML = html.trim();
          var row = tpl.content.querySelector("tr");
          if (!row) return;
          var current = tbody.querySelector('tr[data-patient="' + ev.patient_id + '"]');
          if (current) { row.hidden = current.hidden; current.replaceWith(row); }
          else { var empty = tbody.querySelector("tr.empty"); if (empty) empty.remove(); tbody.appendChild(row); }
          row.classList.add("updated");
          window.setTimeout(function () { row.classList.remove("updated"); }, 6000);
          drawSparks(row);
          VC.localiseTimes(row);
          resort(tbody);
          recount(tbody);
          status.textContent = "Live updates: on · last update " + VC.localTime(new Date());
        }).catch(function () { delete pending[ev.patient_id]; });
      }, 250);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("ward-table");
    if (!table) return;
    var tbody = table.querySelector("tbody");
    drawSparks(tbody);
    nameFilter(tbody);
    live(table, tbody);
    VC.onAge(function (now) { markStale(table, tbody, now); });
  });
})();
