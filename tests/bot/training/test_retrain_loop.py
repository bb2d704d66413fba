"""The whole loop on the example knowledge base, with the real local model, on PostgreSQL:

rated turns in the ledger → export → scrubbed dataset → a few LoRA steps → the gate (candidate vs
live through the orchestrator) → promotion → the next answer comes from the new adapter and its
turn says so → a worse candidate is not promoted → rollback → bad promotions are refused."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bot.answering.messages import IncomingMessage
from bot.feedback.roles import Role
from bot.training import adapters, jobs, retrain
from bot.training import commands as admin
from tests.support.rated import ASKER, LEAD, PLANTED_EMAIL, PLANTED_TOKEN, RESTRICTED_QUESTION, seed_rated_turns
from tests.support.server import RunningServer, register_adapter, running_server
from tests.support.services import REDIS_URL, fresh_pg_database

ADMIN = "sofia.martins@northwind.example"


async def finished(server: RunningServer, job_id: str, timeout: float = 1200) -> jobs.JobRow:
    for _ in range(int(timeout)):
        job = await jobs.get_job(server.deskmate.ledger, job_id)
        if job is not None and job.status not in jobs.ACTIVE:
            return job
        await asyncio.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


async def ask(server: RunningServer, question: str) -> Any:
    answer = await server.deskmate.orchestrator.ask(
        IncomingMessage(platform="web", user_key=ASKER, text=question, thread_id=question)
    )
    return await server.deskmate.ledger.get_turn(answer.turn_id)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_retraining_closes_the_loop(
    tmp_path: Path, example_store_url: str, embedder: Any, redis_prefix: str, model_cache: Path, blank_adapter: Path
) -> None:
    guards = tmp_path / "guards.jsonl"
    guards.write_text(json.dumps({"question": "How do I report a phishing email?", "must_include": []}) + "\n")
    async with fresh_pg_database() as ledger_url:
        settings = {
            "data_dir": tmp_path,
            "store_url": example_store_url,
            "cache_url": REDIS_URL,
            "cache_prefix": f"{redis_prefix}loop:",
            "ledger_url": ledger_url,
            "generator_url": "local",
            "admins": [ADMIN],
            "leads": [LEAD],
            "model_cache_dir": model_cache,
            "context_passages": 1,
            "max_answer_tokens": 60,
            "guard_questions": guards,
            "promotion_margin": 0.02,
            "train_config": {
                "dataset": {"eval_share": 0.34, "distractor_share": 0.0},
                "train": {"max_steps": 8, "save_steps": 4, "learning_rate": 2e-3, "max_length": 384},
            },
        }
        async with running_server(embedder, **settings) as server:
            ids = await seed_rated_turns(server.deskmate)

            # An admin retrains (the words Slack and Teams pass on); the job runs in the server.
            reply = await admin.command(server.deskmate, ADMIN, Role.admin, ["retrain"])
            assert "queued" in reply
            [job] = await jobs.list_jobs(server.deskmate.ledger)
            job = await finished(server, job.id)
            assert job.status == "succeeded", job.error
            name = job.result["adapter"]
            assert job.result["promoted"], job.result["reasons"]
            assert job.result["candidate"]["token_f1"] >= job.result["live"]["token_f1"] + 0.02

            # The dataset left out the restricted turn and holds no planted email or token.
            folder = Path(job.result["folder"])
            dataset = "".join(p.read_text() for p in (folder / "dataset").glob("*.jsonl"))
            assert ids[RESTRICTED_QUESTION] not in dataset and ids["How do I reset my VPN password?"] in dataset
            everything = "".join(
                p.read_text(errors="ignore")
                for p in folder.rglob("*")
                if p.is_file() and p.suffix in (".jsonl", ".json", ".md", ".txt", ".log")
            )
            assert PLANTED_EMAIL not in everything and PLANTED_TOKEN not in everything
            assert not (folder / "export.jsonl").exists()
            assert (folder / "report.png").read_bytes().startswith(b"\x89PNG")

            # The registry holds the sealed version with everything about how it was made.
            info = server.deskmate.registry.get(name)
            assert info.metadata["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
            assert info.metadata["started_by"] == ADMIN and info.metadata["job_id"] == job.id
            assert info.metadata["dataset_card"]["filtered"] and info.metadata["train_config"]["max_steps"] == 8
            assert info.metadata["evaluation"]["decision"]["promote"] is True
            [event] = await adapters.history(server.deskmate.ledger)
            assert (event.action, event.adapter, event.previous) == ("promote", name, "")
            assert event.actor.startswith("gate") and ADMIN in event.actor

            # The next answer is served by the new adapter, and its turn says so; it answers the
            # way the gate measured best (its own writing, or quoting where that scored higher).
            assert server.deskmate.generator.adapter == name
            measured = info.metadata["evaluation"]["strategy"]["answer_strategy"]
            quoted, written = info.metadata["evaluation"]["quoted"], info.metadata["evaluation"]["candidate"]
            assert measured == ("generate" if written["token_f1"] > quoted["token_f1"] else "quote"), (written, quoted)
            assert server.deskmate.generator.adapter_strategy == measured
            turn = await ask(server, "How do I set up a printer at the office?")
            assert turn.adapter_version == name and turn.status == "answered", (turn.answer, turn.support)
            assert turn.strategy == measured

            # A worse candidate (it barely trains) does not beat the live adapter: not promoted.
            worse = await retrain.start(
                server.deskmate.settings,
                server.deskmate.ledger,
                server.deskmate.jobs,
                ADMIN,
                params={"train": {"learning_rate": 1e-9, "max_steps": 2}},
            )
            worse = await finished(server, worse.id)
            assert worse.status == "succeeded" and not worse.result["promoted"]
            assert "does not beat" in " ".join(worse.result["reasons"])
            assert await adapters.live_adapter(server.deskmate.ledger) == name
            assert (await adapters.get_adapter(server.deskmate.ledger, worse.result["adapter"])).status == "rejected"
            refused = await admin.command(
                server.deskmate, ADMIN, Role.admin, ["adapters", "promote", worse.result["adapter"]]
            )
            assert "did not pass the evaluation gate" in refused

            # Rollback: the base model answers again, and the turn says so.
            assert "base model" in await admin.command(server.deskmate, ADMIN, Role.admin, ["adapters", "rollback"])
            assert server.deskmate.generator.adapter == ""
            assert (await ask(server, "How do I set up a printer in Berlin?")).adapter_version == ""

            # Bad promotions change nothing: another base model, a damaged folder.
            other = await register_adapter(
                server.deskmate, blank_adapter, base_model="meta-llama/Llama-3.2-1B-Instruct"
            )
            reply = await admin.command(server.deskmate, ADMIN, Role.admin, ["adapters", "promote", other])
            assert "Refused" in reply and "Llama-3.2-1B" in reply
            gguf = info.gguf
            os.chmod(gguf, stat.S_IRUSR | stat.S_IWUSR)
            with open(gguf, "r+b") as f:
                f.seek(4096)
                f.write(b"\xff" * 64)
            reply = await admin.command(server.deskmate, ADMIN, Role.admin, ["adapters", "promote", name])
            assert "Refused" in reply and "changed since it was registered" in reply
            assert await adapters.live_adapter(server.deskmate.ledger) == ""
            assert server.deskmate.generator.adapter == ""
