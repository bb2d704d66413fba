"""answer support: how each answer was made and which of its sentences the passages support

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A lead must see which sentences of an answer the passages did not support, and find such
    # turns in the queue: `unsupported` is indexed for the queue's filter.
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strategy", sa.String(length=16), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("support", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("unsupported", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("answerability", sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f("ix_turns_unsupported"), ["unsupported"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_index("ix_turns_unsupported")
        batch_op.drop_column("answerability")
        batch_op.drop_column("unsupported")
        batch_op.drop_column("support")
        batch_op.drop_column("strategy")
