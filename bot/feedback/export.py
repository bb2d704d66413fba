"""The rated turns as a dataset: what retraining reads. One record per rated turn, with the
prompt exactly as served, the answer as sent, and the ratings reduced the way training uses
them (the latest lead or admin review wins; thumbs are counted).

People are not in the dataset: no user keys or names, only whether the turn was private.

The CSV is for people, who open it in a spreadsheet: a cell that a spreadsheet would run as a
formula is written as text (OWASP's CSV injection guidance). JSONL stays exactly as served."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select

from bot.ledger.filters import Filters
from bot.ledger.ledger import Ledger
from bot.ledger.review import is_lead_review
from bot.ledger.rows import FeedbackRow, TurnRow

EXPORT_VERSION = 1
CSV_FIELDS = [
    "turn_id",
    "reference",
    "created_at",
    "platform",
    "private",
    "status",
    "question",
    "answer",
    "correction",
    "score",
    "verdict",
    "thumbs_up",
    "thumbs_down",
    "notes",
    "reviewed_by_role",
    "prompt_version",
    "model",
    "adapter_version",
    "kb_version",
    "confidence",
    "cited",
    "prompt",
    "retrieved",
    "redacted",
]
# A spreadsheet runs a cell that starts with one of these as a formula (`=HYPERLINK(...)`).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def reduce_ratings(ratings: list[FeedbackRow]) -> dict[str, Any]:
    """The latest lead/admin review (score, verdict, correction) and the thumbs and notes."""
    review = None
    for r in ratings:  # oldest first: the last review wins
        if is_lead_review(r.rater_role, r.score, r.verdict, r.correction):
            review = r
    return {
        "correction": review.correction if review else None,
        "score": review.score if review else None,
        "verdict": review.verdict if review else None,
        "reviewed_by_role": review.rater_role if review else None,
        "thumbs_up": sum(1 for r in ratings if r.thumb == 1),
        "thumbs_down": sum(1 for r in ratings if r.thumb == -1),
        "notes": [r.note for r in ratings if r.note],
    }


async def rated_turns(
    ledger: Ledger, filters: Filters | None = None, batch: int = 500, *, asker: bool = False
) -> AsyncIterator[dict[str, Any]]:
    """Every rated turn matching the filters, oldest first, in batches (the ledger may be large).

    With `asker`, each record also has `asker` (user key, name, facts): only for the console,
    which needs them to replace the person's name in pseudonymous mode and drops them before
    anything leaves the server."""
    filters = filters or Filters()
    filters.rated_only = True
    last: tuple[Any, str] | None = None
    while True:
        query = filters.apply(select(TurnRow)).order_by(TurnRow.created_at, TurnRow.id).limit(batch)
        if last is not None:
            query = query.where(
                (TurnRow.created_at > last[0]) | ((TurnRow.created_at == last[0]) & (TurnRow.id > last[1]))
            )
        async with ledger.sessions() as session:
            turns = list(await session.scalars(query))
            if not turns:
                return
            ratings = list(
                await session.scalars(
                    select(FeedbackRow)
                    .where(FeedbackRow.turn_id.in_([t.id for t in turns]))
                    .order_by(FeedbackRow.created_at, FeedbackRow.id)
                )
            )
        by_turn: dict[str, list[FeedbackRow]] = {}
        for r in ratings:
            by_turn.setdefault(r.turn_id, []).append(r)
        for t in turns:
            record = {
                "export_version": EXPORT_VERSION,
                "turn_id": t.id,
                "reference": t.reference,
                "created_at": t.created_at.isoformat(),
                "platform": t.platform,
                "private": t.private,
                "status": t.status,
                "question": t.question,
                "answer": t.answer,
                **reduce_ratings(by_turn.get(t.id, [])),
                "prompt_version": t.prompt_version,
                "model": t.model,
                "adapter_version": t.adapter_version,
                "kb_version": t.kb_version,
                "confidence": t.confidence,
                "cited": t.cited,
                "prompt": t.prompt,
                "retrieved": [
                    {k: c.get(k) for k in ("chunk_id", "doc_id", "title", "groups", "score", "text")}
                    for c in t.retrieved or []
                ],
            }
            if asker:
                record["asker"] = {
                    "user_key": t.user_key,
                    "user_name": t.user_name,
                    "user_facts": list(t.user_facts or []),
                }
            yield record
        last = (turns[-1].created_at, turns[-1].id)


def to_jsonl(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def csv_header() -> str:
    out = io.StringIO()
    csv.writer(out).writerow(CSV_FIELDS)
    return out.getvalue()


def neutralise(value: Any) -> Any:
    """`value` as a spreadsheet shows it but never runs it: text that starts like a formula
    gets a leading single quote (numbers stay numbers)."""
    # Some spreadsheets skip leading blanks and line breaks before deciding it is a formula.
    if isinstance(value, str) and value.lstrip(" \n").startswith(FORMULA_STARTS):
        return "'" + value
    return value


def to_csv_row(record: dict[str, Any]) -> str:
    """One CSV line; lists and the prompt are JSON inside their cell; no cell is a formula."""
    out = io.StringIO()
    csv.writer(out).writerow(
        [
            neutralise(
                json.dumps(record[f], ensure_ascii=False) if isinstance(record.get(f), (list, dict)) else record.get(f)
            )
            for f in CSV_FIELDS
        ]
    )
    return out.getvalue()
