"""Does fine-tuning on rated turns beat retrieval alone? The experiment behind retraining.

A QA set stands in for rated turns whose lead-corrected answers are the gold answers. Its
questions are split by manual section (no section and no gold document on both sides). The train
side takes the product path: turns recorded by the real orchestrator, a lead correction on each,
`bot.feedback.export.rated_turns`, then `python -m finetune.pipeline` as a child process (for its peak
RSS). The test side is answered four ways with `answer_quality.answer_all` in the same run: base,
base + RAG, fine-tuned, fine-tuned + RAG. On 2 cores the base setups are answered on one core
while training runs on the other, and the two fine-tuned setups then run side by side.

    python bench/finetune_effect.py --corpus ../shared/bench-data/emanual_smart_tv/corpus.jsonl \
        --questions ../shared/bench-data/emanual_smart_tv/qa.dev.jsonl --train-limit 140 --test-limit 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    add_corpus_arguments,
    corpus_orchestrator,
    gold_ids,
    print_table,
    question_text,
    read_jsonl,
    write_result,
)
from answer_quality import answer_all, references

from bot.answering.generation import EchoGenerator, LlamaCppGenerator
from bot.answering.messages import IncomingMessage
from bot.feedback.export import rated_turns
from bot.feedback.ratings import Rating, submit
from bot.feedback.roles import Role
from finetune.model import base_gguf_path
from tests.support.pipeline import pipeline_command

SETUPS = {
    "base only": (False, False),
    "base + RAG": (False, True),
    "fine-tuned only": (True, False),
    "fine-tuned + RAG": (True, True),
}  # (adapter, retrieval)
GAIN_TARGET, SECONDS_TARGET, RSS_TARGET_GB = 0.05, 30 * 60, 6.0


def _keys(question: dict[str, Any], index: int) -> list[str]:
    section = str(question.get("section_hierarchy") or "")
    keys = ([f"section:{section}"] if section else []) + [f"doc:{d}" for d in gold_ids(question)]
    return keys or [f"question:{index}"]


def split_by_section(questions: list[dict], test_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and test sides made of whole groups: questions that share a section or a gold
    document (transitively) always land on the same side. Groups are dealt to test until it
    holds at least `test_share` of the questions."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for i, q in enumerate(questions):
        first, *rest = _keys(q, i)
        for key in rest:
            parent[root(key)] = root(first)
    groups: dict[str, list[dict]] = {}  # in order of first appearance, so the shuffle is reproducible
    for i, q in enumerate(questions):
        groups.setdefault(root(_keys(q, i)[0]), []).append(q)
    ordered = list(groups.values())
    random.Random(seed).shuffle(ordered)
    train: list[dict] = []
    test: list[dict] = []
    for group in ordered:
        (test if len(test) < test_share * len(questions) else train).extend(group)
    return train, test


def overlap(train: list[dict], test: list[dict]) -> dict[str, int]:
    """Sections and gold documents found on both sides (0 and 0 for a clean split)."""

    def keys(qs: list[dict], kind: str) -> set[str]:
        return {k for i, q in enumerate(qs) for k in _keys(q, i) if k.startswith(kind)}

    return {
        "shared_sections": len(keys(train, "section:") & keys(test, "section:")),
        "shared_gold_docs": len(keys(train, "doc:") & keys(test, "doc:")),
    }


async def record_rated_turns(args: argparse.Namespace, questions: list[dict], export: Path) -> int:
    """Ask each train question through the real orchestrator, have a lead correct the answer to
    the gold one, and export the rated turns as retraining reads them. Returns the turns written."""
    # Echo answers instantly; the prompt on record is the one the model would have seen.
    async with corpus_orchestrator(args, EchoGenerator()) as (bot, ledger):
        for i, q in enumerate(questions, start=1):
            answer = await bot.ask(
                IncomingMessage(platform="bench", user_key="bench:user", text=question_text(q), thread_id=f"train-{i}")
            )
            await submit(ledger, Rating(answer.turn_id, "bench:lead", Role.lead, "bench", correction=references(q)[0]))
        records = [json.dumps(r, ensure_ascii=False) + "\n" async for r in rated_turns(ledger)]
        export.write_text("".join(records), encoding="utf-8")
    return len(records)


def train_adapter(args: argparse.Namespace, export: Path, job_dir: Path) -> dict[str, Any]:
    """Run the retraining pipeline as a child process; its outcome, wall seconds and peak RSS."""
    config = {
        "dataset": {"eval_share": 0.0, "distractor_share": args.distractor_share, "seed": args.seed},
        "train": {
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "max_length": args.max_length,
            "lora_r": args.lora_r,
            "lora_alpha": 2 * args.lora_r,
            "save_steps": 1000,
            "seed": args.seed,
            "threads": args.train_threads,
        },
    }
    (job_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with open(job_dir / "pipeline.log", "w") as log:
        code = subprocess.run(
            pipeline_command(export, job_dir, args.cache, job_dir / "config.json"),
            check=False,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode
    outcome = json.loads((job_dir / "outcome.json").read_text()) if (job_dir / "outcome.json").is_file() else {}
    if code != 0:
        tail = (job_dir / "pipeline.log").read_text()[-3000:]
        raise RuntimeError(f"finetune.pipeline exited {code}: {outcome.get('error')}\n{tail}")
    outcome["wall_seconds"] = round(time.perf_counter() - started, 1)
    outcome["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 2)
    return outcome


async def load_generator(args: argparse.Namespace, adapter: Path | None) -> LlamaCppGenerator:
    """The local model, with the adapter when given. Load one at a time: llama.cpp silences its
    loading by swapping the process's stdout, and two loads at once leave it pointing nowhere."""
    generator = LlamaCppGenerator(base_gguf_path(), n_threads=args.threads)
    await (generator.use_adapter("finetune-effect", adapter) if adapter else generator.load())
    return generator


async def answer_setup(args: argparse.Namespace, setup: str, test: list[dict], generator: LlamaCppGenerator) -> dict:
    """The test questions answered one way (setups on separate generators may run side by side)."""
    started = time.perf_counter()
    print(f"answering: {setup}", flush=True)
    no_retrieval = not SETUPS[setup][1]
    result = await answer_all(argparse.Namespace(**{**vars(args), "no_retrieval": no_retrieval}), test, generator)
    await generator.close()
    return {**result, "wall_seconds": round(time.perf_counter() - started, 1)}


def load_split(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    if args.questions:
        train, test = split_by_section(read_jsonl(args.questions), args.test_share, args.seed)
    else:
        train, test = read_jsonl(args.train_questions), read_jsonl(args.test_questions)
    train = [q for q in train if references(q)]  # only a gold answer can be a correction
    rng = random.Random(args.seed)
    rng.shuffle(train)
    rng.shuffle(test)
    return train[: args.train_limit or None], test[: args.test_limit or None]


async def run(args: argparse.Namespace, job_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    train, test = load_split(args)
    split = {"train": len(train), "test": len(test), **overlap(train, test)}
    print(f"split: {split}", flush=True)
    if split["shared_sections"] or split["shared_gold_docs"]:
        print("warning: train and test share sections or gold documents; the gain will be flattered")
    job_dir.mkdir(parents=True, exist_ok=True)
    export = job_dir / "rated_turns.jsonl"
    seconds: dict[str, float] = {}

    lap = time.perf_counter()
    split["rated_turns"] = await record_rated_turns(args, train, export)
    seconds["record_turns"] = round(time.perf_counter() - lap, 1)
    print(f"recorded and corrected {split['rated_turns']} turns in {seconds['record_turns']} s", flush=True)

    # The base setups need no adapter: they are answered on one core while training uses the other.
    training = asyncio.create_task(asyncio.to_thread(train_adapter, args, export, job_dir))
    results = {
        s: await answer_setup(args, s, test, await load_generator(args, None)) for s in args.setups if not SETUPS[s][0]
    }
    outcome = await training
    seconds["training"] = outcome["wall_seconds"]
    print(
        f"trained in {seconds['training']} s, peak RSS {outcome['peak_rss_gb']} GB: {outcome.get('training')}",
        flush=True,
    )
    adapter = Path(outcome["adapter"]) / "adapter.gguf"
    tuned = [s for s in args.setups if SETUPS[s][0]]
    generators = [await load_generator(args, adapter) for _ in tuned]
    results.update(
        zip(
            tuned,
            await asyncio.gather(*(answer_setup(args, s, test, g) for s, g in zip(tuned, generators, strict=True))),
            strict=True,
        )
    )
    results = {s: results[s] for s in args.setups}
    seconds.update({s: r["wall_seconds"] for s, r in results.items()})
    seconds["total"] = round(time.perf_counter() - started, 1)
    return {
        "corpus": str(args.corpus),
        "questions_file": str(args.questions or ""),
        "train_questions_file": str(args.train_questions or ""),
        "test_questions_file": str(args.test_questions or ""),
        "split": split,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "training": {k: outcome.get(k) for k in ("dataset_card", "training", "train_config", "peak_rss_gb")},
        "seconds": seconds,
        "results": results,
        "targets": targets(results, seconds, outcome["peak_rss_gb"]),
    }


def targets(results: dict[str, dict[str, Any]], seconds: dict[str, float], rss_gb: float) -> dict[str, dict]:
    """Each target with what was measured and whether it is met (None: a setup was not run)."""
    f1 = {setup: r["token_f1"] for setup, r in results.items()}
    both, rag, ft = f1.get("fine-tuned + RAG"), f1.get("base + RAG"), f1.get("fine-tuned only")
    gain = None if None in (both, rag) else round(both - rag, 4)
    margin = None if None in (both, ft) else round(both - ft, 4)
    return {
        "fine-tuned + RAG beats RAG-only by >= 0.05 token F1": {
            "measured": gain,
            "met": None if gain is None else gain >= GAIN_TARGET,
        },
        "fine-tuned + RAG beats fine-tuned only": {"measured": margin, "met": None if margin is None else margin > 0},
        "whole run <= 30 minutes": {"measured": seconds["total"], "met": seconds["total"] <= SECONDS_TARGET},
        "training peak RSS <= 6 GB": {"measured": rss_gb, "met": rss_gb <= RSS_TARGET_GB},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    sides = parser.add_mutually_exclusive_group(required=True)
    sides.add_argument("--questions", type=Path, help="one QA file, split by section here")
    sides.add_argument("--train-questions", type=Path, help="with --test-questions: an explicit split")
    parser.add_argument("--test-questions", type=Path)
    parser.add_argument("--test-share", type=float, default=0.2, help="of the questions, by whole groups")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--train-limit", type=int, default=0, help="first N train questions (0 = all)")
    parser.add_argument("--test-limit", type=int, default=0, help="first N test questions (0 = all)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--job-dir", type=Path, help="keep the export, dataset and adapter here")
    parser.add_argument("--cache", type=Path, default=REPO / ".deskmate" / "cache", help="converted base model")
    parser.add_argument(
        "--setups",
        type=lambda s: [x.strip() for x in s.split(",")],
        default=list(SETUPS),
        help=f"comma-separated, of: {', '.join(SETUPS)}",
    )
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=float, default=1.0)
    training.add_argument("--max-steps", type=int, default=-1, help="> 0 overrides --epochs")
    training.add_argument("--lr", type=float, default=1e-3)
    training.add_argument("--batch-size", type=int, default=1, help="more costs memory: ~5 MB a token")
    training.add_argument("--grad-accum", type=int, default=4)
    training.add_argument("--max-length", type=int, default=768, help="tokens of prompt + answer")
    training.add_argument("--lora-r", type=int, default=16)
    training.add_argument("--train-threads", type=int, default=1, help="torch threads of the training process")
    training.add_argument("--distractor-share", type=float, default=0.1, help="'I don't know' copies (dataset)")
    answering = parser.add_argument_group("answering (as in answer_quality.py)")
    answering.add_argument("--threads", type=int, default=1, help="llama.cpp threads per setup")
    add_corpus_arguments(answering)
    answering.add_argument(
        "--keep-answers",
        type=int,
        default=0,
        help="answers kept in the JSON per setup (they quote the bench corpus: keep them out of the repo)",
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if bool(args.train_questions) != bool(args.test_questions):
        parser.error("--train-questions and --test-questions go together")
    if unknown := [s for s in args.setups if s not in SETUPS]:
        parser.error(f"unknown setup(s) {unknown}; choose from {list(SETUPS)}")
    with tempfile.TemporaryDirectory(prefix="finetune-effect-") as tmp:
        result = asyncio.run(run(args, args.job_dir or Path(tmp)))
    rows = [
        [setup, r["questions"], r["token_f1"], r["rouge_l"], r["gold_citation_rate"], r["wall_seconds"]]
        for setup, r in result["results"].items()
    ]
    print_table(["setup", "questions", "token F1", "ROUGE-L", "gold cited", "seconds"], rows)
    s = result["seconds"]
    print(
        f"total {s['total']} s, training {s['training']} s, peak training RSS "
        f"{result['training']['peak_rss_gb']} GB; split {result['split']}"
    )
    for target, t in result["targets"].items():
        print(f"  {'met' if t['met'] else 'n/a' if t['met'] is None else 'NOT met'}: {target} ({t['measured']})")
    name = f"finetune_effect_{Path(args.corpus).parent.name or 'corpus'}"
    print(f"wrote {write_result(name, result, args.out)}")


if __name__ == "__main__":
    main()
