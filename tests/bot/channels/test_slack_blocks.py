"""Slack's pure parts without Slack: what an answer looks like in Block Kit, how Slack's markup
reads back, and what a submitted review modal says (with its refusals under the right input)."""

from __future__ import annotations

from typing import Any

from bot.answering.messages import Answer, Source
from bot.channels.slack.blocks import INPUT_MAX_CHARS, answer_blocks, plain_text, review_modal
from bot.channels.slack.forms import private_metadata, review_from, state_value
from bot.feedback.roles import Role


def answer(**changes: Any) -> Answer:
    values: dict[str, Any] = {
        "turn_id": "t-1",
        "reference": "3F9A2C1B",
        "text": "Reset it at <https://vpn.example> & wait 5 minutes.",
        "outcome": "answered",
        "sources": [Source(1, "it/vpn.md", "VPN <guide>", "https://kb.example/vpn"), Source(2, "x.md", "X", "")],
    }
    return Answer(**{**values, **changes})


def texts(blocks: list[dict[str, Any]]) -> str:
    return repr(blocks)


def test_an_answer_escapes_its_text_and_lists_its_sources_reference_and_buttons() -> None:
    blocks = answer_blocks(answer())
    section = blocks[0]["text"]["text"]
    assert section == "Reset it at &lt;https://vpn.example&gt; &amp; wait 5 minutes."  # no link injection
    shown = texts(blocks)
    assert "[1] <https://kb.example/vpn|VPN &lt;guide&gt;>" in shown and "[2] X" in shown
    assert "3F9A2C1B" in shown
    assert "good:t-1" in shown and "bad:t-1" in shown and "review" in shown


def test_an_answer_only_its_asker_sees_has_no_review_button_and_a_failure_no_feedback() -> None:
    private = texts(answer_blocks(answer(), review=False))
    assert "good:t-1" in private and "Review" not in private
    failed = texts(answer_blocks(answer(outcome="failed", sources=[])))
    assert "good:t-1" not in failed


def test_slack_markup_reads_back_as_plain_text() -> None:
    raw = "<@U123ABC> how do I <https://a.example|open> the <#C1|general> &amp; <mailto:it@example.com>?"
    assert plain_text(raw) == "how do I open the general & it@example.com?"


def test_the_review_modal_starts_with_the_answer_cut_to_slacks_limit() -> None:
    modal = review_modal("q?", "a" * (INPUT_MAX_CHARS + 50), '{"turn": "t-1"}', post_corrections=True)
    assert modal["private_metadata"] == '{"turn": "t-1"}'
    correction = next(b for b in modal["blocks"] if b.get("block_id") == "correction")["element"]
    assert correction["initial_value"] == "a" * INPUT_MAX_CHARS
    assert "initial_options" in next(b for b in modal["blocks"] if b.get("block_id") == "post")["element"]


def view(**values: Any) -> dict[str, Any]:
    def element(value: Any) -> dict[str, Any]:
        if isinstance(value, list):
            return {"selected_options": [{"value": v} for v in value]}
        if value in ("1", "2", "3", "4", "5", "correct", "wrong", "x"):
            return {"selected_option": {"value": value}}
        return {"value": value}

    return {"state": {"values": {k: {k: element(v)} for k, v in values.items()}}, "private_metadata": "not json"}


def test_a_submitted_view_is_read_input_by_input() -> None:
    v = view(score="4", note="typo", post=["post"])
    assert state_value(v, "score") == "4" and state_value(v, "note") == "typo" and state_value(v, "post") == ["post"]
    assert state_value(v, "missing") is None
    assert private_metadata(v) == {}  # broken metadata is no metadata, not a crash


def test_a_review_is_read_and_an_unchanged_correction_is_none() -> None:
    rating, errors = review_from(
        view(score="4", verdict="correct", correction="the answer"), "the answer", "t", "k", Role.lead
    )
    assert errors == {} and rating.score == 4 and rating.verdict == "correct" and not rating.correction


def test_each_refusal_is_shown_under_the_input_it_is_about() -> None:
    _, errors = review_from(view(), None, "t", "k", Role.lead)
    assert set(errors) == {"score", "verdict"}
    _, errors = review_from(view(score="4", verdict="x"), None, "t", "k", Role.lead)
    assert list(errors) == ["verdict"] and "Unknown verdict" in errors["verdict"]
    _, errors = review_from(view(score="4", verdict="wrong", note="n" * 5000), None, "t", "k", Role.lead)
    assert list(errors) == ["note"] and "limit" in errors["note"]
    _, errors = review_from(view(score="9", verdict="wrong"), None, "t", "k", Role.lead)
    assert list(errors) == ["score"]
