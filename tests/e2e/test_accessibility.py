"""WCAG 2.1 AA: every page of the web UI, audited by axe-core in the real browser.

Procurement holds hospital software to WCAG 2.1 level AA (Section 508 refers to it).
axe-core (bundled by the axe-playwright-python package) checks the rules tagged WCAG 2.0
and 2.1, levels A and AA, and its best practices (landmarks, heading order: how 1.3.1 and
2.4.1 are met in practice) on each page as a user reaches it: signed out, as a
clinician, as an administrator, with the inactivity warning open and on the error pages,
each at a desktop width and at 320 CSS px, the width of WCAG 1.4.10 (reflow: a 1280 px
screen zoomed to 400 %; narrower than a phone), where the page must not scroll sideways
either (a wide table scrolls inside its own region). No rule is disabled. What axe
cannot decide by itself (results it calls "incomplete", such as the contrast of text
drawn in an SVG chart) is not asserted; the keyboard journey is test_journeys'.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from tests.e2e.conftest import IMAGES, Server, sign_in

pytestmark = pytest.mark.e2e

RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]
AXE = Axe()
DESKTOP = {"width": 1366, "height": 900}
REFLOW = {"width": 320, "height": 640}


def _audit(page: Page, where: str) -> list[str]:
    """Each axe violation on the page as shown now: one line per rule and element."""
    page.wait_for_load_state("load")
    results = AXE.run(
        page, options={"runOnly": {"type": "tag", "values": RULES}, "resultTypes": ["violations"]}
    )
    found: list[str] = []
    for rule in results.response["violations"]:
        for node in rule["nodes"]:
            selector = " ".join(_flat(node["target"]))
            found.append(
                f"{where}: {rule['id']} ({rule['impact']}) at {selector}: "
                f"{node.get('failureSummary', '').splitlines()[-1].strip()}"
            )
    return found


def _check(page: Page, where: str) -> list[str]:
    """The audit at a desktop width, then at 320 px with the reflow rule; back to desktop."""
    found = _audit(page, where)
    page.set_viewport_size(REFLOW)
    found += _audit(page, f"{where} at 320 px")
    sideways: int = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    if sideways > 0:
        found.append(f"{where} at 320 px: reflow (WCAG 1.4.10): scrolls {sideways} px sideways")
    page.set_viewport_size(DESKTOP)
    return found


def _flat(target: list[Any]) -> list[str]:
    return [t if isinstance(t, str) else " ".join(_flat(t)) for t in target]


def _open_details(page: Page) -> None:
    """Open every disclosure (the charts' tables of values) so that axe sees its content."""
    page.evaluate("() => document.querySelectorAll('details').forEach(d => d.open = true)")


def test_the_audit_reports_a_violation(page: Page, server: Server) -> None:
    """The audit is live: an image without a text alternative, a nameless button and a
    block wider than 320 px put on the sign-in page are each reported, with selectors."""
    page.goto("/login")
    page.evaluate(
        """() => { const main = document.querySelector('main');
          const img = document.createElement('img'); img.id = 'probe-img';
          img.src = '/static/favicon.svg'; main.append(img);
          const b = document.createElement('button'); b.id = 'probe-button'; main.append(b);
          const wide = document.createElement('p'); wide.style.width = '400px';
          wide.textContent = 'wide'; main.append(wide); }"""
    )
    found = "\n".join(_check(page, "probe"))
    assert re.search(r"^probe: image-alt \(critical\) at #probe-img: ", found, re.M), found
    assert re.search(r"^probe: button-name \(critical\) at #probe-button: ", found, re.M), found
    assert re.search(r"^probe at 320 px: reflow \(WCAG 1.4.10\): scrolls \d+ px", found, re.M)


def test_every_page_meets_wcag_21_aa(page: Page, server: Server, chart_patient: str) -> None:
    found: list[str] = []
    # Signed out: the sign-in page, plain, after a failed attempt, and after the
    # automatic sign-out.
    page.goto("/login")
    found += _check(page, "sign-in")
    page.fill("#username", "carla")
    page.fill("#password", "not the password")
    page.click("main button[type=submit]")
    expect(page.locator("p.error")).to_be_visible()
    found += _check(page, "sign-in, wrong password")
    page.goto("/login?expired=1")
    found += _check(page, "sign-in, expired")

    # A clinician: the ward, a search, patient pages (charts and tables of values open).
    page.clock.install()
    sign_in(page, "carla")
    expect(page.locator("#live-status")).to_have_text(re.compile("Live updates: on"))
    found += _check(page, "ward")
    name = page.locator("#ward-table tbody tr[data-patient] .who-cell a").first.inner_text()
    page.fill("#name", name.strip())
    page.locator("form.search button[type=submit]").click()
    expect(page.locator("main p.notice")).to_contain_text("for the name searched")
    found += _check(page, "ward, name search")
    page.goto("/ward")
    page.locator("#ward-table tbody tr[data-patient] .who-cell a").first.click()
    page.wait_for_url(re.compile(r"/patients/[0-9a-f]{32}$"))
    page.locator("#risk-chart figure").wait_for()
    page.locator("#labs-charts figure").first.wait_for()
    _open_details(page)
    found += _check(page, "patient")
    page.goto(f"/patients/{chart_patient}")
    page.locator("#labs-charts figure").first.wait_for()
    _open_details(page)
    found += _check(page, "patient with every kind of chart")
    # The inactivity warning, open over the page; at 320 px it is still whole in view.
    page.clock.fast_forward(server.settings.session_idle_minutes * 60_000 - 50_000)
    expect(page.locator("#idle-warning")).to_be_visible()
    found += _check(page, "idle warning")
    page.set_viewport_size(REFLOW)
    box = page.locator("#idle-warning").bounding_box()
    assert box is not None
    if box["x"] < 0 or box["x"] + box["width"] > REFLOW["width"]:
        found.append(f"idle warning at 320 px: reflow (WCAG 1.4.10): drawn at {box}")
    page.set_viewport_size(DESKTOP)
    page.locator("#idle-stay").click()
    expect(page.locator("#idle-warning")).to_be_hidden()
    # Models: the list, one version and its model card (a document of its own).
    page.goto("/models")
    found += _check(page, "models")
    page.locator("main td > a[href*='/models/']").first.click()
    page.wait_for_url(re.compile(r"/models/[^/]+$"))
    found += _check(page, "model")
    page.goto(page.url + "/report")
    found += _check(page, "model card")
    # Error pages: not allowed, not found.
    response = page.goto("/admin/users")
    assert response is not None
    assert response.status == 403
    found += _check(page, "error 403")
    response = page.goto("/patients/" + "0" * 32)
    assert response is not None
    assert response.status == 404
    found += _check(page, "error 404")

    # An administrator: users, API keys (and a new key's one-time secret), the audit log
    # (and a filter that finds nothing), monitoring.
    page.context.clear_cookies()
    sign_in(page, "adam")
    for path, where in (
        ("/admin/users", "admin users"),
        ("/admin/api-keys", "admin API keys"),
        ("/admin/audit", "admin audit log"),
        ("/admin/audit?event=no.such.event", "admin audit log, nothing found"),
        ("/monitoring", "monitoring"),
    ):
        page.goto(path)
        found += _check(page, where)
    page.goto("/admin/api-keys")
    page.fill("#nk-name", "accessibility audit")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("code.secret")).to_be_visible()
    found += _check(page, "admin API keys, new key")
    assert not found, f"{len(found)} accessibility violations:\n" + "\n".join(found)


def test_a_discharge_readmission_risk_is_shown_and_meets_wcag_21_aa(
    page: Page, server: Server, readmission_patient: str
) -> None:
    """A patient whose latest encounter has ended sees, once the server's watcher has
    loaded the readmission champion, the risk of readmission within 30 days with its
    factors in clinical words; the section passes the same audit as every page."""
    sign_in(page, "carla")
    deadline = time.monotonic() + 60  # the watcher polls every 5 s
    while True:
        page.goto(f"/patients/{readmission_patient}")
        if page.locator("#readmission").count() or time.monotonic() > deadline:
            break
        time.sleep(1)
    section = page.locator("#readmission")
    expect(section.locator(".bigpct")).to_have_text(re.compile(r"\d+ %"))
    expect(section).to_contain_text("alert threshold")
    factors = section.locator("#readmission-factors tbody tr").all_inner_texts()
    assert factors
    assert not [f for f in factors if "_" in f]  # words, never a column name
    assert _check(page, "patient page with a readmission risk") == []
    section.screenshot(path=str(IMAGES / "patient-readmission.png"))


def test_stays_outside_the_model_population_say_why_and_meet_wcag_21_aa(
    page: Page, server: Server, outside_stays: dict[str, str]
) -> None:
    """An adult's outpatient visit and a child's ICU stay are on the ward without a risk,
    marked in words, and their page says why no risk is computed."""
    sign_in(page, "carla")
    for role, why in (("clinic", "An outpatient visit"), ("child", "A patient aged 9")):
        row = page.locator(f"#ward-table tbody tr[data-patient='{outside_stays[role]}']")
        expect(row.locator(".band")).to_have_text("Outside model")
        expect(row.locator(".risk")).to_contain_text(f"{why} is outside what the model scores")
    found = _check(page, "ward with stays outside the model's population")
    page.goto(f"/patients/{outside_stays['child']}")
    expect(page.locator("#outside-population")).to_have_text(
        "Not scored. A patient aged 9 is outside what the model scores: ICU and hospital"
        " stays of patients aged 15 or over."
    )
    found += _check(page, "patient page outside the model's population")
    assert not found, "\n".join(found)
