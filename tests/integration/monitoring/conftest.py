"""A monitored deployment in miniature: a registered champion with a real sidecar, stays
with lactate observations and stored predictions, and a real webhook receiver."""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.modeling.tables import ModelVersion, Prediction
from vitalcast.monitoring.drift import reference_profile

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
LACTATE = "2524-7"  # LOINC lactate, mmol/L (clinical/codes.py)
THRESHOLD = 0.3


def lactate_values(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.lognormal(math.log(1.8), 0.55, n), 1)


def scores(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.beta(0.9, 5.5, n)


@dataclass
class Deployment:
    session: Session
    model: ModelVersion
    rng: np.random.Generator
    next_id: int = 0

    def add_stays(
        self,
        n: int,
        *,
        at: datetime,
        lactate_factor: float = 1.0,
        unit: str = "MICU",
        outcomes: bool = False,
    ) -> list[Encounter]:
        """``n`` stays of 10 h ending at ``at``, one lactate each, scored at discharge."""
        values = lactate_values(self.rng, n) * lactate_factor
        risk = scores(self.rng, n)
        encounters = []
        for value, p in zip(values, risk, strict=True):
            self.next_id += 1
            ref = f"t{self.next_id}"
            patient = Patient(source="test", source_ref=ref, sex="female")
            self.session.add(patient)
            self.session.flush()
            enc = Encounter(
                patient_id=patient.id,
                source="test",
                source_ref=ref,
                unit=unit,
                admitted_at=at - timedelta(hours=10),
                discharged_at=at,
                age_years=70.0,
            )
            self.session.add(enc)
            self.session.flush()
            self.session.add(
                Observation(
                    patient_id=patient.id,
                    encounter_id=enc.id,
                    code=LACTATE,
                    value=float(value),
                    unit="mmol/L",
                    effective_at=at - timedelta(hours=2),
                    source="test",
                    dedup_key=uuid.uuid5(uuid.NAMESPACE_URL, f"obs-{ref}"),
                )
            )
            self.session.add(
                Prediction(
                    public_id=f"p{ref}",
                    patient_id=patient.id,
                    encounter_id=enc.id,
                    model_version_id=self.model.id,
                    task=self.model.task,
                    role="champion",
                    score=float(p),
                    band="high" if p >= THRESHOLD else "low",
                    as_of=at,
                    features_digest="0" * 64,
                    created_at=at,
                )
            )
            if outcomes:
                self.session.add(
                    Outcome(
                        patient_id=patient.id,
                        encounter_id=enc.id,
                        kind="in_hospital_death",
                        value=float(self.rng.random() < p),
                        occurred_at=at + timedelta(days=2),
                        known_at=at + timedelta(days=3),
                        source="test",
                    )
                )
            encounters.append(enc)
        self.session.flush()
        return encounters


@pytest.fixture
def deployment(db_session: Session, tmp_path: Path) -> Deployment:
    """A champion whose sidecar holds training profiles of lactate and of the score."""
    rng = np.random.default_rng(2026)
    reference = {
        "n": 3000,
        "features": {"lactate_last_all": reference_profile(lactate_values(rng, 3000).tolist())},
        "score": reference_profile(scores(rng, 3000).tolist()),
    }
    folder = tmp_path / "registry" / "icu-mortality-test"
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"not loaded by monitoring")
    (folder / "model.json").write_text(json.dumps({"reference": reference}))
    model = ModelVersion(
        version="icu-mortality-test",
        task="icu-mortality",
        artifact_path=str(folder / "model.joblib"),
        sha256="0" * 64,
        threshold=THRESHOLD,
        metrics={},
        alias="champion",
    )
    db_session.add(model)
    db_session.flush()
    return Deployment(db_session, model, rng)


@dataclass
class Receiver:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    """A real HTTP server on 127.0.0.1 recording the JSON it is sent."""
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.received.append(json.loads(body))
            self.send_response(receiver.status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
