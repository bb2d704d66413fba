"""Running the Alembic migrations from code, on a connection the caller already holds, so the
bot, the CLI and the tests all migrate the same way (no alembic.ini to find at run time)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind `connection` (a sync connection, from `run_sync`)."""
    command.upgrade(alembic_config(connection), revision)
