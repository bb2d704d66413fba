"""Does Deskmate answer as the person asking?

Ingests the example handbook (`examples/kb`) and imports the example directory
(`examples/users.csv`) into a fresh embedded store in a temporary folder, then asks every
question of `examples/eval/personal.jsonl` through the real orchestrator AS its asker: the
`IncomingMessage` carries the asker's email as user key, their name and their access groups from
the directory, as the Slack, Teams and web channels build it. The same question is asked by
people whose right answers differ (25 leave days in Lisbon, 28 in Berlin, 20 PTO days in Austin).

For each pair: whether every expected string is in the answer (`fact_present`), whether another
asker's expected strings are in it too (`other_fact`: an answer that lists every country, or the
wrong one), whether the gold document was cited and retrieved, whether the asker's deciding
fact ("location: Lisbon") was among the facts the orchestrator put in the prompt (the ledger's
`user_facts`), and whether Deskmate said it does not know.

    python bench/personal_answers.py            # all pairs, the bundled SmolLM2
    python bench/personal_answers.py --limit 10 --adapter adapter.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import REPO, add_answer_arguments, bench_orchestrator, print_table, read_jsonl, turn_support, write_result

from bot.answering.generation import Generator, LlamaCppGenerator
from bot.answering.messages import IncomingMessage
from finetune.model import base_gguf_path
from retrieval.ingest import Ingestor
from retrieval.records import UserProfile
from retrieval.users import import_users, load_directory, profile_facts

KB = REPO / "examples" / "kb"
USERS = REPO / "examples" / "users.csv"
PAIRS = REPO / "examples" / "eval" / "personal.jsonl"
TOPICS = ["leave", "expenses", "devices", "access", "contacts"]

#: How `profile_facts` words each directory column, to find the sentence a pair's fact became.
FACT_WORDING = {
    "location": "works from",
    "department": "department",
    "role": "role is",
    "devices": "uses this device",
    "groups": "groups",
}


def contains_all(text: str, expected: list[str]) -> bool:
    lowered = text.lower()
    return all(e.lower() in lowered for e in expected)


def deciding_facts(pair: dict[str, Any]) -> list[tuple[str, str]]:
    """`"groups: hr; location: Lisbon"` as [("groups", "hr"), ("location", "Lisbon")]."""
    parts = [p.split(":", 1) for p in pair["fact"].split(";") if ":" in p]
    return [(k.strip().lower(), v.strip()) for k, v in parts]


def facts_used(pair: dict[str, Any], profile: UserProfile, message: IncomingMessage, prompt_facts: list[str]) -> bool:
    """Whether every fact that decides this pair reached the turn: a group as the reader's access
    groups (the search filters on them), any other column as its sentence in the prompt's facts."""
    for key, value in deciding_facts(pair):
        if key == "groups":
            if value.lower() not in message.groups:
                return False
            continue
        sentences = [
            f for f in profile_facts(profile) if FACT_WORDING.get(key, key) in f and value.lower() in f.lower()
        ]
        if not sentences or not any(s in prompt_facts for s in sentences):
            return False
    return True


async def answer_all(args: argparse.Namespace, pairs: list[dict[str, Any]], generator: Generator) -> list[dict]:
    async def handbook(store: Any, embedder: Any) -> None:
        report = await Ingestor(store, embedder).ingest_path(KB)
        if not report.ok:
            raise SystemExit(f"the example handbook did not ingest: {report.failed}")
        await import_users(load_directory(USERS).profiles, store, embedder)

    async with bench_orchestrator(args, generator, handbook) as (bot, ledger, store):
        rows = []
        started = time.perf_counter()
        for i, pair in enumerate(pairs, start=1):
            profile = await store.get_user(pair["user"].strip().lower())
            if profile is None:
                raise SystemExit(f"{pair['id']}: {pair['user']} is not in {USERS}")
            # As the channels build it (bot/channels/web.py, common.find_person): a private chat.
            message = IncomingMessage(
                platform="bench",
                user_key=profile.key,
                user_name=profile.name,
                text=pair["question"],
                channel="bench",
                thread_id=pair["id"],
                groups=profile.groups,
                private=True,
            )
            answer = await bot.ask(message)
            turn = await ledger.get_turn(answer.turn_id)
            prompt_facts = list(turn.user_facts or []) if turn else []
            retrieved = [c.get("doc_id") for c in (turn.retrieved or [])] if turn else []
            cited = [s.doc_id for s in answer.sources]
            rows.append(
                {
                    **turn_support(turn),
                    "id": pair["id"],
                    "topic": pair["topic"],
                    "user": profile.key,
                    "question": pair["question"],
                    "expect": pair["expect"],
                    "fact": pair["fact"],
                    "doc_id": pair["doc_id"],
                    "outcome": answer.outcome,
                    "answer": answer.text,
                    "cited": cited,
                    "retrieved": retrieved,
                    "user_facts": prompt_facts,
                    "fact_present": contains_all(answer.text, pair["expect"]),
                    "cites_gold": pair["doc_id"] in cited,
                    "retrieved_gold": pair["doc_id"] in retrieved,
                    "facts_used": facts_used(pair, profile, message, prompt_facts),
                    "seconds": round(turn.latency_ms.get("total", 0) / 1000, 2) if turn else None,
                    "confidence": getattr(turn, "confidence", None),
                    "answerability": getattr(turn, "answerability", None),
                }
            )
            if i % 10 == 0:
                print(f"  {i}/{len(pairs)} answered ({time.perf_counter() - started:.0f} s)", flush=True)
    mark_other_askers(rows)
    return rows


def mark_other_askers(rows: list[dict]) -> None:
    """`other_fact`: the answer holds what a different asker of the same question should have
    been told (and their right answer differs from this one's)."""
    by_question: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_question[row["question"]].append(row)
    for row in rows:
        others = [o for o in by_question[row["question"]] if o is not row and o["expect"] != row["expect"]]
        row["other_fact"] = any(contains_all(row["answer"], o["expect"]) for o in others)
        row["only_theirs"] = row["fact_present"] and not row["other_fact"]


def summary(rows: list[dict]) -> dict[str, Any]:
    claims = sum(r["claims"] for r in rows)
    rate = lambda key: round(statistics.fmean(float(bool(r[key])) for r in rows), 4) if rows else None
    return {
        "pairs": len(rows),
        "fact_present": rate("fact_present"),
        "only_theirs": rate("only_theirs"),
        "other_fact": rate("other_fact"),
        "cites_gold": rate("cites_gold"),
        "retrieved_gold": rate("retrieved_gold"),
        "facts_used": rate("facts_used"),
        "unknown": round(statistics.fmean(float(r["outcome"] == "unknown") for r in rows), 4) if rows else None,
        "supported_written": round(sum(r["supported"] for r in rows) / claims, 4) if claims else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pairs = read_jsonl(args.questions)[: args.limit or None]
    generator = LlamaCppGenerator(Path(args.gguf) if args.gguf else base_gguf_path(), n_threads=args.threads)
    if args.adapter:
        await generator.use_adapter(Path(args.adapter).stem, Path(args.adapter))
    started = time.perf_counter()
    try:
        rows = await answer_all(args, pairs, generator)
    finally:
        await generator.close()
    seconds = round(time.perf_counter() - started, 1)
    topics = [t for t in TOPICS if any(r["topic"] == t for r in rows)]
    topics += sorted({r["topic"] for r in rows} - set(topics))
    for row in rows:
        row["answer"] = row["answer"][:300]
    return {
        "questions_file": str(args.questions),
        "knowledge_base": str(KB.relative_to(REPO)),
        "users": str(USERS.relative_to(REPO)),
        "setup": ("fine-tuned" if args.adapter else "base") + " + RAG",
        "strategy": args.strategy,
        "model": generator.model,
        "adapter": args.adapter or "",
        "passages": args.passages,
        "max_tokens": args.max_tokens,
        "seconds": seconds,
        "overall": summary(rows),
        "by_topic": {t: summary([r for r in rows if r["topic"] == t]) for t in topics},
        "pairs": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=PAIRS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--adapter", help="GGUF LoRA file to put on the base model")
    parser.add_argument("--gguf", help="another base GGUF (default: the bundled SmolLM2)")
    parser.add_argument("--limit", type=int, default=0, help="first N pairs only (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passages", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--model", default="", help="embedding model")
    add_answer_arguments(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    result = asyncio.run(run(args))
    headers = ["topic", "pairs", "fact present", "only theirs", "other's fact", "gold cited"]
    headers += ["gold retrieved", "facts in prompt", "unknown"]
    keys = [
        "pairs",
        "fact_present",
        "only_theirs",
        "other_fact",
        "cites_gold",
        "retrieved_gold",
        "facts_used",
        "unknown",
    ]
    table = [[topic, *(figures[k] for k in keys)] for topic, figures in result["by_topic"].items()]
    table.append(["overall", *(result["overall"][k] for k in keys)])
    print_table(headers, table)
    print(f"{result['setup']}, {result['seconds']} s")
    print(f"wrote {write_result('personal_answers', result, args.out)}")


if __name__ == "__main__":
    main()
