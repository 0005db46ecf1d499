"""Clinician and administrator journeys in a real browser against a real server."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.e2e.conftest import CHART_HOURS, IMAGES, PASSWORD, Server, screenshot, sign_in
from vitalcast.modeling.registry import band_cuts, risk_percent

pytestmark = pytest.mark.e2e


def _ward_scores(page: Page) -> list[float]:
    raw = page.eval_on_selector_all(
        "#ward-table tbody tr[data-patient]", "rows => rows.map(r => r.dataset.score)"
    )
    return [float(s) if s else -1.0 for s in raw]


def test_sign_in_and_ward_sorted_by_risk(page: Page, server: Server) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    screenshot(page, "login.png", full_page=False)
    sign_in(page, "carla")
    scores = _ward_scores(page)
    assert len(scores) >= 20
    assert scores == sorted(scores, reverse=True)
    bands = page.eval_on_selector_all(
        "#ward-table tbody tr[data-patient]", "rows => rows.map(r => r.dataset.band)"
    )
    high = sum(1 for b in bands if b in ("high", "critical"))
    expect(page.locator("#count-high")).to_have_text(str(high))
    # Every row says its band in words, and has a drawn sparkline and a trend cell.
    for row in page.locator("#ward-table tbody tr[data-patient]").all()[:5]:
        expect(row.locator(".band")).to_have_text(re.compile(r"Low|Medium|High|Critical"))
        expect(row.locator(".spark svg")).to_have_count(1)
    expect(page.locator("#live-status")).to_have_text(re.compile("Live updates: on"))
    screenshot(page, "ward.png", full_page=False)


def test_open_patient_explanation_and_charts(page: Page, server: Server) -> None:
    sign_in(page, "carla")
    page.locator("#ward-table tbody tr[data-patient] .who-cell a").first.click()
    page.wait_for_url(re.compile(r"/patients/[0-9a-f]{32}$"))
    expect(page.locator(".riskbox .bigpct")).to_have_text(re.compile(r"\d+ %"))
    expect(page.locator(".riskbox")).to_contain_text("alert threshold")
    factors = page.locator("#factors-table tbody tr").count()
    assert factors >= 1
    expect(page.locator("#factors-chart rect")).to_have_count(factors)
    # Risk over time: a line, the threshold and the admission marker, with its table.
    risk = page.locator("#risk-chart figure")
    expect(risk.locator("line.thr-line")).to_have_count(1)
    expect(risk.locator("text.marker-label").first).to_have_text("Admission")
    assert risk.locator("circle.pt").count() >= 2
    risk.locator("summary").click()
    expect(risk.locator("table tbody tr").first).to_be_visible()
    # Vital signs and labs as charts, each labelled and with its numbers.
    vitals = page.locator("#vitals-charts figure")
    # Drawn from their own request, not the risk chart's: counted once they are there.
    vitals.first.wait_for()
    assert vitals.count() >= 3
    expect(vitals.first.locator("svg[role=img]")).to_have_attribute(
        "aria-labelledby", re.compile(r"chart\d+-t chart\d+-d")
    )
    assert page.locator("#labs-charts figure").count() >= 1
    screenshot(page, "patient.png")
    # Live updates format risks in the browser exactly as the server renders them.
    threshold = float(page.locator("#patient").get_attribute("data-threshold") or "nan")
    grid = [i / 1000 for i in range(1001)] + [
        c + d for c in band_cuts(threshold) for d in (-1e-4, 0, 1e-4)
    ]
    in_browser = page.evaluate("([ps, t]) => ps.map(p => VC.riskPct(p, t))", [grid, threshold])
    assert in_browser == [risk_percent(p, threshold) for p in grid]


def test_feedback_from_the_patient_page(page: Page, server: Server) -> None:
    sign_in(page, "carla")
    # Only an alert can be acknowledged: a patient below the threshold offers no button.
    below = '#ward-table tbody tr[data-band="low"], #ward-table tbody tr[data-band="medium"]'
    page.locator(below).locator(".who-cell a").first.click()
    expect(page.get_by_role("button", name="Acknowledge alert")).to_have_count(0)
    page.go_back()
    alerts = '#ward-table tbody tr[data-band="high"], #ward-table tbody tr[data-band="critical"]'
    page.locator(alerts).locator(".who-cell a").first.click()
    # Disagreeing asks for the reason in the form, before anything is sent.
    page.get_by_role("radio", name="Disagree").check()
    expect(page.locator("#reason")).to_have_attribute("required", "")
    page.get_by_role("radio", name="Agree", exact=True).check()
    expect(page.locator("#reason")).not_to_have_attribute("required", "")
    page.get_by_role("radio", name="Disagree").check()
    page.fill("#reason", "Recent extubation; observations reflect sedation")
    page.get_by_role("button", name="Send feedback").click()
    expect(page.locator(".flash")).to_contain_text("Disagreed with the risk")
    expect(page.locator(".fblist")).to_contain_text("Recent extubation")
    page.get_by_role("button", name="Acknowledge alert").click()
    expect(page.locator(".flash")).to_contain_text("Alert acknowledged")
    expect(
        page.locator("#risk-chart text.marker-label", has_text="Alert acknowledged")
    ).to_have_count(1)
    # The acknowledgement is at the chart's right edge ("now"): its label stays inside.
    assert not _clipped_labels(page), _clipped_labels(page)


def _clipped_labels(page: Page) -> list[str]:
    """Every chart text of the page that crosses its SVG's edge (the SVG clips it)."""
    clipped: list[str] = page.evaluate(
        """() => { const out = [];
          document.querySelectorAll('figure svg').forEach(svg => {
            const vb = svg.viewBox.baseVal;
            svg.querySelectorAll('text').forEach(t => {
              const b = t.getBBox();
              if (b.x < vb.x - 0.5 || b.y < vb.y - 0.5 || b.x + b.width > vb.x + vb.width + 0.5
                  || b.y + b.height > vb.y + vb.height + 0.5) out.push(t.textContent);
            }); });
          return out; }"""
    )
    return clipped


def _chart(page: Page, title: str) -> Locator:
    """The chart figure whose caption starts with ``title``."""
    return page.locator("figure.tchart").filter(
        has=page.locator("figcaption", has_text=re.compile("^" + re.escape(title)))
    )


def _table_rows(chart: Locator) -> list[list[str]]:
    chart.locator("summary").click()
    rows: list[list[str]] = chart.locator("table tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
    )
    return rows


def test_charts_draw_states_settings_intervals_and_gaps(
    page: Page, server: Server, chart_patient: str
) -> None:
    """A state or a setting is a step, a volume is a bar over its collection interval,
    and a line breaks where the values are further apart than the variable's gap limit."""
    sign_in(page, "carla")
    page.goto(f"/patients/{chart_patient}")
    page.locator("#labs-charts figure").first.wait_for()
    # Heart rate: hourly, then 12 h without a value (limit 6 h): two lines, not one.
    hr = _chart(page, "Heart rate")
    expect(hr.locator("polyline.series")).to_have_count(2)
    expect(hr.locator("circle.pt")).to_have_count(len(CHART_HOURS["hr"]))
    notes = [r[2] for r in _table_rows(hr) if r[2]]
    assert notes == ["Admission", "line broken: 12 h since the previous value (over 6 h)"]
    # Ventilation: a held state drawn as horizontal and vertical steps, named Off / On.
    vent = _chart(page, "Mechanical ventilation")
    expect(vent.locator("polyline")).to_have_count(0)
    step = vent.locator("path.series-step").get_attribute("d") or ""
    assert re.fullmatch(r"M[\d.]+,[\d.]+(H[\d.]+V[\d.]+)+", step), step
    assert vent.locator("text.ytick").all_text_contents() == ["Off", "On"]
    states = [r[1] for r in _table_rows(vent) if r[1]]
    assert states == ["On"] * 5 + ["Off"] * 2
    # FiO₂: a setting held until changed, so steps too, on a numeric axis in percent.
    fio2 = _chart(page, "Inspired oxygen")
    expect(fio2.locator("polyline")).to_have_count(0)
    step = fio2.locator("path.series-step").get_attribute("d") or ""
    assert re.fullmatch(r"M[\d.]+,[\d.]+(H[\d.]+V[\d.]+){4}", step), step
    assert all(t.isdigit() for t in fio2.locator("text.ytick").all_text_contents())
    assert [r[1] for r in _table_rows(fio2) if r[1]] == ["60", "60", "40", "40", "30"]
    expect(fio2.locator("summary")).to_have_text("Values of inspired oxygen (FiO₂) (5)")
    # Urine output: one bar per collection over its interval, as high as its hourly rate
    # (the 2 h collection of 90 mL is as high as the 1 h one of 45 mL, twice as wide);
    # the two collections with no known interval are marks on the time axis.
    urine = _chart(page, "Urine output")
    expect(urine.locator("figcaption")).to_have_text(
        "Urine output (mL/h over each collection interval)"
    )
    bars = urine.locator("rect.vbar")
    expect(bars).to_have_count(len(CHART_HOURS["urine"]) - 2)
    expect(urine.locator("path.vmark-unknown")).to_have_count(2)  # the first, and after 24 h
    sizes = bars.evaluate_all(
        "bs => bs.map(b => [Number(b.getAttribute('width')), Number(b.getAttribute('height'))])"
    )
    assert sizes[3][0] == pytest.approx(2 * sizes[2][0], rel=0.1)
    assert sizes[3][1] == pytest.approx(sizes[2][1], abs=0.5)
    assert sizes[4][1] == pytest.approx(1.5)  # anuric hour: on the baseline, not absent
    rows = [r for r in _table_rows(urine) if r[1]]
    # The start's day is named only when it was another day (the run's clock decides).
    interval = r"\(2 h, from (\d{1,2} [A-Z][a-z]{2} )?\d\d:\d\d\)$"
    assert re.search(interval, rows[4][0]), rows[4][0]
    assert rows[4][1:] == ["90", "45 mL/h"]
    assert rows[5][1:] == ["0", "0 mL/h"]
    assert rows[6][0].endswith("(start not known)")
    assert rows[6][2] == "interval not known: previous collection 24 h earlier (over 12 h)"
    # A laboratory value 56 h after the one before (limit 48 h) is not joined to it.
    creatinine = _chart(page, "Creatinine")
    expect(creatinine.locator("polyline.series")).to_have_count(2)
    assert not _clipped_labels(page), _clipped_labels(page)
    page.evaluate("() => document.querySelectorAll('details[open]').forEach(d => d.open = false)")
    page.locator("#vitals-charts").screenshot(path=str(IMAGES / "patient-charts.png"))


def _post(server: Server, items: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(
        server.url + "/api/v1/observations",
        json=items,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=20,
    )


def _spark_points(page: Page, patient_id: str) -> list[tuple[float, float]]:
    """The sparkline's (epoch seconds, risk) points: the newest score of each hour."""
    raw = page.locator(f'#ward-table tr[data-patient="{patient_id}"] .spark').get_attribute(
        "data-spark"
    )
    pairs = [p.split(":") for p in raw.split(",")] if raw else []
    return [(float(t), float(v)) for t, v in pairs]


def test_live_update_after_posting_an_observation(page: Page, server: Server) -> None:
    sign_in(page, "carla")
    # The lowest scored risk (stays that are not scored, such as those outside the
    # model's population, are listed after it and are not rescored).
    row = page.locator('#ward-table tbody tr[data-patient]:not([data-score=""])').last
    patient_id = row.get_attribute("data-patient")
    encounter_id = row.get_attribute("data-encounter")
    assert patient_id
    assert encounter_id
    where = {"patient": patient_id, "encounter": encounter_id}
    before = _spark_points(page, patient_id)
    expect(page.locator("#live-status")).to_have_text(re.compile("Live updates: on"))
    now = datetime.now(UTC).isoformat()
    response = _post(
        server,
        [
            where | {"code": "8867-4", "value": 148, "unit": "/min", "time": now},
            where | {"code": "9269-2", "value": 5, "unit": "{score}", "time": now},
            where | {"code": "2524-7", "value": 9.5, "unit": "mmol/L", "time": now},
        ],
    )
    assert response.status_code == 201, response.text
    assert response.json()["rescored"], response.text
    # The row is replaced in place (no reload): the highlight, its new risk, the new
    # score as the sparkline's newest point (one point per hour: a new hour adds a point,
    # a score within the newest hour replaces it), and the table still sorted by risk.
    live_row = page.locator(f'#ward-table tr[data-patient="{patient_id}"]')
    expect(live_row).to_have_class(re.compile("updated"), timeout=15_000)
    new_score = response.json()["rescored"][0]["probability"]
    after = _spark_points(page, patient_id)
    assert len(after) in (len(before), len(before) + 1)
    assert after[-1][1] == pytest.approx(new_score, abs=1e-3)
    assert after[-1][0] >= before[-1][0]
    assert float(live_row.get_attribute("data-score") or "nan") == pytest.approx(
        new_score, abs=1e-4
    )
    assert _ward_scores(page) == sorted(_ward_scores(page), reverse=True)
    screenshot(page, "ward-live-update.png", full_page=False)
    # On the patient page, a new observation adds a point to the risk chart live.
    live_row.locator(".who-cell a").click()
    page.locator("#risk-chart figure").wait_for()
    points = page.locator("#risk-chart circle.pt").count()
    later = datetime.now(UTC).isoformat()
    response = _post(
        server,
        [where | {"code": "8867-4", "value": 41, "unit": "/min", "time": later}],
    )
    assert response.status_code == 201, response.text
    expect(page.locator("#risk-chart circle.pt")).to_have_count(points + 1, timeout=15_000)
    expect(page.locator("#live-note")).to_contain_text("Updated live")


def test_clinician_cannot_open_admin_pages(page: Page, server: Server) -> None:
    sign_in(page, "carla")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link")).to_have_text(
        ["Ward", "Models"]
    )
    for path in ("/admin/users", "/admin/api-keys", "/admin/audit", "/monitoring"):
        response = page.goto(path)
        assert response is not None
        assert response.status == 403, path
        expect(page.locator("h1")).to_contain_text("Not allowed")
        expect(page.locator("code.rid")).to_have_text(re.compile(r"[0-9a-f]{32}"))
    screenshot(page, "error-403.png", full_page=False)
    page.goto("/patients/" + "0" * 32)
    expect(page.locator("h1")).to_contain_text("Not found")


def test_admin_pages(page: Page, server: Server) -> None:
    sign_in(page, "adam")
    page.get_by_role("link", name="Users").click()
    expect(page.locator("table.data").first).to_contain_text("carla")
    screenshot(page, "admin-users.png")
    page.get_by_role("link", name="API keys").click()
    page.fill("#nk-name", "bedside monitors")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("code.secret")).to_have_text(re.compile(r"^vc_[0-9a-f]+_"))
    prefix = page.locator("code.secret").inner_text().split("_")[1]
    screenshot(page, "admin-keys.png")
    page.get_by_role("link", name="Audit log").click()
    page.fill("#f-event", "apikey.created")
    page.get_by_role("button", name="Filter").click()
    # This key's creation, and only creations (other tests of the session make keys too).
    rows = page.locator("table.audit tbody tr")
    expect(rows.filter(has_text=f"ApiKey/{prefix}")).to_have_count(1)
    expect(rows.filter(has_not_text="apikey.created")).to_have_count(0)
    page.fill("#f-event", "")
    page.get_by_role("button", name="Filter").click()
    # Clearing the filter navigates; wait for the unfiltered log (sign-ins, the key, this
    # page's own views) before the screenshot, which fails if taken mid-navigation.
    page.wait_for_url(re.compile(r"event=(&|$)"))
    expect(rows.nth(1)).to_be_visible()
    page.wait_for_load_state("load")
    screenshot(page, "admin-audit.png", full_page=False)
    page.get_by_role("link", name="Models").click()
    # One champion per task: icu-mortality's, and readmission-30d's when the session's
    # readmission test has registered one.
    icu_rows = page.locator("table.data tbody tr", has_text="icu-mortality")
    expect(icu_rows.locator(".badge-champion")).to_have_count(1)
    screenshot(page, "models.png", full_page=False)
    page.get_by_role("link", name="Monitoring").click()
    screenshot(page, "monitoring.png", full_page=False)


def _tab_through(page: Page, limit: int = 400) -> list[str]:
    """Press Tab until focus comes back round; the ids of the elements it stopped on."""
    page.evaluate(
        """() => { let n = 0; document.querySelectorAll(
          'a[href], button, input:not([type=hidden]), select, textarea, summary')
          .forEach(el => { if (!el.dataset.kb) el.dataset.kb = 'k' + (n++); }); }"""
    )
    page.locator("body").focus()
    seen: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        key = page.evaluate("() => document.activeElement && document.activeElement.dataset.kb")
        if key is None:
            continue
        if seen and key == seen[0]:
            break
        seen.append(key)
    return seen


def _controls(page: Page) -> dict[str, str]:
    """Every visible interactive control (one per radio group), by its keyboard id."""
    items: dict[str, str] = page.evaluate(
        """() => { const out = {}; const radios = new Set();
          document.querySelectorAll('[data-kb]').forEach(el => {
            const r = el.getBoundingClientRect();
            if (el.disabled || r.width === 0 || r.height === 0) return;
            if (el.type === 'radio') { if (radios.has(el.name)) return; radios.add(el.name); }
            out[el.dataset.kb] = el.outerHTML.slice(0, 80); });
          return out; }"""
    )
    return items


def test_keyboard_only_reaches_every_control(page: Page, server: Server) -> None:
    page.goto("/login")
    # The username field has the focus on arrival (autofocus).
    assert page.evaluate("() => document.activeElement.id") == "username"
    page.keyboard.type("carla")
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery")
    page.keyboard.press("Enter")
    page.wait_for_url("**/ward")
    for path in (None, "patient"):
        if path == "patient":
            link = page.locator("#ward-table tbody tr[data-patient] .who-cell a").first
            link.focus()
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/patients/"))
            page.locator("#risk-chart figure").wait_for()
        order = _tab_through(page)
        reached = set(order)
        # From the top of the page, the first stop is "Skip to content".
        assert order[0] == page.evaluate("() => document.querySelector('.skip').dataset.kb")
        controls = _controls(page)
        missed = {k: v for k, v in controls.items() if k not in reached}
        radios = {k for k, v in controls.items() if 'type="radio"' in v}
        # A radio group is one tab stop; the arrow keys move inside it.
        missed = {k: v for k, v in missed.items() if k not in radios or not reached & radios}
        assert not missed, missed
        # Focus is visible: the focused control gets the outline of :focus-visible.
        outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"


def test_automatic_sign_out_after_inactivity(page: Page, server: Server) -> None:
    page.clock.install()
    sign_in(page, "carla")
    idle_ms = server.settings.session_idle_minutes * 60_000
    page.clock.fast_forward(idle_ms - 50_000)
    expect(page.locator("#idle-warning")).to_be_visible()
    expect(page.locator("#idle-stay")).to_be_focused()
    screenshot(page, "idle-warning.png", full_page=False)
    page.clock.fast_forward(55_000)
    page.wait_for_url(re.compile(r"/login\?expired=1"))
    expect(page.locator(".notice")).to_contain_text("inactivity")
    page.goto("/ward")  # the server session ended too, not only the page
    expect(page).to_have_url(re.compile(r"/login"))


def test_signing_in_again_returns_to_the_page(page: Page, server: Server) -> None:
    """After the automatic sign-out, signing in lands on the page the reader was on, and
    the way back names the patient by the public id only (no name in any address)."""
    page.clock.install()
    sign_in(page, "carla")
    page.locator("#ward-table tbody tr[data-patient] .who-cell a").first.click()
    page.wait_for_url(re.compile(r"/patients/[0-9a-f]{32}$"))
    patient_url = page.url
    name = page.locator(".phead h1").inner_text()
    page.clock.fast_forward(server.settings.session_idle_minutes * 60_000 + 5_000)
    page.wait_for_url(re.compile(r"/login\?expired=1&next=%2Fpatients%2F[0-9a-f]{32}$"))
    assert name not in page.url
    page.fill("#username", "carla")
    page.fill("#password", PASSWORD)
    page.click("main button[type=submit]")
    # The address is what is asserted, not the page's load event (the page's live stream
    # and scripts are not part of the claim); a wrong landing names where it landed.
    try:
        page.wait_for_url(patient_url, wait_until="commit")
    except PlaywrightTimeoutError:
        error = page.locator(".error, .notice, h1").all_inner_texts()
        raise AssertionError(f"signed in, but landed on {page.url}: {error}") from None
    expect(page.locator(".phead h1")).to_have_text(name)


@pytest.mark.parametrize(("width", "name"), [(768, "ward-tablet.png"), (390, None)])
def test_ward_fits_a_tablet_and_a_phone(
    page: Page, server: Server, width: int, name: str | None
) -> None:
    """No sideways scrolling on a ward tablet (or a phone), and each patient's risk, band,
    name and alert state stay in view."""
    page.set_viewport_size({"width": width, "height": 1000})
    sign_in(page, "carla")
    assert _overflow(page) <= 0, f"the ward is {_overflow(page)} px wider than {width} px"
    rows = page.locator("#ward-table tbody tr[data-patient]")
    assert rows.count() >= 20
    for row in rows.all()[:8]:
        for part in (".pct", ".band", ".who-cell a"):
            cell = row.locator(part)
            expect(cell).to_be_visible()
            box = cell.bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= width, (part, box)
    # The alert state: every row at or above the threshold is marked so, in words.
    alerts = page.locator('#ward-table tbody tr[data-band="high"], tr[data-band="critical"]')
    for row in alerts.all():
        expect(row.locator(".band")).to_have_text(re.compile("High|Critical"))
        expect(row.locator(".band")).to_be_visible()
    if name:
        screenshot(page, name, full_page=False)
    # The patient page (charts, tables, feedback form) fits the same screen.
    rows.first.locator(".who-cell a").click()
    page.locator("#vitals-charts figure").first.wait_for()
    assert _overflow(page) <= 0, f"the patient page is {_overflow(page)} px too wide"


def test_a_row_missing_most_key_inputs_fits_a_tablet(
    page: Page, server: Server, sparse_stay: str
) -> None:
    """A stay with little data yet names seven missing key inputs in one badge; in the
    tablet layout that badge sized its grid column to the whole text on one line and
    pushed the row (and the page) sideways past the screen."""
    page.set_viewport_size({"width": 768, "height": 1000})
    sign_in(page, "carla")
    badge = page.locator(f'#ward-table tr[data-patient="{sparse_stay}"] td.inputs .badge')
    expect(badge).to_contain_text("Respiratory rate")
    assert _overflow(page) <= 0, f"the ward is {_overflow(page)} px wider than 768 px"
    box = badge.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 768, box


def _overflow(page: Page) -> int:
    """How far the document is wider than the viewport (sideways scrolling), in px."""
    width: int = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return width
