"""CDS Hooks feedback: what the clinician did with a card, checked and stored.

Split from :mod:`.cds_hooks` because feedback is a capability of its own (its own
endpoint, table and field rules) that shares nothing with scoring but the service id.
The view is registered on the ``cds`` blueprint by :mod:`.cds_hooks`, which keeps the
blueprint's URL map in one place and this module free of an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, jsonify
from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.times import TimeOutOfRange, parse_iso, to_utc
from vitalcast.db.base import utcnow
from vitalcast.errors import BadRequest, NotFound
from vitalcast.modeling.tables import Prediction
from vitalcast.security.permissions import Permission, requires
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.cds_request import SERVICE_ID, bad_request
from vitalcast.serving.context import audit_event, current_principal, db
from vitalcast.serving.tables import CdsFeedback
from vitalcast.serving.validation import json_body

# Feedback limits: the columns of cds_feedback, and a bound on one request's work.
MAX_FEEDBACK_ITEMS = 100
_CARD_CHARS = 64
_REASON_CHARS = 300
_COMMENT_CHARS = 1000
_SYSTEM_CHARS = 500
# An outcome may be stamped by a clock slightly ahead of ours, not later than that.
_CLOCK_SKEW = timedelta(minutes=5)
# The patient-view event that issues a card is written in the prediction's transaction,
# after it: well within this time of the prediction's creation.
_ISSUE_WINDOW = timedelta(minutes=5)


@dataclass(frozen=True)
class _Feedback:
    """One checked feedback item, ready to be stored."""

    card: str
    outcome: str
    reason: str | None
    comment: str | None
    at: datetime | None


@requires(Permission.PREDICT)
def feedback(service_id: str) -> Response:
    """Store accepted/overridden outcomes of cards, with override reasons.

    Only for a service that exists (feedback for another id would be stored against a
    service nobody can call). Every field is checked for shape and for the length of its
    column, and all problems are answered at once (400): a value too long for its column
    used to fail in the database, as a 500 whose log carried the SQL parameters, free
    text included. Messages name the field and the rule, never the text (a comment may
    hold a patient's name).
    """
    if service_id != SERVICE_ID:
        raise NotFound(f"no CDS service {service_id!r}")
    body = json_body()
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest(
            "feedback must be a non-empty list",
            details=[{"loc": ["body", "feedback"], "msg": "required list"}],
        )
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise BadRequest(
            f"at most {MAX_FEEDBACK_ITEMS} feedback items per request",
            details=[{"loc": ["body", "feedback"], "msg": f"at most {MAX_FEEDBACK_ITEMS} items"}],
        )
    problems: list[dict[str, Any]] = []
    now = utcnow()
    checked = [
        _feedback_item(item, ["body", "feedback", i], now, problems) for i, item in enumerate(items)
    ]
    if problems:
        raise bad_request("the feedback has problems", problems)
    session = db()
    client = current_principal().name
    cards = _issued_cards(session, {item.card for item in checked if item is not None}, client)
    rows = [
        CdsFeedback(
            service_id=service_id,
            card_uuid=item.card,
            prediction_id=cards[item.card].prediction_id if item.card in cards else None,
            outcome=item.outcome,
            override_reason=item.reason,
            user_comment=item.comment,
            outcome_at=item.at or now,
            client=client[:200],
        )
        for item in checked
        if item is not None
    ]
    session.add_all(rows)
    # One event per patient the cards were issued for (usually one card, so one event),
    # naming them as the patient-view event did, so that the feedback is in their trail.
    by_patient: dict[tuple[str | None, str | None], list[str]] = {}
    for row in rows:
        card = cards.get(row.card_uuid)
        key = (card.patient_id, card.ehr_patient) if card is not None else (None, None)
        by_patient.setdefault(key, []).append(row.card_uuid)
    for (patient_id, ehr_patient), uuids in by_patient.items():
        details: dict[str, Any] = {"cards": uuids}
        if ehr_patient is not None:
            details["ehr_patient"] = ehr_patient
        audit_event(
            "cds.feedback",
            "C",
            patient_id=patient_id,
            resource=f"cds/{service_id}/feedback",
            details=details,
        )
    return jsonify({"stored": len(rows)})


@dataclass(frozen=True)
class _IssuedCard:
    """A risk card this service issued: its prediction and the patient it was for, as
    the ``cds.patient-view`` event that issued it refers to them."""

    prediction_id: int
    patient_id: str | None  # the store's public id, when the store holds the patient
    ehr_patient: str | None  # keyed hash of the EHR's patient id


def _issued_cards(session: Session, uuids: set[str], client: str) -> dict[str, _IssuedCard]:
    """The risk cards among ``uuids`` (a risk card's uuid is its prediction's public id).

    CDS predictions are not linked to a stored patient (the EHR sent the data), so the
    patient is read from the card's ``cds.patient-view`` audit event, written in the
    same transaction as the prediction: it is sought among the events of the minutes
    after the prediction's creation (the ``occurred_at`` index), not the whole log.
    Cards of other kinds (no stay, outside the population) and unknown uuids are left
    out: their feedback is stored and audited without a patient, as before. So is the id
    of a prediction this service did not issue to ``client`` (a score of the web page or
    of ``/predict``, or another EHR's card): feedback on a card answers what that client
    was shown, and linking it to another score would count a verdict nobody gave on it.
    """
    found: dict[str, _IssuedCard] = {}
    predictions = session.execute(
        select(Prediction.public_id, Prediction.id, Prediction.created_at).where(
            Prediction.public_id.in_(sorted(uuids))
        )
    ).all()
    for public_id, prediction_id, created_at in predictions:
        issued = session.execute(
            select(AuditEvent.patient_id, AuditEvent.details)
            .where(
                AuditEvent.event == "cds.patient-view",
                AuditEvent.occurred_at >= created_at,
                AuditEvent.occurred_at < created_at + _ISSUE_WINDOW,
            )
            .order_by(AuditEvent.id)
        )
        event = next(
            (
                (p, d)
                for p, d in issued
                if (d or {}).get("card") == public_id and (d or {}).get("client") == client
            ),
            None,
        )
        if event is not None:
            patient_id, details = event
            found[public_id] = _IssuedCard(prediction_id, patient_id, details.get("ehr_patient"))
    return found


def _feedback_item(
    item: Any, loc: list[Any], now: datetime, problems: list[dict[str, Any]]
) -> _Feedback | None:
    """One feedback item (CDS Hooks 2.0 "Feedback"), or None with its problems recorded.

    ``outcomeTimestamp`` may be left out (the time received is stored). The cards of this
    service carry no suggestions, so ``acceptedSuggestions`` can only be empty.
    """
    if not isinstance(item, dict):
        problems.append({"loc": loc, "msg": "must be an object"})
        return None
    before = len(problems)
    card = _text(item.get("card"), [*loc, "card"], _CARD_CHARS, problems, required=True)
    outcome = item.get("outcome")
    if outcome not in ("accepted", "overridden"):
        problems.append({"loc": [*loc, "outcome"], "msg": "required: accepted or overridden"})
    when = _timestamp(item.get("outcomeTimestamp"), [*loc, "outcomeTimestamp"], now, problems)
    reason, comment = _override_reason(item.get("overrideReason"), outcome, loc, problems)
    suggestions = item.get("acceptedSuggestions")
    if suggestions is not None:
        where = [*loc, "acceptedSuggestions"]
        if not isinstance(suggestions, list) or not all(
            isinstance(s, dict) and isinstance(s.get("id"), str) for s in suggestions
        ):
            problems.append({"loc": where, "msg": "must be a list of objects with an id string"})
        elif suggestions:
            problems.append(
                {
                    "loc": where,
                    "msg": "must be empty: the cards of this service have no suggestions",
                }
            )
    if len(problems) > before or card is None:
        return None
    return _Feedback(card, str(outcome), reason, comment, when)


def _override_reason(
    raw: Any, outcome: Any, loc: list[Any], problems: list[dict[str, Any]]
) -> tuple[str | None, str | None]:
    """``(reason, userComment)`` of an overrideReason: the reason is its Coding's display,
    else its code (what the clinician picked); the comment is free text."""
    if raw is None:
        return None, None
    where = [*loc, "overrideReason"]
    if not isinstance(raw, dict):
        problems.append({"loc": where, "msg": "must be an object (reason, userComment)"})
        return None, None
    if outcome == "accepted":
        problems.append({"loc": where, "msg": "only with outcome overridden"})
    coding = raw.get("reason")
    reason: str | None = None
    if coding is not None:
        if not isinstance(coding, dict):
            problems.append({"loc": [*where, "reason"], "msg": "must be a Coding object"})
        else:
            at = [*where, "reason"]
            _text(coding.get("system"), [*at, "system"], _SYSTEM_CHARS, problems)
            code = _text(coding.get("code"), [*at, "code"], _REASON_CHARS, problems)
            display = _text(coding.get("display"), [*at, "display"], _REASON_CHARS, problems)
            reason = display or code
    comment = _text(raw.get("userComment"), [*where, "userComment"], _COMMENT_CHARS, problems)
    return reason, comment


def _text(
    raw: Any,
    loc: list[Any],
    max_chars: int,
    problems: list[dict[str, Any]],
    *,
    required: bool = False,
) -> str | None:
    """A string field of at most ``max_chars`` (its column), or None if absent or empty.

    The message never repeats the text. (NUL characters and lone surrogates, which
    PostgreSQL cannot store, are refused for every request by the request guard.)
    """
    if raw is None:
        if required:
            problems.append({"loc": loc, "msg": "required string"})
        return None
    if not isinstance(raw, str):
        problems.append({"loc": loc, "msg": "must be a string"})
    elif required and not raw:
        problems.append({"loc": loc, "msg": "must not be empty"})
    elif len(raw) > max_chars:
        problems.append({"loc": loc, "msg": f"must be at most {max_chars} characters"})
    else:
        return raw or None
    return None


def _timestamp(
    raw: Any, loc: list[Any], now: datetime, problems: list[dict[str, Any]]
) -> datetime | None:
    """An ISO 8601 date-time (UTC when it has no offset), in the clinical year range
    (:mod:`vitalcast.clinical.times`, the rule every other time input follows), not in
    the future."""
    if raw is None:
        return None
    iso = "must be an ISO 8601 date-time string"
    if not isinstance(raw, str) or "T" not in raw:
        problems.append({"loc": loc, "msg": iso})
        return None
    try:
        parsed = parse_iso(raw, "outcomeTimestamp")
        value = to_utc(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), "outcomeTimestamp")
    except TimeOutOfRange as exc:
        problems.append({"loc": loc, "msg": str(exc)})
        return None
    except ValueError:
        problems.append({"loc": loc, "msg": iso})
        return None
    if value > now + _CLOCK_SKEW:
        problems.append({"loc": loc, "msg": "must not be in the future"})
        return None
    return value
