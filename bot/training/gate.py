"""The evaluation gate: the candidate adapter and the live one answer the held-out turns and the
guard questions through the real orchestrator; finetune.evaluate scores them and decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.answering.generation import Generator, LlamaCppGenerator
from bot.answering.messages import IncomingMessage, Platform
from bot.answering.orchestrator import Orchestrator, TurnPolicy
from bot.deskmate import Retrieval
from bot.ledger.ledger import Ledger
from bot.ledger.rows import TurnRow
from bot.settings import Settings
from finetune import evaluate
from finetune.model import BASE_MODEL_ID, base_gguf_path
from finetune.registry import Registry, new_name
from retrieval.cache import MemoryCache

# The platform the gate asks on: its turns go to a scratch ledger, never into the review queue.
EVAL_PLATFORM: Platform = "eval"


@dataclass
class Gate:
    """What the gate needs: the settings (margin, guard questions, eval size), the ledger holding
    the rated turns, retrieval (the same passages the live model would read), and the registry
    holding the live adapter."""

    settings: Settings
    ledger: Ledger
    retrieval: Retrieval
    registry: Registry

    def _eval_turn_ids(self, folder: Path, records: dict[str, dict[str, Any]]) -> list[str]:
        """The held-out turns: the dataset's eval split, plus turns a lead marked "should not
        answer" in the same (newest) period, which the SFT split cannot hold."""
        ids: list[str] = []
        first = None
        for name in ("eval.jsonl", "kto_eval.jsonl"):
            path = folder / "dataset" / name
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    example = json.loads(line)
                    if example["turn_id"] not in ids and example["kind"] != "sft_unknown":
                        ids.append(example["turn_id"])
                        first = min(first or example["created_at"], example["created_at"])
        for record in records.values():
            if (
                record.get("verdict") == "should_not_answer"
                and first
                and record["created_at"] >= first
                and record["turn_id"] not in ids
            ):
                ids.append(record["turn_id"])
        return ids[: self.settings.eval_max_turns]

    async def evaluate(self, folder: Path, candidate_gguf: Path, live: str) -> dict[str, Any]:
        """Both adapters answer the held-out turns and the guard questions; scores and decision."""

        records = {
            r["turn_id"]: r for r in map(json.loads, (folder / "export.jsonl").read_text(encoding="utf-8").splitlines())
        }
        turns: list[tuple[TurnRow, dict[str, Any]]] = []
        for turn_id in self._eval_turn_ids(folder, records):
            row = await self.ledger.get_turn(turn_id)
            if row is not None and turn_id in records:
                turns.append((row, records[turn_id]))
        guards = _read_guards(self.settings.guard_questions)
        name = new_name(BASE_MODEL_ID)
        setups: dict[str, Generator] = {}
        candidate = LlamaCppGenerator(base_gguf_path(), n_threads=self.settings.generator_threads)
        await candidate.use_adapter(name, candidate_gguf)
        setups["candidate"] = candidate
        current = LlamaCppGenerator(base_gguf_path(), n_threads=self.settings.generator_threads)
        if live:
            await current.use_adapter(live, self.registry.get(live).gguf)
        setups["live"] = current
        scores: dict[str, Any] = {}
        answered: dict[str, list[dict[str, Any]]] = {}
        guard_rows = [dict(g) for g in guards]
        try:
            for label, generator in setups.items():
                answered[label], guard_results = await self._answer_all(folder, label, generator, turns, guards)
                scores[label] = evaluate.score_answers(answered[label])
                for g, passed in zip(guard_rows, guard_results, strict=True):
                    g[f"{label}_passed"] = passed
            # The same turns quoted (no model is called): what `auto` serves without an adapter,
            # and the bar the candidate's own writing must clear to be used once live. Compared
            # on the turns whose reference a lead wrote: an approved answer that was itself
            # quoted would score quoting against its own copy.
            answered["quoted"], _ = await self._answer_all(folder, "quoted", current, turns, [], strategy="quote")
            corrected = {label: [r for r in rows if r["corrected"]] for label, rows in answered.items()}
            scores["quoted"] = evaluate.score_answers(corrected["quoted"])
            strategy = {
                **evaluate.answer_strategy(evaluate.score_answers(corrected["candidate"]), scores["quoted"]),
                "compared_turns": len(corrected["quoted"]),
            }
        finally:
            for generator in setups.values():
                await generator.close()
        decision = evaluate.decide(scores["candidate"], scores["live"], guard_rows, self.settings.promotion_margin)
        return {
            "candidate_adapter": name,
            "live_adapter": live,
            "held_out_turns": len(turns),
            "candidate": scores["candidate"],
            "live": scores["live"],
            "quoted": scores["quoted"],
            "strategy": strategy,
            "guards": guard_rows,
            "decision": decision,
            "evaluated_at": datetime.now(UTC).isoformat(),
        }

    async def _answer_all(
        self,
        folder: Path,
        label: str,
        generator: Generator,
        turns: list[tuple[TurnRow, dict[str, Any]]],
        guards: list[dict[str, Any]],
        strategy: str = "generate",
    ) -> tuple[list[dict[str, Any]], list[bool]]:
        # Eval turns go to a scratch ledger in the job folder, never into the review queue.
        scratch = Ledger(f"sqlite:///{folder / f'eval-{label}.db'}", folder / f"eval-{label}-spool.jsonl")
        await scratch.migrate()
        policy = TurnPolicy.from_settings(self.settings)
        policy.answer_cache_ttl, policy.rate_limit_per_minute, policy.history_turns = 0, 0, 0
        # Candidate and live write their answers (`strategy` "generate"), checked sentence by
        # sentence: the gate compares models, and a quoted answer would hide the model
        # (bot/answering/quoting.py). The "quoted" pass is the bar their writing must clear.
        policy.answer_strategy = strategy
        bot = Orchestrator(self.retrieval.searcher, generator, scratch, MemoryCache(), policy)
        rows: list[dict[str, Any]] = []
        try:
            for row, record in turns:
                answer = await bot.ask(
                    IncomingMessage(
                        platform=EVAL_PLATFORM,
                        user_key=row.user_key,
                        text=row.question,
                        groups=tuple(row.groups or ()),
                        private=row.private,
                    )
                )
                written = await scratch.get_turn(answer.turn_id)
                support = [s for s in (written.support if written else []) or [] if s.get("claims", True)]
                rows.append(
                    {
                        "claims": len(support),
                        "unsupported": sum(1 for s in support if not s.get("supported")),
                        "turn_id": row.id,
                        "answer": answer.text,
                        "outcome": answer.outcome,
                        "cited": [s.doc_id for s in answer.sources],
                        "gold": gold_documents(row, record),
                        "reference": _reference(record),
                        "should_not_answer": record.get("verdict") == "should_not_answer",
                        "corrected": bool(record.get("correction")),
                    }
                )
            guard_results = []
            for guard in guards:
                answer = await bot.ask(
                    IncomingMessage(platform=EVAL_PLATFORM, user_key="eval:guard", text=guard["question"])
                )
                guard_results.append(evaluate.guard_passed(guard, answer.text, [s.doc_id for s in answer.sources]))
        finally:
            await scratch.close()
        with open(folder / f"answers-{label}.jsonl", "w", encoding="utf-8") as f:  # noqa: ASYNC230
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return rows, guard_results


def _reference(record: dict[str, Any]) -> str:
    """What the lead says the answer is: the correction, or the answer they approved."""
    if record.get("verdict") == "should_not_answer":
        return ""
    if record.get("correction"):
        return str(record["correction"])
    if (record.get("score") or 0) >= 4 or record.get("verdict") == "correct":
        return str(record.get("answer") or "")
    return ""


def gold_documents(row: TurnRow, record: dict[str, Any]) -> list[str]:
    """The document the answer should cite: the one the approved answer cited; for a correction,
    the served passage closest to the lead's text."""
    if record.get("correction"):
        best = max(
            row.retrieved or [],
            default=None,
            key=lambda c: evaluate.token_f1(c.get("text") or "", record["correction"]),
        )
        return [best["doc_id"]] if best else []
    # `cited` holds chunk ids ("it/vpn.md#2"); the served chunks say which document each is from.
    doc_of = {str(c.get("chunk_id")): str(c.get("doc_id") or "") for c in row.retrieved or [] if isinstance(c, dict)}
    docs = {doc_of.get(str(c)) or str(c).rsplit("#", 1)[0] for c in row.cited or [] if isinstance(c, str) and c}
    return sorted(d for d in docs if d)


def _read_guards(path: Path | None) -> list[dict[str, Any]]:
    if not path:
        return []
    guards = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for g in guards:
        if not g.get("question"):
            raise ValueError(f"guard question without a question in {path}")
    return guards
