"""How fast is retrieval: ingest throughput, re-ingest, and search latency at 10k and 100k chunks?

Three questions, each answered next to a baseline measured in the same run:

1. Ingest throughput of the real corpus through Deskmate's ingestor (chunk, embed, write,
   index) as a ratio to bare `SentenceTransformer.encode` on the same chunk texts.
2. Re-ingest of the unchanged corpus, as a speed-up over the first ingest.
3. Search latency p50/p99 on the embedded store holding N chunks (default 10k and 100k), with an
   access-group filter: the store query alone (query vector given) and the whole search
   (query embedding included). Embedding 100k real passages would take most of an hour on two
   cores, so the large stores are filled with synthetic chunks: texts recombined from the
   corpus's own sentences and vectors mixed from its real embeddings, which keeps the
   vocabulary and the vector distribution realistic for the indexes.

    python bench/retrieval_speed.py --corpus ../shared/bench-data/emanual_smart_tv/corpus.jsonl \
        --questions ../shared/bench-data/emanual_smart_tv/qa.dev.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import percentile, print_table, read_jsonl, write_result

from retrieval.backends import open_store
from retrieval.cache import MemoryCache
from retrieval.chunking import ChunkingConfig, Document, chunk_document
from retrieval.embeddings import Embedder
from retrieval.ingest import Ingestor
from retrieval.records import Chunk, DocumentRecord, DocumentWrite
from retrieval.search import Searcher

GROUPS = ["everyone", "hr", "finance", "it-admin", "legal", "sales"]
READER = ["finance", "sales"]  # the reader sees everyone + these two: about half the chunks


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure_ingest(corpus: list[dict], embedder: Embedder, chunking: ChunkingConfig) -> dict:
    docs = [Document(str(d["id"]), str(d.get("title") or ""), d["text"], kind="text") for d in corpus]
    texts = [c.search_text for d in docs for c in chunk_document(d, chunking)]
    embedder.embed(texts[:64])  # warm the model so neither side pays for loading it
    started = time.perf_counter()
    embedder._load().encode(
        texts, batch_size=embedder.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    bare = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"lancedb://{tmp}/kb", dim=embedder.dim)
        ingestor = Ingestor(store, embedder, chunking=chunking)
        started = time.perf_counter()
        first = await ingestor.ingest_documents(docs, finish=True)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        again = await ingestor.ingest_documents(docs, finish=True)
        again_s = time.perf_counter() - started
        await store.close()
    assert first.chunks_embedded == len(texts) and again.chunks_embedded == 0
    return {
        "chunks": len(texts),
        "bare_encode_seconds": round(bare, 2),
        "ingest_seconds": round(first_s, 2),
        "bare_chunks_per_second": round(len(texts) / bare, 1),
        "ingest_chunks_per_second": round(len(texts) / first_s, 1),
        "throughput_ratio": round(bare / first_s, 3),
        "reingest_seconds": round(again_s, 3),
        "reingest_speedup": round(first_s / again_s, 1),
        "peak_rss_mb_after_ingest": round(peak_rss_mb(), 0),
    }


def synthetic_writes(n_chunks: int, sentences: list[str], vectors: np.ndarray, seed: int) -> list[DocumentWrite]:
    """`n_chunks` chunks in documents of 10, with realistic words and vectors."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    writes = []
    per_doc = 10
    for d in range(n_chunks // per_doc):
        doc_id = f"synthetic/{d}.md"
        groups = (GROUPS[d % len(GROUPS)],)
        a = rng.integers(0, len(vectors), per_doc)
        b = rng.integers(0, len(vectors), per_doc)
        mixed = vectors[a] + 0.5 * vectors[b] + rng.normal(0, 0.02, (per_doc, vectors.shape[1]))
        mixed = (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
        chunks = [
            Chunk(
                id=f"{doc_id}#{i}",
                doc_id=doc_id,
                title=f"Synthetic {d}",
                heading="",
                url="",
                groups=groups,
                text=" ".join(pick.sample(sentences, 3)),
                position=i,
            )
            for i in range(per_doc)
        ]
        record = DocumentRecord(doc_id, f"Synthetic {d}", "", groups, str(d), doc_id, per_doc, "")
        writes.append(DocumentWrite(record, chunks, mixed))
    return writes


async def measure_search(
    size: int,
    corpus_texts: list[str],
    corpus_vectors: np.ndarray,
    questions: list[str],
    embedder: Embedder,
    args: argparse.Namespace,
) -> dict:
    sentences = [s.strip() for t in corpus_texts for s in t.split(".") if len(s.strip()) > 20]
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"lancedb://{tmp}/kb", dim=embedder.dim)
        started = time.perf_counter()
        writes = synthetic_writes(size, sentences, corpus_vectors, seed=size)
        for i in range(0, len(writes), 500):
            await store.replace_documents(writes[i : i + 500])
        await store.optimize()
        build_s = time.perf_counter() - started
        indexes = await store.index_info()
        searcher = Searcher(store, embedder, MemoryCache(), candidates=args.candidates)
        vectors = embedder.embed(questions)
        # Warm up: the first queries open files and fill the OS cache.
        for q, v in zip(questions[:20], vectors[:20], strict=True):
            await store.hybrid(q, v, 5, ["everyone", *READER], 0.5, candidates=args.candidates)
        store_ms, whole_ms = [], []
        for q, v in zip(questions, vectors, strict=True):
            t0 = time.perf_counter()
            ranked = await store.hybrid(q, v, 5, ["everyone", *READER], 0.5, candidates=args.candidates)
            store_ms.append((time.perf_counter() - t0) * 1000)
            assert all(set(h.chunk.groups) & {"everyone", *READER} for h in ranked.hits)
        # Each question once more through the whole search, with a fresh text so neither the
        # query-embedding cache nor the result cache answers it.
        for i, q in enumerate(questions):
            t0 = time.perf_counter()
            await searcher.search(f"{q} ({i})", groups=READER, k=5)
            whole_ms.append((time.perf_counter() - t0) * 1000)
        await store.close()
    return {
        "chunks": size,
        "build_seconds": round(build_s, 1),
        "indexes": indexes,
        "queries": len(questions),
        "store_query_p50_ms": round(statistics.median(store_ms), 2),
        "store_query_p99_ms": round(percentile(store_ms, 99), 2),
        "whole_search_p50_ms": round(statistics.median(whole_ms), 2),
        "whole_search_p99_ms": round(percentile(whole_ms, 99), 2),
    }


async def run(args: argparse.Namespace) -> dict:
    corpus = read_jsonl(args.corpus)
    questions = [q["question"] for q in read_jsonl(args.questions)][: args.queries]
    embedder = Embedder(args.model or "")
    chunking = ChunkingConfig(args.chunk_size, args.chunk_overlap)
    ingest = await measure_ingest(corpus, embedder, chunking)
    texts = [
        c.search_text
        for d in corpus
        for c in chunk_document(Document(str(d["id"]), str(d.get("title") or ""), d["text"], kind="text"), chunking)
    ]
    vectors = embedder.embed(texts)
    search = [await measure_search(size, texts, vectors, questions, embedder, args) for size in args.sizes]
    return {
        "corpus": str(args.corpus),
        "model": embedder.name,
        "ingest": ingest,
        "search": search,
        "reader_groups": ["everyone", *READER],
        "peak_rss_mb": round(peak_rss_mb(), 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--questions", type=Path, required=True, help="query texts to time")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model", default="")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--chunk-size", type=int, default=800)
    parser.add_argument("--chunk-overlap", type=int, default=100)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    ing = result["ingest"]
    print(
        f"ingest: {ing['chunks']} chunks in {ing['ingest_seconds']} s "
        f"({ing['ingest_chunks_per_second']}/s) vs bare encode {ing['bare_encode_seconds']} s: "
        f"ratio {ing['throughput_ratio']} (target >= 0.85)"
    )
    print(f"re-ingest unchanged: {ing['reingest_seconds']} s, {ing['reingest_speedup']}x faster (target >= 20x)")
    print(f"peak RSS after ingest: {ing['peak_rss_mb_after_ingest']} MB")
    print_table(
        ["chunks", "store p50 ms", "store p99 ms", "search p50 ms", "search p99 ms", "indexes"],
        [
            [
                s["chunks"],
                s["store_query_p50_ms"],
                s["store_query_p99_ms"],
                s["whole_search_p50_ms"],
                s["whole_search_p99_ms"],
                " ".join(s["indexes"]),
            ]
            for s in result["search"]
        ],
    )
    print("targets at 100k: store query p50 <= 10 ms, whole search p50 <= 30 ms (with a group filter)")
    print(f"wrote {write_result('retrieval_speed', result, args.out)}")


if __name__ == "__main__":
    main()
