"""wide platform ids; forgotten people (tombstones)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Columns holding what a platform or a person supplies. Teams personal conversation ids are 131
# characters in Microsoft's own examples and VARCHAR(128) made PostgreSQL refuse every turn of
# such a chat; TEXT costs PostgreSQL nothing more (SQLite never checked the lengths).
WIDENED = {
    "turns": {
        "workspace": 128,
        "channel": 128,
        "thread_id": 128,
        "user_key": 320,
        "user_name": 200,
        "prompt_version": 16,
        "model": 200,
        "adapter_version": 200,
    },
    "ratings": {"rater_key": 320},
    "console_tokens": {"user_key": 320},
    "adapters": {"base_model": 200},
    "adapter_events": {"actor": 320},
    "jobs": {"actor": 320},
}


def _restore_queue_index() -> None:
    """SQLite's batch mode copies the table and reflects its indexes without their sort order:
    the review queue's index (0002) is made again as it was."""
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_turns_queue", table_name="turns")
        op.create_index("ix_turns_queue", "turns", ["reviewed", sa.text("risk DESC"), sa.text("created_at DESC")])


def upgrade() -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, length in columns.items():
                batch_op.alter_column(
                    column, existing_type=sa.String(length=length), type_=sa.Text(), existing_nullable=False
                )
    _restore_queue_index()
    # A forgotten person: who (a SHA-256 of the user key, never the key), when, and what every
    # copy must drop. Replays skip the person's writes made before it; each serving replica
    # purges its own in-process cache when it sees a new one (bot/feedback/forget.py).
    op.create_table(
        "forgotten",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("person", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("turn_ids", sa.JSON(), nullable=False),
        sa.Column("cache_keys", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_forgotten_person", "forgotten", ["person"])
    op.create_index("ix_forgotten_created_at", "forgotten", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_forgotten_created_at", table_name="forgotten")
    op.drop_index("ix_forgotten_person", table_name="forgotten")
    op.drop_table("forgotten")
    # Values longer than the old limits would not fit back: they are cut, as the old schema
    # would have refused them whole.
    for table, columns in WIDENED.items():
        if op.get_bind().dialect.name == "postgresql":
            for column, length in columns.items():
                op.execute(
                    sa.text(f"UPDATE {table} SET {column} = left({column}, {length}) WHERE length({column}) > {length}")
                )
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, length in columns.items():
                batch_op.alter_column(
                    column, existing_type=sa.Text(), type_=sa.String(length=length), existing_nullable=False
                )
    _restore_queue_index()
