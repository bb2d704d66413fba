"""The promotion gate's decision, on scored answers: what must hold for a candidate to go live."""

from __future__ import annotations

from finetune.evaluate import answer_strategy, decide, guard_passed, score_answers


def rows(answers: list[str], reference: str = "Open the portal and choose Reset password.") -> list[dict]:
    return [
        {
            "answer": a,
            "reference": reference,
            "outcome": "answered",
            "cited": ["it/vpn"],
            "gold": ["it/vpn"],
            "should_not_answer": False,
        }
        for a in answers
    ]


def test_a_better_candidate_passes_and_an_equal_one_does_not() -> None:
    live = score_answers(rows(["Call someone."] * 3))
    better = score_answers(rows(["Open the portal and choose Reset password."] * 3))
    assert better["token_f1"] == 1.0 and live["token_f1"] < 0.2 and better["citation_rate"] == 1.0
    assert decide(better, live, [], margin=0.02)["promote"] is True
    same = decide(live, live, [], margin=0.02)
    assert same["promote"] is False and "does not beat" in same["reasons"][0]


def test_a_guard_the_live_adapter_got_right_must_stay_right() -> None:
    live = score_answers(rows(["Call someone."]))
    better = score_answers(rows(["Open the portal and choose Reset password."]))
    guard = {"question": "Who approves laptops?", "must_include": ["IT manager"], "doc": "it/laptops"}
    assert guard_passed(guard, "Your IT manager approves it [1].", ["it/laptops"])
    assert not guard_passed(guard, "Your IT manager approves it.", ["hr/leave"])
    regressed = decide(better, live, [{**guard, "live_passed": True, "candidate_passed": False}], margin=0.02)
    assert regressed["promote"] is False and "Who approves laptops?" in regressed["reasons"][0]
    fixed = decide(better, live, [{**guard, "live_passed": False, "candidate_passed": True}], margin=0.02)
    assert fixed["promote"] is True


def test_declining_fewer_should_not_answer_turns_blocks_promotion() -> None:
    refuse = [
        {"answer": "x", "reference": "", "outcome": o, "cited": [], "gold": [], "should_not_answer": True}
        for o in ("unknown", "answered")
    ]
    live = score_answers(rows(["Call someone."]) + [{**refuse[0]}])
    candidate = score_answers(rows(["Open the portal and choose Reset password."]) + [{**refuse[1]}])
    assert live["declined_rate"] == 1.0 and candidate["declined_rate"] == 0.0
    verdict = decide(candidate, live, [], margin=0.02)
    assert verdict["promote"] is False and "declines fewer" in verdict["reasons"][0]


def test_no_held_out_turn_means_no_promotion() -> None:
    empty = score_answers([])
    assert decide(empty, empty, [], margin=0.0)["promote"] is False


def test_a_candidate_that_invents_more_is_not_promoted_whatever_its_f1() -> None:
    good = "Open the portal and choose Reset password."
    live = score_answers([{**r, "claims": 4, "unsupported": 0} for r in rows(["Call someone."] * 2)])
    candidate = score_answers([{**r, "claims": 4, "unsupported": 1} for r in rows([good] * 2)])
    assert live["unsupported_share"] == 0.0 and candidate["unsupported_share"] == 0.25
    assert candidate["token_f1"] == 1.0
    verdict = decide(candidate, live, [], margin=0.02)
    assert verdict["promote"] is False and "unsupported sentences" in verdict["reasons"][0]
    honest = score_answers([{**r, "claims": 4, "unsupported": 0} for r in rows([good] * 2)])
    assert decide(honest, live, [], margin=0.02)["promote"] is True


def test_a_live_adapter_writes_only_where_its_answers_beat_quoting() -> None:
    quoted = score_answers(rows(["Open the portal and choose Reset password, then sign in."] * 2))
    writes_well = score_answers(rows(["Open the portal and choose Reset password."] * 2))
    writes_badly = score_answers(rows(["Call someone about the portal."] * 2))
    assert answer_strategy(writes_well, quoted)["answer_strategy"] == "generate"
    verdict = answer_strategy(writes_badly, quoted)
    assert verdict["answer_strategy"] == "quote" and "quoting scores" in verdict["why"]
    assert answer_strategy(quoted, quoted)["answer_strategy"] == "quote"  # a tie quotes: never unsupported
    assert answer_strategy(score_answers([]), quoted)["answer_strategy"] == "generate"  # nothing to go on
