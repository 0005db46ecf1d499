"""``vitalcast serve`` and ``vitalcast demo``."""

from __future__ import annotations

import click

from vitalcast.config import load_settings


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default VITALCAST_HOST).")
@click.option("--port", type=int, default=None, help="Port (default VITALCAST_PORT).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="gunicorn workers (default VITALCAST_WORKERS).",
)
@click.pass_context
def serve_command(
    ctx: click.Context, host: str | None, port: int | None, workers: int | None
) -> None:
    """Serve the web UI and API with gunicorn."""
    from vitalcast.cli import get_settings
    from vitalcast.db import create_db_engine
    from vitalcast.db.session import make_session_factory
    from vitalcast.security.crypto import cipher_from_settings
    from vitalcast.security.identifiers import check_field_keys
    from vitalcast.serving.server import serve

    settings = get_settings(ctx)
    engine = create_db_engine(settings.resolved_database_url)  # fail fast, one clear line
    try:  # so does a field key that cannot read the stored identifiers
        check_field_keys(make_session_factory(engine), cipher_from_settings(settings))
    finally:
        engine.dispose()
    serve(
        settings,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.workers,
    )


@click.command("demo")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--no-serve", is_flag=True, help="Prepare data, model and users, then exit.")
@click.pass_context
def demo_command(ctx: click.Context, port: int, no_serve: bool) -> None:
    """Run vitalcast on an embedded database with synthetic patients (first run: a minute)."""
    from vitalcast.serving.demo import prepare_demo
    from vitalcast.serving.server import serve

    root = ctx.find_root()
    root.obj = root.obj or {}
    root.obj.setdefault("settings", load_settings(env="demo"))
    from vitalcast.cli import get_settings

    settings = get_settings(ctx)  # installs the audit keyring too
    if not no_serve:
        from vitalcast.monitoring.multiproc import prepare_multiprocess_dir

        # Preparing the demo scores patients (and counts them in prometheus-client), so
        # the multiprocess metrics directory must be set before that first import.
        prepare_multiprocess_dir(settings.resolved_metrics_dir)
    info = prepare_demo(settings, echo=click.echo)
    url = f"http://127.0.0.1:{port}"
    lines = [
        "",
        "vitalcast demo — synthetic patients only (no real patient data)",
        f"  web UI:      {url}/  (ward list at {url}/ward)",
        f"  API:         {url}/api/v1/  (health: {url}/healthz)",
        f"  data:        {settings.resolved_database_url}",
        f"  patients:    {info.patients}; model {info.model_version}; newly scored {info.scored}",
        "  sign in as:  " + ", ".join(f"{u} / {p}" for u, p in info.credentials.items()),
        f"               (kept in {info.credentials_file}, mode 0600)",
        f"  demo keys:   generated once into {settings.data_dir / 'keys'} (demo only)",
        f"  prepared in {info.seconds:.1f} s; press Ctrl+C to stop",
        "",
    ]
    click.echo("\n".join(lines))
    if not no_serve:
        serve(settings, host="127.0.0.1", port=port, workers=settings.workers)
