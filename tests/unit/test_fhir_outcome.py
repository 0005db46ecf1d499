"""The OperationOutcome of an error: IssueType codes of R4's value set for every status,
one issue per problem, and a valid resource whatever a problem's location holds."""

from __future__ import annotations

import pytest

from vitalcast.errors import AppError, Forbidden, InvalidInput, NotFound
from vitalcast.serving.fhir_outcome import (
    ISSUE_BY_STATUS,
    ISSUE_TYPES,
    issue_type,
    operation_outcome,
    under_fhir_base,
)


def test_the_value_set_is_r4s_and_every_status_maps_into_it() -> None:
    assert len(ISSUE_TYPES) == 31  # http://hl7.org/fhir/R4/valueset-issue-type.html
    for status in (*ISSUE_BY_STATUS, 402, 418, 451, 502, 504):
        assert issue_type(status) in ISSUE_TYPES, status
    assert (issue_type(403), issue_type(418), issue_type(502)) == (
        "forbidden",
        "processing",
        "exception",
    )


def test_one_issue_per_problem_with_its_parameter() -> None:
    error = InvalidInput(
        "invalid FHIR search parameters",
        details=[
            {"loc": ["query", "date"], "msg": "date-time needs a timezone"},
            {"loc": ["body"], "msg": "nesting too deep"},
        ],
    )
    first, second = operation_outcome(error).issue
    assert (first.code, first.expression) == ("invalid", ["date"])
    assert first.diagnostics == "invalid FHIR search parameters: date: date-time needs a timezone"
    assert (second.expression, second.diagnostics) == (
        None,
        "invalid FHIR search parameters: nesting too deep",
    )


@pytest.mark.parametrize(
    "detail",
    [{}, {"loc": ["query", ""]}, {"loc": ["query", " \x0b"], "msg": ""}, {"loc": "query"}],
)
def test_a_problem_without_a_usable_place_or_message_still_makes_a_valid_outcome(
    detail: dict[str, object],
) -> None:
    (issue,) = operation_outcome(Forbidden("no", details=[detail])).issue
    assert (issue.code, issue.diagnostics, issue.expression) == ("forbidden", "no", None)
    (bare,) = operation_outcome(AppError("")).issue
    assert (bare.code, bare.diagnostics) == ("exception", "exception")
    (plain,) = operation_outcome(NotFound("no Encounter with that id")).issue
    assert (plain.severity, plain.code) == ("error", "not-found")


def test_the_base_is_the_prefix_and_what_is_below_it() -> None:
    assert [under_fhir_base(p) for p in ("/fhir", "/fhir/", "/fhir/Patient/1")] == [True] * 3
    assert [under_fhir_base(p) for p in ("/fhirx", "/fhirx/Patient", "/api/v1/fhir")] == [False] * 3
