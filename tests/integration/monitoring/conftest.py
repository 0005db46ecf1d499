"""A monitored deployment in miniature: a registered champion with a real sidecar, stays
with lactate observations and stored predictions, and a real webhook receiver."""

from __future__ import annotations

import hashlib
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
import sklearn
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import Encounter, Observation, Outcome, Patient
from vitalcast.modeling.registry import LEGACY_FORMAT
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
            enc = self._stay(unit, admitted_at=at - timedelta(hours=10), discharged_at=at)
            ref = enc.source_ref
            self.add_lactate(enc, at=at - timedelta(hours=2), value=float(value))
            self.session.add(
                Prediction(
                    public_id=f"p{ref}",
                    patient_id=enc.patient_id,
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
                        patient_id=enc.patient_id,
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

    def add_open_stay(self, *, unit: str, observed_at: datetime) -> Encounter:
        """A stay still on ``unit`` (not discharged, not scored) with one lactate."""
        enc = self._stay(unit, admitted_at=observed_at - timedelta(hours=4), discharged_at=None)
        self.add_lactate(enc, at=observed_at)
        return enc

    def add_lactate(self, encounter: Encounter, *, at: datetime, value: float = 1.8) -> None:
        self.session.add(
            Observation(
                patient_id=encounter.patient_id,
                encounter_id=encounter.id,
                code=LACTATE,
                value=value,
                unit="mmol/L",
                effective_at=at,
                source="test",
                dedup_key=uuid.uuid5(uuid.NAMESPACE_URL, f"obs-{encounter.id}-{at.isoformat()}"),
            )
        )

    def _stay(
        self, unit: str, *, admitted_at: datetime, discharged_at: datetime | None
    ) -> Encounter:
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
            admitted_at=admitted_at,
            discharged_at=discharged_at,
            age_years=70.0,
        )
        self.session.add(enc)
        self.session.flush()
        return enc


def register_model(
    session: Session,
    registry: Path,
    *,
    task: str,
    reference: dict[str, Any],
) -> ModelVersion:
    """The champion of ``task``, whose sidecar holds ``reference`` (drift profiles).

    Monitoring never deserialises the artifact, but it verifies the files as serving does
    (hashes, library versions: ``registry.verify_model``), so the row and the sidecar
    record the real hashes of these placeholder files."""
    version = f"{task}-test"
    folder = registry / version
    folder.mkdir(parents=True)
    artifact = b"not loaded by monitoring"
    (folder / "model.joblib").write_bytes(artifact)
    sidecar = json.dumps(
        {
            "reference": reference,
            "version": version,
            "task": task,
            "threshold": THRESHOLD,
            "artifact": "model.joblib",
            "sha256": hashlib.sha256(artifact).hexdigest(),
            "format": LEGACY_FORMAT,
            "versions": {"sklearn": sklearn.__version__},
        }
    ).encode()
    (folder / "model.json").write_bytes(sidecar)
    model = ModelVersion(
        version=version,
        task=task,
        artifact_path=str(folder / "model.joblib"),
        sha256=hashlib.sha256(artifact).hexdigest(),
        sidecar_sha256=hashlib.sha256(sidecar).hexdigest(),
        threshold=THRESHOLD,
        metrics={},
        alias="champion",
    )
    session.add(model)
    session.flush()
    return model


@pytest.fixture
def deployment(db_session: Session, tmp_path: Path) -> Deployment:
    """A champion whose sidecar holds training profiles of lactate and of the score."""
    rng = np.random.default_rng(2026)
    reference = {
        "n": 3000,
        "features": {"lactate_last_all": reference_profile(lactate_values(rng, 3000).tolist())},
        "score": reference_profile(scores(rng, 3000).tolist()),
    }
    model = register_model(
        db_session, tmp_path / "registry", task="icu-mortality", reference=reference
    )
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
