"""How much does answering add on top of retrieval, and how fast is the local model?

Four figures, each next to its baseline in the same run:

1. Orchestrator overhead (history, retrieval, prompt, ledger writes, caches: everything but
   generation) p50/p99 at 10k and 100k chunks, with a generator that answers instantly
   (`echo://`), next to bare `Searcher.search` on the same store and questions.
2. Answer-cache hit p50: the same question asked again.
3. The local generator's time to first token and tokens/s next to bare `llama_cpp.Llama` on the
   same GGUF and prompts.
4. Peak memory (VmHWM) of a real `deskmate serve` process with the local model, after answering.

    python bench/answer_path.py --corpus ../shared/bench-data/emanual_smart_tv/corpus.jsonl \
        --questions ../shared/bench-data/emanual_smart_tv/qa.dev.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import (
    REPO,
    free_port,
    percentile,
    print_table,
    read_jsonl,
    stop_server,
    wait_healthy,
    write_result,
)
from retrieval_speed import READER, synthetic_writes

from bot.answering.generation import EchoGenerator, LlamaCppGenerator
from bot.answering.messages import IncomingMessage
from bot.answering.orchestrator import Orchestrator, TurnPolicy
from bot.answering.prompts import build_messages
from bot.ledger.ledger import Ledger
from finetune.model import base_gguf_path
from retrieval.backends import open_store
from retrieval.cache import MemoryCache
from retrieval.chunking import Document, chunk_document
from retrieval.embeddings import Embedder
from retrieval.search import Searcher


def ms_stats(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 2), "p99_ms": round(percentile(values, 99), 2)}


async def measure_overhead(size: int, texts: list[str], vectors, questions: list[str], embedder: Embedder) -> dict:
    sentences = [s.strip() for t in texts for s in t.split(".") if len(s.strip()) > 20]
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"lancedb://{tmp}/kb", dim=embedder.dim)
        writes = synthetic_writes(size, sentences, vectors, seed=size)
        for i in range(0, len(writes), 500):
            await store.replace_documents(writes[i : i + 500])
        await store.optimize()
        ledger = Ledger(f"sqlite:///{tmp}/ledger.db", Path(tmp) / "spool.jsonl")
        await ledger.migrate()
        cache = MemoryCache()
        searcher = Searcher(store, Embedder(embedder.model_ref, cache=cache), cache)
        searcher.embedder._model = embedder._load()
        bot = Orchestrator(
            searcher, EchoGenerator(), ledger, cache, TurnPolicy(rate_limit_per_minute=0, history_turns=3)
        )
        searcher.min_confidence = 0.0  # every question goes through prompt and generation
        for q in questions[:10]:  # warm up both paths
            await searcher.search(f"warm {q}", groups=READER, k=3)
            await bot.ask(
                IncomingMessage(platform="bench", user_key="bench:warm", text=f"warm {q}", groups=tuple(READER))
            )
        bare, turn, hit = [], [], []
        for i, q in enumerate(questions):
            t0 = time.perf_counter()
            await searcher.search(f"{q} (bare {i})", groups=READER, k=3)
            bare.append((time.perf_counter() - t0) * 1000)
            message = IncomingMessage(
                platform="bench", user_key=f"bench:{i}", text=f"{q} (turn {i})", groups=tuple(READER), thread_id=f"t{i}"
            )
            t0 = time.perf_counter()
            first = await bot.ask(message)
            turn.append((time.perf_counter() - t0) * 1000)
            if first.outcome != "answered":
                continue  # only answers are cached (an echoed passage can read like "I don't know")
            t0 = time.perf_counter()
            again = await bot.ask(
                IncomingMessage(
                    platform="bench",
                    user_key=f"bench:{i}",
                    text=f"{q} (turn {i})",
                    groups=tuple(READER),
                    thread_id=f"u{i}",
                )
            )
            elapsed = (time.perf_counter() - t0) * 1000
            assert again.cache_hit
            hit.append(elapsed)
        await ledger.close()
        await store.close()
    return {
        "chunks": size,
        "bare_retrieval": ms_stats(bare),
        "turn": ms_stats(turn),
        "overhead_ratio_p50": round(statistics.median(turn) / statistics.median(bare), 2),
        "answer_cache_hit": {**ms_stats(hit), "hits": len(hit)},
    }


async def measure_generation(questions: list[str], texts: list[str], threads: int, max_tokens: int) -> dict:
    from llama_cpp import Llama

    from retrieval.records import Chunk, Hit

    path = base_gguf_path()
    prompts = []
    for i, q in enumerate(questions):
        hits = [
            Hit(Chunk(f"c{j}", f"d{j}", f"Section {j}", "", "", ("everyone",), texts[(i * 3 + j) % len(texts)], 0), 1.0)
            for j in range(3)
        ]
        prompts.append(build_messages(q, hits)[0])
    bare = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, verbose=False)
    ours = LlamaCppGenerator(path, n_threads=threads)
    await ours.load()
    results: dict[str, dict[str, list[float]]] = {"bare": {"ttft": [], "tps": []}, "deskmate": {"ttft": [], "tps": []}}
    for messages in prompts:
        # Alternate the two so that machine noise hits both alike.
        t0 = time.perf_counter()
        first, n = None, 0
        for chunk in bare.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True
        ):
            if chunk["choices"][0].get("delta", {}).get("content"):
                first = first or time.perf_counter()
                n += 1
        end = time.perf_counter()
        results["bare"]["ttft"].append((first - t0) * 1000)
        results["bare"]["tps"].append((n - 1) / (end - first) if n > 1 else 0.0)
        t0 = time.perf_counter()
        first, n = None, 0
        async for _piece in ours.stream(messages, max_tokens=max_tokens):
            first = first or time.perf_counter()
            n += 1
        end = time.perf_counter()
        results["deskmate"]["ttft"].append((first - t0) * 1000)
        results["deskmate"]["tps"].append((n - 1) / (end - first) if n > 1 else 0.0)
    await ours.close()
    summary = {
        name: {
            "ttft_p50_ms": round(statistics.median(r["ttft"]), 1),
            "tokens_per_second": round(statistics.median(r["tps"]), 1),
        }
        for name, r in results.items()
    }
    summary["tps_ratio"] = round(summary["deskmate"]["tokens_per_second"] / summary["bare"]["tokens_per_second"], 3)
    summary["ttft_ratio"] = round(summary["bare"]["ttft_p50_ms"] / summary["deskmate"]["ttft_p50_ms"], 3)
    summary["prompts"] = len(prompts)
    return summary


def measure_serve_memory(questions: list[str]) -> dict:
    """Start `deskmate serve` on the example handbook with the local model, ask, read VmHWM."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DESKMATE_DATA_DIR": tmp, "HF_HUB_OFFLINE": "1"}
        deskmate = str(Path(sys.executable).parent / "deskmate")
        subprocess.run([deskmate, "ingest", str(REPO / "examples/kb")], env=env, check=True, capture_output=True)
        subprocess.run(
            [deskmate, "users", "import", str(REPO / "examples/users.csv")], env=env, check=True, capture_output=True
        )
        port = free_port()
        proc = subprocess.Popen(
            [deskmate, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, seconds=120)
            for q in questions:
                body = json.dumps({"user": "lukas.becker@northwind.example", "question": q}).encode()
                request = urllib.request.Request(
                    f"{url}/api/ask", data=body, method="POST", headers={"Content-Type": "application/json"}
                )
                urllib.request.urlopen(request, timeout=300).read()
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        finally:
            stop_server(proc)
            proc.wait(timeout=30)
    return {"peak_rss_mb": round(peak_kb / 1024), "questions": len(questions)}


async def run(args: argparse.Namespace) -> dict:
    corpus = read_jsonl(args.corpus)
    questions = [q["question"] for q in read_jsonl(args.questions)][: args.queries]
    embedder = Embedder()
    texts = [
        c.search_text
        for d in corpus
        for c in chunk_document(Document(str(d["id"]), str(d.get("title") or ""), d["text"], kind="text"))
    ]
    vectors = embedder.embed(texts)
    overhead = [await measure_overhead(size, texts, vectors, questions, embedder) for size in args.sizes]
    generation = await measure_generation(questions[: args.prompts], texts, args.threads, args.max_tokens)
    memory = measure_serve_memory(
        ["How do I reset my VPN password?", "How do I book a meeting room?", "What do I do if my laptop is stolen?"]
    )
    return {"corpus": str(args.corpus), "overhead": overhead, "generation": generation, "serve_memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=8, help="prompts for the generation comparison")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print_table(
        ["chunks", "bare p50", "bare p99", "turn p50", "turn p99", "ratio", "cache hit p50"],
        [
            [
                o["chunks"],
                o["bare_retrieval"]["p50_ms"],
                o["bare_retrieval"]["p99_ms"],
                o["turn"]["p50_ms"],
                o["turn"]["p99_ms"],
                o["overhead_ratio_p50"],
                o["answer_cache_hit"]["p50_ms"],
            ]
            for o in result["overhead"]
        ],
    )
    print("targets: turn <= 1.5x bare retrieval, turn p50 <= 40 ms at 100k, cache hit p50 <= 5 ms")
    g = result["generation"]
    print_table(
        ["generator", "TTFT p50 ms", "tokens/s"],
        [
            ["bare llama_cpp.Llama", g["bare"]["ttft_p50_ms"], g["bare"]["tokens_per_second"]],
            ["Deskmate LlamaCppGenerator", g["deskmate"]["ttft_p50_ms"], g["deskmate"]["tokens_per_second"]],
        ],
    )
    print(f"tokens/s ratio {g['tps_ratio']}, TTFT ratio {g['ttft_ratio']} (target >= 0.8)")
    print(f"deskmate serve peak RSS with the local model: {result['serve_memory']['peak_rss_mb']} MB (target <= 2500)")
    print(f"wrote {write_result('answer_path', result, args.out)}")


if __name__ == "__main__":
    main()
