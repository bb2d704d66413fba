"""`deskmate retrain --dry-run`: rated turns in the ledger become a training set on disk."""

from __future__ import annotations

import json
from pathlib import Path

from bot.ledger.ledger import Ledger
from bot.training import jobs
from tests.support.cli import deskmate_from_async
from tests.support.console import ADMIN, seed
from tests.support.server import ServerFactory


async def test_a_dry_run_builds_the_dataset_from_the_ledger(
    tmp_path: Path, example_store_url: str, serve_console: ServerFactory
) -> None:
    async with serve_console() as server:
        ids = await seed(server)
        await server.deskmate.ledger.record_feedback(
            ids[0],
            ADMIN,
            platform="console",
            rater_role="admin",
            score=2,
            verdict="incomplete",
            correction="Reset it in the portal; Lukas Becker (lukas.becker@northwind.example) can help.",
        )
    env = {
        "DESKMATE_DATA_DIR": str(tmp_path),
        "DESKMATE_LEDGER_URL": server.settings.ledger_url,
        "DESKMATE_STORE_URL": example_store_url,
        "DESKMATE_GENERATOR_URL": "echo://",
    }
    done = await deskmate_from_async(["retrain", "--dry-run"], cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert "# Dataset card" in done.stdout and "sft_correction" in done.stdout
    [folder] = (tmp_path / "jobs").iterdir()
    assert not (folder / "export.jsonl").exists()  # unscrubbed: gone with the job
    examples = [
        json.loads(line)
        for name in ("train.jsonl", "eval.jsonl")
        for line in (folder / "dataset" / name).read_text().splitlines()
    ]
    [example] = [e for e in examples if e["kind"] == "sft_correction"]
    assert example["turn_id"] == ids[0]
    assert example["messages"][-1]["content"] == "Reset it in the portal; [NAME] ([EMAIL]) can help."
    assert json.loads((folder / "dataset" / "card.json").read_text())["records"] == 1

    assert "training set built: " in done.stdout

    # One retraining at a time, whoever started the other one.
    ledger = Ledger(env["DESKMATE_LEDGER_URL"], tmp_path / "spool.jsonl")
    running = await jobs.create_job(ledger, "retrain", "someone@northwind.example", {})
    refused = await deskmate_from_async(["retrain"], cwd=tmp_path, **env)
    assert refused.returncode == 1 and "Not started" in refused.stderr and running.id[:8] in refused.stderr
    listed = await deskmate_from_async(["jobs", "list"], cwd=tmp_path, **env)
    assert running.id[:8] in listed.stdout and "queued" in listed.stdout
    adapters = await deskmate_from_async(["adapters", "list"], cwd=tmp_path, **env)
    assert adapters.returncode == 0 and "No adapters yet" in adapters.stdout
    await ledger.close()
