"""The ``vitalcast`` command: thin commands that parse options and call services.

Every command reads the same ``VITALCAST_*`` settings. Errors that the user can fix end
with one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from vitalcast import __version__
from vitalcast.config import Settings, load_settings
from vitalcast.errors import ConfigError, VitalcastError, error_kind


class _Group(click.Group):
    """A click group that turns vitalcast's own errors into one line and exit code 2.

    A database error that escapes a command (the server went away, a constraint refused
    a write) also ends with one line, exit code 1: a traceback would show the failed
    statement and, from the driver's message, possibly values of the patient data being
    written. The line names only the error class (e.g. ``UniqueViolation``); the unit of
    work it interrupted was rolled back.

    Any other error is a bug; it too ends with one line (its class and the file and line
    where it was raised, never its message) and exit code 1.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except (ConfigError, VitalcastError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except SQLAlchemyError as exc:
            click.echo(
                f"error: database error ({error_kind(exc)}); the interrupted unit of work"
                " was rolled back",
                err=True,
            )
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own endings: usage errors (exit 2), ctx.exit(n), Ctrl-C
        except Exception as exc:
            # A bug. Its message and traceback may quote the data being handled (a
            # KeyError on a name, a ValueError on a field), so say only what and where.
            if _debugging():
                raise
            click.echo(
                f"error: internal error ({error_kind(exc)} at {_where(exc)}); this is a bug"
                " in vitalcast, please report it with the command that was run (set"
                " VITALCAST_DEBUG=1, outside production, for the traceback)",
                err=True,
            )
            sys.exit(1)


def _debugging() -> bool:
    return os.environ.get("VITALCAST_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def _where(exc: BaseException) -> str:
    """The innermost frame of vitalcast's own code (``module/file.py:line``), else the
    innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    ours = [f for f in frames if f"{os.sep}vitalcast{os.sep}" in f.filename]
    if ours:
        name = ours[-1].filename.rsplit(f"{os.sep}vitalcast{os.sep}", 1)[-1]
        return f"vitalcast/{name}:{ours[-1].lineno}"
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"


def get_settings(ctx: click.Context) -> Settings:
    """Settings built once per invocation, from the environment.

    Also installs their audit keyring, so that whatever the command audits is keyed.
    """
    from vitalcast.security import audit_keys

    root = ctx.find_root()
    if root.obj is None:
        root.obj = {}
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings()
    settings: Settings = root.obj["settings"]
    audit_keys.install_from_settings(settings)
    return settings


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vitalcast")
def main() -> None:
    """vitalcast: real-time clinical risk prediction you can run yourself.

    Configuration comes from VITALCAST_* environment variables (see
    docs/configuration.md). `vitalcast demo` runs everything on an embedded database.
    """


def _register() -> None:
    from vitalcast.batch.cli import score_batch_command
    from vitalcast.db.cli import db_group
    from vitalcast.ingest.cli import ingest
    from vitalcast.ingest.cli_messages import listen, stream
    from vitalcast.modeling.cli import COMMANDS as MODELING_COMMANDS
    from vitalcast.monitoring.cli import monitor, retrain_command
    from vitalcast.security.cli import apikeys_group, users_group
    from vitalcast.security.cli_audit import audit_group, db_harden
    from vitalcast.security.cli_export import export_command
    from vitalcast.security.cli_keys import keys_group
    from vitalcast.serving.cli import demo_command, serve_command
    from vitalcast.synth.cli import synth

    main.add_command(demo_command)
    main.add_command(serve_command)
    main.add_command(db_group)
    main.add_command(synth)
    main.add_command(ingest)
    main.add_command(users_group)
    main.add_command(apikeys_group)
    main.add_command(audit_group)  # security
    db_group.add_command(db_harden)  # security
    main.add_command(keys_group)  # security
    main.add_command(export_command)  # security
    main.add_command(listen)
    main.add_command(monitor)
    main.add_command(retrain_command)
    for command in MODELING_COMMANDS:
        main.add_command(command)
    main.add_command(stream)
    main.add_command(score_batch_command)


if __name__ == "__main__":
    # `python -m vitalcast.cli`: the command modules import `vitalcast.cli`, which is a
    # different module object from this `__main__` copy, so run that one instead of
    # registering the commands twice (a circular import).
    from vitalcast.cli import main as _main

    _main()
else:
    _register()
