"""After signing in, back to the page asked for: only this UI's own pages, never elsewhere.

Through the real app and the real sign-in form. The hostile targets are the classic
open-redirect and header-injection forms; each must land on the ward list instead.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from flask.testing import FlaskClient

from tests.conftest import Credentials, _csrf_from

PATIENT_PAGE = "/patients/" + "3f" * 16  # a public id's shape: random, not identifying

HOSTILE = [
    "//evil.example/",
    "///evil.example/",
    "https://evil.example/ward",
    "http:/evil.example",
    "http:evil.example",
    "javascript:alert(1)",
    "/\\evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "/\t/evil.example",
    "/ward\r\nSet-Cookie: injected=1",
    "/ward\nLocation: https://evil.example",
    "/%2F%2Fevil.example",
    "/\uff0f\uff0fevil.example",  # fullwidth solidus, which some URL parsers fold to "/"
    "ward",
    "evil.example",
    " /ward",
    "/login",  # a loop
    "/login?next=//evil.example",
    "/logout",  # POST only: no page
    "/api/v1/patients",  # JSON, not a page
    f"/ward/rows/{'3f' * 16}",  # a live-update fragment
    "/static/vitalcast.css",
    "/nowhere",
    "/ward#top",
    "/" + "a" * 3000,
]


def _sign_in(client: FlaskClient, creds: Credentials, target: str, *, in_query: bool) -> str:
    """Sign in with ``target`` as the query's or the form's ``next``; the redirect's Location."""
    user = creds.user("nina", "nurse")
    token = _csrf_from(client.get("/login").get_data(as_text=True))
    form = {"username": user, "password": creds.PASSWORD, "csrf_token": token}
    url = "/login"
    if in_query:
        url += "?next=" + quote(target, safe="")
    else:
        form["next"] = target
    response = client.post(url, data=form)
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert "\r" not in location
    assert "\n" not in location
    assert "injected" not in response.headers.get("Set-Cookie", "")
    return location


@pytest.mark.parametrize("in_query", [True, False], ids=["query", "form"])
@pytest.mark.parametrize("target", HOSTILE)
def test_a_hostile_target_lands_on_the_ward(
    client: FlaskClient, creds: Credentials, target: str, in_query: bool
) -> None:
    assert _sign_in(client, creds, target, in_query=in_query) == "/ward"


@pytest.mark.parametrize("in_query", [True, False], ids=["query", "form"])
@pytest.mark.parametrize(
    "target",
    [PATIENT_PAGE, "/ward?unit=MICU", "/models", "/admin/audit?event=user.login&page=2", "/"],
)
def test_a_page_of_this_ui_is_where_sign_in_returns(
    client: FlaskClient, creds: Credentials, target: str, in_query: bool
) -> None:
    assert _sign_in(client, creds, target, in_query=in_query) == target


def test_no_target_lands_on_the_ward(client: FlaskClient, creds: Credentials) -> None:
    user = creds.user("nina", "nurse")
    token = _csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"username": user, "password": creds.PASSWORD, "csrf_token": token}
    )
    assert response.headers["Location"] == "/ward"


def test_an_expired_session_returns_to_the_page_it_asked_for(
    client: FlaskClient, creds: Credentials
) -> None:
    """The whole loop as a browser runs it: the guard's redirect, the form, the return."""
    asked = client.get(PATIENT_PAGE + "?")
    assert asked.status_code == 302
    login_url = asked.headers["Location"]
    parts = urlsplit(login_url)
    assert (parts.path, parse_qs(parts.query)) == ("/login", {"next": [PATIENT_PAGE]})
    page = client.get(login_url).get_data(as_text=True)
    assert f'<input type="hidden" name="next" value="{PATIENT_PAGE}">' in page
    user = creds.user("nina", "nurse")
    # The form posts to the page's own address (its query included) with its fields.
    response = client.post(
        login_url,
        data={
            "username": user,
            "password": creds.PASSWORD,
            "csrf_token": _csrf_from(page),
            "next": PATIENT_PAGE,
        },
    )
    assert response.headers["Location"] == PATIENT_PAGE


def test_the_sign_in_page_never_echoes_a_hostile_target(client: FlaskClient) -> None:
    page = client.get("/login?next=" + quote("//evil.example/", safe="")).get_data(as_text=True)
    assert "evil.example" not in page
    assert not re.search(r'name="next"', page)


def test_a_post_without_a_session_is_not_a_return_target(client: FlaskClient) -> None:
    """A form sent after the session ended cannot be replayed by a redirect: sign-in
    offers no way back to it (and would refuse the target anyway)."""
    response = client.post(PATIENT_PAGE + "/feedback", data={"kind": "agree"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
