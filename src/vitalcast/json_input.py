"""Parsing JSON that arrives from outside: one function, one kind of refusal.

``json.loads`` refuses input in more ways than :class:`json.JSONDecodeError`: an integer
of more than 4300 digits raises a plain :class:`ValueError` (Python's guard against
quadratic int parsing), and deep nesting raises :class:`RecursionError`. Every reader of
external JSON (request bodies, FHIR files, MQTT messages) used to catch only
``JSONDecodeError``, so such input became a 500 or a traceback. :func:`parse_json` turns
all of them into :class:`JsonInputError`, whose message says what was wrong and where,
without echoing the input (it may be patient data).

An object that names a member twice is refused too: ``json.loads`` keeps the last value
and drops the others without a word, so ``{"patient_id": "A", "patient_id": "B"}`` was
scored as B and a feature vector or reading sent with a field twice lost one value
silently. RFC 8259 leaves such input to the reader; for clinical input the only safe
reading is none.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A member name shown in the error only when it looks like a field name (not data).
_SHOWN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class JsonInputError(ValueError):
    """Input that is not JSON vitalcast can read; ``msg`` says why, ``lineno``/``colno``
    where (0 when the parser does not say)."""

    def __init__(self, msg: str, lineno: int = 0, colno: int = 0) -> None:
        self.msg, self.lineno, self.colno = msg, lineno, colno
        super().__init__(self.describe())

    def describe(self) -> str:
        """``<why> at line L column C`` (or just ``<why>``)."""
        return f"{self.msg} at line {self.lineno} column {self.colno}" if self.lineno else self.msg


def parse_json(text: str) -> Any:
    """``json.loads`` of decoded text whose every refusal is a :class:`JsonInputError`.

    Text, not bytes: callers decode first and report bad UTF-8 in their own words.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_members)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError(exc.msg, exc.lineno, exc.colno) from None
    except RecursionError:
        raise JsonInputError("nested too deeply") from None
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        reason = "an integer has too many digits" if "digits" in str(exc) else "unreadable value"
        raise JsonInputError(reason) from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members as a dict; :class:`JsonInputError` if a name repeats."""
    members = dict(pairs)
    if len(members) == len(pairs):
        return members
    seen: set[str] = set()
    for name, _value in pairs:
        if name in seen:
            break
        seen.add(name)
    shown = f" {name!r}" if _SHOWN_NAME.fullmatch(name) else ""
    raise JsonInputError(f"an object has the member{shown} more than once")
