"""HL7 v2 framing: bytes to text, text to messages, and the delimiters checked first.

Split from :mod:`.hl7v2` because the MLLP listener and the file import need these steps
before any message is parsed, and they depend on nothing of the mapping to records.
:mod:`.hl7v2` re-exports :class:`Hl7FormatError`, :func:`split_messages`,
:func:`delimiter_problem` and :func:`decode_text`, where callers import them from.
"""

from __future__ import annotations

import codecs
import re

from vitalcast.errors import IngestError

# MSH-2: component, repetition, escape, subcomponent (v2.5) and truncation (v2.7).
_MAX_ENCODING_CHARS = 5


class Hl7FormatError(IngestError):
    """The message cannot be read at all; an MLLP listener answers it with AR."""


def split_messages(text: str) -> list[str]:
    """Messages in a text: segments end with CR, LF or CRLF; each MSH starts a message."""
    text = text.replace("\x0b", "").replace("\x1c", "")
    messages: list[list[str]] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        if line.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return ["\r".join(segs) for segs in messages]


def delimiter_problem(text: str) -> str | None:
    """What is wrong with MSH-1 (field separator) and MSH-2 (encoding characters), if
    anything: they must be distinct, non-alphanumeric characters, MSH-2 at most five.

    The ``hl7`` package builds its parse plan from them and fails an internal assertion
    (not a parse error) when two coincide, so they are checked first. The answer quotes
    at most the delimiter characters: with a wrong MSH-1 the "MSH-2" runs on into the
    segments after it (names, MRNs), which no message may repeat.
    """
    if not text.startswith("MSH") or len(text) < 5:
        return "it does not begin with an MSH segment"
    field = text[3]
    encoding = text[4:].split(field, 1)[0]
    if len(encoding) > _MAX_ENCODING_CHARS or field not in text[4:]:
        return (
            f"MSH-2 (encoding characters) is not ended by MSH-1 {field!r} within"
            f" {_MAX_ENCODING_CHARS} characters: is MSH-1 the field separator?"
        )
    delimiters = field + encoding
    if len(set(delimiters)) != len(delimiters) or any(
        c.isalnum() or c.isspace() for c in delimiters
    ):
        return (
            f"MSH-1/MSH-2 delimiters {delimiters!r} must be distinct, non-alphanumeric characters"
        )
    return None


def count_msh(text: str) -> int:
    return sum(1 for segment in text.split("\r") if segment.startswith("MSH"))


_ISO_8859 = re.compile(rb"8859/(\d{1,2})")


def declared_charset(data: bytes) -> str | None:
    """The Python codec of the ISO 8859 character set the first MSH declares in MSH-18
    (HL7 table 0211: ``8859/1`` is Latin-1), or None. MSH is ASCII whatever follows it,
    so it is read from the bytes before they are decoded."""
    head = data.removeprefix(b"\xef\xbb\xbf").split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not head.startswith(b"MSH") or len(head) < 5:
        return None
    fields = head.split(head[3:4])
    if len(fields) < 18:
        return None
    match = _ISO_8859.fullmatch(fields[17].split(head[4:5], 1)[0].strip())
    if match is None:
        return None
    codec = f"iso8859-{int(match.group(1))}"
    try:
        codecs.lookup(codec)
    except LookupError:
        return None
    return codec


def decode_text(data: bytes, name: str) -> str:
    """HL7 v2 files and frames as text: UTF-8, or the ISO 8859 set MSH-18 declares,
    else an error (no guessed code pages).

    A leading byte order mark (Windows tools write one) is not text: left in, the first
    message did not begin with MSH and was refused, as CSV and FHIR files already drop it.
    A message from a system that declares ``8859/1`` (Latin-1, MSH-18) was refused as
    not UTF-8 for its first accented name; the declaration is not a guess, so it is read
    in that set. A file is read in the set its first message declares.

    Raises:
        Hl7FormatError: not UTF-8, and not in the ISO 8859 set MSH-18 declares.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        charset = declared_charset(data)
        if charset is not None:
            try:
                return data.decode(charset)
            except UnicodeDecodeError as other:
                raise Hl7FormatError(
                    f"{name}: not text in the MSH-18 character set (byte {other.start})"
                ) from None
        raise Hl7FormatError(
            f"{name}: not UTF-8 text (byte {exc.start}); a message in an ISO 8859 set"
            " must declare it in MSH-18 (8859/1 for Latin-1)"
        ) from None
