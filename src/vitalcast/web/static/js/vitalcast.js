/* vitalcast: shared page behaviour — JSON fetches with the CSRF token, local times, and the
   automatic sign-out after inactivity.

   Idle rule (the same as the server's, VITALCAST_SESSION_IDLE_MINUTES): the session ends
   when no user request has reached the server for that long. Requests the page makes on
   its own (live updates) send "X-Background: 1" and do not count, on either side. Tabs
   share the time of the last user request through localStorage, so an active tab keeps
   an idle one from signing the user out. */
(function () {
  "use strict";
  var VC = (window.VC = window.VC || {});

  function meta(name) {
    var el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") : null;
  }
  VC.meta = meta;

  /* Risks as the server renders them (modeling/registry.py risk_percent): a whole
     percentage, one decimal only where the whole number sits on a band cut-point
     (half the threshold, the threshold, the critical cut), so that "21 %" is never both
     Medium and High. Thresholds always with one decimal. */
  VC.thresholdPct = function (threshold) { return (threshold * 100).toFixed(1) + " %"; };
  VC.riskPct = function (p, threshold) {
    var whole = Math.round(p * 100);
    if (threshold !== null && threshold !== undefined) {
      var cuts = [threshold / 2, threshold, Math.min(2 * threshold, (1 + threshold) / 2)];
      for (var i = 0; i < cuts.length; i++) {
        if (Math.round(cuts[i] * 100) === whole) return (p * 100).toFixed(1) + " %";
      }
    }
    return whole + " %";
  };

  /* GET JSON; background requests do not count as user activity. A redirect to the
     sign-in page means the session ended: go there instead of failing silently. */
  VC.getJSON = function (url, background) {
    var headers = { Accept: "application/json" };
    if (background) headers["X-Background"] = "1";
    return fetch(url, { credentials: "same-origin", headers: headers }).then(function (res) {
      if (res.status === 401) { VC.expired(); throw new Error("signed out"); }
      if (!res.ok) throw new Error("HTTP " + res.status + " for " + url);
      return res.json();
    });
  };

  VC.getHTML = function (url, background) {
    var headers = { Accept: "text/html" };
    if (background) headers["X-Background"] = "1";
    return fetch(url, { credentials: "same-origin", headers: headers }).then(function (res) {
      if (res.redirected && res.url.indexOf("/login") !== -1) { VC.expired(); throw new Error("signed out"); }
      if (!res.ok) throw new Error("HTTP " + res.status + " for " + url);
      return res.text();
    });
  };

  /* Live updates (Server-Sent Events) that keep trying. The browser reconnects a dropped
     stream itself, but gives up for good when the server answers with an error status:
     a 503 when every stream slot of the server process is taken (the server keeps one
     request thread for everything else). Then ask again after 1, 2, 4, then 5 seconds
     (a closed page's slot comes back within seconds: the server's heartbeat finds it).
     listeners: {eventName: handler}; onState(state) gets "on" or "reconnecting". */
  VC.liveEvents = function (url, listeners, onState) {
    var retryMs = 1000;
    function connect() {
      var source = new EventSource(url);
      source.addEventListener("open", function () {
        retryMs = 1000;
        if (onState) onState("on");
      });
      source.addEventListener("error", function () {
        if (onState) onState("reconnecting");
        if (source.readyState === EventSource.CLOSED) {
          window.setTimeout(connect, retryMs + Math.floor(Math.random() * 250));
          retryMs = Math.min(retryMs * 2, 5000);
        }
      });
      /* The server ends the stream this way when the session is no longer valid
         (signed out elsewhere, idle, disabled): go to sign-in, do not reconnect. */
      source.addEventListener("signed-out", function () { source.close(); VC.expired(); });
      Object.keys(listeners).forEach(function (name) {
        source.addEventListener(name, listeners[name]);
      });
    }
    connect();
  };

  /* Signed out (idle, or the server ended the session): to the sign-in page, which
     brings the reader back to this page afterwards. Only the path and query go along
     (patient pages are addressed by a non-identifying public id); the server accepts
     only its own pages as a target. */
  /* Only once, and only after a sign-out request of this page has been answered: the
     sign-in page's form token lives in the session cookie, so a second load of it, or
     one that overtakes the sign-out's cookie-clearing answer, leaves the form with a
     token the cookie no longer holds and the first sign-in attempt fails (403). */
  var expiring = false;
  VC.signingOut = null;
  VC.expired = function () {
    if (expiring) return;
    expiring = true;
    var target = meta("expired-url") || "/login?expired=1";
    var here = window.location.pathname + window.location.search;
    if (window.location.pathname !== target.split("?")[0]) {
      target += (target.indexOf("?") === -1 ? "?" : "&") + "next=" + encodeURIComponent(here);
    }
    var go = function () { window.location.assign(target); };
    if (VC.signingOut) VC.signingOut.then(go, go); else go();
  };

  /* Times: the server writes UTC; show them in the reader's local time, with the year and
     the zone, so that no time on a page can be read in the wrong clock. */
  var fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit",
    timeZoneName: "short",
  });
  VC.localTime = function (iso) { return fmt.format(new Date(iso)); };
  function localiseTimes(root) {
    (root || document).querySelectorAll("time[data-local]").forEach(function (el) {
      el.textContent = VC.localTime(el.getAttribute("datetime"));
    });
  }
  VC.localiseTimes = localiseTimes;

  /* Ages ("35 min ago") as the server's `ago` filter writes them (web/views.py), kept
     true while a page stays open: a ward screen is read for hours without a reload, and
     an age frozen at page load made old data look recent. Every `time[data-ago]` is
     rewritten from its datetime each 30 s, and each page's onAge hooks run after. */
  VC.ago = function (iso, nowMs) {
    var minutes = Math.floor(((nowMs === undefined ? Date.now() : nowMs) - Date.parse(iso)) / 60000);
    if (minutes < 1) return "just now";
    if (minutes < 60) return minutes + " min ago";
    var hours = Math.floor(minutes / 60), rest = minutes % 60;
    if (hours < 48) return rest ? hours + " h " + rest + " min ago" : hours + " h ago";
    return Math.floor(hours / 24) + " d ago";
  };
  var ageHooks = [];
  VC.onAge = function (hook) { ageHooks.push(hook); };
  function refreshAges(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time[data-ago]").forEach(function (el) {
      el.textContent = VC.ago(el.getAttribute("datetime"), now);
    });
    ageHooks.forEach(function (hook) { hook(now); });
  }
  VC.refreshAges = refreshAges;

  /* Automatic sign-out. */
  var KEY = "vitalcast.lastRequest";
  var WARN_MS = 60 * 1000;
  function lastRequest() {
    var stored = Number(window.localStorage.getItem(KEY) || 0);
    return Math.max(stored, VC.loadedAt);
  }
  VC.markActivity = function () {
    window.localStorage.setItem(KEY, String(Date.now()));
  };
  function startIdleTimer(idleMinutes) {
    var idleMs = idleMinutes * 60 * 1000;
    var box = document.getElementById("idle-warning");
    var secs = document.getElementById("idle-seconds");
    var stay = document.getElementById("idle-stay");
    var warned = false;
    var signingOut = false;
    var focusBefore = null; // where the reader was when the warning took the focus
    function signOut() {
      if (signingOut) return;
      signingOut = true;
      var body = new URLSearchParams({ csrf_token: meta("csrf-token") || "" });
      // Not following the redirect to the sign-in page: VC.expired loads it, once.
      VC.signingOut = fetch(meta("logout-url"), {
        method: "POST", credentials: "same-origin", body: body, redirect: "manual",
        headers: { "X-CSRF-Token": meta("csrf-token") || "", "X-Background": "1" },
      });
      VC.signingOut.finally(VC.expired);
    }
    function tick() {
      var left = idleMs - (Date.now() - lastRequest());
      if (left <= 0) { signOut(); return; }
      if (left <= WARN_MS) {
        secs.textContent = String(Math.ceil(left / 1000));
        if (!warned) { focusBefore = document.activeElement; box.hidden = false; warned = true; stay.focus(); }
      } else if (warned) {
        /* Give the focus back: hiding the focused button left it on the page's body,
           and a keyboard user had to find their place from the top again. */
        var hadFocus = box.contains(document.activeElement);
        box.hidden = true; warned = false;
        if (hadFocus && focusBefore && focusBefore !== document.body && document.contains(focusBefore)) focusBefore.focus();
        focusBefore = null;
      }
    }
    stay.addEventListener("click", function () {
      fetch(meta("keepalive-url"), { credentials: "same-origin" }).then(function (res) {
        if (res.ok && !res.redirected) { VC.markActivity(); tick(); } else { VC.expired(); }
      });
    });
    window.setInterval(tick, 1000);
  }

  VC.loadedAt = Date.now();
  document.addEventListener("DOMContentLoaded", function () {
    localiseTimes(document);
    window.setInterval(refreshAges, 30 * 1000);
    var idle = Number(meta("idle-minutes"));
    if (idle > 0) {
      VC.markActivity(); // this page load was a user request
      startIdleTimer(idle);
    }
  });
})();
