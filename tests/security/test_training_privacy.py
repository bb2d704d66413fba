"""A person's directory facts must not reach the training set (issue 14, item 10).

Every served prompt carries "About the person asking: …" (their name, town, laptop). Replayed
as it happens: a person with facts asks, a lead corrects one answer greeting them by name and
naming their laptop and town, others are thumbed, and an operator runs `deskmate retrain
--dry-run`. Nothing of theirs may be in the job's training files, unless DESKMATE_TRAIN_USER_FACTS
allows a field, and then only that field, without their name.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from bot.answering.messages import IncomingMessage
from bot.settings import Settings
from bot.wiring import open_deskmate
from retrieval.backends import open_store
from retrieval.users import import_users, profile_from_row
from tests.support.cli import deskmate_from_async

ASKER = {
    "email": "marisol.quintanilla@northwind.example",
    "name": "Marisol Quintanilla",
    "location": "Tromsø",
    "devices": "ThinkPad X13 Yoga",
}  # three facts: every prompt has all
LEAD = "hannah.schmidt@northwind.example"
THEIRS = ("Marisol", "Quintanilla", "marisol.quintanilla@", "Tromsø", "ThinkPad X13 Yoga")
# (question, rating); the first is a lead's correction that names the person and their things.
RATED = [
    (
        "How do I reset my VPN password?",
        {
            "score": 2,
            "verdict": "incomplete",
            "rater_role": "lead",
            "correction": "Marisol, open the VPN portal on your ThinkPad X13 Yoga; the Tromsø desk can help too.",
        },
    ),
    ("How do I set up the VPN client on my laptop?", {"score": 5, "rater_role": "lead"}),
    ("What should I do if my laptop is lost or stolen?", {"thumb": 1}),
    ("How do I connect to the office Wi-Fi?", {"thumb": -1}),
    ("How do I request a replacement laptop?", {"thumb": -1}),
    ("How do I report a phishing email?", {"score": 4, "rater_role": "lead"}),
]


async def ask_and_rate(root: Path, store_url: str, embedder: Any) -> str:
    """The turns, asked through the real orchestrator and rated; returns the ledger URL."""
    ledger_url = f"sqlite:///{root / 'ledger.db'}"
    settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' own _env_file
        _env_file=None, data_dir=root, store_url=store_url, ledger_url=ledger_url, generator_url="echo://", leads=[LEAD]
    )
    deskmate = await open_deskmate(settings, embedder=embedder)
    try:
        for question, rating in RATED:
            answer = await deskmate.orchestrator.ask(
                IncomingMessage(
                    platform="slack",
                    user_key=ASKER["email"],
                    user_name=ASKER["name"],
                    text=question,
                    channel="D1",
                    thread_id=str(uuid.uuid4()),
                    private=True,
                )
            )
            turn = await deskmate.ledger.get_turn(answer.turn_id)
            served = turn.prompt[-1]["content"]
            # The attack's precondition: the served prompt carries all of it.
            assert turn.status == "answered", turn.status
            assert all(v in served for v in ("Marisol", "Tromsø", "ThinkPad X13 Yoga")), served
            rater = LEAD if "rater_role" in rating else ASKER["email"]
            await deskmate.ledger.record_feedback(answer.turn_id, rater, platform="console", **rating)
    finally:
        await deskmate.close()
    return ledger_url


async def dry_run(root: Path, store_url: str, ledger_url: str, **settings: str) -> Path:
    """`deskmate retrain --dry-run` as an operator runs it; returns the job's dataset folder."""
    before = set((root / "jobs").iterdir()) if (root / "jobs").is_dir() else set()
    # A third of the turns held out and KTO from one thumb each way: every split gets examples.
    dataset_config = {"dataset": {"eval_share": 0.34, "kto_min_each": 1}}
    done = await deskmate_from_async(
        ["retrain", "--dry-run"],
        cwd=root,
        DESKMATE_DATA_DIR=str(root),
        DESKMATE_STORE_URL=store_url,
        DESKMATE_LEDGER_URL=ledger_url,
        DESKMATE_GENERATOR_URL="echo://",
        DESKMATE_TRAIN_CONFIG=json.dumps(dataset_config),
        **settings,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [folder] = set((root / "jobs").iterdir()) - before
    return folder / "dataset"


def examples(dataset: Path) -> list[dict[str, Any]]:
    files = ("train.jsonl", "eval.jsonl", "kto_train.jsonl", "kto_eval.jsonl")
    assert all((dataset / name).is_file() for name in files), sorted(os.listdir(dataset))
    return [json.loads(line) for name in files for line in (dataset / name).read_text().splitlines()]


async def test_a_persons_facts_do_not_reach_the_training_set(
    tmp_path: Path, example_store_url: str, embedder: Any
) -> None:
    kb = tmp_path / "kb"
    # A copy with the person added: the session's shared store stays as it is.
    shutil.copytree(example_store_url.removeprefix("lancedb://"), kb)
    store_url = f"lancedb://{kb}"
    store = await open_store(store_url, dim=embedder.dim)
    await import_users([profile_from_row(ASKER)], store, embedder)
    await store.close()
    ledger_url = await ask_and_rate(tmp_path, store_url, embedder)

    dataset = await dry_run(tmp_path, store_url, ledger_url)
    every = examples(dataset)
    kinds = {"sft_correction", "sft_approved", "kto_desirable", "kto_undesirable"}
    assert {e["kind"] for e in every} >= kinds
    text = json.dumps(every, ensure_ascii=False)
    for value in THEIRS:
        assert value.lower() not in text.lower(), value
    assert "About the person asking" not in text
    [corrected] = [e for e in every if e["kind"] == "sft_correction"]
    assert corrected["messages"][-1]["content"] == (
        "[NAME], open the VPN portal on your [DEVICE]; the [LOCATION] desk can help too."
    )
    card = json.loads((dataset / "card.json").read_text())["asker_facts"]
    assert card["prompts_with_block"] == len(RATED) and card["fields_kept"] == {}
    assert card["fields_removed"] == {"name": 6, "location": 6, "devices": 6} and len(RATED) == 6
    markdown = (dataset / "card.md").read_text()
    assert "fields removed: devices (6), location (6), name (6)" in markdown

    dataset = await dry_run(tmp_path, store_url, ledger_url, DESKMATE_TRAIN_USER_FACTS="location")
    every = examples(dataset)
    for example in every:
        user = example["messages"][1]["content"]
        lines = [x for x in user.splitlines() if x.startswith("About the")]
        assert lines == ["About the person asking: [NAME] works from Tromsø."], user
    text = json.dumps(every, ensure_ascii=False)
    for value in ("Marisol", "Quintanilla", "marisol.quintanilla@", "ThinkPad X13 Yoga"):
        assert value.lower() not in text.lower(), value
    card = json.loads((dataset / "card.json").read_text())["asker_facts"]
    assert card["allowed"] == ["location"] and card["fields_kept"] == {"location": len(RATED)}
    assert "location" not in card["fields_removed"]
