"""Where a CDS Hooks request's data comes from: the prefetch first, then ``fhirServer``.

Split from :mod:`.cds_hooks` because this is the one place that decides whether vitalcast
reads the EHR's FHIR server (only for a signed request, through :mod:`.cds_fhir`), and
whether an unusable resource is the caller's error (400) or the server's (412). Keeping it
apart keeps that decision in one small module that can be read on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from vitalcast.clinical.records import PatientRecord
from vitalcast.errors import AppError, BadRequest, PreconditionFailed
from vitalcast.ingest.sources.fhir_map import ONGOING_STATUSES
from vitalcast.serving.cds_fhir import (
    PAGE_SIZE,
    FhirReader,
    Network,
    bundle_resources,
    check_fhir_server,
    next_link,
)
from vitalcast.serving.cds_prefetch import read_patient
from vitalcast.serving.cds_request import HookRequest

_ABSENT: Any = object()  # a prefetch key the EHR did not satisfy
# The Encounter search (prefetch template and server read alike) for stays in progress:
# every status FHIR ingestion stores as one, as a token list (any of them matches).
ONGOING_SEARCH = ",".join(sorted(ONGOING_STATUSES))


def _prefetched(prefetch: dict[str, Any], key: str) -> Any:
    """A prefetch value: None when the EHR had no data (the spec's ``null``), or
    :data:`_ABSENT` when it did not satisfy the key (missing, or an OperationOutcome,
    which CDS Hooks 2.0 lets a client send when its prefetch failed). Any other value
    passed :func:`.cds_prefetch.prefetch_problems`: a Patient, or a well-formed Bundle."""
    if key not in prefetch:
        return _ABSENT
    value = prefetch[key]
    if value is None:
        return None
    if value.get("resourceType") == "OperationOutcome":
        return _ABSENT
    return value


@dataclass(frozen=True)
class Fetched:
    """The resources of one prefetch key, and where they came from.

    A resource that cannot be used is the caller's error when the request carried it (400,
    with its place in the prefetch) and the EHR server's when vitalcast read it from
    ``fhirServer`` (412: the data the answer needs cannot be obtained).
    """

    key: str
    what: str  # names the search in messages, as :class:`.cds_fhir.FhirReader` does
    resources: list[dict[str, Any]]
    prefetched: bool

    def unusable(self, index: int | None, message: str) -> AppError:
        """The error for ``resources[index]`` (or the whole answer): ``message`` is a noun
        phrase naming what is wrong, by FHIR path and rule, never by value."""
        if not self.prefetched:
            return PreconditionFailed(
                f"the EHR's FHIR server answered the {self.what} with {message}"
            )
        loc: list[Any] = ["body", "prefetch", self.key]
        where = f"prefetch.{self.key}"
        if index is not None:
            loc += ["entry", index, "resource"]
            where += f".entry[{index}]"
        return BadRequest(f"{where} holds {message}", details=[{"loc": loc, "msg": message}])


class Sources:
    """Where the hook's data comes from: the prefetch first, then ``fhirServer``.

    The reader is made on first need, and only for a request signed by a trusted EHR.
    """

    def __init__(
        self, hook: HookRequest, *, signed: bool, env: str, networks: tuple[Network, ...] = ()
    ) -> None:
        self.hook = hook
        self.signed = signed
        self.env = env
        self.networks = networks
        self.read_server = False
        self._reader: FhirReader | None = None

    def reader(self, what: str) -> FhirReader:
        if self._reader is None:
            if self.hook.fhir_server is None:
                raise PreconditionFailed(
                    f"the prefetch lacks the {what} and the request names no fhirServer"
                )
            if not self.signed:
                raise PreconditionFailed(
                    f"the prefetch lacks the {what}; vitalcast reads fhirServer only for"
                    " requests signed by a trusted EHR (a CDS Hooks JWT), so send the"
                    " prefetch (see the discovery document)"
                )
            target = check_fhir_server(self.hook.fhir_server, env=self.env, networks=self.networks)
            self._reader = FhirReader(target, self.hook.access_token)
            self.read_server = True
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def patient(self, today: date) -> PatientRecord:
        """The patient in context, as the FHIR adapter maps it.

        A prefetched Patient was checked with the request
        (:func:`.cds_request.parse_hook`); one read from ``fhirServer`` is checked here by
        the same rules.
        """
        value = _prefetched(self.hook.prefetch, "patient")
        prefetched = value is not _ABSENT
        if not prefetched:
            value = self.reader("Patient resource").read(
                "Patient resource", f"Patient/{self.hook.patient_id}"
            )
        if value is None:
            raise PreconditionFailed("the EHR has no Patient resource for the patient in context")
        if value.get("resourceType") != "Patient" or value.get("id") != self.hook.patient_id:
            raise PreconditionFailed("the Patient resource is not the patient in context")
        record, problems = read_patient(value, today)
        if record is None:
            fetched = Fetched("patient", "Patient resource", [value], prefetched)
            raise fetched.unusable(None, f"a Patient that cannot be used ({'; '.join(problems)})")
        return record

    def encounters(self) -> Fetched:
        """Candidate Encounters: the prefetched ones in progress, else read from the server."""
        value = _prefetched(self.hook.prefetch, "encounters")
        what = "Encounter search (stays in progress)"
        if value is None:
            return Fetched("encounters", what, [], prefetched=True)
        if value is not _ABSENT:
            if next_link(value) is None:
                return Fetched("encounters", what, bundle_resources(value), prefetched=True)
            return Fetched("encounters", what, self.reader(what).follow(what, value), False)
        reader = self.reader(what)
        if self.hook.encounter_id:
            found = reader.read("Encounter resource", f"Encounter/{self.hook.encounter_id}")
            return Fetched("encounters", "Encounter resource", [found], prefetched=False)
        params = {"patient": self.hook.patient_id, "status": ONGOING_SEARCH, "_count": "100"}
        return Fetched("encounters", what, reader.search(what, "Encounter", params), False)

    def observations(self, admitted_at: datetime) -> Fetched:
        """The stay's observations: the prefetch when complete, else a search since
        admission, newest first (so that the recent windows are what a cap would keep)."""
        value = _prefetched(self.hook.prefetch, "observations")
        what = "Observation search"
        if value is None:
            return Fetched("observations", what, [], prefetched=True)
        if value is not _ABSENT and next_link(value) is None:
            return Fetched("observations", what, bundle_resources(value), prefetched=True)
        since = admitted_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        params = {
            "patient": self.hook.patient_id,
            "date": f"ge{since}",
            "_sort": "-date",
            "_count": str(PAGE_SIZE),
        }
        found = self.reader(what).search(what, "Observation", params)
        return Fetched("observations", what, found, prefetched=False)
