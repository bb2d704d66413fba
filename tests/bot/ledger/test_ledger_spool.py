"""The spool on disk: one file per process in a shared directory, adopted when its process is
gone, never while it lives; and a spool file an older version left is replayed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnStart
from tests.support.services import REPO, missing_pg_database
from tests.support.turns import new_turn

# A `deskmate` process of its own (a CLI, another replica) writing a turn while PostgreSQL is
# away, alive until its stdin closes.
CHILD = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnEnd, TurnStart, new_turn_ids

async def main():
    ledger = Ledger(sys.argv[1], Path(sys.argv[2]) / "ledger-spool.jsonl")
    turn_id, ref = new_turn_ids()
    await ledger.record_turn(
        TurnStart(id=turn_id, reference=ref, created_at=datetime.now(UTC), platform="cli",
                  user_key="miguel.santos@northwind.example", question="asked from another process"),
        TurnEnd(status="answered", answer="answered while the ledger was away"))
    print(turn_id, ledger.spooled(), flush=True)
    sys.stdin.readline()

asyncio.run(main())
"""


def start(question: str) -> TurnStart:
    return new_turn(question, user_key="ana.ribeiro@northwind.example", channel="web", thread_id="t1")


async def test_a_spool_is_adopted_only_once_its_process_is_gone(tmp_path: Path) -> None:
    spool_dir = tmp_path / "shared-spool"
    async with missing_pg_database("adopt") as (url, create):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(spool_dir)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            turn_id, spooled = child.stdout.readline().split()  # type: ignore[union-attr]
            [left] = list(spool_dir.glob("*.jsonl"))
            assert spooled == "1"
            await create()
            ledger = Ledger(url, spool_dir / "ledger-spool.jsonl")
            try:
                await ledger.migrate()
                assert await ledger.ping()  # replays what it may: the child's file is the child's
                assert await ledger.get_turn(turn_id) is None and ledger.spooled() == 0
                assert len(left.read_text().splitlines()) == 1

                child.stdin.close()  # type: ignore[union-attr]
                assert await asyncio.to_thread(child.wait, 60) == 0
                assert left.is_file() and ledger.spooled() == 1  # left behind, and counted
                assert await ledger.ping()
                row = await ledger.get_turn(turn_id)
                assert row is not None and row.answer == "answered while the ledger was away"
                assert not left.exists() and ledger.spooled() == 0
            finally:
                await ledger.close()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


async def test_each_process_spools_to_its_own_file(tmp_path: Path) -> None:
    async with missing_pg_database("ownfile") as (url, _create):
        server, cli = Ledger(url, tmp_path / "ledger-spool.jsonl"), Ledger(url, tmp_path / "ledger-spool.jsonl")
        try:
            for ledger, question in ((server, "asked in Slack"), (cli, "asked on the command line")):
                await ledger.record_turn(start(question), TurnEnd(status="answered", answer="…"))
            files = sorted(tmp_path.glob("ledger-spool-*.jsonl"))
            assert len(files) == 2 and server.spool.path != cli.spool.path
            assert {json.loads(f.read_text())["data"]["question"] for f in files} == {
                "asked in Slack",
                "asked on the command line",
            }
            assert server.spooled() == cli.spooled() == 1  # the other's file is held by a live owner
        finally:
            await server.close()
            await cli.close()


async def test_a_spool_file_an_older_version_left_is_replayed(ledger_url: str, tmp_path: Path) -> None:
    """After an upgrade the spool is named by its directory (DESKMATE_LEDGER_SPOOL_DIR); the
    single file of the version before is found there and replayed."""
    spool_dir = tmp_path / "data"
    spool_dir.mkdir()
    old = start("asked before the upgrade")
    data = {
        **old.__dict__,
        "created_at": old.created_at.isoformat(),
        "status": "answered",
        "answer": "old",
        "completed_at": datetime.now(UTC).isoformat(),
    }
    (spool_dir / "ledger-spool.jsonl").write_text(json.dumps({"kind": "record", "data": data}) + "\n")
    ledger = Ledger(ledger_url, spool_dir)
    try:
        await ledger.migrate()
        assert ledger.spooled() == 1
        assert await ledger.ping()
        assert (await ledger.get_turn(old.id)).answer == "old"
        assert not (spool_dir / "ledger-spool.jsonl").exists() and ledger.spooled() == 0
    finally:
        await ledger.close()
