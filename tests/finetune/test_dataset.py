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


def record(n: int, question: str, *, answer: str = "Open the portal and choose Reset [1].", doc: str = "it/vpn",
           groups: tuple[str, ...] = (), **rating: Any) -> dict[str, Any]:
    context = f"[1] Doc {doc}: passage about {doc} number {n}."
    return {
        "turn_id": f"t{n}", "created_at": (T0 + timedelta(hours=n)).isoformat(), "status": "answered",
        "question": question, "answer": answer, "correction": None, "score": None, "verdict": None,
        "thumbs_up": 0, "thumbs_down": 0, "notes": [],
        "prompt": [SYSTEM, {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}],
        "retrieved": [{"chunk_id": f"c{n}", "doc_id": doc, "title": "Doc", "groups": list(groups), "text": "…"}],
        **rating,
    }


def test_targets_filters_split_and_card(tmp_path: Path) -> None:
    records = [
        record(1, "How do I reset my VPN password?", score=5),
        record(2, "How do I reset my VPN password", score=4),  # near-duplicate of 1, newer: kept instead
        record(3, "Where do I book a meeting room?", doc="facilities/rooms", verdict="wrong",
               correction="Use the Rooms tab in Outlook and pick the floor."),
        record(4, "What are the salary bands?", doc="hr/bands", groups=("hr",), score=5),  # restricted
        record(5, "How do I claim travel expenses?", doc="finance/travel", score=2),  # rated, not approved
        record(6, "How do I order a monitor?", doc="it/hardware", thumbs_up=1),
        record(7, "Who do I call about my badge?", doc="facilities/badges", score=4,
               answer="Call Lukas Becker on +1 415 555 0142 or write to lukas.becker@northwind.example "
                      "with token xoxb-1234567890-abcdefghij [1]."),
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
    assert card.filtered == {"no prompt on record (turn ended before generation)": 1,
                             "context held a document restricted to an access group": 1,
                             "rated, but neither approved, corrected nor thumbed": 1}
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
    text = ("Mail hannah.schmidt@northwind.example, server 10.20.30.40 or fe80::1ff:fe23:4567:890a, card "
            "4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE, jwt eyJhbGciOi.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4, "
            "password: hunter2hunter2, console dmt_abcdefghijklmnopqrstuv; Hannah will call you. "
            "Keep version 1.2 and order 12345.")
    out = scrub(text)
    for planted in ("hannah.schmidt@", "10.20.30.40", "fe80::", "4111 1111", "AKIAIOSFODNN7EXAMPLE", "eyJhbGciOi",
                    "hunter2", "dmt_abc", "Hannah"):
        assert planted not in out, planted
    assert "version 1.2" in out and "order 12345" in out  # not everything with digits is personal
