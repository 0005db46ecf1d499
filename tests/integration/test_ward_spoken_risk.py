"""The ward row's words for screen readers give each risk as the row shows it.

The sparkline's hidden text ("Risk over 24 h: 1 score, from 12 % to 12 %") rounded to a
whole percent, while the row shows a risk on a band cut-point with one decimal (12.4 %
beside an alert threshold of 12.4 %): a screen-reader user heard a number that sits on
the threshold the risk has reached. With the trained champion loaded, as served.
"""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import Credentials
from vitalcast.clinical.tables import Patient
from vitalcast.db import session_scope
from vitalcast.modeling.registry import risk_percent
from vitalcast.modeling.tables import Prediction
from vitalcast.serving.state import get_state


def test_the_sparkline_read_aloud_gives_the_risk_as_the_row_shows_it(
    client: FlaskClient, creds: Credentials, ward: list[str]
) -> None:
    state = get_state(client.application)
    assert state.predictor is not None
    threshold = state.predictor.threshold
    patient_id = ward[0]
    with session_scope(state.sessions) as session:
        patient = session.scalars(select(Patient).where(Patient.public_id == patient_id)).one()
        for prediction in session.scalars(
            select(Prediction).where(Prediction.patient_id == patient.id)
        ):
            prediction.score = threshold  # exactly on the cut-point: one decimal shown
    shown = risk_percent(threshold, threshold)
    assert "." in shown

    creds.login(client, creds.user("nina", "nurse"))
    html = client.get("/ward").get_data(as_text=True)
    row = html[html.index(f'data-patient="{patient_id}"') :]
    row = row[: row.index("</tr>")]
    assert f'<span class="pct">{shown}</span>' in row
    spoken = re.search(r"Risk over 24 h: \d+ scores?, from ([0-9.]+ %) to ([0-9.]+ %)", row)
    assert spoken is not None, row
    assert spoken.groups() == (shown, shown)
