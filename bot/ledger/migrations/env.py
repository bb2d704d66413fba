"""Alembic environment: migrations always run on a connection handed over by
`bot.ledger.migrations.runner` (online mode only)."""

from __future__ import annotations

from alembic import context

from bot.ledger.rows import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through bot.ledger.migrations.runner.upgrade (or `deskmate db upgrade`)")
context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite"
)
with context.begin_transaction():
    context.run_migrations()
