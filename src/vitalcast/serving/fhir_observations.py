"""The Observations ``/fhir`` serves: stored observations and a stay's height and weight.

The store keeps a stay's height and admission weight as columns of the encounter
(``height_cm``, ``weight_kg``), not as observation rows, yet to an EHR they are
Observations like any other (LOINC 8302-2 and 29463-7). :func:`served_observations` is
the one selectable the search and the read go through: stored rows and these derived ones
in a single SQL ``UNION ALL``, so the code and date filters, the sort, ``total`` and the
paging apply to both exactly alike.

A derived Observation's time is the stay's admission time: the store keeps no time of
measurement for these columns (PhysioNet 2012 gives them as descriptors at 00:00, the
admission), so no other time would be one the store knows. Its id is the encounter's
public id (random, never a patient identifier) with ``-weight`` or ``-height``: never
all digits, so it cannot collide with a stored observation's id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    String,
    Subquery,
    cast,
    literal,
    null,
    select,
    union_all,
)

from vitalcast.clinical.codes import BY_KEY
from vitalcast.clinical.tables import Encounter, Observation

# Row kinds of the union: a stored observation, or an encounter column. The kind also
# breaks ties in the sort, after the time (stored rows first, as they sorted alone).
STORED = 0
_DERIVED = {1: ("weight", Encounter.weight_kg), 2: ("height", Encounter.height_cm)}
_SUFFIX = {name: kind for kind, (name, _) in _DERIVED.items()}
_DERIVED_ID = re.compile(r"(?P<encounter>[A-Za-z0-9]{1,32})-(?P<name>weight|height)")


@dataclass(frozen=True, slots=True)
class ObservationId:
    """A served Observation's id, taken apart: which union row it names."""

    kind: int
    row_id: int | None  # a stored observation's id
    encounter: str | None  # a derived one's encounter public id


def parse_observation_id(text: str) -> ObservationId | None:
    """The row an Observation id names, or None when no row could have it."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return ObservationId(STORED, int(text), None)
    found = _DERIVED_ID.fullmatch(text)
    if found is None:
        return None
    return ObservationId(_SUFFIX[found["name"]], None, found["encounter"])


def derived_id(kind: int, encounter_public_id: str) -> str:
    """The FHIR id of a stay's height or weight Observation."""
    return f"{encounter_public_id}-{_DERIVED[kind][0]}"


def served_observations(stored: ColumnElement[bool], encounters: ColumnElement[bool]) -> Subquery:
    """Stored observations matching ``stored`` and the height and weight of the encounters
    matching ``encounters``, as one row set with the columns the resources need.

    Columns: ``kind``, ``row_id`` (observation or encounter id), ``patient_id``,
    ``encounter_id``, ``encounter_public_id`` (derived rows only; a page looks stored
    rows' up), ``code``, ``value``, ``value_text``, ``unit``, ``effective_at``. The
    conditions go into each branch, where the indexes serve them.
    """
    branches: list[Any] = [
        select(
            literal(STORED, Integer).label("kind"),
            cast(Observation.id, BigInteger).label("row_id"),
            Observation.patient_id.label("patient_id"),
            Observation.encounter_id.label("encounter_id"),
            cast(null(), String).label("encounter_public_id"),
            Observation.code.label("code"),
            Observation.value.label("value"),
            Observation.value_text.label("value_text"),
            Observation.unit.label("unit"),
            Observation.effective_at.label("effective_at"),
        ).where(stored)
    ]
    for kind, (key, column) in _DERIVED.items():
        spec = BY_KEY[key]
        branches.append(
            select(
                literal(kind, Integer).label("kind"),
                cast(Encounter.id, BigInteger).label("row_id"),
                Encounter.patient_id.label("patient_id"),
                Encounter.id.label("encounter_id"),
                Encounter.public_id.label("encounter_public_id"),
                literal(spec.code, String).label("code"),
                cast(column, Float).label("value"),
                cast(null(), String).label("value_text"),
                literal(spec.unit, String).label("unit"),
                Encounter.admitted_at.label("effective_at"),
            ).where(encounters, column.is_not(None))
        )
    return union_all(*branches).subquery("served_observations")
