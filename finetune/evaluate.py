"""Scoring answers against reference answers: token F1 and ROUGE-L, the two figures the
benchmarks and the retraining gate compare.

Both follow the usual definitions (SQuAD's token F1 on normalised words; ROUGE-L as the F-measure
of the longest common subsequence of words), written out here because they are a dozen lines
each and the libraries that carry them pull in a whole NLP toolkit.
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> list[str]:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = ARTICLES.sub(" ", text.lower().translate(PUNCTUATION))
    return text.split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction), normalise(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = normalise(prediction), normalise(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_of(metric: Callable[[str, str], float], prediction: str, references: Iterable[str]) -> float:
    """The best score against any of several acceptable references."""
    return max((metric(prediction, r) for r in references), default=0.0)


# --- the promotion gate ----------------------------------------------------------------------
# The bot has the candidate and the live adapter answer the same held-out turns through its real
# orchestrator; these functions score the answers and decide. They see only plain dicts, so a
# GPU batch job can call them too.


class Decision(TypedDict):
    """What `decide` returns (a plain dict at run time, stored in the job's report.json)."""

    promote: bool
    margin: float
    reasons: list[str]


def score_answers(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Means over answered rows. Each row: `answer`, `reference` (lead's answer; '' for a turn
    that should not be answered), `outcome`, `cited` and `gold` (document ids),
    `should_not_answer` (bool), and optionally `claims` / `unsupported`: the sentences of the
    written answer that make a claim, and how many of them the passages did not support
    (bot/answering/grounding.py)."""
    scored = [r for r in rows if r.get("reference") and not r.get("should_not_answer")]
    with_gold = [r for r in scored if r.get("gold")]
    refuse = [r for r in rows if r.get("should_not_answer")]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {
        "turns": len(rows),
        "token_f1": mean([token_f1(r["answer"], r["reference"]) for r in scored]),
        "rouge_l": mean([rouge_l(r["answer"], r["reference"]) for r in scored]),
        "citation_rate": mean([float(bool(set(r["gold"]) & set(r.get("cited") or []))) for r in with_gold]),
        "declined_rate": mean([float(r.get("outcome") == "unknown") for r in refuse]),
        "unsupported_share": _share(
            sum(int(r.get("unsupported") or 0) for r in rows), sum(int(r.get("claims") or 0) for r in rows)
        ),
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def guard_passed(guard: Mapping[str, Any], answer: str, cited: Sequence[str]) -> bool:
    """A guard question stays right when its answer holds every required phrase and, if one is
    named, cites the expected document."""
    text = answer.lower()
    phrases = guard.get("must_include") or []
    doc = guard.get("doc")
    return all(p.lower() in text for p in phrases) and (not doc or doc in cited)


def decide(
    candidate: Mapping[str, float | None],
    live: Mapping[str, float | None],
    guards: Sequence[Mapping[str, Any]],
    margin: float,
) -> Decision:
    """Promote only when the candidate beats the live adapter's token F1 by `margin`, handles
    "should not answer" turns no worse, writes no larger share of sentences the passages do not
    support, and gets right every guard the live one got right. A model that is better on F1
    but invents more is not better for the people reading its answers."""
    reasons: list[str] = []
    c_f1, l_f1 = candidate.get("token_f1"), live.get("token_f1")
    if c_f1 is None or l_f1 is None:
        reasons.append("no held-out turn with a reference answer to compare on")
    elif c_f1 < l_f1 + margin:
        reasons.append(f"token F1 {c_f1:.3f} does not beat the live {l_f1:.3f} by the margin {margin:.3f}")
    c_dec, l_dec = candidate.get("declined_rate"), live.get("declined_rate")
    if c_dec is not None and l_dec is not None and c_dec < l_dec:
        reasons.append(f"declines fewer should-not-answer turns ({c_dec:.2f} vs {l_dec:.2f})")
    c_uns, l_uns = candidate.get("unsupported_share"), live.get("unsupported_share")
    if c_uns is not None and l_uns is not None and c_uns > l_uns:
        reasons.append(f"writes more unsupported sentences ({c_uns:.1%} vs {l_uns:.1%} of its claims)")
    regressed = [g["question"] for g in guards if g.get("live_passed") and not g.get("candidate_passed")]
    if regressed:
        reasons.append(f"regresses on {len(regressed)} guard question(s): " + "; ".join(q[:80] for q in regressed))
    return {"promote": not reasons, "margin": margin, "reasons": reasons or ["beats the live adapter on every check"]}


def answer_strategy(candidate: Mapping[str, float | None], quoted: Mapping[str, float | None]) -> dict[str, Any]:
    """How the candidate should answer once live: `generate` only when what it writes beats
    the quoted answers (the passages' own sentences, no model) on the same held-out turns.
    A small model that quotes well and composes badly can pass the gate against the live
    adapter and still be worse for employees than quoting: on the TV manual's section-disjoint
    test set, quoting scored 0.378 token F1 and a fine-tuned SmolLM2 writing its own answers
    0.258 (bench/finetune_effect.py). A tie goes to quoting, whose sentences are never
    unsupported."""
    c_f1, q_f1 = candidate.get("token_f1"), quoted.get("token_f1")
    if c_f1 is None or q_f1 is None:
        return {"answer_strategy": "generate", "why": "no held-out turn whose answer a lead wrote to compare on"}
    if c_f1 > q_f1:
        return {"answer_strategy": "generate", "why": f"its answers score token F1 {c_f1:.3f}, quoting {q_f1:.3f}"}
    return {
        "answer_strategy": "quote",
        "why": f"quoting scores token F1 {q_f1:.3f}, its own answers {c_f1:.3f}: it stays quoting while live",
    }


def plot(report: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """A bar chart of candidate vs live on each figure, saved as PNG next to the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["token_f1", "rouge_l", "citation_rate", "declined_rate"]
    labels = ["token F1", "ROUGE-L", "cites right doc", "declines when it should"]
    live = [report["live"].get(m) or 0.0 for m in metrics]
    cand = [report["candidate"].get(m) or 0.0 for m in metrics]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    xs = range(len(metrics))
    ax.bar(
        [x - 0.2 for x in xs],
        live,
        width=0.4,
        label=f"live: {report.get('live_adapter') or 'base model'}",
        color="#9aa5b1",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        cand,
        width=0.4,
        label=f"candidate: {report.get('candidate_adapter', '')}",
        color="#2f6fde",
    )
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 1)
    verdict = "promoted" if report.get("decision", {}).get("promote") else "not promoted"
    ax.set_title(f"Held-out turns: {report['candidate'].get('turns', 0)} · {verdict}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
