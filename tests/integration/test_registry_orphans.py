"""A registration the database refuses leaves no model folder behind (real PostgreSQL).

The version folder used to be moved into place before the row was written and never
removed: a unique or check violation, a database gone away or an interrupted command left
a folder no row knows, taking space and evaluable by name as if it were a model, and
`train` ended with a bare "database error".
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from tests.model_cli import SMALL_TASK, model_env, run_cli, small_table
from tests.modeling_data import save_small_model
from tests.services import DatabaseFactory
from vitalcast.db import create_db_engine
from vitalcast.modeling.registry import (
    ARTIFACT,
    SIDECAR,
    UNCOMMITTED,
    RegistryError,
    publish_version,
    resolve,
)
from vitalcast.modeling.service import register_version


def _entries(registry: Path) -> list[str]:
    return sorted(p.name for p in registry.iterdir()) if registry.exists() else []


@pytest.mark.slow
def test_train_refused_by_the_database_leaves_no_folder_and_says_why(
    pg_url: str, tmp_path: Path
) -> None:
    env = model_env(pg_url, tmp_path)
    registry = Path(env["VITALCAST_REGISTRY_DIR"])
    task = tmp_path / "task.yaml"
    task.write_text(SMALL_TASK)
    data = small_table(tmp_path / "train.csv", 300, seed=1)
    train = ("train", "--task", "tabular", "--task-file", str(task), "--data", str(data))
    engine = create_db_engine(pg_url)
    try:
        with engine.begin() as conn:  # the database refuses every new registry row
            conn.execute(
                text(
                    "ALTER TABLE model_versions ADD CONSTRAINT refuse_rows CHECK (false) NOT VALID"
                )
            )
        res = run_cli(env, *train, "--budget", "fast")
        assert res.exit_code == 2, res.output
        assert "could not be recorded in the registry database (CheckViolation)" in res.output
        assert "nothing was registered" in res.output
        assert "Traceback" not in res.output
        assert "internal error" not in res.output
        assert _entries(registry) == []

        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE model_versions DROP CONSTRAINT refuse_rows"))
    finally:
        engine.dispose()
    res = run_cli(env, *train, "--budget", "fast", "--json")
    assert res.exit_code == 0, res.output
    version = json.loads(res.output)["version"]
    assert _entries(registry) == [version]
    assert {p.name for p in (registry / version).iterdir()} >= {ARTIFACT, SIDECAR}
    res = run_cli(env, "models", "prune", "--older-than", "0")
    assert res.exit_code == 0, res.output
    assert "nothing to prune" in res.output


def _killed_mid_registration(registry: Path, seed: int) -> str:
    """What a registration killed between moving its folder into place and committing its
    row leaves (register_version's first step, then nothing)."""
    version, path, _ = save_small_model(registry, seed, publish=False)
    publish_version(path.parent, uncommitted=True)
    return version


def _register(session: Session, version: str, path: Path, sha: str) -> None:
    register_version(
        session,
        version=version,
        task="icu-mortality",
        path=path,
        sha256=sha,
        threshold=0.5,
        metrics={"auroc": 0.5},
    )


def test_a_database_that_refuses_connections_leaves_no_folder(tmp_path: Path) -> None:
    """The database is down when the row is to be written (nothing listens on port 1)."""
    registry = tmp_path / "registry"
    version, path, sha = save_small_model(registry, 1, publish=False)
    assert _entries(registry) == [f".incomplete-{version}"]
    down = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/vitalcast")
    try:
        with Session(down) as session, pytest.raises(RegistryError) as err:
            _register(session, version, path, sha)
    finally:
        down.dispose()
    assert "could not be recorded in the registry database (OperationalError)" in str(err.value)
    assert _entries(registry) == []


def test_a_unique_violation_leaves_no_folder_and_a_commit_keeps_it(
    pg_url: str, tmp_path: Path
) -> None:
    """The version's row is already there (a unique violation, for real); then a clean
    registration commits and keeps exactly its folder."""
    registry = tmp_path / "registry"
    version, path, sha = save_small_model(registry, 2, publish=False)
    engine = create_db_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO model_versions (version, task, artifact_path, sha256, threshold,"
                    " metrics, created_at) VALUES (:v, 'icu-mortality', '/nowhere', :s, 0.5,"
                    " '{}', now())"
                ),
                {"v": version, "s": sha},
            )
        with Session(engine) as session:
            with pytest.raises(RegistryError, match=r"\(UniqueViolation\)"):
                _register(session, version, path, sha)
            session.rollback()
        assert _entries(registry) == []

        with engine.begin() as conn:
            conn.execute(text("DELETE FROM model_versions"))
        version, path, sha = save_small_model(registry, 3, publish=False)
        with Session(engine) as session:
            _register(session, version, path, sha)
            assert _entries(registry) == [version]  # in place before the row names it
            session.commit()
        assert _entries(registry) == [version]
    finally:
        engine.dispose()


def test_prune_lists_and_removes_what_interrupted_registrations_left(
    pg_url: str, tmp_path: Path
) -> None:
    """A killed process can still leave a staging folder, or a version folder no row
    names; `models prune` shows them and removes them, never a registered version."""
    env = model_env(pg_url, tmp_path)
    registry = Path(env["VITALCAST_REGISTRY_DIR"])
    engine = create_db_engine(pg_url)
    try:
        version, path, sha = save_small_model(registry, 4, publish=False)
        with Session(engine) as session:
            _register(session, version, path, sha)
            session.commit()
    finally:
        engine.dispose()
    stray = _killed_mid_registration(registry, 5)  # moved into place, never recorded
    (registry / ".incomplete-icu-mortality-x").mkdir()
    (registry / ".incomplete-icu-mortality-x" / ARTIFACT).write_bytes(b"half")

    res = run_cli(env, "models", "prune")
    assert res.exit_code == 0, res.output
    assert "left alone" in res.output
    assert "nothing to prune" in res.output
    res = run_cli(env, "models", "prune", "--older-than", "0")
    assert res.exit_code == 0, res.output
    assert f"unregistered  {stray}" in res.output
    assert "incomplete    .incomplete-icu-mortality-x" in res.output
    assert version not in res.output
    assert "run again with --delete" in res.output
    assert len(_entries(registry)) == 3
    res = run_cli(env, "models", "prune", "--older-than", "0", "--delete")
    assert res.exit_code == 0, res.output
    assert "removed 2 folders" in res.output
    assert _entries(registry) == [version]


def test_a_staged_folder_is_not_a_model_by_name(tmp_path: Path) -> None:
    """`evaluate --model NAME` resolves names in the registry; a staging folder is none."""
    registry = tmp_path / "registry"
    version, _, _ = save_small_model(registry, 6, publish=False)
    with pytest.raises(RegistryError, match="not found in the registry"):
        resolve(f".incomplete-{version}", registry)


def test_prune_never_removes_another_databases_versions(
    pg_url: str, databases: DatabaseFactory, tmp_path: Path
) -> None:
    """Two databases (production and a staging copy, say) share one registry directory:
    each one's versions have no row in the other. They used to be listed as
    "unregistered" and removed by the other's `prune --delete`, champions included; a
    committed registration now leaves no mark, so they are "foreign" and left alone. So is
    a version whose folder is named otherwise than its row (matched by its artifact)."""
    env = model_env(pg_url, tmp_path)
    registry = Path(env["VITALCAST_REGISTRY_DIR"])
    other = create_db_engine(databases.new())
    try:
        version, path, sha = save_small_model(registry, 6, publish=False)
        with Session(other) as session:  # the other database's champion
            _register(session, version, path, sha)
            assert (path.parent / UNCOMMITTED).is_file()  # until the commit
            session.commit()
        assert not (path.parent / UNCOMMITTED).exists()
    finally:
        other.dispose()
    renamed, path, sha = save_small_model(registry, 7, publish=True)
    engine = create_db_engine(pg_url)
    try:
        with engine.begin() as conn:  # this database's row names that folder's artifact
            conn.execute(
                text(
                    "INSERT INTO model_versions (version, task, artifact_path, sha256, threshold,"
                    " metrics, created_at) VALUES ('icu-mortality-renamed', 'icu-mortality',"
                    " :p, :s, 0.5, '{}', now())"
                ),
                {"p": str(path), "s": sha},
            )
    finally:
        engine.dispose()
    killed = _killed_mid_registration(registry, 8)

    res = run_cli(env, "models", "prune", "--older-than", "0", "--delete")
    assert res.exit_code == 0, res.output
    assert f"foreign       {version}" in res.output
    assert "another's, or saved offline: left alone" in res.output
    assert renamed not in res.output
    assert f"unregistered  {killed}" in res.output
    assert "removed 1 folders" in res.output
    assert _entries(registry) == sorted([version, renamed])


def test_prune_says_which_folder_it_could_not_remove_and_exits_1(
    pg_url: str, tmp_path: Path
) -> None:
    """`prune --delete` used to ignore every removal error and say "removed N folders"
    of folders still there (and their space not freed)."""
    env = model_env(pg_url, tmp_path)
    registry = Path(env["VITALCAST_REGISTRY_DIR"])
    stuck = registry / ".incomplete-icu-mortality-stuck"
    stuck.mkdir(parents=True)
    (stuck / ARTIFACT).write_bytes(b"half")
    (registry / ".incomplete-icu-mortality-gone").mkdir()
    # Root ignores file modes; an immutable file cannot be removed even by root.
    if subprocess.run(["chattr", "+i", str(stuck / ARTIFACT)], check=False).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        res = run_cli(env, "models", "prune", "--older-than", "0", "--delete")
    finally:
        subprocess.run(["chattr", "-i", str(stuck / ARTIFACT)], check=True)
    assert res.exit_code == 1, res.output
    assert "could not remove .incomplete-icu-mortality-stuck (Operation not permitted)" in (
        res.output
    )
    assert "removed 1 folders" in res.output
    assert "Traceback" not in res.output
    assert _entries(registry) == [stuck.name]


def test_a_registration_follows_its_savepoint_and_its_session_outlives_a_rollback(
    pg_url: str, tmp_path: Path
) -> None:
    """A row written in a savepoint that is rolled back is gone even when the outer
    transaction commits: its folder used to stay, no row naming it. One released stays
    with the outer commit; and a session rolled back once still ties the next
    registration to its transaction."""
    registry = tmp_path / "registry"
    engine = create_db_engine(pg_url)
    try:
        with Session(engine) as session:
            first = save_small_model(registry, 20, publish=False)
            _register(session, *first)
            session.rollback()
            assert _entries(registry) == []
            kept = save_small_model(registry, 21, publish=False)
            with session.begin_nested():
                _register(session, *kept)
            dropped = save_small_model(registry, 22, publish=False)
            savepoint = session.begin_nested()
            _register(session, *dropped)
            savepoint.rollback()
            assert _entries(registry) == [kept[0]]
            session.commit()
        assert _entries(registry) == [kept[0]]
        assert not (registry / kept[0] / UNCOMMITTED).exists()
    finally:
        engine.dispose()
