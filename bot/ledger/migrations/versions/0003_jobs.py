"""retraining jobs: one active job per kind, who runs it and where

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Holds the job kind while a job is queued or running and NULL after: the unique index
        # makes "one retraining at a time" hold across processes and replicas, not just in one.
        batch_op.add_column(sa.Column("active_slot", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("runner", sa.String(length=200), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("stage", sa.String(length=32), nullable=False, server_default=""))
        batch_op.create_index("ux_jobs_active_slot", ["active_slot"], unique=True)
    with op.batch_alter_table("adapter_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous", sa.String(length=200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("adapter_events", schema=None) as batch_op:
        batch_op.drop_column("previous")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ux_jobs_active_slot")
        batch_op.drop_column("stage")
        batch_op.drop_column("runner")
        batch_op.drop_column("active_slot")
