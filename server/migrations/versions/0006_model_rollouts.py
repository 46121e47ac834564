"""Model rollouts: a model version sent to chosen devices, canary first, and each device's outcome.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_rollouts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_rollouts")),
    )
    op.create_table(
        "model_rollout_targets",
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("canary", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("correlation_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["model_rollouts.id"],
            name=op.f("fk_model_rollout_targets_rollout_id_model_rollouts"),
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_model_rollout_targets_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name=op.f("pk_model_rollout_targets")),
        sa.UniqueConstraint("correlation_id", name=op.f("uq_model_rollout_targets_correlation_id")),
    )


def downgrade() -> None:
    op.drop_table("model_rollout_targets")
    op.drop_table("model_rollouts")
