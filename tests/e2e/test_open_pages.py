"""Pages left open: what they say must stay true without a reload.

A ward screen is read for hours (a nurse presses "Stay signed in"), and a patient page
stays open while new data arrive. Data ages and stale badges were frozen at page load,
so data that had gone stale still read "1 h 31 min ago" with no badge; and a live risk
arriving on a patient page changed the number only, under "Not scored yet." or beside
response forms that still answered the earlier score.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Server, _one_stay, _store, sign_in
from vitalcast.clinical.records import PatientRecord
from vitalcast.web.views import ago

pytestmark = pytest.mark.e2e

STALE_MINUTES = 120  # the e2e server's VITALCAST_STALE_AFTER_MINUTES


def _pass_time(page: Page, until: datetime) -> None:
    """Advance the page's clock to ``until`` in 10-minute steps, with the user active in
    another tab meanwhile (tabs share the idle clock), so no automatic sign-out."""
    while True:
        now = datetime.fromtimestamp(page.evaluate("Date.now()") / 1000, UTC)
        if now >= until:
            return
        page.evaluate("VC.markActivity()")
        page.clock.fast_forward(int(min(600, (until - now).total_seconds() + 1) * 1000))


def test_ward_and_patient_page_ages_advance_and_turn_stale(page: Page, server: Server) -> None:
    page.clock.install(time=datetime.now(UTC))
    sign_in(page, "carla")
    # The scored row whose newest vital sign is the oldest that is not stale yet.
    fresh = page.eval_on_selector_all(
        "#ward-table tbody tr[data-patient]:not([data-score=''])",
        """rows => rows
             .filter(r => !r.querySelector('.badge-stale') && r.querySelector('td.fresh time'))
             .map(r => [r.dataset.patient,
                        r.querySelector('td.fresh time').getAttribute('datetime')])""",
    )
    assert fresh
    patient_id, vital_iso = min(fresh, key=lambda pair: datetime.fromisoformat(pair[1]))
    vital_at = datetime.fromisoformat(vital_iso)
    row = page.locator(f'#ward-table tr[data-patient="{patient_id}"]')
    expect(row.locator(".badge-stale")).to_have_count(0)
    turns_stale = vital_at + timedelta(minutes=STALE_MINUTES, seconds=90)
    _pass_time(page, turns_stale)
    page.clock.run_for(31_000)
    age = int((turns_stale + timedelta(seconds=31) - vital_at).total_seconds() // 60)
    expect(row.locator("td.fresh time")).to_have_text(f"{age // 60} h {age % 60} min ago")
    expect(row.locator(".badge-stale")).to_have_text("Stale")
    stale_rows = page.locator("#ward-table tbody tr[data-patient] .badge-stale").count()
    expect(page.locator("#count-stale")).to_have_text(str(stale_rows))

    page.clock.install(time=datetime.now(UTC))
    page.goto(f"/patients/{patient_id}")
    expect(page.locator("#vital-age .badge-stale")).to_have_count(0)
    _pass_time(page, turns_stale)
    page.clock.run_for(31_000)
    expect(page.locator("#vital-age")).to_contain_text(f"{age // 60} h ")
    expect(page.locator("#vital-age .badge-stale")).to_have_text("Stale")
    expect(page.locator("#vital-age")).to_contain_text("this risk may not reflect")
    # The stay's age counts too, as the server would write it now.
    admitted = page.locator("#admitted-ago").get_attribute("datetime")
    assert admitted
    page_now = datetime.fromtimestamp(page.evaluate("Date.now()") / 1000, UTC)
    expect(page.locator("#admitted-ago")).to_have_text(
        ago(datetime.fromisoformat(admitted), now=page_now)
    )


def _post_heart_rate(server: Server, patient_id: str, value: float) -> None:
    response = httpx.post(
        server.url + "/api/v1/observations",
        json=[
            {
                "patient": patient_id,
                "code": "8867-4",
                "value": value,
                "unit": "/min",
                "time": datetime.now(UTC).isoformat(),
            }
        ],
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=20,
    )
    assert response.status_code == 201, response.text
    assert response.json()["rescored"], response.text


def test_a_live_risk_replaces_the_whole_risk_box_and_closes_stale_responses(
    page: Page, server: Server
) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    ref = "e2e-unscored-stay"
    batch = _one_stay(
        ref,
        PatientRecord(ref=ref, sex="male", name="Una Scored", mrn=ref),
        admitted_at=now - timedelta(hours=6),
        age_years=70,
        values=[],
    )
    patient_id = _store(server, batch, "unscored-stay", now)[ref]
    sign_in(page, "carla")
    page.goto(f"/patients/{patient_id}")
    expect(page.locator(".riskbox")).to_contain_text("Not scored yet.")
    expect(page.locator(".riskbox .bigpct")).to_have_text("—")
    page.locator("#risk-chart").get_by_text("No scores during this stay yet.").wait_for()
    _post_heart_rate(server, patient_id, 150)
    box = page.locator(".riskbox")
    expect(box.locator(".bigpct")).to_have_text(re.compile(r"^\d+(\.\d)? %$"), timeout=15_000)
    # The number comes with its band in words, the threshold and when it was scored, and
    # nothing says it is not scored.
    expect(box.locator(".band")).to_have_text(re.compile("^(Low|Medium|High|Critical)$"))
    expect(box.locator(".thr")).to_contain_text("the alert threshold of")
    expect(box.locator("#scored")).to_contain_text("Scored just now")
    expect(box).not_to_contain_text("Not scored")

    # Reloaded, the page answers that score; a newer one closes the forms, which answer
    # the score of page load.
    page.reload()
    verdict = page.locator("form.verdict")
    expect(verdict.get_by_role("button", name="Send feedback")).to_be_enabled()
    _post_heart_rate(server, patient_id, 40)
    expect(page.locator("#responses-closed")).to_contain_text("reload the page", timeout=15_000)
    expect(verdict.get_by_role("button", name="Send feedback")).to_be_disabled()


def test_stay_signed_in_gives_the_focus_back(page: Page, server: Server) -> None:
    """The inactivity warning takes the keyboard focus; "Stay signed in" returns it to
    where the reader was (before, hiding the button left it on the page's body)."""
    page.clock.install()
    sign_in(page, "carla")
    page.locator("#name").focus()
    page.clock.fast_forward(server.settings.session_idle_minutes * 60_000 - 50_000)
    expect(page.locator("#idle-stay")).to_be_focused()
    page.keyboard.press("Enter")
    page.clock.run_for(2_000)
    expect(page.locator("#idle-warning")).to_be_hidden()
    expect(page.locator("#name")).to_be_focused()


def test_a_new_stays_risk_stays_out_of_an_earlier_stays_page(page: Page, server: Server) -> None:
    """A page of a discharged stay ("Last risk of this stay") left open while the patient
    is admitted again: the new stay's risk is announced, not put in the old stay's box."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    ref, person = "e2e-readmitted", PatientRecord(ref="e2e-readmitted", sex="female")
    first = _one_stay(ref, person, admitted_at=now - timedelta(hours=30), age_years=66, values=[])
    patient_id = _store(server, first, "readmitted-1", now)[ref]
    _post_heart_rate(server, patient_id, 150)
    ended = _one_stay(
        ref,
        person,
        admitted_at=now - timedelta(hours=30),
        discharged_at=now - timedelta(minutes=5),
        age_years=66,
        values=[],
    )
    _store(server, ended, "readmitted-2", now)
    sign_in(page, "carla")
    page.goto(f"/patients/{patient_id}")
    box = page.locator(".riskbox")
    expect(box.locator("h2")).to_contain_text("Last risk of this stay")
    before = box.inner_text()
    page.locator("#risk-chart figure").wait_for()
    again = _one_stay(
        ref + "-2", person, admitted_at=now - timedelta(minutes=2), age_years=66, values=[]
    )
    _store(server, again, "readmitted-3", now)
    _post_heart_rate(server, patient_id, 40)
    expect(page.locator("#live-note")).to_contain_text("new stay", timeout=15_000)
    assert box.inner_text() == before
