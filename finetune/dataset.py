"""Rated turns (the JSONL `deskmate export ratings` writes) → training examples.

SFT examples come from lead corrections (the corrected text is the target) and from answers a
lead scored 4 or more or marked correct. KTO examples (unpaired desirable / undesirable) come
from thumbs and from answers leads marked wrong or unsafe, when there are enough of both. Every
example keeps the prompt as served, less what is personal, so the model learns to answer from
the context it is given; some are copied with only unrelated passages as context and "I don't
know" as the target, so it also learns to say so.

Before anything is written: the asker's directory facts leave every prompt ("About the person
asking: …"; only the fields `DatasetConfig.user_facts` names may stay, without the name), and
so do the person's own values wherever else they appear in the turn; personal data is scrubbed
(`finetune.scrub`), turns whose context held a document restricted to an access group are left
out (a shared adapter must not leak restricted knowledge), near-identical questions are kept
once, and the newest turns become the evaluation set. A dataset card says what went where and
why.

This module reads files and writes files; it imports nothing from the bot.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.scrub import Scrubber, fact_fields, strip_asker_facts

UNKNOWN_TARGET = "I don't know: the knowledge base does not say. Please ask the service desk."
APPROVED_VERDICTS = {"correct"}
REJECTED_VERDICTS = {"wrong", "unsafe", "should_not_answer"}
CONTEXT_BLOCK = re.compile(r"Context:\n(.*?)\n(?=(?:About the person asking:|\nQuestion:|Question:))", re.DOTALL)


@dataclass
class DatasetConfig:
    eval_share: float = 0.2
    min_score: int = 4
    distractor_share: float = 0.1
    kto_min_each: int = 8
    include_restricted: bool = False
    dedupe_threshold: float = 0.9
    seed: int = 13
    region: str = "US"
    #: Fields of the asker's facts that may stay in training prompts (`location`, `department`,
    #: `devices`, a directory column…). Empty, the default: the whole block goes.
    user_facts: list[str] = field(default_factory=list)


@dataclass
class Example:
    kind: str  # sft_correction | sft_approved | sft_unknown | kto_desirable | kto_undesirable
    turn_id: str
    created_at: str
    messages: list[dict[str, str]]  # the prompt as served + the target as the assistant turn
    label: bool | None = None  # KTO: desirable or not


@dataclass
class AskerFactsReport:
    """What left the "About the person asking" blocks of the prompts that made examples; each
    count is of prompts (one per rated turn kept), not of examples."""

    allowed: list[str] = field(default_factory=list)
    prompts_with_block: int = 0
    unreadable: int = 0  # blocks not in the known shape: removed whole
    removed: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "prompts_with_block": self.prompts_with_block,
            "unreadable_removed_whole": self.unreadable,
            "fields_removed": dict(self.removed),
            "fields_kept": dict(self.kept),
        }

    def markdown(self) -> list[str]:
        def fields(counts: Counter[str]) -> str:
            return ", ".join(f"{name} ({n})" for name, n in sorted(counts.items())) or "none"

        allowed = ", ".join(self.allowed) or "none (the whole block is removed)"
        lines = [
            "About the person asking (the asker's directory facts):",
            f"- prompts that had the block: {self.prompts_with_block}",
            f"- fields allowed to stay: {allowed}",
            f"- fields removed: {fields(self.removed)}",
            f"- fields kept: {fields(self.kept)}",
        ]
        if self.unreadable:
            lines.append(f"- blocks not in the known shape, removed whole: {self.unreadable}")
        return lines


@dataclass
class DatasetCard:
    records: int = 0
    examples: Counter[str] = field(default_factory=Counter)
    train: Counter[str] = field(default_factory=Counter)
    eval: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    scrubbed: Counter[str] = field(default_factory=Counter)
    kto: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    asker: AskerFactsReport = field(default_factory=AskerFactsReport)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "examples": dict(self.examples),
            "train": dict(self.train),
            "eval": dict(self.eval),
            "filtered": dict(self.filtered),
            "scrubbed": dict(self.scrubbed),
            "asker_facts": self.asker.to_dict(),
            "kto": self.kto,
            "config": self.config,
        }

    def markdown(self) -> str:
        lines = [
            "# Dataset card",
            "",
            f"Rated turns read: {self.records}",
            "",
            "| examples | train | eval |",
            "|---|---|---|",
        ]
        for kind in sorted(set(self.train) | set(self.eval)):
            lines.append(f"| {kind} | {self.train[kind]} | {self.eval[kind]} |")
        left_out = [f"- {why}: {n}" for why, n in sorted(self.filtered.items())] or ["- nothing"]
        scrubbed = [f"- {kind}: {n}" for kind, n in sorted(self.scrubbed.items())] or ["- nothing"]
        lines += [
            "",
            "Left out:",
            *left_out,
            "",
            "Scrubbed:",
            *scrubbed,
            "",
            *self.asker.markdown(),
            "",
            f"KTO: {self.kto}",
        ]
        return "\n".join(lines) + "\n"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


PUBLIC_GROUP = "everyone"  # the knowledge store's group for documents anyone may read


def _restricted(record: dict[str, Any]) -> bool:
    return any(g != PUBLIC_GROUP for c in record.get("retrieved") or [] for g in c.get("groups") or [])


def _served_prompt(record: dict[str, Any]) -> list[dict[str, str]] | None:
    prompt = record.get("prompt") or []
    if not prompt or not all(isinstance(m, dict) and m.get("role") and "content" in m for m in prompt):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _targets(record: dict[str, Any], config: DatasetConfig) -> list[tuple[str, str, bool | None]]:
    """(kind, target text, KTO label) for one rated turn."""
    out: list[tuple[str, str, bool | None]] = []
    answer = (record.get("answer") or "").strip()
    if record.get("correction"):
        out.append(("sft_correction", record["correction"].strip(), None))
    elif answer and ((record.get("score") or 0) >= config.min_score or record.get("verdict") in APPROVED_VERDICTS):
        out.append(("sft_approved", answer, None))
    if answer and record.get("status") == "answered":
        if record.get("thumbs_up") and not record.get("thumbs_down"):
            out.append(("kto_desirable", answer, True))
        elif record.get("thumbs_down") or record.get("verdict") in REJECTED_VERDICTS:
            out.append(("kto_undesirable", answer, False))
    return out


def _without_asker_facts(
    prompt: list[dict[str, str]], keep: frozenset[str], scrub: Scrubber, card: DatasetCard
) -> tuple[list[dict[str, str]], Callable[[str], str]]:
    """The prompt without the asker's facts (but the fields in `keep`), and the scrubber for
    this turn's texts, which also replaces that person's own values; counted on the card."""
    served: list[dict[str, str]] = []
    blocks = unreadable = 0
    removed: set[str] = set()
    kept: set[str] = set()
    identifying: dict[str, set[str]] = {}
    for message in prompt:
        stripped = strip_asker_facts(message["content"], keep)
        served.append({"role": message["role"], "content": stripped.text})
        blocks += stripped.blocks
        unreadable += stripped.unreadable
        removed |= stripped.removed
        kept |= stripped.kept
        for kind, values in stripped.identifying.items():
            identifying.setdefault(kind, set()).update(values)
    if blocks:
        card.asker.prompts_with_block += 1
        card.asker.unreadable += 1 if unreadable else 0
        card.asker.removed.update(removed)
        card.asker.kept.update(kept)
    return served, scrub.for_person(identifying)


def build(
    records: list[dict[str, Any]], config: DatasetConfig, names: list[str]
) -> tuple[dict[str, list[Example]], DatasetCard]:
    """The train and eval splits (SFT and KTO) and their card."""
    card = DatasetCard(records=len(records), config=asdict(config))
    scrub = Scrubber(names=names, region=config.region)
    rng = random.Random(config.seed)
    kept: list[tuple[dict[str, Any], list[dict[str, str]], list[tuple[str, str, bool | None]]]] = []
    seen: list[set[str]] = []
    for record in sorted(records, key=lambda r: r.get("created_at", ""), reverse=True):  # newest wins a tie
        prompt = _served_prompt(record)
        targets = _targets(record, config)
        if prompt is None:
            card.filtered["no prompt on record (turn ended before generation)"] += 1
            continue
        if not targets:
            card.filtered["rated, but neither approved, corrected nor thumbed"] += 1
            continue
        if _restricted(record) and not config.include_restricted:
            card.filtered["context held a document restricted to an access group"] += 1
            continue
        words = _words(record.get("question", ""))
        if any(words and len(words & other) / max(1, len(words | other)) >= config.dedupe_threshold for other in seen):
            card.filtered["near-duplicate of a newer question"] += 1
            continue
        seen.append(words)
        kept.append((record, prompt, targets))

    kept.sort(key=lambda item: item[0].get("created_at", ""))
    cut = len(kept) - round(len(kept) * config.eval_share) if len(kept) > 1 else len(kept)
    # The asker's facts leave first, so that nothing below (the distractors' swapped contexts
    # included) ever sees them; each turn's scrubber also knows that person's own values.
    keep = fact_fields(config.user_facts)
    card.asker.allowed = sorted(keep)
    served = [_without_asker_facts(prompt, keep, scrub, card) for _, prompt, _ in kept]
    contexts = [m.group(1) for p, _ in served if (m := CONTEXT_BLOCK.search(p[-1]["content"]))]
    splits: dict[str, list[Example]] = {"train": [], "eval": [], "kto_train": [], "kto_eval": []}
    for index, ((record, _, targets), (prompt, person)) in enumerate(zip(kept, served, strict=True)):
        split = "train" if index < cut else "eval"
        clean_prompt = [{"role": m["role"], "content": person(m["content"])} for m in prompt]
        for kind, target, label in targets:
            answer = {"role": "assistant", "content": person(target)}
            example = Example(kind, record["turn_id"], record.get("created_at", ""), [*clean_prompt, answer], label)
            splits[("kto_" if kind.startswith("kto") else "") + split].append(example)
            card.examples[kind] += 1
        if (
            split == "train"
            and any(k.startswith("sft") for k, _, _ in targets)
            and rng.random() < config.distractor_share
        ):
            own = CONTEXT_BLOCK.search(prompt[-1]["content"])
            others = [c for c in contexts if own is None or c != own.group(1)]
            if own and others:
                user = prompt[-1]["content"].replace(own.group(1), rng.choice(others), 1)
                splits["train"].append(
                    Example(
                        "sft_unknown",
                        record["turn_id"],
                        record.get("created_at", ""),
                        [
                            *clean_prompt[:-1],
                            {"role": "user", "content": person(user)},
                            {"role": "assistant", "content": UNKNOWN_TARGET},
                        ],
                    )
                )
                card.examples["sft_unknown"] += 1

    good = sum(1 for e in splits["kto_train"] if e.label)
    bad = sum(1 for e in splits["kto_train"] if e.label is False)
    if min(good, bad) < config.kto_min_each:
        card.kto = (
            f"skipped: {good} desirable and {bad} undesirable training examples, fewer than "
            f"{config.kto_min_each} of each"
        )
        splits["kto_train"], splits["kto_eval"] = [], []
    else:
        card.kto = f"{good} desirable and {bad} undesirable training examples"
    for split in ("train", "eval"):
        for e in splits[split] + splits[f"kto_{split}"]:
            getattr(card, split)[e.kind] += 1
    card.scrubbed = Counter(scrub.counts)
    return splits, card


def write(splits: dict[str, list[Example]], card: DatasetCard, folder: Path) -> None:
    """train.jsonl, eval.jsonl (and kto_*.jsonl when KTO applies), card.json, card.md."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        if not examples and name.startswith("kto"):
            continue
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples)
    (folder / "card.json").write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    (folder / "card.md").write_text(card.markdown())
