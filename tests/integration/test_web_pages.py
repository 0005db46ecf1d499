"""The clinician and admin pages, through the real app on PostgreSQL (no browser)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Credentials, set_web_session, web_session
from tests.webdata import record_risk_history, register_version, store_synthetic_ward
from vitalcast.clinical.tables import Observation, Patient
from vitalcast.db import session_scope
from vitalcast.modeling.tables import Prediction
from vitalcast.security.tables import ApiKey, AuditEvent
from vitalcast.serving.patient_api import latest_encounter
from vitalcast.serving.patients import decrypt_identifiers
from vitalcast.serving.state import get_state
from vitalcast.web.tables import Feedback
from vitalcast.web.ward import VITAL_CODES

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def ward(app: Flask) -> dict[str, object]:
    state = get_state(app)
    with session_scope(state.sessions) as session:
        store_synthetic_ward(session, state.cipher, n_current=12, now=NOW)
    with session_scope(state.sessions) as session:
        version_id = register_version(session)
        scored = record_risk_history(session, version_id=version_id, now=NOW)
    with state.sessions() as session:
        patient = session.scalars(select(Patient).order_by(Patient.id)).first()
        assert patient is not None
        ids = decrypt_identifiers(state.cipher, patient)
    return {"scored": scored, "patient": patient.public_id, "ids": ids}


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr class="band-row-[a-z]+" data-patient="([0-9a-f]+)"', html)


def _scores(html: str) -> list[float]:
    return [float(s) for s in re.findall(r'data-score="([0-9.]+)"', html)]


def test_ward_sorted_by_risk_with_trend_stale_and_missing(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    creds.login(client, creds.user("nina", "nurse"))
    html = client.get("/ward").get_data(as_text=True)
    scores = _scores(html)
    assert len(scores) == 12
    assert scores == sorted(scores, reverse=True)
    scored = ward["scored"]
    assert isinstance(scored, list)
    expected_high = sum(1 for s in scored if s.scores[-1] >= 0.3)
    assert f'id="count-high">{expected_high}<' in html
    assert "rising" in html
    assert "falling" in html
    assert "steady" in html
    assert "Missing: Lactate" in html  # every fourth stay lacks lactate features
    assert 'data-spark="' in html
    assert "Risk over 24 h:" in html
    # names are shown to a nurse (identifiers:read)
    ids = ward["ids"]
    assert isinstance(ids, dict)
    assert ids["mrn"] in html


def test_mrn_search_uses_the_keyed_hash_and_never_a_url(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    token = creds.login(client, creds.user("nina", "nurse"))
    ids = ward["ids"]
    assert isinstance(ids, dict)
    page = client.post("/ward", data={"csrf_token": token, "mrn": ids["mrn"].lower()})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert _rows(html) == [ward["patient"]]
    assert "1 match for the MRN searched" in html
    miss = client.post("/ward", data={"csrf_token": token, "mrn": "NOPE0000"})
    assert _rows(miss.get_data(as_text=True)) == []
    # Name search over the listed (decrypted) page: a part of the name, any case.
    part = ids["name"].split()[-1][1:4].upper()
    by_name = client.post("/ward", data={"csrf_token": token, "name": part}).get_data(as_text=True)
    assert ward["patient"] in _rows(by_name)
    with session_scope(get_state(client.application).sessions) as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.event == "patient.list")).all()
        assert [e.details["search"] for e in events if "search" in e.details] == [
            "mrn",
            "mrn",
            "name",
        ]
        assert all(ids["mrn"] not in str(e.details) for e in events)


def test_data_scientist_sees_no_identifiers_and_cannot_search(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    token = creds.login(client, creds.user("dora", "data_scientist"))
    html = client.get("/ward").get_data(as_text=True)
    ids = ward["ids"]
    assert isinstance(ids, dict)
    assert ids["mrn"] not in html
    assert ids["name"] not in html
    assert 'name="mrn"' not in html
    assert client.post("/ward", data={"csrf_token": token, "mrn": ids["mrn"]}).status_code == 403
    patient = client.get(f"/patients/{ward['patient']}").get_data(as_text=True)
    assert ids["mrn"] not in patient
    assert "Identifiers are hidden for your role" in patient
    assert "Your response" not in patient  # no feedback:write


def test_live_row_fragment(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    creds.login(client, creds.user("nina", "nurse"))
    row = client.get(f"/ward/rows/{ward['patient']}")
    assert row.status_code == 200
    assert _rows(row.get_data(as_text=True)) == [ward["patient"]]
    assert client.get("/ward/rows/" + "0" * 32).status_code == 404


def test_a_risk_scored_before_the_first_landmark_is_marked_early(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    sessions = get_state(client.application).sessions

    def admit(hours_before_score: float) -> tuple[str, str]:
        with session_scope(sessions) as session:
            patient = session.scalars(
                select(Patient).where(Patient.public_id == ward["patient"])
            ).one()
            encounter = latest_encounter(session, patient)
            assert encounter is not None
            scored = session.scalar(
                select(func.max(Prediction.as_of)).where(Prediction.encounter_id == encounter.id)
            )
            assert scored is not None
            encounter.admitted_at = scored - timedelta(hours=hours_before_score)
        page = client.get(url).get_data(as_text=True)
        row = client.get(f"/ward/rows/{ward['patient']}").get_data(as_text=True)
        return page, row

    for later in (30, 4):
        page, row = admit(later)
        assert 'id="early-note"' not in page
        assert ">Early<" not in row
    page, row = admit(2.5)
    assert 'id="early-note"' in page
    assert "Scored 2.5 h after admission, before 3 h" in page
    assert ">Early<" in row
    assert "Scored 2.5 h after admission, before 3 h: provisional" in row


def _age_stay(
    client: FlaskClient,
    ward: dict[str, object],
    *,
    vitals_back: timedelta,
    discharged_at: datetime | None = None,
) -> None:
    """Move the ward patient's vital signs ``vitals_back`` into the past (and discharge
    the stay at ``discharged_at`` when given)."""
    with session_scope(get_state(client.application).sessions) as session:
        patient = session.scalars(select(Patient).where(Patient.public_id == ward["patient"])).one()
        encounter = latest_encounter(session, patient)
        assert encounter is not None
        if discharged_at is not None:
            encounter.discharged_at = discharged_at
        for obs in session.scalars(
            select(Observation).where(
                Observation.encounter_id == encounter.id, Observation.code.in_(VITAL_CODES)
            )
        ):
            obs.effective_at = obs.effective_at - vitals_back


def test_patient_page_flags_stale_vitals_as_the_ward_does(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    """The ward's Stale rule on the patient page: a fresh lab does not make old vital
    signs fresh (the page used to show only the newest observation of any kind)."""
    creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    page = client.get(url).get_data(as_text=True)
    assert 'id="vital-age"' in page
    assert "badge-stale" not in page.split('id="vital-age"')[1].split("</p>")[0]
    _age_stay(client, ward, vitals_back=timedelta(hours=10))
    page = client.get(url).get_data(as_text=True)
    line = page.split('id="vital-age"')[1].split("</p>")[0]
    assert "badge-stale" in line
    assert "no vital sign for more than 240 minutes" in line
    row = client.get(f"/ward/rows/{ward['patient']}").get_data(as_text=True)
    assert "badge-stale" in row  # the same verdict on the ward


def test_patient_page_and_feedback_stored_and_audited(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    token = creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    html = client.get(url).get_data(as_text=True)
    ids = ward["ids"]
    assert isinstance(ids, dict)
    assert ids["name"] in html
    assert ids["mrn"] in html
    assert "Glasgow Coma Scale, lowest (this stay): 9 points" in html  # the factor in words
    assert "alert threshold of 30.0 %" in html
    assert 'id="risk-chart"' in html
    assert 'id="vitals-charts"' in html
    prediction_id = re.search(r'name="prediction_id" value="([0-9a-f]+)"', html)
    assert prediction_id
    pid = prediction_id.group(1)
    # disagree needs a reason; the error page lists the problem
    bad = client.post(url + "/feedback", data={"csrf_token": token, "kind": "disagree"})
    assert bad.status_code == 422
    assert "say why you disagree" in bad.get_data(as_text=True)
    # no CSRF token: refused
    assert client.post(url + "/feedback", data={"kind": "acknowledge"}).status_code == 403
    ok = client.post(
        url + "/feedback",
        data={
            "csrf_token": token,
            "kind": "disagree",
            "reason": "on vasopressors",
            "prediction_id": pid,
        },
    )
    assert ok.status_code == 302
    after = client.get(url).get_data(as_text=True)
    assert "on vasopressors" in after
    # "Acknowledge alert" is offered for a risk at or above the threshold only: this
    # patient's is below it; the ward's highest risk is an alert.
    assert 'id="ack"' not in html
    alert_url = f"/patients/{_rows(client.get('/ward').get_data(as_text=True))[0]}"
    alert_page = client.get(alert_url).get_data(as_text=True)
    assert 'id="ack"' in alert_page
    alert = re.search(r'name="prediction_id" value="([0-9a-f]+)"', alert_page)
    assert alert
    ack = client.post(
        alert_url + "/feedback",
        data={"csrf_token": token, "kind": "acknowledge", "prediction_id": alert.group(1)},
    )
    assert ack.status_code == 302
    assert "Alert acknowledged" in client.get(alert_url).get_data(as_text=True)
    with session_scope(get_state(client.application).sessions) as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.id)).all()
        assert [(r.kind, r.reason, r.actor) for r in rows] == [
            ("disagree", "on vasopressors", "user:carl"),
            ("acknowledge", None, "user:carl"),
        ]
        assert rows[0].score_shown_permille is not None
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.event == "feedback.recorded")
        ).all()
        assert [a.details["kind"] for a in audited] == ["disagree", "acknowledge"]
        assert all("vasopressors" not in str(a.details) for a in audited)
        # Once the stay has ended, the form is gone and a posted verdict is refused.
        patient = session.scalars(select(Patient).where(Patient.public_id == ward["patient"])).one()
        encounter = latest_encounter(session, patient)
        assert encounter is not None
        encounter.discharged_at = NOW
    assert "Your response" not in client.get(url).get_data(as_text=True)
    late = client.post(
        url + "/feedback", data={"csrf_token": token, "kind": "agree", "prediction_id": pid}
    )
    assert late.status_code == 409
    assert "no stay in progress" in late.get_data(as_text=True)


def test_clinician_cannot_open_admin_pages(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    creds.login(client, creds.user("carl", "clinician"))
    for path in ("/admin/users", "/admin/api-keys", "/admin/audit", "/monitoring"):
        page = client.get(path)
        html = page.get_data(as_text=True)
        assert page.status_code == 403, path
        assert "Not allowed" in html
        assert "Request id:" in html
    assert client.get("/patients/" + "0" * 32).status_code == 404
    assert "Admin" not in client.get("/ward").get_data(as_text=True)


def test_admin_pages_users_keys_and_audit_filters(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    token = creds.login(client, creds.user("ada", "admin"))
    assert "ada" in client.get("/admin/users").get_data(as_text=True)
    made = client.post(
        "/admin/users",
        data={
            "csrf_token": token,
            "username": "new.nurse",
            "password": "long enough pass",
            "role": "nurse",
            "units": "MICU",
        },
    )
    assert made.status_code == 302
    assert "new.nurse" in client.get("/admin/users").get_data(as_text=True)
    created = client.post(
        "/admin/api-keys",
        data={"csrf_token": token, "name": "monitor feed", "role": "integration", "days": "30"},
    ).get_data(as_text=True)
    key = re.search(r"(vc_[0-9a-f]+_[A-Za-z0-9_-]+)", created)
    assert key, created
    # the key works once, and its secret is not stored
    assert (
        client.get(
            "/api/v1/patients", headers={"Authorization": f"Bearer {key.group(1)}"}
        ).status_code
        == 200
    )
    with session_scope(get_state(client.application).sessions) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == "monitor feed"))
        assert row is not None
        assert key.group(1).split("_", 2)[2] not in row.secret_hash
        prefix = row.prefix
    assert key.group(1) not in client.get("/admin/api-keys").get_data(as_text=True)
    client.post(f"/admin/api-keys/{prefix}/revoke", data={"csrf_token": token})
    assert (
        client.get(
            "/api/v1/patients", headers={"Authorization": f"Bearer {key.group(1)}"}
        ).status_code
        == 401
    )
    audit = client.get("/admin/audit?event=apikey.created").get_data(as_text=True)
    assert audit.count("<td>apikey.created</td>") == 1
    assert "<td>user.login</td>" not in audit
    assert client.get("/admin/audit?since=yesterday").status_code == 422


def test_models_and_monitoring_pages(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    creds.login(client, creds.user("ada", "admin"))
    models = client.get("/models").get_data(as_text=True)
    assert "test-0001" in models
    assert "AUROC 0.810" in models
    detail = client.get("/models/test-0001").get_data(as_text=True)
    assert "calibration.slope" in detail
    assert client.get("/models/none").status_code == 404
    from vitalcast.modeling.tables import Prediction

    with session_scope(get_state(client.application).sessions) as session:
        # A shadow score: never shown to clinicians, so not counted beside the bands.
        shown = session.scalars(select(Prediction).limit(1)).one()
        session.add(
            Prediction(
                public_id="shadow0001",
                patient_id=shown.patient_id,
                encounter_id=shown.encounter_id,
                model_version_id=shown.model_version_id,
                task=shown.task,
                role="challenger",
                score=0.99,
                band="critical",
                as_of=shown.as_of,
                features_digest=shown.features_digest,
            )
        )
    monitoring = client.get("/monitoring").get_data(as_text=True)
    with session_scope(get_state(client.application).sessions) as session:
        n = session.scalar(
            select(func.count())
            .select_from(Prediction)
            .where(
                Prediction.created_at >= datetime.now(UTC) - timedelta(hours=24),
                Prediction.role == "champion",
            )
        )
    assert f"<strong>{n}</strong> champion scores in 24 h" in monitoring
    # The tile and the band table count the same scores.
    banded = re.findall(r'<span class="band band-\w+">\w+</span></td><td>(\d+)</td>', monitoring)
    assert sum(int(k) for k in banded) == n
    # Bands are listed highest first, the order of the ward (not by name: "high" before
    # "low" before "medium").
    listed = re.findall(r'<span class="band band-(\w+)">', monitoring)
    order = ["critical", "high", "medium", "low"]
    assert len(listed) >= 2, monitoring
    assert listed == sorted(listed, key=order.index), listed


def test_background_requests_do_not_keep_a_session_alive(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    creds.login(client, creds.user("nina", "nurse"))
    idle = get_state(client.application).settings.session_idle_minutes
    almost = datetime.now(UTC) - timedelta(minutes=idle, seconds=-30)
    set_web_session(client, last_seen_at=almost)
    assert (
        client.get(f"/ward/rows/{ward['patient']}", headers={"X-Background": "1"}).status_code
        == 200
    )
    assert web_session(client).last_seen_at == almost  # live updates are not user activity
    assert client.get("/session/keepalive").status_code == 204
    assert web_session(client).last_seen_at > almost
    set_web_session(client, last_seen_at=datetime.now(UTC) - timedelta(minutes=idle + 2))
    expired = client.get("/ward")
    assert expired.status_code == 302
    assert "/login" in expired.headers["Location"]


def test_favicon_is_our_svg_for_anyone(client: FlaskClient) -> None:
    """Browsers fetch /favicon.ico unasked: it answers (no 404 in every log) without a
    session, with the same icon the pages link."""
    with client.get("/favicon.ico") as icon:
        assert icon.status_code == 200
        assert icon.mimetype == "image/svg+xml"
        svg = icon.get_data(as_text=True)
    assert svg.lstrip().startswith("<svg")
    assert "<script" not in svg
    page = client.get("/login").get_data(as_text=True)
    link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page)
    assert link is not None
    with client.get(link.group(1)) as linked:
        assert linked.status_code == 200
        assert linked.get_data(as_text=True) == svg


def test_patient_page_shows_height_and_weight_charted_as_observations(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    """A stay from FHIR or HL7 has no height and weight descriptors, only observations;
    the page shows what the model reads from them, not a dash."""
    from vitalcast.clinical.codes import BY_KEY

    creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    with session_scope(get_state(client.application).sessions) as session:
        patient = session.scalars(select(Patient).where(Patient.public_id == ward["patient"])).one()
        encounter = latest_encounter(session, patient)
        assert encounter is not None
        encounter.height_cm = encounter.weight_kg = None  # as the FHIR adapter stores a stay
        for code, value, at in (
            (BY_KEY["height"].code, 172.0, encounter.admitted_at + timedelta(hours=3)),
            (BY_KEY["weight"].code, 81.0, encounter.admitted_at),
        ):
            session.add(
                Observation(
                    patient_id=patient.id,
                    encounter_id=encounter.id,
                    code=code,
                    value=value,
                    effective_at=at,
                    source="fhir",
                    dedup_key=uuid.uuid4(),
                )
            )
    page = client.get(url).get_data(as_text=True)
    assert "172 cm / 81 kg" in page


def test_recorded_response_names_the_risk_as_the_page_showed_it(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    """An acknowledged 30.4 % High alert (threshold 30.0 %) is listed as "risk shown
    30.4 %", not "30 %": the list used to round the stored permille half-even to a whole
    percent, which put an acknowledged alert below the threshold it crossed."""
    token = creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    with session_scope(get_state(client.application).sessions) as session:
        patient = session.scalars(select(Patient).where(Patient.public_id == ward["patient"])).one()
        newest = session.scalars(
            select(Prediction)
            .where(Prediction.patient_id == patient.id)
            .order_by(Prediction.id.desc())
            .limit(1)
        ).one()
        newest.score = 0.304
    html = client.get(url).get_data(as_text=True)
    assert 'class="bigpct">30.4 %<' in html
    found = re.search(r'name="prediction_id" value="([0-9a-f]+)"', html)
    assert found is not None
    ack = client.post(
        url + "/feedback",
        data={"csrf_token": token, "kind": "acknowledge", "prediction_id": found.group(1)},
    )
    assert ack.status_code == 302
    after = client.get(url).get_data(as_text=True)
    assert "<strong>Acknowledge</strong> (risk shown 30.4 %)" in after


def test_a_discharged_stay_shows_its_last_risk_not_a_current_stale_one(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    """After discharge the box read "Current risk … High" with a Stale badge ("this risk
    may not reflect the patient's state now"): a risk of a patient who has left, offered
    as today's. It is the last risk of the stay, dated, and no vital sign is overdue."""
    creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    page = client.get(url).get_data(as_text=True)
    assert ">Current risk" in page
    _age_stay(client, ward, vitals_back=timedelta(hours=10), discharged_at=NOW - timedelta(hours=1))
    page = client.get(url).get_data(as_text=True)
    box = page.split('class="riskbox')[1].split("</section>")[0]
    assert "Current risk" not in box
    assert "Last risk of this stay" in box
    assert 'id="discharged-note"' in box
    assert "badge-stale" not in box


def test_a_response_to_a_previous_stays_risk_is_refused(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    """A page of the previous stay, still open when the patient is admitted again, posts
    that stay's score: it was stored as a verdict on the new stay (listed there, counted
    on the monitoring page) about a risk nobody was shown for it."""
    from vitalcast.clinical.tables import Encounter

    token = creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    html = client.get(url).get_data(as_text=True)
    found = re.search(r'name="prediction_id" value="([0-9a-f]+)"', html)
    assert found is not None
    with session_scope(get_state(client.application).sessions) as session:
        patient = session.scalars(select(Patient).where(Patient.public_id == ward["patient"])).one()
        old = latest_encounter(session, patient)
        assert old is not None
        old.discharged_at = NOW - timedelta(hours=2)
        session.add(
            Encounter(
                patient_id=patient.id,
                source="test",
                source_ref="readmitted",
                unit=old.unit,
                admitted_at=NOW - timedelta(hours=1),
                age_years=old.age_years,
            )
        )
    late = client.post(
        url + "/feedback",
        data={"csrf_token": token, "kind": "agree", "prediction_id": found.group(1)},
    )
    assert late.status_code == 422
    assert "not this stay" in late.get_data(as_text=True)
    with session_scope(get_state(client.application).sessions) as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 0


def test_only_an_alert_can_be_acknowledged(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    """The page offers "Acknowledge alert" only at or above the threshold; a crafted
    acknowledgement of a lower risk was stored and counted as a handled alert."""
    from vitalcast.modeling.tables import ModelVersion, Prediction

    token = creds.login(client, creds.user("carl", "clinician"))
    url = f"/patients/{ward['patient']}"
    found = re.search(
        r'name="prediction_id" value="([0-9a-f]+)"', client.get(url).get_data(as_text=True)
    )
    assert found is not None
    sessions = get_state(client.application).sessions
    answer = {"csrf_token": token, "kind": "acknowledge", "prediction_id": found.group(1)}
    for above, status in ((False, 422), (True, 302)):
        with session_scope(sessions) as session:
            shown = session.scalars(
                select(Prediction).where(Prediction.public_id == found.group(1))
            ).one()
            threshold = session.scalars(
                select(ModelVersion.threshold).where(ModelVersion.id == shown.model_version_id)
            ).one()
            shown.score = threshold if above else threshold * 0.5
        response = client.post(url + "/feedback", data=answer)
        assert response.status_code == status, response.get_data(as_text=True)
        if not above:
            assert "only an alert" in response.get_data(as_text=True)
    with session_scope(sessions) as session:
        assert session.scalars(select(Feedback.kind)).all() == ["acknowledge"]


def test_a_ward_link_naming_a_unit_in_another_case_or_no_unit_says_so(
    client: FlaskClient, creds: Credentials, ward: dict[str, object]
) -> None:
    """``/ward?unit=micu`` showed an empty ward headed "micu" with "0 high risk" (a calm
    unit, to a reader) while MICU had patients. A unit named in another case or with
    spaces is that unit; a name that is no unit with stays in progress is said to be so."""
    creds.login(client, creds.user("carl", "clinician"))
    html = client.get("/ward").get_data(as_text=True)
    units = sorted(set(re.findall(r'<td class="unit" data-label="Unit">([^<]+)</td>', html)))
    assert units
    unit = units[0]
    exact = client.get("/ward", query_string={"unit": unit}).get_data(as_text=True)
    assert _rows(exact)
    for spelling in (unit.lower(), f" {unit.lower()} "):
        other = client.get("/ward", query_string={"unit": spelling}).get_data(as_text=True)
        assert _rows(other) == _rows(exact), spelling
        assert f"<h1>{unit}</h1>" in other
        assert 'id="unit-unknown"' not in other
    nowhere = client.get("/ward", query_string={"unit": "Nowhere"}).get_data(as_text=True)
    assert not _rows(nowhere)
    notice = nowhere.split('id="unit-unknown">')[1].split("</p>")[0]
    assert "Nowhere" in notice
    assert unit in notice
