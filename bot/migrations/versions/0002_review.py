"""review queue: turn risk and reviewed flag, rating lookups

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('risk', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('reviewed', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index('ix_turns_queue', ['reviewed', 'risk', 'created_at'], unique=False)
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index('ix_ratings_turn_created', ['turn_id', 'created_at'], unique=False)
        batch_op.create_index('ix_ratings_created_at_role', ['rater_role', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index('ix_ratings_created_at_role')
        batch_op.drop_index('ix_ratings_turn_created')
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_index('ix_turns_queue')
        batch_op.drop_column('reviewed')
        batch_op.drop_column('risk')
