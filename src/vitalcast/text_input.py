"""Text that arrives from outside and reaches PostgreSQL: what it cannot hold, and where.

PostgreSQL text cannot contain NUL (U+0000): the driver refuses it (``DataError``). And
it is UTF-8, which has no encoding for a lone UTF-16 surrogate (U+D800 to U+DFFF not in a
high-low pair): JSON can spell one (``"\\ud800"``), Python's json module reads it into a
``str``, and the driver then fails encoding it (``UnicodeEncodeError``). Either way the
caller used to get a 500. :func:`unstorable` says whether a string is such text;
:func:`json_text_problems` finds every such string (or object key) in a parsed JSON
document, located as request validation locates problems (``["body", "feedback", 0,
"card"]``). Messages never repeat the text.
"""

from __future__ import annotations

import re
from typing import Any

NUL = "contains a NUL character"
LONE_SURROGATE = "contains a lone UTF-16 surrogate (U+D800 to U+DFFF), which is not Unicode text"

_SURROGATE = re.compile("[\ud800-\udfff]")
# Either character PostgreSQL text cannot hold, for a single scan of many strings.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# Care-unit names (the ward filter, users' units, VITALCAST_STAY_UNITS): encounters.unit.
MAX_UNIT_CHARS = 64


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored as PostgreSQL text, or None when it can."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    return NUL if "\x00" in text else LONE_SURROGATE


def printable(text: str) -> str:
    """``text`` with NUL and lone surrogates written as ``\\uXXXX`` escapes: what the
    quarantine keeps of such an item (its location, code and raw form), so that the row
    holding it can itself be stored and shown."""
    return UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def shown(name: str) -> str:
    """A name (form field, query parameter, JSON key) fit for an error's ``loc``: NUL
    removed, each lone surrogate replaced by U+FFFD (the answer is JSON or a page, both
    UTF-8)."""
    return _SURROGATE.sub("\ufffd", name.replace("\x00", ""))


def json_text_problems(doc: Any, loc: list[Any], *, limit: int = 20) -> list[dict[str, Any]]:
    """Each string or key of ``doc`` that :func:`unstorable` refuses, in document order,
    as ``{"loc": [*loc, <keys and indexes>], "msg": ...}``; at most ``limit`` of them.

    Iterative, so that any nesting the parser accepted is walked without recursion.
    """
    problems: list[dict[str, Any]] = []
    stack: list[tuple[list[Any], Any]] = [(loc, doc)]
    while stack and len(problems) < limit:
        where, value = stack.pop()
        if isinstance(value, str):
            why = unstorable(value)
            if why:
                problems.append({"loc": where, "msg": why})
        elif isinstance(value, dict):
            children = []
            for key, item in value.items():
                place = [*where, shown(key)]
                why = unstorable(key)
                if why:
                    problems.append({"loc": place, "msg": f"the name {why}"})
                children.append((place, item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([([*where, i], item) for i, item in enumerate(value)]))
    return problems[:limit]


def unit_name_problem(name: str) -> str | None:
    """Why ``name`` is not a care-unit name (1 to 64 characters, not blank, storable)."""
    if not name.strip() or len(name) > MAX_UNIT_CHARS:
        return f"must be 1 to {MAX_UNIT_CHARS} characters, not blank"
    return unstorable(name)
