"""Text PostgreSQL cannot take (NUL, lone surrogates) and out-of-rule form values, through
the real app on PostgreSQL: a located 4xx answer, never a 500.

A JSON string may spell a lone UTF-16 surrogate (``"\\ud800"``); Python's json module
reads it into a ``str`` that cannot be encoded as UTF-8, so the database driver failed on
it (500). A web form may carry ``%00``, a NUL character, which PostgreSQL cannot store.
The request guard refuses both for every route, naming where they were; the admin forms
and ``vitalcast users create`` / ``apikeys create`` share the service layer's rules.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.conftest import Credentials
from tests.webdata import record_risk_history, register_version, store_synthetic_ward
from vitalcast.cli import main
from vitalcast.clinical.tables import Patient
from vitalcast.config import Settings
from vitalcast.db import session_scope
from vitalcast.security.tables import ApiKey, AuditEvent, User
from vitalcast.serving.state import get_state
from vitalcast.serving.tables import CdsFeedback
from vitalcast.web.tables import Feedback

NOW = datetime.now(UTC).replace(microsecond=0)
FEEDBACK = "/cds-services/vitalcast-icu-mortality/feedback"


def _post_json(client: FlaskClient, path: str, text: str, headers: dict[str, str]) -> Any:
    """POST ``text`` as it is: the JSON escapes (``\\ud800``) reach the server unchanged."""
    return client.post(path, data=text, content_type="application/json", headers=headers)


def _error(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert body is not None, response.get_data(as_text=True)
    return dict(body["error"])


def _locs(response: Any) -> list[list[Any]]:
    return [d["loc"] for d in _error(response)["details"]]


def _count(app: Flask, table: Any, *where: Any) -> int:
    with get_state(app).sessions() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


# --- lone surrogates in JSON bodies ------------------------------------------------------


def test_a_lone_surrogate_patient_id_is_a_located_422(
    app: Flask, client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    admin = creds.api_key("admin")
    for text, loc in (
        ('{"patient_id":"\\ud800"}', ["body", "patient_id"]),
        ('{"patient_id":"x\\udfffy"}', ["body", "patient_id"]),
        ('{"task":"readmission-30d","patient_id":"\\ud800"}', ["body", "patient_id"]),
        ('{"task":"icu-mortality","features":{"age":"\\udbff"}}', ["body", "features", "age"]),
    ):
        response = _post_json(client, "/api/v1/predict", text, admin)
        assert response.status_code == 422, (text, response.get_data(as_text=True))
        error = _error(response)
        assert error["code"] == "invalid_input"
        assert _locs(response) == [loc], text
        assert "surrogate" in error["details"][0]["msg"]
        assert ".".join(loc) in error["message"]  # the place, even where only it is logged
    # A surrogate pair is one character (an emoji, escaped): no such patient, not a 422;
    # so is the text "\ud800" spelt with an escaped backslash.
    for text in ('{"patient_id":"\\ud83d\\ude00"}', '{"patient_id":"\\\\ud800"}'):
        response = _post_json(client, "/api/v1/predict", text, admin)
        assert response.status_code == 404, (text, response.get_data(as_text=True))


def test_a_lone_surrogate_in_a_key_or_a_list_is_located_without_echoing_it(
    client: FlaskClient, creds: Credentials
) -> None:
    admin = creds.api_key("admin")
    response = _post_json(client, "/api/v1/predict", '{"a":[1,{"\\ud800":2}]}', admin)
    assert response.status_code == 422
    assert _locs(response) == [["body", "a", 1, "\ufffd"]]
    assert "\\ud800" not in response.get_data(as_text=True)
    # NUL is located the same way (it used to be only ["body"])
    response = _post_json(client, "/api/v1/predict", '{"rows":["ok","a\\u0000b"]}', admin)
    assert response.status_code == 422
    assert _locs(response) == [["body", "rows", 1]]
    assert "NUL" in _error(response)["details"][0]["msg"]


def test_cds_feedback_with_a_lone_surrogate_is_a_400_and_nothing_is_stored(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    admin = creds.api_key("admin")
    comment = (
        '{"feedback":[{"card":"abc","outcome":"overridden",'
        '"overrideReason":{"userComment":"\\udfff"}}]}'
    )
    card = '{"feedback":[{"card":"\\ud800","outcome":"accepted"}]}'
    for text, loc in (
        (comment, ["body", "feedback", 0, "overrideReason", "userComment"]),
        (card, ["body", "feedback", 0, "card"]),
    ):
        response = _post_json(client, FEEDBACK, text, admin)
        assert response.status_code == 400, response.get_data(as_text=True)  # as CDS answers
        assert _locs(response) == [loc]
        assert "feedback.0." in _error(response)["message"]
    assert _count(app, CdsFeedback) == 0
    # Text outside the Basic Multilingual Plane, escaped as a pair, is stored as written.
    paired = (
        '{"feedback":[{"card":"abc","outcome":"overridden",'
        '"overrideReason":{"userComment":"ok \\ud83d\\ude00"}}]}'
    )
    response = _post_json(client, FEEDBACK, paired, admin)
    assert response.status_code == 200, response.get_data(as_text=True)
    with get_state(app).sessions() as session:
        assert session.scalar(select(CdsFeedback.user_comment)) == "ok \U0001f600"


# --- NUL in web forms and query strings -------------------------------------------------


@pytest.fixture
def web_ward(app: Flask) -> dict[str, str]:
    """A few stays with a scored risk: a patient and a prediction to answer on its page."""
    state = get_state(app)
    with session_scope(state.sessions) as session:
        store_synthetic_ward(session, state.cipher, n_current=3, now=NOW)
    with session_scope(state.sessions) as session:
        record_risk_history(session, version_id=register_version(session), now=NOW)
    with state.sessions() as session:
        patient = session.scalars(select(Patient).order_by(Patient.id)).first()
        assert patient is not None
        return {"patient": patient.public_id}


def _refused_page(response: Any, *fields: str) -> str:
    """The web layer's answer to bad input: the error page listing each field's problem."""
    html = response.get_data(as_text=True)
    assert response.status_code == 422, html
    assert response.mimetype == "text/html"
    assert "Request problem (422)" in html
    for name in fields:
        assert f"{name}: contains a NUL character" in html, html
    return html


def test_nul_in_the_sign_in_form_is_refused_not_a_500(app: Flask, client: FlaskClient) -> None:
    creds = Credentials(app)
    creds.user("admin1", "admin")
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert token
    response = client.post(
        "/login",
        data={"username": "adm\x00in1", "password": "x", "csrf_token": token.group(1)},
    )
    _refused_page(response, "username")
    assert client.get("/login?next=%2Fward%00").status_code == 422  # the query too
    # Nothing was signed in, and the account's failure count is untouched.
    with get_state(app).sessions() as session:
        user = session.scalar(select(User).where(User.username == "admin1"))
        assert user is not None
        assert user.failed_logins == 0


def test_nul_in_admin_and_clinician_forms_is_refused_not_a_500(
    app: Flask, client: FlaskClient, creds: Credentials, web_ward: dict[str, str]
) -> None:
    token = creds.login(client, creds.user("ada", "admin"))
    _refused_page(client.post("/ward", data={"csrf_token": token, "unit": "MI\x00CU"}), "unit")
    _refused_page(client.get("/ward?unit=MI%00CU"), "unit")
    url = f"/patients/{web_ward['patient']}/feedback"
    _refused_page(
        client.post(url, data={"csrf_token": token, "kind": "disagree", "reason": "no\x00way"}),
        "reason",
    )
    _refused_page(
        client.post(url, data={"csrf_token": token, "kind": "agree", "prediction_id": "a\x00b"}),
        "prediction_id",
    )
    _refused_page(
        client.post(
            "/admin/users",
            data={
                "csrf_token": token,
                "username": "zz\x00x",
                "password": "long enough pass",
                "role": "nurse",
            },
        ),
        "username",
    )
    _refused_page(
        client.post(
            "/admin/api-keys", data={"csrf_token": token, "name": "a\x00b", "role": "integration"}
        ),
        "name",
    )
    # A NUL in a field's name is located without it.
    _refused_page(client.post("/ward", data={"csrf_token": token, "un\x00it": "x"}), "unit")
    assert _count(app, Feedback) == 0
    assert _count(app, User) == 1
    assert _count(app, ApiKey) == 0
    # The session is still good: the page after the refusal works.
    assert client.get("/ward").status_code == 200


# --- admin forms: the service's rules ------------------------------------------------------


def _new_user(client: FlaskClient, token: str, **fields: str) -> Any:
    form = {"password": "long enough pass", "role": "nurse", **fields, "csrf_token": token}
    return client.post("/admin/users", data=form)


def _problem_page(response: Any, field: str) -> str:
    html = response.get_data(as_text=True)
    assert response.status_code == 422, html
    assert response.mimetype == "text/html"
    assert f"<li>{field}: " in html, html
    return html


def test_admin_user_form_follows_the_username_and_unit_rules(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    token = creds.login(client, creds.user("ada", "admin"))
    _problem_page(_new_user(client, token, username="u" * 500), "username")
    _problem_page(_new_user(client, token, username=""), "username")
    _problem_page(_new_user(client, token, username="   "), "username")
    _problem_page(_new_user(client, token, username="bell\x07"), "username")
    _problem_page(_new_user(client, token, username="nina", units="MICU," + "U" * 5000), "units")
    assert _count(app, User) == 1  # only ada
    listed = client.get("/api/v1/users", headers={"Accept": "application/json"}).get_json()
    assert [u["username"] for u in listed["items"]] == ["ada"]
    # At the limits: 64 characters, units of 64 characters.
    made = _new_user(client, token, username="n" * 64, units=" MICU , " + "S" * 64)
    assert made.status_code == 302, made.get_data(as_text=True)
    with get_state(app).sessions() as session:
        user = session.scalar(select(User).where(User.username == "n" * 64))
        assert user is not None
        assert user.units == ["MICU", "S" * 64]


def test_admin_key_lifetime_must_be_ascii_digits_in_range(
    app: Flask, client: FlaskClient, creds: Credentials
) -> None:
    token = creds.login(client, creds.user("ada", "admin"))
    for days in ("\u00b2", "\uff13\uff10", "0", "3651", "-5", "1e3", "9" * 400):
        response = client.post(
            "/admin/api-keys",
            data={"csrf_token": token, "name": "k1", "role": "integration", "days": days},
        )
        _problem_page(response, "days")
    assert _count(app, ApiKey) == 0
    ok = client.post(
        "/admin/api-keys",
        data={"csrf_token": token, "name": "k1", "role": "integration", "days": "3650"},
    )
    assert ok.status_code == 200, ok.get_data(as_text=True)
    assert _count(app, ApiKey) == 1


def test_activating_a_user_id_beyond_the_column_is_a_404(
    client: FlaskClient, creds: Credentials
) -> None:
    token = creds.login(client, creds.user("ada", "admin"))
    for user_id in ("99999999999999999999999", "2147483648"):
        response = client.post(
            f"/admin/users/{user_id}/active", data={"csrf_token": token, "active": "1"}
        )
        assert response.status_code == 404, response.get_data(as_text=True)
    assert client.post("/admin/users/1/active", data={"csrf_token": token}).status_code == 422


def _cli(settings: Settings, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), obj={"settings": settings}, input=stdin)


def test_cli_user_and_key_creation_share_the_rules(app: Flask, settings: Settings) -> None:
    password = "long enough pass\n"
    for username, units, expected in (
        ("", [], "username"),
        (" bob", [], "username"),
        ("u" * 65, [], "username"),
        ("bad\udcffname", [], "username"),  # what Python makes of a non-UTF-8 argument
        ("oidc:alice", [], "single sign-on"),  # that IdP user would sign in as it
        ("bob", ["--unit", ""], "unit"),
        ("bob", ["--unit", "U" * 65], "unit"),
    ):
        result = _cli(
            settings,
            "users",
            "create",
            username,
            "--role",
            "nurse",
            *units,
            "--password-stdin",
            stdin=password,
        )
        assert result.exit_code == 2, (username, result.output)
        assert result.output.startswith("error: "), result.output
        assert expected in result.output
        assert "internal error" not in result.output
    assert _count(app, User) == 0
    for args, expected in (
        (["--name", "k" * 101], "name"),
        (["--name", ""], "name"),
        (["--expires-days", "99999999"], "days"),
    ):
        result = _cli(settings, "apikeys", "create", "--role", "integration", *args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output, result.output
    assert _count(app, ApiKey) == 0
    created = _cli(
        settings,
        "users",
        "create",
        "bob",
        "--role",
        "nurse",
        "--unit",
        "MICU",
        "--password-stdin",
        stdin=password,
    )
    assert created.exit_code == 0, created.output
    assert _count(app, AuditEvent, AuditEvent.event == "user.created") == 1
