"""Reading a CSV file (plain or compressed) into text cells, each row with its line.

The standard ``csv`` module, not pandas, reads the file: it tells each row's line in the
file (blank lines and quoted line breaks included), and a row with more fields than the
header stays visible as such. pandas silently took the first column of such a file as
its index (a trailing delimiter shifted every cell one column to the left), and numbered
rows by position, so quarantine locations were wrong after a blank line.

A file that cannot be read at all (corrupt archive, not UTF-8, broken quoting, no
header) raises :class:`CsvReadError`; a single row that does not fit the header is left
to the caller to quarantine (:attr:`CsvRow.extra`).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class CsvReadError(ValueError):
    """The file cannot be read as CSV at all; the message says why, without the path."""


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One data row: its first line in the file, its cells by column (``None`` where
    missing or a NA marker), and the fields beyond the header's (a malformed row)."""

    line: int
    cells: dict[str, str | None]
    extra: tuple[str, ...] = ()


@dataclass(slots=True)
class CsvFile:
    columns: list[str]
    rows: list[CsvRow] = field(default_factory=list)


# pandas' default NA markers: a profile with ``keep_default_na: true`` reads them as missing.
DEFAULT_NA = frozenset(
    (
        *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"),
        *("1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
    )
)


def _unzip(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if len(names) != 1:
            raise _unreadable(f"a .zip must hold exactly one file, this one holds {len(names)}")
        return archive.read(names[0])


def _unzstd(data: bytes) -> bytes:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise _unreadable(".zst input needs the zstandard package") from None
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
        return bytes(reader.read())


# By file name, as pandas' compression="infer" did.
_CODECS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.decompress,
    ".bz2": bz2.decompress,
    ".xz": lzma.decompress,
    ".zip": _unzip,
    ".zst": _unzstd,
}


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    codec = _CODECS.get(path.suffix.lower())
    if codec is None:
        return data
    try:
        return codec(data)
    except CsvReadError:
        raise
    except Exception as exc:
        # A codec given corrupt bytes raises a class of its own (OSError, EOFError,
        # lzma.LZMAError, zipfile.BadZipFile, zstandard.ZstdError...). Nothing but the
        # input's bytes reaches the codec, so whatever it raises is the input's fault.
        raise _unreadable(_first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreadable(why: str) -> CsvReadError:
    return CsvReadError(f"cannot read as CSV ({why})")


def read_csv_file(
    path: Path, *, sep: str = ",", na_values: frozenset[str] = frozenset()
) -> CsvFile:
    """The header and every data row of ``path``; blank lines are skipped.

    Raises:
        CsvReadError: unreadable or corrupt file, not UTF-8, broken quoting, no header,
            or a column named twice.
    """
    try:
        data = _decompressed(path)
    except OSError as exc:  # cannot be opened or read: a permission, a folder
        raise _unreadable(exc.strerror or _first_line(exc)) from None
    try:
        text = data.decode("utf-8-sig")  # a BOM is not part of the first column's name
    except UnicodeDecodeError as exc:
        raise CsvReadError(f"not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    try:
        columns = next((r for r in reader if r), None)
        if columns is None:
            raise _unreadable("no header line")
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise _unreadable(f"column {', '.join(twice)} named more than once")
        table = CsvFile(columns)
        width = len(columns)
        line = reader.line_num + 1  # where the next row starts
        for fields in reader:
            start, line = line, reader.line_num + 1
            if not fields:
                continue  # a blank line
            cells = [None if f in na_values else f for f in fields[:width]]
            cells += [None] * (width - len(cells))  # a short row: the rest is missing
            table.rows.append(
                CsvRow(start, dict(zip(columns, cells, strict=True)), tuple(fields[width:]))
            )
    except csv.Error as exc:
        raise _unreadable(f"line {reader.line_num}: {exc}") from None
    return table
