"""Labelling samples: frames the edges picked for their uncertain detections.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("sample_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("uncertain_count", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_samples_device_id_devices")),
        sa.PrimaryKeyConstraint("sample_id", name=op.f("pk_samples")),
    )
    op.create_index("ix_samples_camera_id_ts", "samples", ["camera_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_samples_camera_id_ts", table_name="samples")
    op.drop_table("samples")
