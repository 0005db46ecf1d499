"""The admin audit view and ``vitalcast audit export`` filter by user, patient, event,
action, outcome and time range, and say what was wrong with a bad filter.

The expected rows are computed in Python from the events the test wrote, never from the
database, so a filter that selects too much or too little fails.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from tests.conftest import Credentials
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.db.base import utcnow
from vitalcast.db.session import session_scope
from vitalcast.security import audit, audit_keys
from vitalcast.security.audit_anchor import anchor_now
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.state import get_state


@dataclass(frozen=True)
class Written:
    resource: str
    actor: str
    patient: str | None
    event: str
    action: str
    outcome: str
    at: datetime


SPECS = [  # actor, patient, event, action, outcome
    ("user:ann", "pat-a", "patient.viewed", "R", "success"),
    ("user:bob", "pat-a", "patient.viewed", "R", "denied"),
    ("user:ann", "pat-b", "feedback.created", "C", "success"),
    ("cli", None, "model.promoted", "U", "success"),
    ("user:bob", "pat-b", "patient.viewed", "R", "success"),
    ("cli", None, "model.rolled_back", "U", "failure"),
    ("user:ann", "pat-a", "export.created", "E", "success"),
]


def _write(session: Session) -> list[Written]:
    out = []
    for n, (actor, patient, event, action, outcome) in enumerate(SPECS):
        row = audit.record(
            session,
            audit.Event(
                event,
                action,  # type: ignore[arg-type]
                actor=actor,
                patient_id=patient,
                outcome=outcome,
                resource=f"Test/{n}",
            ),
        )
        out.append(Written(f"Test/{n}", actor, patient, event, action, outcome, row.occurred_at))
        session.commit()  # one transaction each: distinct, increasing times
    return out


def _cases(w: list[Written]) -> list[tuple[dict[str, str], Callable[[Written], bool]]]:
    t2, t5 = w[2].at.isoformat(), w[5].at.isoformat()
    return [
        ({"actor": "user:ann"}, lambda e: e.actor == "user:ann"),
        ({"patient_id": "pat-a"}, lambda e: e.patient == "pat-a"),
        ({"event": "patient.viewed"}, lambda e: e.event == "patient.viewed"),
        ({"event": "model.*"}, lambda e: e.event.startswith("model.")),
        ({"action": "U"}, lambda e: e.action == "U"),
        ({"outcome": "denied"}, lambda e: e.outcome == "denied"),
        ({"since": t2, "until": t5}, lambda e: w[2].at <= e.at < w[5].at),
        (
            {"actor": "user:bob", "patient_id": "pat-b", "action": "R", "outcome": "success"},
            lambda e: (
                (e.actor, e.patient, e.action, e.outcome) == ("user:bob", "pat-b", "R", "success")
            ),
        ),
    ]


def _export(settings: Settings, tmp_path: Path, filters: dict[str, str]) -> list[str]:
    names = {"patient_id": "--patient"}
    args = ["audit", "export", "--out", str(tmp_path / "x.jsonl")]
    for key, value in filters.items():
        args += [names.get(key, f"--{key}"), value]
    result = CliRunner().invoke(main, args, obj={"settings": settings})
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "x.jsonl").read_text().splitlines()
    return [json.loads(line)["resource"] for line in lines]


def test_export_filters(settings: Settings, db_session: Session, tmp_path: Path) -> None:
    written = _write(db_session)
    for filters, keep in _cases(written):
        expected = [e.resource for e in written if keep(e)]
        assert expected, filters  # every case selects something, and not everything
        assert len(expected) < len(written), filters
        # Exports made earlier in this loop are audit events too; they are not Test/ rows.
        got = [r for r in _export(settings, tmp_path, filters) if str(r).startswith("Test/")]
        assert got == expected, filters
    bad = CliRunner().invoke(main, ["audit", "export", "--action", "X"], obj={"settings": settings})
    assert bad.exit_code == 2
    assert "--action" in bad.output


def test_admin_view_filters(client: FlaskClient, creds: Credentials) -> None:
    app = client.application
    with session_scope(get_state(app).sessions) as session:
        written = _write(session)
    creds.login(client, creds.user("ada", "admin"))
    for filters, keep in _cases(written):
        expected = [e.resource for e in reversed(written) if keep(e)]  # newest first
        page = client.get("/admin/audit", query_string=filters)
        assert page.status_code == 200, filters
        shown = re.findall(r'<td class="small">(Test/\d+)</td>', page.get_data(as_text=True))
        assert shown == expected, filters
    day = written[0].at.date().isoformat()
    whole_day = client.get("/admin/audit", query_string={"since": day, "until": day})
    shown = re.findall(r'<td class="small">(Test/\d+)</td>', whole_day.get_data(as_text=True))
    if written[-1].at.date() == written[0].at.date():  # not run across midnight
        assert shown == [e.resource for e in reversed(written)]
    for bad in ({"since": "yesterday"}, {"action": "X"}, {"outcome": "maybe"}):
        page = client.get("/admin/audit", query_string=bad)
        assert page.status_code == 422, bad
        assert next(iter(bad)) in page.get_data(as_text=True)
    # Years outside 1800-2200 get the shared clinical time rule's answer, as every other
    # time input does (the first reached the database driver and failed there).
    for bad in ({"since": "0001-01-01T00:00:00+14:00"}, {"until": "9999-12-31"}):
        page = client.get("/admin/audit", query_string=bad)
        assert page.status_code == 422, bad
        assert "is outside the accepted range 1800-2200" in page.get_data(as_text=True)


def test_export_rejects_a_bad_time(settings: Settings) -> None:
    result = CliRunner().invoke(
        main, ["audit", "export", "--since", "not a time"], obj={"settings": settings}
    )
    assert result.exit_code == 2
    assert "ISO 8601" in result.output


def test_export_refuses_years_outside_the_clinical_range(settings: Settings) -> None:
    for value in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        result = CliRunner().invoke(
            main, ["audit", "export", "--since", value], obj={"settings": settings}
        )
        assert result.exit_code == 2, result.output
        assert "is outside the accepted range 1800-2200" in result.output


def _anchoring_line(client: FlaskClient) -> str:
    page = client.get("/admin/audit")
    assert page.status_code == 200
    found = re.search(r'<p id="anchoring" class="([^"]*)">(.*?)</p>', page.get_data(as_text=True))
    assert found is not None
    return found.group(1) + " | " + re.sub(r"<[^>]+>", "", found.group(2))


def test_admin_page_says_when_the_chain_was_last_anchored(
    client: FlaskClient, creds: Credentials
) -> None:
    """A stopped anchoring job must be visible: until it runs, deleted newest events go
    unnoticed."""
    creds.login(client, creds.user("ada", "admin"))
    line = _anchoring_line(client)
    assert "warn" in line
    assert "Never anchored" in line
    state = get_state(client.application)
    with session_scope(state.sessions) as session:
        outcome = anchor_now(session, audit_keys.installed(), None)
        assert outcome.anchor is not None
        head = outcome.anchor.head_id
    line = _anchoring_line(client)
    assert "warn" not in line.split(" | ")[0]
    assert f"events up to event {head}, the whole chain walked." in line
    with session_scope(state.sessions) as session:  # a day later, nothing since
        session.execute(text("SET session_replication_role = replica"))  # past the trigger
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.event == "audit.anchored")
            .values(occurred_at=utcnow() - timedelta(days=1))
        )
    line = _anchoring_line(client)
    assert "warn" in line.split(" | ")[0]
    assert "(24 h ago)" in line
    assert "No anchor for over 2 h: is the anchoring job" in line
