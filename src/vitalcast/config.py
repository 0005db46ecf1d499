"""Typed settings read from ``VITALCAST_*`` environment variables.

The settings object is built once (in :func:`load_settings`, called by ``create_app`` or
the CLI entry point) and passed down; no other module reads ``os.environ``. Secrets are
``SecretStr`` so that they never appear in logs or tracebacks. Every field has a
description; ``docs/configuration.md`` documents each one and a test keeps the two in step.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from vitalcast.errors import ConfigError
from vitalcast.text_input import MAX_UNIT_CHARS, unit_name_problem

Environment = Literal["demo", "development", "production", "test"]

SUPPORTED_DB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")

# How long the broker keeps the MQTT consumer's session after a disconnection (MQTT 5
# Session Expiry Interval). Long enough for any restart, deploy or overnight outage (the
# readings wait for it on the broker), short enough that a session nobody will resume (a
# changed client id, a retired consumer, a test) stops collecting readings within a day.
MQTT_SESSION_EXPIRY_S = 24 * 60 * 60
# 0xFFFFFFFF means "never expires" in MQTT 5: exactly what the setting exists to avoid.
MQTT_SESSION_EXPIRY_MAX_S = 0xFFFFFFFF - 1


class Settings(BaseSettings):
    """Every runtime setting of vitalcast, one environment variable each."""

    model_config = SettingsConfigDict(
        env_prefix="VITALCAST_", env_file=None, extra="ignore", frozen=True
    )

    env: Environment = Field(
        "development",
        description="Run mode. `production` refuses to start without secrets or with debug on;"
        " `demo` generates local keys once into the data directory.",
    )
    data_dir: Path = Field(
        Path("var"),
        description="Directory for the embedded SQLite database, demo keys and the default"
        " model registry.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the clinical store, e.g."
        " `postgresql+psycopg://user@host/db`. Default: SQLite file `vitalcast.db` in the"
        " data directory.",
    )
    registry_dir: Path | None = Field(
        None,
        description="Directory of versioned model artifacts and their JSON sidecars."
        " Default: `registry/` in the data directory.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Flask session-signing secret. Required in production; generated once"
        " into the data directory in demo and development modes.",
    )
    field_key: SecretStr | None = Field(
        None,
        description="Base64 of a 32-byte AES-256-GCM key encrypting direct identifiers at"
        " rest (`keyid:base64` to name the key; several comma-separated, each named, first"
        " is current; an unnamed key alone is `k0`). Required in production.",
    )
    hmac_key: SecretStr | None = Field(
        None,
        description="Base64 key for the keyed hash used to search MRNs without storing them"
        " in plaintext. Required in production.",
    )
    audit_key: SecretStr | None = Field(
        None,
        description="HMAC-SHA-256 key of the tamper-evident audit chain and its anchors:"
        " base64 of at least 32 random bytes (`keyid:base64` to name it; several"
        " comma-separated, the first signs new events, the others only verify older ones)."
        " Keep it outside the database and its backups. Required in production.",
    )
    audit_anchor_file: Path | None = Field(
        None,
        description="Append-only file (WORM storage, or shipped off the host) that"
        " `vitalcast audit anchor` and `vitalcast monitor run` append signed audit-chain"
        " heads to, and that `vitalcast audit verify` checks the chain against. Unset:"
        " anchors are only printed.",
    )
    debug: bool = Field(
        False,
        description="Flask debug mode, and full tracebacks from `vitalcast` commands on an"
        " internal error. Refused in production.",
    )
    log_level: str = Field("INFO", description="Root log level (DEBUG, INFO, WARNING, ERROR).")
    log_json: bool = Field(
        True, description="Log one JSON object per line (true) or plain text (false)."
    )
    host: str = Field("127.0.0.1", description="Address `vitalcast serve` binds to.")
    port: int = Field(8000, description="Port `vitalcast serve` binds to.")
    workers: int = Field(
        2,
        description="gunicorn worker processes for `vitalcast serve`. Without"
        " VITALCAST_REDIS_URL each worker enforces its share of every rate limit (the"
        " limit divided by the workers, rounded down), so that the server as a whole"
        " never allows more than configured.",
    )
    session_idle_minutes: int = Field(
        15,
        gt=0,
        description="Sign a user out after this many minutes without a request (measured on"
        " the server, to within a minute).",
    )
    session_max_hours: int = Field(
        12,
        gt=0,
        description="End a browser session this many hours after sign-in, however active;"
        " the user signs in again.",
    )
    max_request_bytes: int = Field(
        10 * 1024 * 1024, description="Largest request body accepted (413 above it)."
    )
    demo_patients: int = Field(
        600, description="Synthetic ICU stays generated by `vitalcast demo` on first run."
    )
    stale_after_minutes: int = Field(
        240, description="Mark a patient's data stale when the newest vital sign is older."
    )
    stay_units: list[str] = Field(
        default_factory=list,
        description="Units whose stays the in-hospital death model scores, as a JSON list"
        ' (e.g. `["MICU", "SICU", "CCU"]`); empty: every unit. FHIR and HL7 v2 carry no ICU'
        " encounter class, so set it when vitalcast receives the whole hospital's"
        " admissions: a general-ward patient then gets no ICU mortality risk, and the"
        " ward and patient page say why. Names are compared exactly with the stored unit,"
        " as the feed spells it (MIMIC-IV: `Medical Intensive Care Unit (MICU)`), not with"
        " the ICU type the model reads from it.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL for rate-limit counters shared by all workers and replicas,"
        " and pub/sub (optional). Unset: each `vitalcast serve` worker counts in its own"
        " memory and enforces its share of every limit; several replicas then each allow"
        " the full limits.",
    )
    mqtt_url: str | None = Field(
        None,
        description="MQTT broker URL for device streams: `mqtt://host:1883` (same host or"
        " pod), or `mqtts://user:password@host:8883` for MQTT over TLS, verified against the"
        " system CAs or `?cafile=/path/ca.pem`. `?protocol=3.1.1` selects MQTT 3.1.1"
        " (default 5; see docs/benchmarks.md).",
    )
    cds_trusted_issuers: dict[str, str] = Field(
        default_factory=dict,
        description="CDS Hooks: JSON object mapping each trusted EHR issuer (`iss`) to its JWKS,"
        " given as an https URL or a file path. Requests signed by any other issuer get 401.",
    )
    cds_fhir_networks: list[str] = Field(
        default_factory=list,
        description='CDS Hooks: JSON list of networks (CIDR, e.g. `["10.20.0.0/16"]`) where'
        " the EHR's FHIR server (`fhirServer`) may be reached besides public addresses: EHR"
        " FHIR servers usually sit on the hospital's private network. Loopback, link-local"
        " (cloud metadata), multicast and unspecified networks are refused.",
    )
    public_url: str | None = Field(
        None,
        description="External base URL of this server (e.g. `https://vitalcast.example.org`),"
        " used for links in CDS cards and as the expected JWT audience. Default: the"
        " request's own URL.",
    )
    mqtt_client_id: str = Field(
        "vitalcast-ingest",
        description="Fixed MQTT client id of `vitalcast stream mqtt`: with a persistent"
        " session the broker keeps unacknowledged QoS 1 messages for it across restarts.",
    )
    mqtt_session_expiry_s: int = Field(
        MQTT_SESSION_EXPIRY_S,
        ge=1,
        le=MQTT_SESSION_EXPIRY_MAX_S,
        description="MQTT 5 Session Expiry Interval of `vitalcast stream mqtt`: how long the"
        " broker keeps the consumer's session (its subscription and the QoS 1 readings queued"
        " for it) after a disconnection. A consumer down for longer loses the readings"
        " published meanwhile; a session abandoned (client id changed, consumer retired) is"
        " dropped after it. The default, a day, outlasts any restart or deploy and an outage"
        " overnight (the data_stale alert fires within hours). MQTT 3.1.1 has no such"
        " property: the broker's own policy applies (Mosquitto: `persistent_client_expiration`,"
        " which deploy/mosquitto sets).",
    )
    mqtt_batch_size: int = Field(
        500,
        description="Device messages stored per database commit by `vitalcast stream mqtt`"
        " (each is acknowledged only after its commit).",
    )
    mqtt_batch_wait_ms: int = Field(
        200,
        description="Longest wait before committing a partial batch of device messages.",
    )
    stream_rescore_interval_s: float = Field(
        60.0,
        ge=0,
        description="`vitalcast stream mqtt` and `vitalcast listen hl7` rescore each stay whose"
        " data they stored at most once per this many seconds (its first data at once, later"
        " data when the interval ends, message or not); `0` rescores after every batch or"
        " message.",
    )
    hl7_timezone: str = Field(
        "UTC",
        description="IANA time zone of HL7 v2 times that carry no UTC offset (the sending"
        " system's local time), e.g. `Europe/Paris`.",
    )
    mllp_port: int = Field(2575, description="TCP port of `vitalcast listen hl7` (MLLP).")
    mllp_max_message_bytes: int = Field(
        1024 * 1024,
        description="Largest HL7 v2 message accepted over MLLP; larger ones get ACK AR.",
    )

    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token a Prometheus server presents to scrape `GET /metrics`"
        " (`Authorization: Bearer <token>`). Without it, `/metrics` needs an API key or"
        " session whose role holds monitoring:read.",
    )
    worker_http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port on which `vitalcast stream mqtt` and `vitalcast listen hl7` serve"
        " `GET /healthz` (503 when their loop is stuck) and `GET /metrics` (their own"
        " counters). Unset: not served.",
    )
    worker_http_host: str = Field(
        "127.0.0.1",
        description="Address of that endpoint. A non-loopback address (e.g. `0.0.0.0` in a"
        " pod) requires `VITALCAST_METRICS_TOKEN`, which `/metrics` then demands.",
    )
    metrics_dir: Path | None = Field(
        None,
        description="Directory of prometheus-client's multiprocess files under gunicorn;"
        " `vitalcast serve` empties it and exports it as `PROMETHEUS_MULTIPROC_DIR`."
        " Default: `metrics/` in the data directory.",
    )
    metrics_url: str | None = Field(
        None,
        description="URL of this service's `/metrics` that `vitalcast monitor run` scrapes"
        " (with the metrics token) for the HTTP error-rate rule, e.g."
        " `http://127.0.0.1:8000/metrics`. Unset: that rule is skipped.",
    )
    alert_webhook_url: str | None = Field(
        None,
        description="URL that receives monitoring alerts as JSON POSTs when they open,"
        " escalate or resolve (`vitalcast monitor run`). Unset: alerts are only stored.",
    )
    # --- security hardening (issue 7) ---
    tls_certfile: Path | None = Field(
        None,
        description="PEM certificate (chain) for `vitalcast serve` to terminate TLS itself;"
        " leave unset when a load balancer terminates TLS.",
    )
    tls_keyfile: Path | None = Field(
        None, description="PEM private key matching VITALCAST_TLS_CERTFILE."
    )
    proxy_hops: int = Field(
        0,
        description="Reverse proxies / load balancers in front of vitalcast whose"
        " X-Forwarded-For and X-Forwarded-Proto to trust (client address for rate limits and"
        " audit; https for HSTS and Secure cookies). 0 trusts none.",
    )
    rate_limit_enabled: bool = Field(
        True, description="Rate-limit requests (429 above the limits below)."
    )
    rate_limit_per_caller: str = Field(
        "3000/minute",
        description="Requests allowed per API key (or signed-in user; else per address),"
        " across all routes, in flask-limiter notation.",
    )
    rate_limit_per_address: str = Field(
        "6000/minute", description="Requests allowed per client address, across all routes."
    )
    rate_limit_login: str = Field(
        "10/minute", description="Sign-in attempts (POST /login) allowed per client address."
    )
    max_json_depth: int = Field(
        64, description="Deepest JSON nesting accepted in a request body (400 above it)."
    )
    oidc_issuer: str | None = Field(
        None,
        description="OpenID Connect single sign-on: the issuer URL (its"
        " `/.well-known/openid-configuration` is read). Unset: password sign-in only.",
    )
    oidc_client_id: str | None = Field(None, description="OIDC client id of vitalcast.")
    oidc_client_secret: SecretStr | None = Field(
        None, description="OIDC client secret of vitalcast (required with an issuer)."
    )
    oidc_role_claim: str = Field(
        "roles",
        description="ID-token claim listing the user's roles or groups (string or list).",
    )
    oidc_role_map: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object mapping identity-provider role/group values to vitalcast"
        " roles; empty: the claim must hold vitalcast role names.",
    )

    @field_validator("stay_units")
    @classmethod
    def _unit_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if unit_name_problem(name):
                raise ValueError(
                    f"unit names are 1 to {MAX_UNIT_CHARS} characters of text, not {name!r}"
                )
        return value

    @field_validator("cds_trusted_issuers")
    @classmethod
    def _rememberable_issuers(cls, value: dict[str, str]) -> dict[str, str]:
        from vitalcast.serving.tables import MAX_CDS_ISSUER_CHARS

        for issuer in value:
            if not 0 < len(issuer) <= MAX_CDS_ISSUER_CHARS:
                raise ValueError(f"issuers are 1 to {MAX_CDS_ISSUER_CHARS} characters")
        return value

    @field_validator("cds_fhir_networks")
    @classmethod
    def _contactable_networks(cls, value: list[str]) -> list[str]:
        from vitalcast.serving.cds_fhir import parse_networks

        parse_networks(value)  # raises ValueError naming the entry
        return value

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in SUPPORTED_DB_SCHEMES:
            raise ValueError(
                f"unsupported scheme {scheme!r}; use one of {', '.join(SUPPORTED_DB_SCHEMES)}"
            )
        return value

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.env != "production":
            return self
        if self.debug:
            raise ValueError("VITALCAST_DEBUG must be false in production")
        for name in ("secret_key", "field_key", "hmac_key", "audit_key", "database_url"):
            if getattr(self, name) is None:
                raise ValueError(f"VITALCAST_{name.upper()} is required in production")
        _refuse_default_secrets(self)
        return self

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under the data directory."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{(self.data_dir / 'vitalcast.db').resolve()}"

    @property
    def resolved_metrics_dir(self) -> Path:
        """Where gunicorn workers keep their Prometheus multiprocess files."""
        return self.metrics_dir or self.data_dir / "metrics"

    @property
    def resolved_registry_dir(self) -> Path:
        """Where model artifacts live."""
        return self.registry_dir or self.data_dir / "registry"


# Passwords that ship in examples, images and tutorials; production refuses them.
DEFAULT_PASSWORDS = frozenset(
    {
        "", "admin", "changeme", "change-me", "default", "example", "letmein", "pass",
        "password", "postgres", "root", "secret", "test", "vitalcast", "guest", "redis",
        "mosquitto", "123456",
    }
)  # fmt: skip
MIN_SECRET_KEY_CHARS = 32


def _refuse_default_secrets(settings: Settings) -> None:
    """Production rule: no default password in a service URL, no short session secret."""
    from urllib.parse import urlsplit

    for name in ("database_url", "redis_url", "mqtt_url"):
        url = getattr(settings, name)
        if not url:
            continue
        password = urlsplit(url).password
        if password is not None and password.lower() in DEFAULT_PASSWORDS:
            raise ValueError(
                f"VITALCAST_{name.upper()} uses a default password; set a generated one"
            )
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    if len(secret) < MIN_SECRET_KEY_CHARS or secret.lower() in DEFAULT_PASSWORDS:
        raise ValueError(
            f"VITALCAST_SECRET_KEY must be a random value of at least {MIN_SECRET_KEY_CHARS}"
            " characters in production"
        )
    if (settings.tls_certfile is None) != (settings.tls_keyfile is None):
        raise ValueError("VITALCAST_TLS_CERTFILE and VITALCAST_TLS_KEYFILE go together")
    if settings.oidc_issuer is not None:
        if not settings.oidc_issuer.startswith("https://"):
            raise ValueError("VITALCAST_OIDC_ISSUER must be an https URL in production")
        if settings.oidc_client_id is None or settings.oidc_client_secret is None:
            raise ValueError(
                "VITALCAST_OIDC_CLIENT_ID and VITALCAST_OIDC_CLIENT_SECRET are required"
                " with an OIDC issuer"
            )


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (plus explicit overrides, used by tests).

    Raises:
        ConfigError: one clear line naming the offending variable.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # Raised while decoding a JSON-valued variable, before validation: name it.
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"VITALCAST_{field.group(1).upper()}" if field else "a VITALCAST_ variable"
        raise ConfigError(
            f"{name}: not valid JSON (docs/configuration.md shows the form it takes)"
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"][0] if first["loc"] else ""
        name = f"VITALCAST_{str(loc).upper()}: " if loc else ""
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name}{msg}") from None
    if settings.env != "production":
        settings = _with_local_secrets(settings)
    return settings


def _with_local_secrets(settings: Settings) -> Settings:
    """Outside production, create secrets once into ``data_dir/keys`` (mode 0600).

    This is the embedded demo's exception to "secrets only from the environment": a
    newcomer needs no set-up, and the demo banner says where the keys are.
    """
    missing = [
        n
        for n in ("secret_key", "field_key", "hmac_key", "audit_key")
        if getattr(settings, n) is None
    ]
    if not missing:
        return settings
    keydir = settings.data_dir / "keys"
    keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
    values: dict[str, SecretStr] = {}
    for name in missing:
        path = keydir / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                key = base64.b64encode(secrets.token_bytes(32)).decode()
                fh.write(f"demo1:{key}" if name == "field_key" else key)
        values[name] = SecretStr(path.read_text().strip())
    return settings.model_copy(update=values)


def settings_table() -> str:
    """The Markdown table of every setting, as docs/configuration.md shows it."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if default is None:
            shown = "unset"
        elif isinstance(default, Path):
            shown = f"`{default.as_posix()}`"
        else:
            shown = f"`{default}`"
        rows.append(f"| `VITALCAST_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m vitalcast.config: print the docs table
    print(settings_table(), end="")
