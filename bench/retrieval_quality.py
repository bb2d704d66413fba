"""How well does retrieval find the documents that hold the answer?

Ingests a corpus into a fresh embedded store and scores dense-only, lexical-only and
Deskmate's hybrid ranking, in one run, at the document level: recall@5, nDCG@10, MRR@10.

    python bench/retrieval_quality.py --corpus ../shared/bench-data/emanual_smart_tv/corpus.jsonl \
        --questions ../shared/bench-data/emanual_smart_tv/qa.dev.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path

from _common import gold_ids, history_of, print_table, read_jsonl, write_result

from retrieval.backends import open_store
from retrieval.chunking import ChunkingConfig, Document
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.search import Searcher, earlier_questions


def doc_ranking(hits) -> list[str]:
    ranking: list[str] = []
    for hit in hits:
        if hit.chunk.doc_id not in ranking:
            ranking.append(hit.chunk.doc_id)
    return ranking


def scores(ranking: list[str], gold: set[str]) -> tuple[float, float, float]:
    recall5 = len(gold & set(ranking[:5])) / len(gold)
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranking[:10]) if d in gold)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    mrr = next((1 / (i + 1) for i, d in enumerate(ranking[:10]) if d in gold), 0.0)
    return recall5, dcg / idcg, mrr


async def run(args: argparse.Namespace) -> dict:
    corpus = read_jsonl(args.corpus)
    questions = read_jsonl(args.questions)
    answerable = [q for q in questions if gold_ids(q)]
    unanswerable = [q for q in questions if not gold_ids(q)]
    embedder = Embedder(args.model or "")
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"lancedb://{tmp}/kb", dim=embedder.dim)
        ingestor = Ingestor(store, embedder, chunking=ChunkingConfig(args.chunk_size, args.chunk_overlap))
        docs = [Document(str(d["id"]), str(d.get("title") or ""), d["text"], kind="text") for d in corpus]
        started = time.perf_counter()
        report = await ingestor.ingest_documents(docs, finish=True)
        ingest_s = time.perf_counter() - started
        searcher = Searcher(store, embedder, alpha=args.alpha, candidates=args.candidates)
        modes = ["dense", "lexical", "hybrid"]
        totals = {m: [0.0, 0.0, 0.0] for m in modes}
        confidences: dict[str, list[float]] = {"answerable": [], "unanswerable": []}
        for q in answerable + unanswerable:
            earlier = earlier_questions(history_of(q), turns=args.history_turns)
            gold = set(gold_ids(q))
            for mode in modes:
                result = await searcher.search(q["question"], k=args.chunks, mode=mode, earlier=earlier)
                if mode == "hybrid":
                    confidences["answerable" if gold else "unanswerable"].append(result.confidence)
                if gold:
                    for i, value in enumerate(scores(doc_ranking(result.hits), gold)):
                        totals[mode][i] += value
        await store.close()
    n = len(answerable)
    figures = {m: {"recall@5": t[0] / n, "ndcg@10": t[1] / n, "mrr@10": t[2] / n} for m, t in totals.items()}
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    return {
        "corpus": str(args.corpus),
        "questions": str(args.questions),
        "documents": len(corpus),
        "chunks": report.chunks_embedded,
        "answerable_questions": n,
        "unanswerable_questions": len(unanswerable),
        "ingest_seconds": round(ingest_s, 1),
        "config": {
            "chunk_size": args.chunk_size,
            "chunk_overlap": args.chunk_overlap,
            "alpha": args.alpha,
            "candidates": args.candidates,
            "history_turns": args.history_turns,
            "model": embedder.name,
        },
        "results": figures,
        "mean_confidence": {k: mean(v) for k, v in confidences.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", default="")
    parser.add_argument("--chunk-size", type=int, default=800)
    parser.add_argument("--chunk-overlap", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--chunks", type=int, default=30, help="chunks fetched to rank 10 documents")
    parser.add_argument("--history-turns", type=int, default=1)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(
        f"{result['documents']} documents, {result['chunks']} chunks, {result['answerable_questions']} "
        f"answerable questions (ingest {result['ingest_seconds']} s)"
    )
    print_table(
        ["ranking", "recall@5", "nDCG@10", "MRR@10"],
        [[m, f["recall@5"], f["ndcg@10"], f["mrr@10"]] for m, f in result["results"].items()],
    )
    print(f"mean confidence: {result['mean_confidence']}")
    name = f"retrieval_quality_{Path(args.corpus).parent.name or 'corpus'}"
    print(f"wrote {write_result(name, result, args.out)}")


if __name__ == "__main__":
    main()
