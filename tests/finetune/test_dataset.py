"""Rated turns to training examples: what becomes a target, what is left out, what is scrubbed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from finetune.dataset import UNKNOWN_TARGET, DatasetConfig, build, write
from finetune.scrub import Scrubber

SYSTEM = {"role": "system", "content": "You are Deskmate. Answer only from the context."}
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def record(
    n: int,
    question: str,
    *,
    answer: str = "Open the portal and choose Reset [1].",
    doc: str = "it/vpn",
    groups: tuple[str, ...] = (),
    **rating: Any,
) -> dict[str, Any]:
    context = f"[1] Doc {doc}: passage about {doc} number {n}."
    return {
        "turn_id": f"t{n}",
        "created_at": (T0 + timedelta(hours=n)).isoformat(),
        "status": "answered",
        "question": question,
        "answer": answer,
        "correction": None,
        "score": None,
        "verdict": None,
        "thumbs_up": 0,
        "thumbs_down": 0,
        "notes": [],
        "prompt": [SYSTEM, {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}],
        "retrieved": [{"chunk_id": f"c{n}", "doc_id": doc, "title": "Doc", "groups": list(groups), "text": "…"}],
        **rating,
    }


def test_targets_filters_split_and_card(tmp_path: Path) -> None:
    records = [
        record(1, "How do I reset my VPN password?", score=5),
        record(2, "How do I reset my VPN password", score=4),  # near-duplicate of 1, newer: kept instead
        record(
            3,
            "Where do I book a meeting room?",
            doc="facilities/rooms",
            verdict="wrong",
            correction="Use the Rooms tab in Outlook and pick the floor.",
        ),
        record(4, "What are the salary bands?", doc="hr/bands", groups=("hr",), score=5),  # restricted
        record(5, "How do I claim travel expenses?", doc="finance/travel", score=2),  # rated, not approved
        record(6, "How do I order a monitor?", doc="it/hardware", thumbs_up=1),
        record(
            7,
            "Who do I call about my badge?",
            doc="facilities/badges",
            score=4,
            answer="Call Lukas Becker on +1 415 555 0142 or write to lukas.becker@northwind.example "
            "with token xoxb-1234567890-abcdefghij [1].",
        ),
    ]
    records[0]["prompt"] = []  # no prompt on record: cannot be trained on
    config = DatasetConfig(eval_share=0.25, distractor_share=1.0, kto_min_each=1)
    splits, card = build(records, config, names=["Lukas Becker", "Ana Ribeiro"])

    train_ids = {e.turn_id for e in splits["train"]}
    eval_ids = {e.turn_id for e in splits["eval"]}
    assert eval_ids == {"t7"} and "t7" not in train_ids  # the newest turn is held out
    assert {"t2", "t3"} <= train_ids and not {"t1", "t4", "t5"} & (train_ids | eval_ids)
    [correction] = [e for e in splits["train"] if e.kind == "sft_correction"]
    assert correction.messages[-1]["content"] == "Use the Rooms tab in Outlook and pick the floor."
    assert correction.messages[:-1] == [SYSTEM, records[2]["prompt"][1]]  # the prompt exactly as served
    unknown = [e for e in splits["train"] if e.kind == "sft_unknown"]
    assert unknown and all(e.messages[-1]["content"] == UNKNOWN_TARGET for e in unknown)
    assert all("number " + e.turn_id[1:] + "." not in e.messages[1]["content"] for e in unknown)  # other context

    [badge] = splits["eval"]
    text = badge.messages[-1]["content"]
    assert "lukas.becker@" not in text and "555 0142" not in text and "xoxb-" not in text and "Lukas" not in text
    assert "[EMAIL]" in text and "[PHONE]" in text and "[SECRET]" in text and "[NAME]" in text
    assert card.filtered == {
        "no prompt on record (turn ended before generation)": 1,
        "context held a document restricted to an access group": 1,
        "rated, but neither approved, corrected nor thumbed": 1,
    }
    assert card.scrubbed["email"] == 1 and card.scrubbed["phone"] == 1

    write(splits, card, tmp_path / "dataset")
    assert json.loads((tmp_path / "dataset" / "card.json").read_text())["records"] == 7
    assert "restricted to an access group: 1" in (tmp_path / "dataset" / "card.md").read_text()
    lines = (tmp_path / "dataset" / "train.jsonl").read_text().splitlines()
    assert len(lines) == len(splits["train"]) and json.loads(lines[0])["messages"][0] == SYSTEM


def test_kto_needs_enough_of_both_and_restricted_can_be_kept() -> None:
    records = [record(i, f"question number {i} about topic {i}", thumbs_down=1) for i in range(1, 6)]
    splits, card = build(records, DatasetConfig(kto_min_each=2), names=[])
    assert splits["kto_train"] == [] and card.kto.startswith("skipped: 0 desirable")
    restricted = [record(1, "salary bands?", groups=("hr",), score=5)]
    splits, _ = build(restricted, DatasetConfig(include_restricted=True, eval_share=0), names=[])
    assert [e.turn_id for e in splits["train"]] == ["t1"]


def test_scrubber_plants() -> None:
    scrub = Scrubber(names=["Hannah Schmidt"])
    text = (
        "Mail hannah.schmidt@northwind.example, server 10.20.30.40 or fe80::1ff:fe23:4567:890a, card "
        "4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE, jwt eyJhbGciOi.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4, "
        "password: hunter2hunter2, console dmt_abcdefghijklmnopqrstuv; Hannah will call you. "
        "Keep version 1.2 and order 12345."
    )
    out = scrub(text)
    for planted in (
        "hannah.schmidt@",
        "10.20.30.40",
        "fe80::",
        "4111 1111",
        "AKIAIOSFODNN7EXAMPLE",
        "eyJhbGciOi",
        "hunter2",
        "dmt_abc",
        "Hannah",
    ):
        assert planted not in out, planted
    assert "version 1.2" in out and "order 12345" in out  # not everything with digits is personal


# --- the asker's directory facts ---------------------------------------------------------------
# Prompts rendered by the real builders (retrieval/users.py, bot/answering/prompts.py), so a change in how
# facts are written shows up here rather than as facts slipping into a training set.

ASKER_ROW = {
    "email": "marisol.quintanilla@northwind.example",
    "name": "Marisol Quintanilla",
    "department": "Finance",
    "location": "Tromsø",
    "role": "Treasury Analyst",
    "groups": "finance",
    "devices": "ThinkPad X13 Yoga;Pixel 8",
    "employee_id": "NW-55120",
}
ASKER_VALUES = (
    "Marisol",
    "Quintanilla",
    "marisol.quintanilla@",
    "Tromsø",
    "ThinkPad X13 Yoga",
    "Pixel 8",
    "NW-55120",
    "Treasury Analyst",
)


def served_prompt(n: int, question: str, facts: list[str]) -> list[dict[str, str]]:
    from bot.answering.prompts import build_messages
    from retrieval.records import Chunk, Hit

    chunk = Chunk(
        id=f"c{n}",
        doc_id="it/vpn",
        title="VPN",
        heading="",
        url="",
        groups=("everyone",),
        text=f"Open the VPN portal and choose Reset, step {n}.",
        position=0,
    )
    messages, _ = build_messages(question, [Hit(chunk, 1.0)], facts)
    return messages


def asker_records() -> list[dict[str, Any]]:
    """Rated turns of one person whose every prompt carried all their facts, with their name,
    town and laptop also in a question, an answer and a lead's correction."""
    from retrieval.users import profile_facts, profile_from_row

    facts = profile_facts(profile_from_row(ASKER_ROW))
    rows = [
        ("How do I reset my VPN password?", {"score": 5}),
        (
            "Hi, Marisol here: my ThinkPad X13 Yoga cannot reach the VPN",
            {
                "verdict": "incomplete",
                "correction": "Marisol, restart the ThinkPad X13 Yoga, or write to "
                "marisol.quintanilla@northwind.example.",
            },
        ),
        ("Which VPN server do I use in Tromsø?", {"thumbs_up": 1}),
        ("Can I use the VPN abroad?", {"thumbs_down": 1}),
        (
            "Why does the VPN drop on my phone?",
            {"thumbs_down": 1, "answer": "Your Pixel 8 in Tromsø is on a slow network [1]."},
        ),
        ("How do I change the VPN region?", {"score": 4}),
    ]
    records = []
    for n, (question, rating) in enumerate(rows, start=1):
        one = record(n, question, **rating)
        one["prompt"] = served_prompt(n, question, facts)
        records.append(one)
    assert all("About the person asking: " in r["prompt"][1]["content"] for r in records)
    return records


def all_text(splits: dict[str, list[Any]]) -> str:
    messages = [e.messages for examples in splits.values() for e in examples]
    return json.dumps(messages, ensure_ascii=False)


def test_the_askers_facts_leave_every_prompt_of_every_split(tmp_path: Path) -> None:
    # The person has left the directory (names=[]): their name still goes, read off the block.
    config = DatasetConfig(eval_share=0.4, distractor_share=1.0, kto_min_each=1)
    splits, card = build(asker_records(), config, names=[])
    assert {len(splits[name]) > 0 for name in ("train", "eval", "kto_train", "kto_eval")} == {True}
    text = all_text(splits)
    for value in ASKER_VALUES:
        assert value.lower() not in text.lower(), value
    assert "About the person asking" not in text and "Finance" not in text
    [plain] = [e for e in splits["train"] if e.turn_id == "t1" and e.kind == "sft_approved"]
    # Exactly the prompt someone the directory does not know is served.
    assert plain.messages[:-1] == served_prompt(1, "How do I reset my VPN password?", [])
    [corrected] = [e for e in splits["train"] if e.kind == "sft_correction"]
    assert corrected.messages[-1]["content"] == "[NAME], restart the [DEVICE], or write to [EMAIL]."
    assert "Hi, [NAME] here: my [DEVICE] cannot reach the VPN" in corrected.messages[1]["content"]
    [phone] = splits["kto_eval"]
    assert phone.messages[-1]["content"] == "Your [DEVICE] in [LOCATION] is on a slow network [1]."

    assert card.asker.prompts_with_block == 6 and card.asker.kept == {}
    every_field = ("name", "department", "role", "location", "groups", "devices", "employee_id")
    assert card.asker.removed == {field: 6 for field in every_field}
    write(splits, card, tmp_path)
    saved = json.loads((tmp_path / "card.json").read_text())["asker_facts"]
    assert saved["prompts_with_block"] == 6 and saved["fields_removed"]["location"] == 6
    assert saved["allowed"] == [] and saved["fields_kept"] == {}
    markdown = (tmp_path / "card.md").read_text()
    assert "prompts that had the block: 6" in markdown and "location (6)" in markdown
    assert "allowed to stay: none (the whole block is removed)" in markdown


def test_only_the_allowed_fields_stay_and_without_the_name() -> None:
    config = DatasetConfig(eval_share=0.4, distractor_share=1.0, kto_min_each=1, user_facts=["location"])
    splits, card = build(asker_records(), config, names=[])
    examples = [e for examples in splits.values() for e in examples]
    for example in examples:
        user = example.messages[1]["content"]
        [line] = [x for x in user.splitlines() if x.startswith("About the person asking")]
        assert line == "About the person asking: [NAME] works from Tromsø."
    text = all_text(splits)
    for value in ("Marisol", "Quintanilla", "ThinkPad", "Pixel 8", "NW-55120", "Treasury", "Finance"):
        assert value.lower() not in text.lower(), value
    [phone] = splits["kto_eval"]
    assert phone.messages[-1]["content"] == "Your [DEVICE] in Tromsø is on a slow network [1]."
    assert card.asker.kept == {"location": 6} and "location" not in card.asker.removed
    assert card.asker.allowed == ["location"] and card.asker.removed["devices"] == 6

    # Fields are named as the directory's columns are, in any case or spelling.
    _, card = build(asker_records(), DatasetConfig(user_facts=["Device", "employee id"]), names=[])
    assert card.asker.kept == {"devices": 6, "employee_id": 6}


def test_a_facts_block_in_an_unknown_shape_goes_whole() -> None:
    odd = record(1, "How do I reset my VPN password?", score=5)
    odd["prompt"][1]["content"] = odd["prompt"][1]["content"].replace(
        "\n\nQuestion:", "\nAbout the person asking: Marisol (Tromsø) has a Pixel 8\n\nQuestion:"
    )
    splits, card = build([odd], DatasetConfig(user_facts=["location", "devices"]), names=[])
    [example] = splits["train"]
    assert example.messages[1] == record(1, "How do I reset my VPN password?")["prompt"][1]
    assert card.asker.prompts_with_block == 1 and card.asker.unreadable == 1
