"""Camera sightings: the newest event of each camera from each device, kept at ingest.

The cameras page asked the events table for ``max(ts)`` per camera and device, a scan of every
event ever stored; this table answers the same with one row per camera and device. The upgrade
fills it from the stored events.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "camera_sightings",
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_camera_sightings_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("camera_id", "device_id", name=op.f("pk_camera_sightings")),
    )
    op.execute(
        "INSERT INTO camera_sightings (camera_id, device_id, last_event_at) "
        "SELECT camera, device_id, max(ts) FROM events GROUP BY camera, device_id"
    )


def downgrade() -> None:
    op.drop_table("camera_sightings")
