"""Roles, permissions and the one place routes declare what they need.

Every view is decorated with :func:`requires` (or :func:`public`); the app factory
refuses to start if a route has neither, and a test walks ``app.url_map`` to prove each
role gets exactly what :data:`ROLE_PERMISSIONS` grants. The matrix is documented in
docs/security.md.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Permission(StrEnum):
    PATIENTS_READ = "patients:read"  # ward list, patient pages, observations, risk history
    IDENTIFIERS_READ = "identifiers:read"  # names, MRNs, birth dates in clear
    PREDICT = "predictions:create"  # score a feature vector or a patient
    OBSERVATIONS_WRITE = "observations:write"  # push data (integrations, devices)
    DEVICES_MANAGE = "devices:manage"  # bind a bedside or wearable device to a patient
    FEEDBACK_WRITE = "feedback:write"  # acknowledge alerts, agree/disagree
    MODELS_READ = "models:read"  # model reports, metrics
    MODELS_MANAGE = "models:manage"  # promote, roll back, retrain
    MONITORING_READ = "monitoring:read"  # drift, performance, operational metrics
    USERS_MANAGE = "users:manage"  # users, roles, API keys
    AUDIT_READ = "audit:read"  # the audit log
    EXPORT = "data:export"  # de-identified extracts


DESCRIPTIONS: dict[Permission, str] = {
    Permission.PATIENTS_READ: "ward list, patient pages, observations, risk history",
    Permission.IDENTIFIERS_READ: "names, MRNs, birth dates in clear",
    Permission.PREDICT: "score a feature vector or a patient",
    Permission.OBSERVATIONS_WRITE: "push data (integrations, devices)",
    Permission.DEVICES_MANAGE: "bind a bedside or wearable device to a patient",
    Permission.FEEDBACK_WRITE: "acknowledge alerts, agree/disagree",
    Permission.MODELS_READ: "model reports, metrics",
    Permission.MODELS_MANAGE: "promote, roll back, retrain",
    Permission.MONITORING_READ: "drift, performance, operational metrics",
    Permission.USERS_MANAGE: "users, roles, API keys",
    Permission.AUDIT_READ: "the audit log",
    Permission.EXPORT: "de-identified extracts",
}

ROLES = ("clinician", "nurse", "data_scientist", "admin", "integration")

_CLINICAL = {
    Permission.DEVICES_MANAGE,
    Permission.PATIENTS_READ,
    Permission.IDENTIFIERS_READ,
    Permission.PREDICT,
    Permission.FEEDBACK_WRITE,
    Permission.MODELS_READ,
}

ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "clinician": frozenset(_CLINICAL),
    "nurse": frozenset(_CLINICAL),
    # Data scientists see pseudonymous clinical data and models, never identifiers.
    "data_scientist": frozenset(
        {
            Permission.PATIENTS_READ,
            Permission.PREDICT,
            Permission.MODELS_READ,
            Permission.MODELS_MANAGE,
            Permission.MONITORING_READ,
            Permission.EXPORT,
        }
    ),
    "admin": frozenset(Permission),
    # Machines: push data, ask for scores, read results (CDS Hooks, EHR integration).
    "integration": frozenset(
        {
            Permission.OBSERVATIONS_WRITE,
            Permission.DEVICES_MANAGE,
            Permission.PREDICT,
            Permission.PATIENTS_READ,
        }
    ),
}

# Permissions over every unit at once, refused to a caller bound to units whatever its
# role: the audit log names every unit's patients, and managing users and API keys could
# create an account bound to no unit, or an API key, which sees every unit.
ALL_UNITS_ONLY: frozenset[Permission] = frozenset({Permission.USERS_MANAGE, Permission.AUDIT_READ})

PUBLIC = "public"


def requires(permission: Permission) -> Callable[[F], F]:
    """Declare the permission a view needs (enforced before the view runs)."""

    def mark(view: F) -> F:
        view.required_permission = permission  # type: ignore[attr-defined]
        return view

    return mark


def public(view: F) -> F:
    """Declare a view that needs no credentials (health checks, sign-in, static files)."""
    view.required_permission = PUBLIC  # type: ignore[attr-defined]
    return view


def declared_permission(view: Callable[..., Any]) -> Permission | str | None:
    """The permission a view declared, ``PUBLIC``, or None when it declared nothing."""
    value: Permission | str | None = getattr(view, "required_permission", None)
    return value


def role_allows(role: str, permission: Permission) -> bool:
    """Whether ``role`` holds ``permission``."""
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def permission_matrix_markdown() -> str:
    """The role × permission table of docs/security.md, generated from the matrix."""
    header = "| permission | grants | " + " | ".join(f"`{r}`" for r in ROLES) + " |"
    rule = "| --- | --- |" + " :---: |" * len(ROLES)
    rows = [
        f"| `{p.value}` | {DESCRIPTIONS[p]} | "
        + " | ".join("yes" if role_allows(r, p) else "—" for r in ROLES)
        + " |"
        for p in Permission
    ]
    return "\n".join([header, rule, *rows]) + "\n"


if __name__ == "__main__":  # python -m vitalcast.security.permissions: print the table
    print(permission_matrix_markdown(), end="")
