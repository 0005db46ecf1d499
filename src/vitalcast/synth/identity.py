"""Synthetic direct identifiers: MRN, name, birth date and contact details.

They exist to exercise encryption at rest and MRN search, so they must look like the real
thing while belonging to nobody: names are built from invented syllables, telephone
numbers use the 555-0100..555-0199 block reserved for fiction in the North American
Numbering Plan, e-mail addresses use the ``example.org`` domain reserved by RFC 2606, and
streets are invented too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

_ONSETS: tuple[str, ...] = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t")
_ONSETS += ("v", "z", "br", "dr", "kr", "st", "tr", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "x")
_STREET_KINDS = ("Street", "Road", "Lane", "Avenue", "Way", "Close")
_TOWNS = ("Exampleton", "Sampleford", "Testbury", "Mockley", "Demoport")


@dataclass(frozen=True, slots=True)
class Identity:
    """The direct identifiers of one synthetic patient."""

    mrn: str
    name: str
    birth_date: date
    phone: str | None
    email: str | None
    address: str | None


def _word(rng: np.random.Generator, syllables: int) -> str:
    parts = []
    for i in range(syllables):
        coda = _CODAS[rng.integers(len(_CODAS))] if i == syllables - 1 else ""
        parts.append(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))])
        parts.append(coda)
    return "".join(parts).capitalize()


def birth_date_for(age_years: int, on: date, rng: np.random.Generator) -> date:
    """A birth date such that the person is ``age_years`` old (completed years) ``on``."""
    latest = _years_before(on, age_years)  # turned age_years on this day at the latest
    earliest = _years_before(on, age_years + 1) + timedelta(days=1)
    span = (latest - earliest).days
    return earliest + timedelta(days=int(rng.integers(span + 1)))


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a non-leap target year
        return day.replace(year=day.year - years, day=28)


def make_identity(
    number: int, *, age_years: int, admitted_on: date, rng: np.random.Generator
) -> Identity:
    """Identifiers for the ``number``-th synthetic patient (MRNs are unique by number)."""
    given = _word(rng, int(rng.integers(2, 4)))
    family = _word(rng, int(rng.integers(2, 4)))
    has_phone, has_email, has_address = rng.random(3) < (0.7, 0.4, 0.6)
    phone = f"+1-202-555-01{int(rng.integers(100)):02d}" if has_phone else None
    email = f"{given.lower()}.{family.lower()}{number}@example.org" if has_email else None
    address = None
    if has_address:
        street = _word(rng, 2)
        kind = _STREET_KINDS[rng.integers(len(_STREET_KINDS))]
        town = _TOWNS[rng.integers(len(_TOWNS))]
        address = f"{int(rng.integers(1, 300))} {street} {kind}, {town}"
    return Identity(
        mrn=f"SYN{number:07d}",
        name=f"{given} {family}",
        birth_date=birth_date_for(age_years, admitted_on, rng),
        phone=phone,
        email=email,
        address=address,
    )
