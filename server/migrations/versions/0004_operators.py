"""Operators, case checks, forwarding to the city platform, published device configs, evidence references.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BACKFILL_CHUNK = 1000  # events read per statement when filing the references of stored events


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    op.create_index("ix_login_attempts_username_at", "login_attempts", ["username", "at"])
    op.create_index("ix_login_attempts_client_at", "login_attempts", ["client", "at"])

    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("grid_cell", sa.String(32), nullable=True))
        batch.add_column(sa.Column("filed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rework_count", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_cases_camera_id_created_at", "cases", ["camera_id", "created_at"])
    op.create_index("ix_cases_created_at_id", "cases", ["created_at", "id"])

    op.create_table(
        "case_checks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("case_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("evidence_sha256", sa.String(64), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_case_checks_case_id_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_checks")),
    )
    op.create_index("ix_case_checks_case_id", "case_checks", ["case_id"])

    op.create_table(
        "forwardings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.String(32), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("external_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_forwardings_case_id_cases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forwardings")),
        sa.UniqueConstraint("case_id", "target", name=op.f("uq_forwardings_case_id_target")),
    )
    op.create_index("ix_forwardings_status_next_attempt_at", "forwardings", ["status", "next_attempt_at"])

    op.create_table(
        "device_configs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_configs_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_configs")),
        sa.UniqueConstraint("device_id", "version", name=op.f("uq_device_configs_device_id_version")),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("reported_config_version", sa.String(64), nullable=True))
        batch.add_column(sa.Column("reported_config_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reported_config_at", sa.DateTime(timezone=True), nullable=True))
    _create_evidence_refs()


def _create_evidence_refs() -> None:
    """One row per event and image it references, filled from the events already stored."""
    refs = op.create_table(
        "evidence_refs",
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("restricted", sa.Boolean(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=True),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"], ["events.event_id"], name=op.f("fk_evidence_refs_event_id_events")
        ),
        sa.PrimaryKeyConstraint("event_id", "sha256", name=op.f("pk_evidence_refs")),
    )
    op.create_index("ix_evidence_refs_sha256", "evidence_refs", ["sha256"])
    events = sa.table(
        "events",
        sa.column("event_id", sa.String(32)),
        sa.column("device_id", sa.String(64)),
        sa.column("camera", sa.String(64)),
        sa.column("ts", sa.DateTime(timezone=True)),
        sa.column("document", sa.JSON()),
    )
    # A migration stays as it was written, so it does not reuse event_writer.evidence_ref_rows,
    # which follows the tables of its day; the rule is the same: an image listed twice by one
    # event is restricted if either listing says so.
    bind, after = op.get_bind(), ""
    while chunk := bind.execute(
        sa.select(events).where(events.c.event_id > after).order_by(events.c.event_id).limit(BACKFILL_CHUNK)
    ).all():
        after = chunk[-1].event_id
        rows: dict[tuple[str, str], dict[str, object]] = {}
        for event in chunk:
            for item in event.document.get("evidence", ()):
                row = rows.setdefault(
                    (event.event_id, item["sha256"]),
                    {
                        "event_id": event.event_id,
                        "sha256": item["sha256"],
                        "role": item["role"],
                        "restricted": False,
                        "track_id": item.get("track_id"),
                        "camera_id": event.camera,
                        "device_id": event.device_id,
                        "ts": event.ts,
                    },
                )
                row["restricted"] = bool(row["restricted"]) or item["restricted"]
        if rows:
            op.bulk_insert(refs, list(rows.values()))


def downgrade() -> None:
    op.drop_index("ix_evidence_refs_sha256", table_name="evidence_refs")
    op.drop_table("evidence_refs")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("reported_config_at")
        batch.drop_column("reported_config_error")
        batch.drop_column("reported_config_version")
    op.drop_table("device_configs")
    op.drop_index("ix_forwardings_status_next_attempt_at", table_name="forwardings")
    op.drop_table("forwardings")
    op.drop_index("ix_case_checks_case_id", table_name="case_checks")
    op.drop_table("case_checks")
    op.drop_index("ix_cases_created_at_id", table_name="cases")
    op.drop_index("ix_cases_camera_id_created_at", table_name="cases")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("rework_count")
        batch.drop_column("closed_at")
        batch.drop_column("filed_at")
        batch.drop_column("grid_cell")
    op.drop_index("ix_login_attempts_client_at", table_name="login_attempts")
    op.drop_index("ix_login_attempts_username_at", table_name="login_attempts")
    op.drop_table("login_attempts")
    op.drop_table("users")
