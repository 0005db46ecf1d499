"""The registry never leaves a task without a champion or with two, and serves only the
sidecar that was registered (on real PostgreSQL, through the CLI and serving's loader).

- ``models promote CHAMPION --alias challenger`` used to exit 0 and leave the task with no
  champion: serving dropped its model and ``rollback`` had nothing to restore.
- Two promotions in concurrent transactions both replaced the old champion: two champions,
  and serving (newest promotion) and ``get_champion`` disagreed.
- ``model.json`` was not hashed: an edited threshold was served.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tests.modeling_data import register_small_model
from vitalcast.cli import main
from vitalcast.config import Settings
from vitalcast.modeling.external_validation import save_evaluation
from vitalcast.modeling.service import get_champion, promote
from vitalcast.modeling.tables import ModelVersion
from vitalcast.security.tables import AuditEvent
from vitalcast.serving.predictor import load_predictor

TASK = "icu-mortality"


def _register(session: Session, registry: Path, seed: int) -> tuple[str, Path]:
    return register_small_model(session, registry, seed, threshold=0.3)


def _cli(settings: Settings, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, obj={"settings": settings})
    return result.exit_code, result.output


def _aliases(session: Session) -> dict[str, str | None]:
    session.expire_all()
    return {r.version: r.alias for r in session.scalars(select(ModelVersion))}


def test_the_champion_is_never_demoted_without_a_successor(
    settings: Settings, db_session: Session, pg_engine: Engine, tmp_path: Path
) -> None:
    v1, _ = _register(db_session, tmp_path, 1)
    v2, _ = _register(db_session, tmp_path, 2)
    code, out = _cli(settings, ["models", "promote", v1, "--alias", "challenger"])
    assert code != 0
    assert f"{v1} is the champion of {TASK}" in out
    assert "without a champion" in out
    assert "Traceback" not in out
    assert _aliases(db_session) == {v1: "champion", v2: None}
    served = load_predictor(sessionmaker(pg_engine), TASK, "champion")
    assert served is not None
    assert served.version == v1
    refused = db_session.scalars(
        select(AuditEvent).where(AuditEvent.event == "model.promoted")
    ).one()
    assert (refused.outcome, refused.resource) == ("failure", f"model/{v1}")

    # The champion alias moves only to a successor, and rollback restores it.
    code, out = _cli(settings, ["models", "promote", v2, "--alias", "challenger"])
    assert code == 0, out
    code, out = _cli(settings, ["models", "promote", v2, "--no-rescore"])
    assert code == 0, out
    assert _aliases(db_session) == {v1: "retired", v2: "champion"}
    code, out = _cli(settings, ["models", "rollback", "--task", TASK, "--no-rescore"])
    assert code == 0, out
    # The version rolled back from is withdrawn: no later rollback restores it.
    assert _aliases(db_session) == {v1: "champion", v2: "withdrawn"}


def test_the_database_holds_one_champion_per_task(db_session: Session, tmp_path: Path) -> None:
    v1, _ = _register(db_session, tmp_path, 1)
    v2, _ = _register(db_session, tmp_path, 2)
    with pytest.raises(IntegrityError, match="uq_model_versions_task_champion"):
        db_session.execute(
            text("UPDATE model_versions SET alias = 'champion' WHERE version = :v"), {"v": v2}
        )
    db_session.rollback()
    assert _aliases(db_session) == {v1: "champion", v2: None}


def _wait_for_a_blocked_lock(engine: Engine, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
            if waiting.scalar_one():
                return
            conn.rollback()
            time.sleep(0.02)
    raise AssertionError("the second promotion never waited for the first")


def test_concurrent_promotions_leave_one_champion(
    db_session: Session, pg_engine: Engine, tmp_path: Path
) -> None:
    """A promotes V2 and has not committed; B promotes V3 and commits; A commits. B must
    see A's result (one champion, V3), not replace the V1 that both read first."""
    v1, _ = _register(db_session, tmp_path, 1)
    v2, _ = _register(db_session, tmp_path, 2)
    v3, _ = _register(db_session, tmp_path, 3)
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            with Session(pg_engine) as b:
                promote(b, version=v3)
                b.commit()
            outcome["ok"] = True
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = repr(exc)

    with Session(pg_engine) as a:
        promote(a, version=v2)
        thread = threading.Thread(target=second)
        thread.start()
        _wait_for_a_blocked_lock(pg_engine)
        a.commit()
    thread.join(timeout=30)
    assert outcome == {"ok": True}
    assert _aliases(db_session) == {v1: "retired", v2: "retired", v3: "champion"}
    served = load_predictor(sessionmaker(pg_engine), TASK, "champion")
    assert served is not None
    champion = get_champion(db_session, TASK)
    assert champion is not None
    assert served.version == champion.version == v3


def _edit_sidecar(path: Path, **changes: Any) -> None:
    sidecar = path.parent / "model.json"
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | changes, indent=2))


def test_an_edited_sidecar_is_refused(
    settings: Settings, db_session: Session, pg_engine: Engine, tmp_path: Path
) -> None:
    sessions = sessionmaker(pg_engine)
    v1, path1 = _register(db_session, tmp_path, 1)
    v2, path2 = _register(db_session, tmp_path, 2)

    # An evaluation kept beside the version leaves the sidecar, and the version, intact.
    save_evaluation(path1.parent, {"data_fingerprint": "0123456789abcdef", "auroc": 0.7})
    served = load_predictor(sessions, TASK, "champion")
    assert served is not None
    assert served.threshold == 0.3

    # The served threshold comes from the sidecar: raised to 0.99 it would silence alerts.
    _edit_sidecar(path1, threshold=0.99)
    assert load_predictor(sessions, TASK, "champion") is None  # refused, not served
    code, out = _cli(settings, ["models", "promote", v1, "--no-rescore"])
    assert code != 0
    assert "model.json sha256" in out
    assert "altered after registration" in out

    # A version registered before the sidecar's hash was recorded: the threshold and task
    # the row holds are compared instead.
    db_session.execute(
        text("UPDATE model_versions SET sidecar_sha256 = NULL WHERE version = :v"), {"v": v2}
    )
    db_session.commit()
    code, out = _cli(settings, ["models", "promote", v2, "--no-rescore"])
    assert code == 0, out  # untouched: loads
    _edit_sidecar(path2, threshold=0.99)
    assert load_predictor(sessions, TASK, "champion") is None
    code, out = _cli(settings, ["models", "promote", v2, "--no-rescore"])
    assert code != 0
    assert "threshold 0.99; the registry row says task 'icu-mortality', threshold 0.3" in out
