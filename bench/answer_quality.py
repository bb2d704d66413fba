"""How good are Deskmate's answers against gold answers?

Ingests the corpus into a fresh embedded store, answers every question through the real
orchestrator (retrieval, prompt, the local model, citations) and scores each answer against the
gold answer(s): token F1, ROUGE-L, the share of answers citing a gold document, and, for
questions marked unanswerable, how often Deskmate says it does not know.

    python bench/answer_quality.py --corpus ../shared/bench-data/emanual_smart_tv/corpus.jsonl \
        --questions ../shared/bench-data/emanual_smart_tv/qa.dev.jsonl --limit 100

`--no-retrieval` answers from the model alone; `--adapter FILE` puts a GGUF LoRA on the model.
The retraining issue runs it for RAG-only, fine-tuned-only and fine-tuned + RAG.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    add_corpus_arguments,
    corpus_orchestrator,
    gold_ids,
    print_table,
    question_text,
    read_jsonl,
    turn_support,
    write_result,
)

from bot.answering.generation import Generator, LlamaCppGenerator
from bot.answering.messages import IncomingMessage
from finetune.evaluate import best_of, rouge_l, token_f1
from finetune.model import base_gguf_path


def references(question: dict[str, Any]) -> list[str]:
    """Gold answers under either name the bench formats use."""
    refs = question.get("reference_answers") or question.get("answer") or []
    refs = [refs] if isinstance(refs, str) else refs
    return [r if isinstance(r, str) else str(r.get("text", "")) for r in refs if r]


def answerability(question: dict[str, Any]) -> str:
    """The turn's label, upper-case: MTRAG writes it as a list (`["UNANSWERABLE"]`), other sets
    as a string or not at all (""). Read as a string, the list never matched: before this, no
    MTRAG turn counted as unanswerable and those turns were scored against their references."""
    value = question.get("answerability") or ""
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).strip().upper()


def unanswerable(question: dict[str, Any]) -> bool:
    return answerability(question) == "UNANSWERABLE"


def answerable(question: dict[str, Any]) -> bool:
    """A turn whose documents hold the answer: labelled so, or a set without labels."""
    return answerability(question) in ("", "ANSWERABLE")


async def answer_all(args: argparse.Namespace, questions: list[dict], generator: Generator) -> dict:
    async with corpus_orchestrator(args, generator, use_retrieval=not args.no_retrieval) as (bot, ledger):
        rows = []
        started = time.perf_counter()
        for i, q in enumerate(questions, start=1):
            answer = await bot.ask(
                IncomingMessage(platform="bench", user_key="bench:user", text=question_text(q), thread_id=str(i))
            )
            refs = references(q)
            gold = set(gold_ids(q))
            turn = await ledger.get_turn(answer.turn_id)
            rows.append(
                {
                    **turn_support(turn),
                    "answerability_score": getattr(turn, "answerability", None),
                    "confidence": getattr(turn, "confidence", None),
                    "answer": answer.text,
                    "outcome": answer.outcome,
                    "f1": best_of(token_f1, answer.text, refs) if refs else None,
                    "rouge_l": best_of(rouge_l, answer.text, refs) if refs else None,
                    "cites_gold": bool(gold & {s.doc_id for s in answer.sources}) if gold else None,
                    "answerability": answerability(q) or "ANSWERABLE",
                    "unanswerable": unanswerable(q),
                    "answerable": answerable(q),
                }
            )
            if i % 10 == 0:
                print(f"  {i}/{len(questions)} answered ({time.perf_counter() - started:.0f} s)", flush=True)
    scored = [r for r in rows if r["f1"] is not None and not r["unanswerable"]]
    with_gold = [r for r in rows if r["cites_gold"] is not None]
    unans = [r for r in rows if r["unanswerable"]]
    answerable_rows = [r for r in rows if r["answerable"]]
    mean = lambda xs: round(statistics.fmean(xs), 4) if xs else None
    return {
        "questions": len(rows),
        "token_f1": mean([r["f1"] for r in scored]),
        "rouge_l": mean([r["rouge_l"] for r in scored]),
        "gold_citation_rate": mean([float(r["cites_gold"]) for r in with_gold]),
        "unknown_rate_answerable": mean([float(r["outcome"] == "unknown") for r in scored]),
        "unknown_rate_unanswerable": mean([float(r["outcome"] == "unknown") for r in unans]),
        "answered_rate_answerable": mean([float(r["outcome"] == "answered") for r in answerable_rows]),
        "turns_by_answerability": dict(Counter(r["answerability"] for r in rows)),
        # Of the sentences that make a claim: supported by the passages in what was first
        # written (the model's hallucination rate, or the quoting's), and in what was sent.
        "supported_written": _share(
            sum(r["supported"] for r in rows if r["outcome"] == "answered"),
            sum(r["claims"] for r in rows if r["outcome"] == "answered"),
        ),
        "answers_with_unsupported": mean([float(r["unsupported"] > 0) for r in rows if r["outcome"] == "answered"]),
        "strategy": Counter(r["strategy"] for r in rows).most_common(1)[0][0] if rows else "",
        "answerable_min_sweep": answerable_min_sweep(unans, answerable_rows),
        "seconds": round(time.perf_counter() - started, 1),
        "answers": rows[: args.keep_answers],
    }


def answerable_min_sweep(unans: list[dict], answerable_rows: list[dict]) -> list[dict[str, float | None]]:
    """What other values of DESKMATE_ANSWERABLE_MIN would have done on these turns, read off
    each turn's recorded answerability (a turn declined for low retrieval confidence has none
    and stays declined): the trade-off an operator calibrates on, not a value to copy."""

    def answered(row: dict, threshold: float) -> bool:
        score = row["answerability_score"]
        return row["outcome"] == "answered" if score is None else score >= threshold

    def rate(rows: list[dict], threshold: float, want: bool) -> float | None:
        return round(statistics.fmean(answered(r, threshold) == want for r in rows), 4) if rows else None

    return [
        {
            "answerable_min": t / 100,
            "unknown_rate_unanswerable": rate(unans, t / 100, False),
            "answered_rate_answerable": rate(answerable_rows, t / 100, True),
        }
        for t in range(45, 71)
    ]


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def run(args: argparse.Namespace) -> dict:
    questions = read_jsonl(args.questions)[: args.limit or None]
    generator = LlamaCppGenerator(Path(args.gguf) if args.gguf else base_gguf_path(), n_threads=args.threads)
    if args.adapter:
        await generator.use_adapter(Path(args.adapter).stem, Path(args.adapter))
    result = await answer_all(args, questions, generator)
    await generator.close()
    label = ("fine-tuned" if args.adapter else "base") + (" only" if args.no_retrieval else " + RAG")
    return {
        "corpus": str(args.corpus),
        "questions_file": str(args.questions),
        "setup": label,
        "adapter": args.adapter or "",
        "retrieval": not args.no_retrieval,
        **result,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--adapter", help="GGUF LoRA file to put on the base model")
    parser.add_argument("--gguf", help="another base GGUF (default: the bundled SmolLM2)")
    parser.add_argument("--no-retrieval", action="store_true", help="answer from the model alone")
    parser.add_argument("--limit", type=int, default=0, help="first N questions only (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    add_corpus_arguments(parser)
    parser.add_argument(
        "--keep-answers",
        type=int,
        default=0,
        help="answers kept in the JSON (they quote the bench corpus: keep them out of the repo)",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    result = asyncio.run(run(args))
    print_table(
        ["setup", "questions", "token F1", "ROUGE-L", "gold cited", "IDK (unanswerable)", "answered (answerable)"],
        [
            [
                result["setup"],
                result["questions"],
                result["token_f1"],
                result["rouge_l"],
                result["gold_citation_rate"],
                result["unknown_rate_unanswerable"],
                result["answered_rate_answerable"],
            ]
        ],
    )
    name = f"answer_quality_{Path(args.corpus).parent.name or 'corpus'}"
    print(f"wrote {write_result(name, result, args.out)}")


if __name__ == "__main__":
    main()
