"""replicas: which server process is answering a turn, and when each was last seen; job resumes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A replica killed mid-answer leaves its turn `pending`; the others find such turns through
    # the owner's heartbeat going stale, close them with an error and tell the user.
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(length=80), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replica", sa.String(length=80), nullable=False, server_default=""))
    # A job taken over from a dead runner: when (a resubmission that never starts is retried)
    # and how often (a job that kills every runner is given up, not retried forever).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resumes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("resumes")
        batch_op.drop_column("claimed_at")
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("replica")
    op.drop_table("replicas")
