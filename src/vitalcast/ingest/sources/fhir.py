"""FHIR R4 input: Bundles (transaction, batch, collection, searchset) and Bulk Data ndjson.

Resources are validated with ``fhir.resources``. Version 8 of that package defaults to
FHIR R5 and ships R4B (4.3.0) and STU3 sub-packages, not R4 itself; R4B is the release
closest to R4 (4.0.1) and every R4 resource we model (Patient, Encounter, Observation,
Condition, ImagingStudy) has the same shape there, so we pin ``fhir.resources.R4B``.

Every bundle entry is accounted for: a modelled resource becomes records or quarantined
items (with a FHIR path such as ``b.json#Bundle.entry[12].resource(Observation/abc)
.component[1]``); a DELETE entry is quarantined (``delete_request``: nothing is deleted on
request); anything else is counted in ``ParsedUnit.skipped`` by reason
(``not_modelled:Claim``, ``request:GET``). MedicationRequest, Procedure and
DiagnosticReport have no canonical table yet: they are counted as ``not_modelled`` (a
DiagnosticReport's results arrive as their own Observations; its time is read, so it is
validated, and an invalid one is quarantined).

Nothing in a document is trusted before it is checked: an entry, a ``request``, a
``fullUrl`` or a nested ``Bundle.entry`` of the wrong JSON type is one quarantined item
(``malformed_entry``, ``invalid_resource``) at its path, never a whole file lost.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from vitalcast.clinical.records import Rejected
from vitalcast.errors import IngestError
from vitalcast.ingest.sources.fhir_map import (
    ResourceProblem,
    map_condition,
    map_encounter,
    map_imaging_study,
    map_observation,
    map_patient,
)
from vitalcast.ingest.units import Loader, ParsedUnit
from vitalcast.json_input import JsonInputError, parse_json

SOURCE = "fhir"
FHIR_RELEASE = "R4B"  # see the module docstring
DATA_BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset"})
KINDS = {
    "Patient": "patient",
    "Encounter": "encounter",
    "Observation": "observation",
    "Condition": "condition",
    "ImagingStudy": "imaging_study",
}
_TYPE_HINT = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')
# Load order of loose files, so that references resolve: people, then stays, then the rest.
_RANK = {"Patient": 0, "Encounter": 1}
_NOT_A_LIST = "Bundle.entry must be a list"


class FhirFormatError(IngestError):
    """The input is not FHIR we can read at all (not one bad resource)."""


def decode_json(data: bytes, name: str) -> Any:
    """Parse UTF-8 JSON, or raise :class:`FhirFormatError` saying where it broke."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FhirFormatError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    try:
        return parse_json(text)
    except JsonInputError as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if exc.lineno else ""
        raise FhirFormatError(f"{name}: malformed JSON{where} ({exc.msg})") from None


def validation_problems(exc: ValidationError, where: str, limit: int = 5) -> str:
    """Pydantic errors as FHIR paths; input values are left out (they may be PHI)."""
    parts = []
    for err in exc.errors()[:limit]:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        parts.append(f"{where}{path}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def is_resource_type(name: str) -> bool:
    """Whether ``name`` is a FHIR R4B resource type."""
    try:
        get_fhir_model_class(name)
    except (ValueError, KeyError):
        return False
    return True


class _Walker:
    """Walks one document, resolving references across its fullUrls and ``Type/id``."""

    def __init__(self, name: str) -> None:
        self.unit = ParsedUnit(name)
        self.full_urls: dict[str, str] = {}
        self.report_times: dict[str, str] = {}  # Observation key -> its report's time
        # DiagnosticReports validated (by object id, the object held so that its id is not
        # reused) and their errors, if any: indexing and walking read each once.
        self.report_errors: dict[int, tuple[dict[str, Any], ValidationError | None]] = {}

    def resolve(self, ref: str) -> str | None:
        ref = ref.strip()
        if ref in self.full_urls:
            return self.full_urls[ref]
        if ref.startswith(("urn:", "#")) or "?" in ref:
            return None  # a uuid outside this bundle, a contained or a conditional reference
        parts = ref.rstrip("/").split("/")
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-1]:
            return f"{parts[-2]}/{parts[-1]}"
        return None

    def index(self, entries: Any) -> None:
        """Map each fullUrl to ``Type/id``; malformed entries are left to :meth:`bundle`."""
        for entry, res in _entry_resources(entries):
            full_url = entry.get("fullUrl")
            key = _key(res, full_url if isinstance(full_url, str) else None)
            if key and isinstance(full_url, str) and full_url:
                self.full_urls[full_url] = key
            if res.get("resourceType") == "Bundle":
                self.index(res.get("entry"))

    def index_reports(self, entries: Any) -> None:
        """After :meth:`index`: the time of each DiagnosticReport, by result reference."""
        for _entry, res in _entry_resources(entries):
            if res.get("resourceType") == "Bundle":
                self.index_reports(res.get("entry"))
            elif res.get("resourceType") == "DiagnosticReport":
                self._index_report(res)

    def _index_report(self, report: dict[str, Any]) -> None:
        """A valid report's time, for its results; an invalid one lends none."""
        if self._report_error(report) is not None:
            return
        period = report.get("effectivePeriod") or {}
        when = (  # a period's end, as for an Observation's own effectivePeriod
            report.get("effectiveDateTime")
            or period.get("end")
            or period.get("start")
            or report.get("issued")
        )
        if not isinstance(when, str):
            return
        for result in report.get("result") or []:
            ref = result.get("reference")
            key = self.resolve(ref) if isinstance(ref, str) else None
            if key:
                self.report_times.setdefault(key, when)

    def _report_error(self, report: dict[str, Any]) -> ValidationError | None:
        """Why a DiagnosticReport is invalid, or None; validated once for both passes."""
        if id(report) not in self.report_errors:
            error: ValidationError | None = None
            try:
                get_fhir_model_class("DiagnosticReport").model_validate(report)
            except ValidationError as exc:
                error = exc
            self.report_errors[id(report)] = (report, error)
        return self.report_errors[id(report)][1]

    def bundle(self, bundle: dict[str, Any], where: str, *, top: bool) -> None:
        btype = bundle.get("type")
        if btype not in DATA_BUNDLE_TYPES:
            message = (
                f"Bundle.type {btype!r} is not ingested; send a transaction, batch,"
                " collection or searchset Bundle"
            )
            if top:
                raise FhirFormatError(f"{self.unit.name}: {message}")
            self.unit.skipped[f"bundle_type:{btype}"] += 1
            return
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            if top:
                raise FhirFormatError(f"{self.unit.name}: {_NOT_A_LIST}")
            here = f"{self.unit.name}#{where}"
            self._reject("resource", here, "invalid_resource", _NOT_A_LIST, bundle)
            return
        if top:
            self.index(entries)
            self.index_reports(entries)
        for i, entry in enumerate(entries):
            at = f"{where}.entry[{i}]"
            problem = _entry_problem(entry)
            if problem is not None:
                here = f"{self.unit.name}#{at}"
                self._reject("resource", here, "malformed_entry", problem, entry)
                continue
            if "resource" not in entry:
                self.request_only(entry, at)
                continue
            self.resource(entry["resource"], f"{at}.resource", entry.get("fullUrl"))

    def request_only(self, entry: dict[str, Any], at: str) -> None:
        """An entry with a request and no resource.

        A DELETE asks for stored data to go, which vitalcast does not do on request: it
        used to be only counted as skipped, so a sender's deletion went unseen while the
        data it meant stayed stored and scored. It is quarantined, saying how to retract.
        Any other method (a GET or HEAD of a batch: a search, not data) is counted.
        """
        request = entry.get("request") or {}
        method = request.get("method") or "none"
        if method.upper() != "DELETE":
            self.unit.skipped[f"request:{method}"] += 1
            return
        url = request.get("url")
        found = re.match(r"[A-Za-z]+", url) if isinstance(url, str) else None
        rtype = found.group(0) if found and is_resource_type(found.group(0)) else ""
        kind = KINDS.get(rtype, "resource")
        # The target's type only: a conditional URL can hold an identifier (?identifier=).
        where = f"{self.unit.name}#{at}.request(DELETE {rtype or 'unknown type'})"
        reason = (
            "a DELETE request is not applied (vitalcast deletes nothing on request); a"
            " result or a stay is withdrawn by a newer version of it with status"
            " entered-in-error"
        )
        self._reject(kind, where, "delete_request", reason, entry)

    def resource(self, res: Any, prefix: str, full_url: str | None = None) -> None:
        """Map one resource found at ``prefix`` (a FHIR path inside the document)."""
        batch = self.unit.batch
        rtype = res.get("resourceType") if isinstance(res, dict) else None
        if not isinstance(rtype, str) or not is_resource_type(rtype):
            batch.received += 1
            batch.rejected.append(
                Rejected(
                    f"{self.unit.name}#{prefix}",
                    "wrong_resource_type",
                    f"resourceType {rtype!r} is not a FHIR resource type",
                    _raw(res),
                    "resource",
                )
            )
            return
        assert isinstance(res, dict)
        if rtype == "Bundle":
            self.bundle(res, f"{prefix}(Bundle/{res.get('id', '')})", top=False)
            return
        key = _key(res, full_url)
        if rtype == "DiagnosticReport" and (error := self._report_error(res)) is not None:
            where = f"{self.unit.name}#{prefix}({key or rtype})"
            problems = validation_problems(error, where)
            self._reject("resource", where, "invalid_resource", problems, res)
            return
        if rtype not in KINDS:
            self.unit.skipped[f"not_modelled:{rtype}"] += 1
            return
        where = f"{self.unit.name}#{prefix}({key or rtype})"
        kind = KINDS[rtype]
        try:
            get_fhir_model_class(rtype).model_validate(res)
        except ValidationError as exc:
            self._reject(kind, where, "invalid_resource", validation_problems(exc, where), res)
            return
        try:
            if rtype == "Observation":
                report_time = self.report_times.get(key) if key else None
                map_observation(res, where, self.resolve, batch, report_time)
            elif key is None:
                raise ResourceProblem("no_id", f"{rtype} has neither an id nor a fullUrl")
            elif rtype == "Patient":
                map_patient(res, where, key, batch)
            elif rtype == "Encounter":
                map_encounter(res, where, key, self.resolve, batch)
            elif rtype == "Condition":
                map_condition(res, where, self.resolve, batch)
            else:
                map_imaging_study(res, where, self.resolve, batch)
        except ResourceProblem as exc:
            self._reject(kind, where, exc.code, str(exc), res)

    def _reject(self, kind: str, where: str, code: str, reason: str, res: Any) -> None:
        self.unit.batch.received += 1
        self.unit.batch.rejected.append(Rejected(where, code, reason, _raw(res), kind))


def _entry_problem(entry: Any) -> str | None:
    """Why a Bundle entry cannot be read (its JSON types, FHIR's bdl-5), or None.

    A missing ``resource`` is fine with a ``request`` (a DELETE) or a ``response``; ``null``
    is never valid FHIR JSON. The resource itself is checked by :meth:`_Walker.resource`.
    """
    if not isinstance(entry, dict):
        return "entry is not an object"
    if "fullUrl" in entry and not isinstance(entry["fullUrl"], str):
        return "entry.fullUrl must be a string"
    request = entry.get("request")
    if request is not None and (
        not isinstance(request, dict) or not isinstance(request.get("method", ""), str)
    ):
        return "entry.request must be an object whose method is a string"
    if "resource" in entry and entry["resource"] is None:
        return "entry.resource is null"
    if "resource" not in entry and request is None and "response" not in entry:
        return "entry has neither a resource nor a request"
    return None


def _entry_resources(entries: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(entry, resource) of each well-formed entry holding a resource object."""
    for entry in entries if isinstance(entries, list) else []:
        if _entry_problem(entry) is None and isinstance(entry.get("resource"), dict):
            yield entry, entry["resource"]


def _key(res: dict[str, Any], full_url: str | None) -> str | None:
    """Canonical ``Type/id`` of a resource (its id, else the uuid of its fullUrl)."""
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        return None
    if res.get("id"):
        return f"{rtype}/{res['id']}"
    if full_url and full_url.startswith("urn:uuid:"):
        return f"{rtype}/{full_url.removeprefix('urn:uuid:')}"
    if full_url and f"/{rtype}/" in full_url:
        return f"{rtype}/{full_url.rstrip('/').rsplit('/', 1)[-1]}"
    return None


def _raw(res: Any) -> str:
    return json.dumps(res, default=str)[:20000]


def parse_document(data: bytes, name: str) -> ParsedUnit:
    """Parse a JSON document: a data Bundle or one resource.

    Raises:
        FhirFormatError: not UTF-8, malformed JSON, not a resource, or a Bundle type that
            carries no data to ingest (e.g. ``transaction-response``).
    """
    doc = decode_json(data, name)
    if not isinstance(doc, dict) or "resourceType" not in doc:
        raise FhirFormatError(f"{name}: not a FHIR resource (no resourceType)")
    rtype = doc["resourceType"]
    if not isinstance(rtype, str) or not is_resource_type(rtype):
        raise FhirFormatError(f"{name}: resourceType {rtype!r} is not a FHIR resource type")
    walker = _Walker(name)
    if rtype == "Bundle":
        walker.bundle(doc, "Bundle", top=True)
    else:
        walker.resource(doc, "resource")
    return walker.unit


def parse_ndjson(data: bytes, name: str) -> ParsedUnit:
    """Parse a Bulk Data ndjson file: one resource per line; a bad line is one bad item.

    References resolve as ``Type/id`` (Bulk Data files reference across files by id).

    Raises:
        FhirFormatError: the file is not UTF-8 text.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FhirFormatError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    walker = _Walker(name)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            res = parse_json(line)
        except JsonInputError as exc:
            where = f" at column {exc.colno}" if exc.colno else ""
            walker.unit.batch.received += 1
            walker.unit.batch.rejected.append(
                Rejected(
                    f"{name}#line[{lineno}]",
                    "malformed_json",
                    f"malformed JSON{where} ({exc.msg})",
                    line[:20000],
                    "resource",
                )
            )
            continue
        walker.resource(res, f"line[{lineno}]")
    return walker.unit


def parse_bytes(data: bytes, name: str) -> ParsedUnit:
    """Parse by file name: ``.ndjson`` is Bulk Data, anything else one JSON document."""
    if name.endswith((".ndjson", ".ndjson.txt", ".jsonl")):
        return parse_ndjson(data, name)
    return parse_document(data, name)


def iter_units(paths: list[Path]) -> Iterator[tuple[str, Loader]]:
    """Yield (name, loader) per file in folders, files and ``.tar.gz`` archives.

    Loose files are ordered Patient, Encounter, then the rest (by their first
    resourceType), so that one-resource-per-file sets and Bulk Data exports resolve their
    references whatever the file names. Archive members keep their order.

    A file or archive that turns out unreadable while the run goes on is a unit whose
    loader raises, so the files before and after it are still stored and reported.

    Raises:
        FhirFormatError: a path does not exist (checked before anything is yielded).
    """
    for path in paths:
        if not path.exists():
            raise FhirFormatError(f"{path}: no such file or folder")
    loose: list[tuple[int, str, Path]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if (
                    file.is_file()
                    and file.suffix in (".json", ".ndjson")
                    and file.name != "package.json"
                ):
                    loose.append((_rank(file), str(file.relative_to(path.parent)), file))
        elif path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            yield from _archive_units(path)
        elif path.is_file():
            loose.append((_rank(path), path.name, path))
        else:
            raise FhirFormatError(f"{path}: no such file or folder")
    for _, name, file in sorted(loose, key=lambda t: (t[0], t[1])):
        yield name, partial(_parse_file, file, name)


def _parse_file(path: Path, name: str) -> ParsedUnit:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FhirFormatError(f"{name}: cannot read the file ({exc.strerror})") from None
    return parse_bytes(data, name)


def _rank(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return 2  # its loader reports the error in its turn
    match = _TYPE_HINT.search(head)
    return _RANK.get(match.group(1).decode(), 2) if match else 2


def _fail(error: FhirFormatError) -> ParsedUnit:
    raise error


def _archive_units(path: Path) -> Iterator[tuple[str, Loader]]:
    """The archive's members; a truncated archive ends with one unreadable unit (the
    members read before the damage are still stored, and the report says where)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith((".json", ".ndjson")):
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                data = fh.read()
                yield member.name, partial(parse_bytes, data, member.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        error = FhirFormatError(f"{path.name}: cannot read archive ({exc})")
        yield path.name, partial(_fail, error)
