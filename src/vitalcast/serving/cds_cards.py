"""The cards a CDS Hooks answer carries: a risk with its reasons, or why there is none.

Split from :mod:`.cds_hooks` so that what the clinician reads in the EHR (wording, the
notes on data left out, the early-in-stay caution) is in one place, apart from how the
request is checked and the stay is built.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from vitalcast.clinical.records import PatientRecord
from vitalcast.modeling.tables import Prediction
from vitalcast.modeling.tasks import early_in_stay
from vitalcast.serving.predictor import Predictor

_INDICATOR = {"low": "info", "medium": "info", "high": "warning", "critical": "critical"}


def card_notes(left_out: Counter[str], patient: PatientRecord) -> list[str]:
    """What the score went without, for the card: the clinician reading a risk must know
    when data the EHR holds was not part of it."""
    notes: list[str] = []
    parts = [
        f"{n} {_plural(n, 'observation')} {label}"
        for key, label in (
            ("unreadable", "that could not be read"),
            ("implausible", "outside the plausibility rules (value, unit or time)"),
            ("other_patient", "of another patient"),
        )
        if (n := left_out[key])
    ]
    if parts:
        notes.append(f"Left out of this risk: {', '.join(parts)}.")
    if patient.birth_date is None:
        notes.append("Age unknown: the Patient resource has no full birth date.")
    elif left_out["implausible_age"]:
        notes.append("Age unknown: the Patient resource's birth date gives an age over 130.")
    return notes


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def risk_card(
    predictor: Predictor,
    prediction: Prediction,
    link: str,
    admitted_at: datetime,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    pct = round(prediction.score * 100)
    factors = prediction.explanation or []
    detail = "\n".join(
        f"- {f['label']}: {'raises' if f['contribution'] > 0 else 'lowers'} the risk"
        for f in factors[:5]
    )
    early = early_in_stay(prediction.task, admitted_at, prediction.as_of)
    caution = (
        f"Early in the stay: scored {early['hours']:.1f} h after admission, before"
        f" {early['first_landmark_h']:g} h, the earliest time the model is calibrated at;"
        " provisional.\n"
        if early
        else ""
    )
    threshold = f"{caution}Threshold {round(predictor.threshold * 100)}%."
    band = f"{prediction.band}, early" if early else prediction.band
    text = f"{threshold} Main factors:\n{detail}" if factors else threshold
    return {
        "uuid": prediction.public_id,
        "summary": f"ICU mortality risk {pct}% ({band})"[:140],
        "indicator": _INDICATOR.get(prediction.band, "info"),
        "detail": "\n\n".join([text, *(notes or [])]),
        "source": {"label": f"vitalcast ({predictor.version})", "url": link},
        "links": [{"label": "Open in vitalcast", "url": link, "type": "absolute"}],
    }


def _no_risk_card(link: str, summary: str, detail: str) -> dict[str, Any]:
    """An information card that carries no risk, and says why."""
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": "info",
        "detail": detail,
        "source": {"label": "vitalcast", "url": link},
    }


def no_stay_card(link: str, encounter_id: str | None) -> dict[str, Any]:
    """The answer when there is no stay in progress: scoring another one would be wrong."""
    # "The encounter in context is in progress" said the opposite of the summary.
    which = "The encounter in context is not" if encounter_id else "No encounter of this patient is"
    return _no_risk_card(
        link,
        "ICU mortality risk: no stay in progress, no risk computed",
        f"{which} in progress in the EHR. vitalcast scores the current stay only, from its"
        " admission on.",
    )


def outside_card(link: str, reason: str) -> dict[str, Any]:
    """The answer for a stay the model may not score (an outpatient visit, a child): a
    risk from a model trained on other patients would look as valid as any other."""
    return _no_risk_card(
        link,
        "ICU mortality risk: not computed for this encounter",
        f"{reason} vitalcast computes no risk outside the population its model was trained on.",
    )
