"""One champion and one challenger per task; model_versions.sidecar_sha256

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 10:00:00

Two promotions of the same task in concurrent transactions could both commit, leaving two
champions: serving loaded the newest promotion while every other reader (rescoring,
monitoring, batch scoring) took whichever row the database returned first. A unique
partial index on ``(task) WHERE alias = 'champion'`` (and one for ``'challenger'``) makes
that impossible whatever the code does; promotions also lock the task's rows, so
concurrent ones wait for each other instead of failing.

A database that already holds two champions (or challengers) of a task is repaired, not
refused: the holder serving has been using is kept, the newest promotion (then the highest
id, the order ``serving/predictor.py`` loads by), and the others are retired (a champion,
so ``vitalcast models rollback`` can still reach it) or lose the alias (a challenger), as a
promotion would have done. Each repair is logged with the task and the versions, so the
operator can review it; patients go on being scored by the model they were scored by.

``sidecar_sha256`` records the hash of a version's ``model.json`` at registration: the
sidecar holds the operating threshold, task and feature list serving uses, and is verified
on load like the artifact. Versions registered before keep null and have their threshold
and task compared with the row instead (``modeling/registry.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("alembic.runtime.migration")

# alias -> what the holders beyond the kept one become
DEMOTED = {"champion": "retired", "challenger": None}


def _keep_one_holder(alias: str) -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT id, task, version FROM model_versions WHERE alias = :alias"
            " ORDER BY task, promoted_at IS NULL, promoted_at DESC, id DESC"
        ),
        {"alias": alias},
    ).all()
    kept: dict[str, str] = {}
    for row_id, task, version in rows:
        if task not in kept:
            kept[task] = version
            continue
        bind.execute(
            sa.text("UPDATE model_versions SET alias = :demoted WHERE id = :id"),
            {"demoted": DEMOTED[alias], "id": row_id},
        )
        logger.warning(
            "model_versions: task %s had more than one %s; kept %s (the one serving loads),"
            " %s is now %s",
            task,
            alias,
            kept[task],
            version,
            DEMOTED[alias] or "without an alias",
        )


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("sidecar_sha256", sa.String(length=64), nullable=True))
    for alias in DEMOTED:
        _keep_one_holder(alias)
        where = sa.text(f"alias = '{alias}'")
        op.create_index(
            f"uq_model_versions_task_{alias}",
            "model_versions",
            ["task"],
            unique=True,
            postgresql_where=where,
            sqlite_where=where,
        )


def downgrade() -> None:
    for alias in DEMOTED:
        op.drop_index(f"uq_model_versions_task_{alias}", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("sidecar_sha256")
