"""The retraining commands as chat sees them: `/deskmate retrain` and `/deskmate adapters` in
Slack, the same words in Teams. One function answers both, so the platforms cannot drift apart;
the console and the CLI call the same library functions underneath.
"""

from __future__ import annotations

import logging

from bot.deskmate import Deskmate
from bot.feedback.roles import Role
from bot.ledger.rows import JobRow
from bot.training import adapters, jobs, retrain

log = logging.getLogger(__name__)

USAGE = (
    "`retrain` starts a retraining job · `retrain dry-run` builds the training set only · "
    "`retrain status` · `retrain cancel` · `adapters` lists versions · `adapters show NAME` · "
    "`adapters promote NAME` · `adapters rollback`"
)


def describe_job(job: JobRow) -> str:
    """One paragraph a chat message or a terminal can show."""
    head = f"Retraining job {job.id[:8]} ({'dry run, ' if job.params.get('dry_run') else ''}started by {job.actor or '?'}): "
    if job.status in jobs.ACTIVE:
        return head + f"{job.status}, {job.stage or 'queued'}, {job.progress:.0%} done."
    if job.status == "failed" or job.status == "cancelled":
        return head + f"{job.status}. {job.error or ''}".strip()
    result = job.result or {}
    if result.get("dry_run"):
        card = result.get("dataset_card") or {}
        return head + (
            f"training set built: {sum((card.get('train') or {}).values())} training and "
            f"{sum((card.get('eval') or {}).values())} held-out examples from {card.get('records', 0)} rated turns."
        )
    cand, live = result.get("candidate") or {}, result.get("live") or {}
    figures = (
        f"token F1 {_f(cand.get('token_f1'))} vs {_f(live.get('token_f1'))} live, "
        f"ROUGE-L {_f(cand.get('rouge_l'))} vs {_f(live.get('rouge_l'))}"
    )
    if result.get("promoted"):
        verdict = f"{result['adapter']} passed the gate and is live ({figures})."
    elif result.get("passed_gate"):
        verdict = (
            f"{result['adapter']} passed the gate ({figures}); promote it with `adapters promote {result['adapter']}`."
        )
    else:
        verdict = f"{result.get('adapter')} was NOT promoted ({figures}): " + "; ".join(result.get("reasons") or [])
    return head + verdict


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def describe_adapters(views: list[adapters.AdapterView], live: str) -> str:
    if not views:
        return "No adapters yet: the base model is serving. `retrain` makes the first one."
    lines = [f"Live: {live or 'the base model'}"]
    for v in views[:10]:
        f1 = ((v.meta.get("evaluation") or {}).get("candidate") or {}).get("token_f1")
        lines.append(
            f"• {v.name}: {'LIVE' if v.live else v.status}, token F1 {_f(f1)}, by {v.meta.get('started_by') or '?'}"
        )
    return "\n".join(lines)


async def command(deskmate: Deskmate, actor: str, role: Role, words: list[str]) -> str:
    """Answer `retrain …` or `adapters …` for an admin; anyone else is told who may."""
    if role is not Role.admin:
        return (
            "Only admins can retrain Deskmate or change its adapters. Ask an admin (`deskmate roles list` shows who)."
        )
    what, rest = (words[0].lower(), words[1:]) if words else ("", [])
    try:
        if what == "retrain":
            return await _retrain(deskmate, actor, rest)
        if what == "adapters":
            return await _adapters(deskmate, actor, rest)
    except adapters.PromotionRefused as exc:
        return f"Refused, nothing changed: {exc}"
    return f"Unknown command. {USAGE}"


async def _retrain(deskmate: Deskmate, actor: str, rest: list[str]) -> str:
    sub = rest[0].lower() if rest else ""
    if sub in ("status", "cancel"):
        job = await jobs.active_job(deskmate.ledger, retrain.KIND)
        if job is None:
            recent = await jobs.list_jobs(deskmate.ledger, limit=1)
            return describe_job(recent[0]) if recent else "No retraining job has run yet."
        if sub == "cancel":
            job = await jobs.request_cancel(deskmate.ledger, job.id) or job
            return f"Cancelling job {job.id[:8]}: it stops at its next training step and keeps its checkpoint."
        return describe_job(job)
    if sub not in ("", "dry-run", "--dry-run"):
        return f"Unknown retrain option {sub!r}. {USAGE}"
    try:
        job = await retrain.start(deskmate.settings, deskmate.ledger, deskmate.jobs, actor, dry_run=bool(sub))
    except jobs.JobBusy as exc:
        return f"Not started: {exc}. `retrain status` shows its progress."
    return (
        f"Retraining job {job.id[:8]} queued{' (dry run)' if sub else ''}. Follow it with `retrain status` "
        "or on the console's Jobs page; the new adapter goes live only if it beats the current one."
    )


async def _adapters(deskmate: Deskmate, actor: str, rest: list[str]) -> str:
    registry = deskmate.registry
    sub = rest[0].lower() if rest else "list"
    if sub == "list":
        return describe_adapters(
            await adapters.list_adapters(deskmate.ledger), await adapters.live_adapter(deskmate.ledger)
        )
    if sub == "show" and len(rest) > 1:
        row = await adapters.get_adapter(deskmate.ledger, rest[1])
        if row is None:
            return f"No adapter {rest[1]!r}."
        report = (row.meta or {}).get("evaluation") or {}
        return (
            f"{row.name}: {row.status}; base {row.base_model}; started by {(row.meta or {}).get('started_by')}; "
            f"held-out turns {report.get('held_out_turns')}; decision: "
            + "; ".join((report.get("decision") or {}).get("reasons") or [])
        )
    if sub == "promote" and len(rest) > 1:
        info = await adapters.promote(
            deskmate.ledger, registry, rest[1], actor=actor, generator=deskmate.generator, force="--force" in rest
        )
        await adapters.apply_live(deskmate.ledger, registry, deskmate.generator)
        return f"{info.name} is live. The next answers come from it; `adapters rollback` undoes this."
    if sub == "rollback":
        target = await adapters.rollback(deskmate.ledger, registry, actor=actor, generator=deskmate.generator)
        await adapters.apply_live(deskmate.ledger, registry, deskmate.generator)
        return f"Rolled back: {target or 'the base model'} is live again."
    return f"Unknown adapters command. {USAGE}"
