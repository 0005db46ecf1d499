"""Monitoring alert rules: each turns measured figures into firing findings (pure).

A rule returns ``skipped`` when it lacks the data to judge (too few outcome events, too
little traffic): a skipped rule neither opens nor resolves alerts. Thresholds sit in
:class:`Policy`; docs/maintenance-plan.md gives the reasoning for each default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vitalcast.monitoring.performance import Performance
from vitalcast.monitoring.tables import DriftRun

Status = Literal["ok", "firing", "skipped"]

# Rules judged for one task: their dedup keys are ``<rule>:<task>`` or
# ``<rule>:<task>:<part>``. The others judge what every task shares (the wards' feeds,
# ingestion and the service's own errors), so any task's run may open or resolve them.
TASK_RULES = frozenset({"drift", "calibration", "alert_rate", "no_champion"})
SHARED_RULES = frozenset({"data_stale", "error_rate"})


def judged_by(rule: str, dedup_key: str, task: str) -> bool:
    """Whether a run of ``task`` judges the alert ``dedup_key`` of ``rule``.

    Why: each scheduled task has its own run, and a rule evaluated for one task says
    nothing about another task's model. Without this, a run of readmission-30d resolved
    icu-mortality's open drift alerts and the next icu-mortality run reopened them.
    """
    if rule in SHARED_RULES:
        return True
    prefix = f"{rule}:{task}"
    return rule in TASK_RULES and (dedup_key == prefix or dedup_key.startswith(prefix + ":"))


@dataclass(frozen=True)
class Policy:
    """Thresholds of the alert rules (docs/maintenance-plan.md explains each)."""

    # Calibration: O/E outside the range *and* its 95 % Poisson interval excluding 1.
    oe_range: tuple[float, float] = (0.8, 1.25)
    slope_range: tuple[float, float] = (0.7, 1.3)
    min_events: int = 20  # fewer outcome events: calibration is not judged (skipped)
    performance_window_days: float = 90.0
    # Alert burden: this week's rate outside [baseline / factor, baseline × factor].
    alert_rate_factor: float = 2.0
    alert_window_days: float = 7.0
    baseline_days: float = 28.0
    min_baseline_alerts: int = 10
    # Errors.
    max_http_error_rate: float = 0.01  # share of 5xx responses
    min_requests: int = 100
    max_quarantine_rate: float = 0.05  # share of ingested records quarantined
    min_records: int = 100
    drift_window_days: float = 7.0


@dataclass(frozen=True)
class Finding:
    """One firing condition."""

    rule: str
    dedup_key: str
    severity: str  # warning | critical
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleResult:
    """What one rule found this run."""

    rule: str
    status: Status
    note: str = ""
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "note": self.note,
            "firing": [f.dedup_key for f in self.findings],
        }


def _result(rule: str, findings: list[Finding], ok_note: str) -> RuleResult:
    if findings:
        return RuleResult(rule, "firing", f"{len(findings)} firing", findings)
    return RuleResult(rule, "ok", ok_note)


# --------------------------------------------------------------------------- rules


def champion_rule(
    *, task: str, has_champion: bool, in_use: bool, unservable: str | None = None
) -> RuleResult:
    """A task that has been in use and has no champion, or one serving refuses
    (``unservable``: why its files fail verification, e.g. an altered sidecar): serving
    answers 503 for it and new data goes unscored, while no other rule would notice. A
    task never in use (no model registered) is skipped: nothing is being served for it.
    """
    if has_champion and unservable is not None:
        finding = Finding(
            "no_champion",
            f"no_champion:{task}",
            "critical",
            f"{task}: the champion cannot be served ({unservable}); predictions for this"
            " task fail (503) and new data is not scored",
            {"task": task, "reason": unservable},
        )
        return RuleResult("no_champion", "firing", "champion fails verification", [finding])
    if has_champion:
        return RuleResult("no_champion", "ok", "champion registered and verified")
    if not in_use:
        return RuleResult("no_champion", "skipped", f"no model of {task} was ever registered")
    finding = Finding(
        "no_champion",
        f"no_champion:{task}",
        "critical",
        f"{task}: no champion model; predictions for this task fail (503) and new data"
        " is not scored",
        {"task": task},
    )
    return RuleResult("no_champion", "firing", "no champion model", [finding])


def drift_rule(run: DriftRun | None, *, task: str) -> RuleResult:
    """Every feature (or the score) whose drift the latest run flagged."""
    if run is None or run.n_recent == 0:
        return RuleResult("drift", "skipped", "no recent predictions to compare")
    findings = [
        Finding(
            "drift",
            f"drift:{task}:{r.feature}",
            "critical" if r.severity == "major" else "warning",
            f"{task}: input drift in {r.feature} ({r.severity}): "
            + "; ".join(r.details.get("reasons", [])),
            {"feature": r.feature, "psi": r.psi, "run_id": run.id, "n_recent": run.n_recent},
        )
        for r in run.results
        if r.severity != "none"
    ]
    return _result("drift", findings, f"{len(run.results)} inputs within bands")


def oe_interval(events: int, expected: float) -> tuple[float, float]:
    """95 % interval of observed/expected, treating the observed count as Poisson."""
    ratio = events / expected
    half = 1.96 / math.sqrt(events)
    return ratio * math.exp(-half), ratio * math.exp(half)


def calibration_rule(perf: Performance, policy: Policy, *, task: str) -> RuleResult:
    """Observed/expected and calibration slope on outcome-joined predictions."""
    if perf.events < policy.min_events or perf.observed_expected is None:
        return RuleResult(
            "calibration", "skipped", f"{perf.events} outcome events < {policy.min_events}"
        )
    findings: list[Finding] = []
    oe = perf.observed_expected
    lo, hi = oe_interval(perf.events, perf.events / oe)
    if not policy.oe_range[0] <= oe <= policy.oe_range[1] and not lo <= 1.0 <= hi:
        direction = "under" if oe > 1 else "over"
        findings.append(
            Finding(
                "calibration",
                f"calibration:{task}:oe",
                "critical",
                f"{task}: risk {direction}-estimated, observed/expected {oe:.2f}"
                f" (95 % CI {lo:.2f}–{hi:.2f}; range {policy.oe_range[0]}–{policy.oe_range[1]})",
                {"observed_expected": oe, "ci": [lo, hi], "n": perf.n, "events": perf.events},
            )
        )
    slope = perf.calibration_slope
    if slope is not None and not policy.slope_range[0] <= slope <= policy.slope_range[1]:
        findings.append(
            Finding(
                "calibration",
                f"calibration:{task}:slope",
                "warning",
                f"{task}: calibration slope {slope:.2f} outside"
                f" {policy.slope_range[0]}–{policy.slope_range[1]}",
                {"calibration_slope": slope, "n": perf.n, "events": perf.events},
            )
        )
    return _result("calibration", findings, f"O/E {oe:.2f}, slope {slope}")


def alert_rate_rule(
    current: float | None,
    baseline: float | None,
    baseline_alerts: int,
    policy: Policy,
    *,
    task: str,
) -> RuleResult:
    """This week's alerts per 100 patient-days against the preceding weeks' rate."""
    if current is None or baseline is None or baseline_alerts < policy.min_baseline_alerts:
        return RuleResult("alert_rate", "skipped", "not enough alert history for a baseline")
    lo, hi = baseline / policy.alert_rate_factor, baseline * policy.alert_rate_factor
    if lo <= current <= hi:
        return RuleResult("alert_rate", "ok", f"{current:.1f} per 100 patient-days")
    finding = Finding(
        "alert_rate",
        f"alert_rate:{task}",
        "warning",
        f"{task}: {current:.1f} alerts per 100 patient-days, baseline {baseline:.1f}"
        f" (range {lo:.1f}–{hi:.1f})",
        {"current": current, "baseline": baseline},
    )
    return RuleResult("alert_rate", "firing", "out of range", [finding])


def stale_rule(ages_s: Mapping[str, float], stale_after_minutes: int) -> RuleResult:
    """Units whose newest observation of an open stay is older than the staleness limit."""
    if not ages_s:
        return RuleResult("data_stale", "skipped", "no open encounters with observations")
    limit = stale_after_minutes * 60
    findings = [
        Finding(
            "data_stale",
            f"data_stale:{unit}",
            "critical" if age > 4 * limit else "warning",
            f"unit {unit}: newest observation {age / 60:.0f} min old"
            f" (limit {stale_after_minutes} min)",
            {"unit": unit, "age_s": round(age)},
        )
        for unit, age in sorted(ages_s.items())
        if age > limit
    ]
    return _result("data_stale", findings, f"{len(ages_s)} units fresh")


def error_rate_rule(
    quarantine: Mapping[str, tuple[int, int]],
    http: tuple[int, int] | None,
    policy: Policy,
    *,
    scrape_error: str | None = None,
) -> RuleResult:
    """Quarantined share of ingested records per source, and share of 5xx responses.

    Args:
        quarantine: source → (records received, records quarantined) in the window.
        http: (responses, 5xx responses) since the previous run, or None when unknown.
        scrape_error: why this service's own /metrics could not be read (itself an
            outage signal).
    """
    findings: list[Finding] = []
    judged = 0
    if scrape_error:
        judged += 1
        findings.append(
            Finding(
                "error_rate",
                "error_rate:http:unreachable",
                "critical",
                f"service metrics unreachable ({scrape_error})",
                {"error": scrape_error},
            )
        )
    for source, (received, bad) in sorted(quarantine.items()):
        if received < policy.min_records:
            continue
        judged += 1
        if bad / received > policy.max_quarantine_rate:
            findings.append(
                Finding(
                    "error_rate",
                    f"error_rate:ingest:{source}",
                    "warning",
                    f"ingest {source}: {bad / received:.1%} of {received} records quarantined"
                    f" (limit {policy.max_quarantine_rate:.0%})",
                    {"source": source, "received": received, "quarantined": bad},
                )
            )
    if http is not None and http[0] >= policy.min_requests:
        judged += 1
        total, errors = http
        if errors / total > policy.max_http_error_rate:
            findings.append(
                Finding(
                    "error_rate",
                    "error_rate:http",
                    "critical",
                    f"HTTP: {errors / total:.1%} of {total} responses were server errors"
                    f" (limit {policy.max_http_error_rate:.0%})",
                    {"responses": total, "server_errors": errors},
                )
            )
    if not judged:
        return RuleResult("error_rate", "skipped", "too little traffic to judge")
    return _result("error_rate", findings, "error rates within limits")
