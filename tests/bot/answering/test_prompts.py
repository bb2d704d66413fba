"""Prompt building and answer post-processing: what the model reads, and what users get."""

from __future__ import annotations

from bot.answering.prompts import build_messages, cut_repetition, says_unknown
from retrieval.records import Chunk, Hit


def hit(n: int, text: str) -> Hit:
    return Hit(Chunk(f"d{n}#0", f"d{n}", f"Doc {n}", "Section", "", ("everyone",), text, 0), 1.0)


def test_context_and_question_sit_in_the_user_turn() -> None:
    messages, tampered = build_messages(
        "How do I print?", [hit(1, "Use LIS-PRINT-02."), hit(2, "Badge in.")], ["The person asking is Ana."]
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.startswith("Context:\n[1] Doc 1 > Section: Use LIS-PRINT-02.\n[2] Doc 2 > Section: Badge in.")
    assert "The person asking is Ana." in user and user.endswith("Question: How do I print?")
    assert tampered == []
    bare, _ = build_messages("How do I print?", [])
    assert bare[1]["content"] == "Question: How do I print?"


def test_unknown_answers_are_recognised() -> None:
    assert says_unknown("I don't know.") and says_unknown("The context does not say.") and says_unknown("  ")
    assert not says_unknown("Open id.northwind.example/reset and choose a new password.")


def test_a_looping_answer_is_cut_at_the_first_repeat() -> None:
    looping = "Open the portal. She is a Marketing Manager in Sales. She is a Marketing Manager in Sales. She"
    assert cut_repetition(looping) == ("Open the portal. She is a Marketing Manager in Sales.", True)
    steps = "1. Open the portal.\n2. Enter your email.\n3. Choose a new password."
    assert cut_repetition(steps) == (steps, False)
