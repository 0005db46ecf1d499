"""Device bindings: which patient (and stay) a bedside or wearable device is measuring.

A binding has a validity interval ``[bound_at, unbound_at)``. A reading is attributed by
its own measurement time, not by when it arrives, so late or out-of-order messages still
reach the patient the device was on when it measured, and never the next patient.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitalcast.clinical.tables import DeviceBinding, Encounter, Patient
from vitalcast.db.base import utcnow
from vitalcast.errors import Conflict, InvalidInput, NotFound

# Device ids appear in MQTT topics: no topic separators or wildcards.
_DEVICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The answer for an unknown stay; routes give it for a stay the caller may not see too.
ENCOUNTER_NOT_FOUND = "encounter not found"


@dataclass(frozen=True)
class BindingView:
    """A binding with the public ids that ingestion references use."""

    device_id: str
    patient_public_id: str
    encounter_public_id: str | None
    bound_at: datetime
    unbound_at: datetime | None

    def covers(self, at: datetime) -> bool:
        return self.bound_at <= at and (self.unbound_at is None or at < self.unbound_at)


def check_device_id(device_id: str) -> str:
    """Raises:
    InvalidInput: not 1-64 characters of letters, digits, ``._:-``."""
    if not _DEVICE_ID.match(device_id or ""):
        raise InvalidInput(
            "invalid device id",
            details=[{"loc": ["device_id"], "msg": "use 1-64 letters, digits, '.', '_', ':', '-'"}],
        )
    return device_id


def active_binding(session: Session, device_id: str) -> DeviceBinding | None:
    """The device's current (not yet ended) binding, if any."""
    return session.scalar(
        select(DeviceBinding).where(
            DeviceBinding.device_id == device_id, DeviceBinding.unbound_at.is_(None)
        )
    )


def bind_device(
    session: Session,
    *,
    device_id: str,
    patient_public_id: str,
    encounter_public_id: str | None = None,
    now: datetime | None = None,
) -> DeviceBinding:
    """Bind a device to a patient (and optionally a stay) from ``now`` on; idempotent.

    Raises:
        InvalidInput: bad device id, or the stay belongs to another patient.
        NotFound: no such patient or stay.
        Conflict: the device is bound to someone else (unbind it first).
    """
    check_device_id(device_id)
    patient = session.scalar(select(Patient).where(Patient.public_id == patient_public_id))
    if patient is None:
        raise NotFound("patient not found")
    encounter_id = None
    if encounter_public_id is not None:
        encounter = session.scalar(
            select(Encounter).where(Encounter.public_id == encounter_public_id)
        )
        if encounter is None:
            raise NotFound(ENCOUNTER_NOT_FOUND)
        if encounter.patient_id != patient.id:
            raise InvalidInput(
                "the encounter belongs to another patient",
                details=[{"loc": ["encounter_id"], "msg": "not an encounter of this patient"}],
            )
        encounter_id = encounter.id
    current = active_binding(session, device_id)
    if current is not None:
        if current.patient_id == patient.id and current.encounter_id == encounter_id:
            return current
        raise Conflict("device is bound to another patient or stay; unbind it first")
    binding = DeviceBinding(
        device_id=device_id,
        patient_id=patient.id,
        encounter_id=encounter_id,
        bound_at=now or utcnow(),
    )
    session.add(binding)
    session.flush()
    return binding


def unbind_device(
    session: Session, *, device_id: str, now: datetime | None = None
) -> DeviceBinding:
    """End the device's current binding at ``now``.

    Raises:
        NotFound: the device is not bound.
    """
    current = active_binding(session, check_device_id(device_id))
    if current is None:
        raise NotFound("device is not bound")
    current.unbound_at = now or utcnow()
    session.flush()
    return current


def load_bindings(session: Session, device_ids: Iterable[str]) -> dict[str, list[BindingView]]:
    """Every binding (past and current) of these devices, oldest first."""
    ids = sorted(set(device_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(
            DeviceBinding.device_id,
            Patient.public_id,
            Encounter.public_id,
            DeviceBinding.bound_at,
            DeviceBinding.unbound_at,
        )
        .join(Patient, Patient.id == DeviceBinding.patient_id)
        .outerjoin(Encounter, Encounter.id == DeviceBinding.encounter_id)
        .where(DeviceBinding.device_id.in_(ids))
        .order_by(DeviceBinding.device_id, DeviceBinding.bound_at)
    )
    out: dict[str, list[BindingView]] = {}
    for device_id, patient, encounter, bound_at, unbound_at in rows:
        out.setdefault(device_id, []).append(
            BindingView(device_id, patient, encounter, bound_at, unbound_at)
        )
    return out


def binding_at(bindings: list[BindingView], at: datetime) -> BindingView | None:
    """The binding covering measurement time ``at`` (bindings sorted by ``bound_at``)."""
    i = bisect_right([b.bound_at for b in bindings], at) - 1
    return bindings[i] if i >= 0 and bindings[i].covers(at) else None
