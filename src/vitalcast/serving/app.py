"""The application factory: every step of building the app, named, in one place."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from flask import Flask, Response, send_from_directory

from vitalcast.config import Settings, load_settings
from vitalcast.db import create_db_engine
from vitalcast.db.session import make_session_factory
from vitalcast.logging import configure_logging
from vitalcast.monitoring.metrics import register_monitoring
from vitalcast.security import audit_keys
from vitalcast.security.crypto import cipher_from_settings
from vitalcast.security.http import register_hardening
from vitalcast.security.identifiers import check_field_keys
from vitalcast.security.oidc import register_oidc
from vitalcast.security.permissions import public
from vitalcast.serving.errors import register_error_handlers
from vitalcast.serving.guard import check_routes_declared, register_guard
from vitalcast.serving.realtime import EventBus
from vitalcast.serving.state import AppState, get_state, init_state
from vitalcast.serving.validation import register_query_check

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
FAVICON = "favicon.svg"  # drawn for vitalcast (web/static), no third-party asset


def create_app(settings: Settings | None = None, *, workers: int = 1) -> Flask:
    """Build the vitalcast WSGI app (settings from the environment unless given).

    ``workers``: how many processes serve the app side by side (``vitalcast serve`` passes
    its gunicorn worker count); without Redis each enforces its share of the rate limits.
    """
    settings = settings or load_settings()
    app = Flask(
        "vitalcast",
        static_folder=None,
        template_folder=str(WEB_DIR / "templates"),
    )
    configure_app(app, settings)
    configure_logging(level=settings.log_level, json_lines=settings.log_json)
    audit_keys.install_from_settings(settings)  # every audited request is keyed
    register_extensions(app, settings)
    register_guard(app)
    register_query_check(app)  # after the guard: a 401 comes before a 422
    register_monitoring(app)
    register_blueprints(app)
    register_oidc(app)  # security: optional OpenID Connect sign-in
    register_error_handlers(app)
    register_hardening(app, workers=workers)  # security: trusted proxies, rate limits, JSON depth
    check_routes_declared(app)
    load_predictor(app)
    return app


def configure_app(app: Flask, settings: Settings) -> None:
    assert settings.secret_key is not None  # load_settings guarantees one
    app.config.update(
        SECRET_KEY=settings.secret_key.get_secret_value(),
        DEBUG=settings.debug,
        # One byte more than the limit: werkzeug stops reading a streamed (chunked) body
        # at MAX_CONTENT_LENGTH without an error, so the guard can tell a body past the
        # limit only from having read one byte beyond it (serving.guard).
        MAX_CONTENT_LENGTH=settings.max_request_bytes + 1,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.env == "production",
        SESSION_COOKIE_NAME="vitalcast_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_max_hours),
        JSON_SORT_KEYS=False,
    )


def register_extensions(app: Flask, settings: Settings) -> None:
    engine = create_db_engine(settings.resolved_database_url)
    sessions = make_session_factory(engine)
    cipher = cipher_from_settings(settings)
    try:
        check_field_keys(sessions, cipher)
    except BaseException:
        engine.dispose()
        raise
    init_state(
        app,
        AppState(
            settings=settings,
            engine=engine,
            sessions=sessions,
            cipher=cipher,
            bus=EventBus(engine, settings.redis_url),
        ),
    )


def register_blueprints(app: Flask) -> None:
    """The URL map, in one place."""
    from vitalcast.serving.admin import admin
    from vitalcast.serving.api import api
    from vitalcast.serving.cds_hooks import cds
    from vitalcast.serving.fhir_api import fhir
    from vitalcast.serving.fhir_outcome import FHIR_BASE
    from vitalcast.serving.health import health
    from vitalcast.serving.ingest_api import ingest_api
    from vitalcast.serving.model_api import model_api
    from vitalcast.serving.openapi import openapi
    from vitalcast.serving.patient_api import patient_api
    from vitalcast.web.admin_views import web_admin
    from vitalcast.web.model_views import web_models
    from vitalcast.web.patient_views import web_patient
    from vitalcast.web.views import web

    app.register_blueprint(health)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(admin, url_prefix="/api/v1")
    app.register_blueprint(patient_api, url_prefix="/api/v1")
    app.register_blueprint(ingest_api, url_prefix="/api/v1")
    app.register_blueprint(model_api, url_prefix="/api/v1")
    app.register_blueprint(openapi)
    app.register_blueprint(fhir, url_prefix=FHIR_BASE)
    app.register_blueprint(cds, url_prefix="/cds-services")
    app.register_blueprint(web)
    app.register_blueprint(web_patient)
    app.register_blueprint(web_models)
    app.register_blueprint(web_admin)

    register_static(app)


def register_static(app: Flask) -> None:
    """The UI's own files, public like the sign-in page that needs them."""

    @public
    def static(filename: str) -> Response:
        response = send_from_directory(WEB_DIR / "static", filename, max_age=3600)
        return response

    @public
    def favicon() -> Response:
        """Browsers ask for /favicon.ico whatever the page links; answer with our icon
        (an SVG, which they accept there) instead of a 404 in every access log."""
        return send_from_directory(
            WEB_DIR / "static", FAVICON, mimetype="image/svg+xml", max_age=86400
        )

    app.add_url_rule("/static/<path:filename>", endpoint="static", view_func=static)
    app.add_url_rule("/favicon.ico", endpoint="favicon", view_func=favicon)


def load_predictor(app: Flask) -> None:
    """Load champion and challenger, and the other tasks' champions, once per process
    (never per request), then watch."""
    from vitalcast.serving.models import (
        refresh_models,
        refresh_task_champions,
        start_model_watcher,
    )

    state = get_state(app)
    refresh_models(state)
    refresh_task_champions(state)
    start_model_watcher(state, other_tasks=True)
