"""Unit normalisation to the one canonical UCUM unit of each code.

A unit we do not know is never guessed: :func:`to_canonical` raises
:class:`UnknownUnit` and ingestion quarantines the value with that reason.
"""

from __future__ import annotations

from collections.abc import Callable

from vitalcast.clinical.codes import BY_CODE

# Spellings seen in the wild -> UCUM. Compared case-sensitively after stripping, because
# UCUM itself is case-sensitive (mg vs Mg); the common lower-case variants are listed.
_SYNONYMS: dict[str, str] = {
    "bpm": "/min",
    "beats/min": "/min",
    "{beats}/min": "/min",
    "/min": "/min",
    "breaths/min": "/min",
    "{breaths}/min": "/min",
    "min-1": "/min",
    "1/min": "/min",
    "mmhg": "mm[Hg]",
    "mmHg": "mm[Hg]",
    "mm[Hg]": "mm[Hg]",
    "mm Hg": "mm[Hg]",
    "cel": "Cel",
    "Cel": "Cel",
    "°C": "Cel",
    "C": "Cel",
    "degC": "Cel",
    "deg C": "Cel",
    "[degF]": "[degF]",
    "°F": "[degF]",
    "F": "[degF]",
    "degF": "[degF]",
    "deg F": "[degF]",
    "%": "%",
    "percent": "%",
    "1": "1",
    "{ratio}": "1",
    "ratio": "1",
    "fraction": "1",
    "mg/dL": "mg/dL",
    "mg/dl": "mg/dL",
    "g/dL": "g/dL",
    "g/dl": "g/dL",
    "g/L": "g/L",
    "mmol/L": "mmol/L",
    "mmol/l": "mmol/L",
    "mEq/L": "meq/L",
    "meq/L": "meq/L",
    "umol/L": "umol/L",
    "µmol/L": "umol/L",
    "μmol/L": "umol/L",
    "U/L": "U/L",
    "IU/L": "U/L",
    "[IU]/L": "U/L",
    "u/L": "U/L",
    "kg": "kg",
    "g": "g",
    "[lb_av]": "[lb_av]",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "cm": "cm",
    "m": "m",
    "[in_i]": "[in_i]",
    "in": "[in_i]",
    "mL": "mL",
    "ml": "mL",
    "L": "L",
    "{score}": "{score}",
    "score": "{score}",
    "[pH]": "[pH]",
    "pH": "[pH]",
    "10*3/uL": "10*3/uL",
    "10^3/uL": "10*3/uL",
    "K/uL": "10*3/uL",
    "10*9/L": "10*3/uL",
    "10^9/L": "10*3/uL",
    "x10E3/uL": "10*3/uL",
    "/nL": "10*3/uL",
    "ug/L": "ug/L",
    "ng/mL": "ug/L",
    "ng/ml": "ug/L",
    "ng/L": "ng/L",
    "pg/mL": "ng/L",
}

Converter = Callable[[float], float]

# (canonical unit of the code, incoming UCUM unit) -> converter; per-code overrides below
# handle conversions that depend on the analyte's molar mass.
_GENERIC: dict[tuple[str, str], Converter] = {
    ("Cel", "[degF]"): lambda v: (v - 32.0) * 5.0 / 9.0,
    ("%", "1"): lambda v: v * 100.0,
    ("1", "%"): lambda v: v / 100.0,
    ("kg", "g"): lambda v: v / 1000.0,
    ("kg", "[lb_av]"): lambda v: v * 0.45359237,
    ("cm", "m"): lambda v: v * 100.0,
    ("cm", "[in_i]"): lambda v: v * 2.54,
    ("mL", "L"): lambda v: v * 1000.0,
    ("g/dL", "g/L"): lambda v: v / 10.0,
    ("mmol/L", "meq/L"): lambda v: v,  # monovalent ions (Na, K, HCO3): 1 mEq = 1 mmol
    ("ug/L", "ng/L"): lambda v: v / 1000.0,
}

# Molar masses for mmol/L <-> mg/dL (mg/dL = mmol/L * M / 10).
_PER_CODE: dict[tuple[str, str], Converter] = {
    ("2345-7", "mmol/L"): lambda v: v * 18.016,  # glucose 180.16 g/mol
    ("2160-0", "umol/L"): lambda v: v / 88.42,  # creatinine 113.12 g/mol
    ("3094-0", "mmol/L"): lambda v: v * 2.8014,  # urea nitrogen, 28.014 g/mol of N
    ("1975-2", "umol/L"): lambda v: v / 17.104,  # bilirubin 584.66 g/mol
    ("2093-3", "mmol/L"): lambda v: v * 38.67,  # cholesterol 386.65 g/mol
    ("2524-7", "mg/dL"): lambda v: v / 9.008,  # lactate 90.08 g/mol
    ("19123-9", "mmol/L"): lambda v: v * 2.4305,  # magnesium 24.305 g/mol
    ("19123-9", "meq/L"): lambda v: v * 1.21525,  # divalent: 1 mEq = 0.5 mmol
}


class UnknownUnit(ValueError):
    """A unit that cannot be converted to the code's canonical unit."""


def normalise_unit(unit: str | None) -> str | None:
    """Map a unit spelling to UCUM; ``None`` when the spelling is unknown."""
    if unit is None:
        return None
    text = unit.strip()
    return _SYNONYMS.get(text) or _SYNONYMS.get(text.lower())


def to_canonical(code: str, value: float, unit: str | None) -> tuple[float, str]:
    """Convert ``value`` in ``unit`` to the canonical unit of ``code``.

    A missing unit is accepted only for dimensionless canonical units (scores, flags, pH).

    Raises:
        UnknownUnit: the unit is unknown or has no conversion for this code.
        KeyError: the code is not in the vocabulary.
    """
    target = BY_CODE[code].unit
    if unit is None or unit.strip() == "":
        if target in ("1", "{score}", "[pH]"):
            return value, target
        raise UnknownUnit(f"no unit given; expected {target}")
    ucum = normalise_unit(unit)
    if ucum is None:
        raise UnknownUnit(f"unknown unit {unit!r}; expected {target}")
    if ucum == target:
        return value, target
    convert = _PER_CODE.get((code, ucum)) or _GENERIC.get((target, ucum))
    if convert is None:
        raise UnknownUnit(f"cannot convert {ucum} to {target} for code {code}")
    return convert(value), target
