"""review queue: turn risk and reviewed flag, rating lookups, console sign-in tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("risk", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("reviewed", sa.Boolean(), nullable=False, server_default=sa.false()))
    # The queue reads unreviewed first, riskiest first, newest first: one index walk.
    op.create_index("ix_turns_queue", "turns", ["reviewed", sa.text("risk DESC"), sa.text("created_at DESC")])
    # A turn's thread is found by all four of its coordinates. The index on platform alone
    # goes: with four values it only tempted SQLite into sorting half the table for the queue's
    # platform filter and the thread lookup (bench/console_load.py).
    op.create_index("ix_turns_thread", "turns", ["platform", "workspace", "channel", "thread_id", "created_at"])
    op.drop_index("ix_turns_platform", table_name="turns")
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        # Every lookup of a turn's ratings reads them in order: this index serves both, so the
        # turn-only one from 0001 goes.
        batch_op.create_index("ix_ratings_turn_created", ["turn_id", "created_at"], unique=False)
        batch_op.drop_index("ix_ratings_turn_id")
    op.create_table(
        "console_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_key", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )


def downgrade() -> None:
    op.drop_table("console_tokens")
    op.create_index("ix_turns_platform", "turns", ["platform"])
    op.drop_index("ix_turns_thread", table_name="turns")
    op.drop_index("ix_turns_queue", table_name="turns")
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        batch_op.create_index("ix_ratings_turn_id", ["turn_id"], unique=False)
        batch_op.drop_index("ix_ratings_turn_created")
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("reviewed")
        batch_op.drop_column("risk")
