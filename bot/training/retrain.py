"""One retraining job, start to finish: the bot's half of the loop.

    rated turns (ledger) ─▶ export ─▶ finetune.pipeline (child process: dataset, training,
    GGUF LoRA) ─▶ evaluation gate (the candidate and the live adapter answer the held-out turns
    through the real orchestrator) ─▶ registry ─▶ promotion (when it passed) ─▶ servers swap

Training runs in a child process so that the server keeps answering (the GIL and two cores are
shared, but the event loop is not blocked), so that a crash or a full disk cannot take the bot
down, and so that cancel and resume are a file and a rerun. Every stage writes its state to the
job's row, so the console, Slack and Teams show the same progress, and a restart finds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot import replicas
from bot.answering.generation import Generator, generator_from_settings
from bot.deskmate import Retrieval
from bot.feedback.export import rated_turns, to_jsonl
from bot.ledger.ledger import Ledger
from bot.ledger.rows import JobRow
from bot.settings import Settings
from bot.training import adapters, jobs
from bot.training.gate import Gate
from bot.training.jobs import JobRunner
from finetune import evaluate
from finetune.dataset import DatasetConfig
from finetune.pipeline import EXIT_CANCELLED, EXIT_OK, config_from, make_dataset
from finetune.registry import Registry

log = logging.getLogger(__name__)

KIND = "retrain"


@dataclass
class Retrainer:
    """What a job needs: settings, the ledger, retrieval (for the gate), and the serving
    generator (to prove a promoted adapter loads, and to swap it in at once in-process)."""

    settings: Settings
    ledger: Ledger
    retrieval: Retrieval
    serving: Generator | None = None

    @property
    def registry(self) -> Registry:
        return Registry(self.settings.resolved_adapters_dir())

    async def run(self, job_id: str) -> JobRow | None:
        job = await jobs.get_job(self.ledger, job_id)
        if job is not None and job.status == "cancelling":  # cancelled while its runner was down
            await jobs.finish_job(self.ledger, job.id, "cancelled", error="cancelled")
            return await jobs.get_job(self.ledger, job.id)
        if job is None or job.status not in ("queued", "running"):
            return job
        folder = self.settings.resolved_jobs_dir() / job.id
        folder.mkdir(parents=True, exist_ok=True)
        resumed = job.status == "running"
        beating = await self._heartbeat()
        try:
            return await self._run(job, folder, resumed)
        finally:  # after the job's final status is written: a missing row reads as "runner died"
            if beating is not None:
                beating.cancel()
                await replicas.leave(self.ledger)
                self.ledger.replica = ""

    async def _run(self, job: JobRow, folder: Path, resumed: bool) -> JobRow | None:
        await jobs.update_job(
            self.ledger,
            job.id,
            status="running",
            runner=self.ledger.replica,
            stage="export",
            started_at=job.started_at or datetime.now(UTC),
        )
        log.info("job.started id=%s actor=%s resumed=%s", job.id, job.actor, resumed)
        try:
            result = await self._stages(job, folder)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job.failed id=%s", job.id)
            _forget_raw(folder)
            await jobs.finish_job(self.ledger, job.id, "failed", error=f"{type(exc).__name__}: {exc}")
            return await jobs.get_job(self.ledger, job.id)
        _forget_raw(folder)
        status = result.pop("_status", "succeeded")
        await jobs.finish_job(self.ledger, job.id, status, result=result, error=result.get("error"))
        log.info("job.finished id=%s status=%s", job.id, status)
        return await jobs.get_job(self.ledger, job.id)

    # --- the stages -------------------------------------------------------------------------
    async def _heartbeat(self) -> asyncio.Task[None] | None:
        """The job's runner is a replica id with a heartbeat, so any replica can tell when it
        died. A serving process beats already; a worker or the CLI beats while the job runs."""
        if self.ledger.replica:
            return None
        self.ledger.replica = replicas.new_replica_id()
        await replicas.heartbeat(self.ledger)

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.replica_heartbeat_seconds)
                try:
                    await replicas.heartbeat(self.ledger)
                except Exception as exc:  # noqa: BLE001 (a missed beat is retried next time)
                    log.info("job.heartbeat_skipped error=%s", type(exc).__name__)

        return asyncio.create_task(beat())

    async def _stages(self, job: JobRow, folder: Path) -> dict[str, Any]:
        export = folder / "export.jsonl"
        if not export.is_file():
            records = [r async for r in rated_turns(self.ledger)]
            if not records:
                return {
                    "_status": "failed",
                    "error": "No rated turns yet: nothing to learn from. Leads rate and "
                    "correct answers in the review console (or with the Review button in Slack and Teams) first.",
                }
            tmp = export.with_suffix(".part")
            tmp.write_text("".join(to_jsonl(r) for r in records), encoding="utf-8")
            tmp.replace(export)
            names = [p.name for p in await self.retrieval.store.users() if p.name]
            (folder / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        # The asker's facts that may stay in training prompts come from their own setting only,
        # last, so that neither DESKMATE_TRAIN_CONFIG nor a job's parameters can widen it.
        config = {
            "dataset": {
                **self.settings.train_config.get("dataset", {}),
                **job.params.get("dataset", {}),
                "user_facts": list(self.settings.train_user_facts),
            },
            "train": {**self.settings.train_config.get("train", {}), **job.params.get("train", {})},
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        if job.params.get("dry_run"):
            names = (folder / "names.txt").read_text(encoding="utf-8").split("\n")
            card = await asyncio.to_thread(
                make_dataset,
                export,
                [n for n in names if n],
                folder / "dataset",
                config_from(DatasetConfig, config["dataset"]),
            )
            return {"dry_run": True, "dataset_card": card, "folder": str(folder)}

        outcome = await self._train(job, folder)
        if outcome.get("exit") != EXIT_OK:
            status = "cancelled" if outcome.get("exit") == EXIT_CANCELLED else "failed"
            return {"_status": status, "error": outcome.get("error") or "training failed", "folder": str(folder)}

        await jobs.update_job(self.ledger, job.id, stage="evaluating", progress=0.85)
        live = await adapters.live_adapter(self.ledger)
        candidate_dir = Path(outcome["adapter"])
        report = await Gate(self.settings, self.ledger, self.retrieval, self.registry).evaluate(
            folder, candidate_dir / "adapter.gguf", live
        )
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        await asyncio.to_thread(evaluate.plot, report, folder / "report.png")

        await jobs.update_job(self.ledger, job.id, stage="registering", progress=0.95)
        name = report["candidate_adapter"]
        # Off the event loop (it copies and hashes the adapter), like every slow step here: the
        # loop also carries this runner's heartbeat.
        info = await asyncio.to_thread(
            self.registry.register,
            name,
            candidate_dir,
            {
                "base_model": outcome["base_model"],
                "base_revision": outcome["base_revision"],
                "started_by": job.actor,
                "job_id": job.id,
                "dataset_card": outcome["dataset_card"],
                "train_config": outcome["train_config"],
                "training": outcome["training"],
                "evaluation": report,
            },
        )
        passed = bool(report["decision"]["promote"])
        await adapters.record_candidate(self.ledger, info, "candidate" if passed else "rejected")
        result: dict[str, Any] = {
            "adapter": name,
            "passed_gate": passed,
            "promoted": False,
            "reasons": report["decision"]["reasons"],
            "candidate": report["candidate"],
            "live": report["live"],
            "live_adapter": live,
            "folder": str(folder),
            "dataset": outcome["dataset_card"].get("train", {}),
        }
        if passed and self.settings.auto_promote:
            try:
                await adapters.promote(
                    self.ledger,
                    self.registry,
                    name,
                    actor=f"gate (job {job.id[:8]}, {job.actor})",
                    generator=self._serving_kind(),
                    note="passed the evaluation gate",
                )
                result["promoted"] = True
                if self.serving is not None:
                    await adapters.apply_live(self.ledger, self.registry, self.serving)
            except adapters.PromotionRefused as exc:
                result["reasons"] = [*result["reasons"], f"passed, but could not go live: {exc}"]
        return result

    def _serving_kind(self) -> Generator:
        if self.serving is not None:
            return self.serving
        return generator_from_settings(self.settings)

    async def _train(self, job: JobRow, folder: Path) -> dict[str, Any]:
        """Run finetune.pipeline as a child process, mirroring its progress into the job row."""
        outcome_file = folder / "outcome.json"
        outcome_file.unlink(missing_ok=True)
        (folder / "training" / "CANCEL").unlink(missing_ok=True)
        cache = self.settings.resolved_model_cache()
        log_file = open(folder / "training.log", "ab")  # noqa: ASYNC230 (handed to the child)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "finetune.pipeline",
            "--export",
            str(folder / "export.jsonl"),
            "--names",
            str(folder / "names.txt"),
            "--job-dir",
            str(folder),
            "--cache",
            str(cache),
            "--config",
            str(folder / "config.json"),
            stdout=log_file,
            stderr=log_file,
            env=env,
        )
        log_file.close()
        await jobs.update_job(self.ledger, job.id, stage="training")
        last = None
        try:
            while True:
                try:
                    await asyncio.wait_for(process.wait(), timeout=1.0)
                    break
                except TimeoutError:
                    pass
                last = await self._mirror_progress(job.id, folder, last)
        except asyncio.CancelledError:
            # The bot is shutting down: stop training; the job stays "running" with a runner that
            # is gone, and the next start resumes it from its newest checkpoint.
            process.terminate()
            await process.wait()
            raise
        await self._mirror_progress(job.id, folder, last)
        if outcome_file.is_file():
            outcome: dict[str, Any] = json.loads(outcome_file.read_text())
            return outcome
        return {
            "exit": process.returncode or 1,
            "error": f"training stopped without an outcome (exit {process.returncode}); see {folder / 'training.log'}",
        }

    async def _mirror_progress(self, job_id: str, folder: Path, last: Any) -> Any:
        current = await jobs.get_job(self.ledger, job_id)
        if current is not None and current.status == "cancelling":
            (folder / "training").mkdir(parents=True, exist_ok=True)
            (folder / "training" / "CANCEL").touch()
        for file in (folder / "training" / "progress.json", folder / "progress.json"):
            try:
                state = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if state != last:
                stage = state.get("stage", "training")
                await jobs.update_job(
                    self.ledger,
                    job_id,
                    stage=stage if stage != "trained" else "training",
                    progress=round(0.05 + 0.8 * float(state.get("progress", 0.0)), 4),
                )
            return state
        return last


def _forget_raw(folder: Path) -> None:
    """The export and the names are unscrubbed: they leave the job folder once the job is over
    (a resume exports again). Scratch ledgers of the gate hold the questions as asked: same."""
    for pattern in (
        "export.jsonl",
        "export.part",
        "names.txt",
        "eval-*.db*",
        "eval-*-spool*.jsonl",
        "eval-*-dead-letters.jsonl",
    ):
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)


# --- entry points ----------------------------------------------------------------------------


async def start(
    settings: Settings,
    ledger: Ledger,
    runner: JobRunner,
    actor: str,
    *,
    dry_run: bool = False,
    params: dict[str, Any] | None = None,
) -> JobRow:
    """Queue a retraining job (or raise `jobs.JobBusy`) and hand it to the runner."""
    job = await jobs.create_job(ledger, KIND, actor, {"dry_run": dry_run, **(params or {})})
    await runner.submit(job.id)
    return job


async def resume_orphans(ledger: Ledger, runner: JobRunner, stale_after: timedelta) -> list[str]:
    """Jobs whose runner died: back to the runner, which resumes from their checkpoints. Every
    replica checks now and then; the claim makes sure one of them resubmits each job. A job
    whose runner keeps dying is failed rather than resumed forever."""
    resumed = []
    for job in await jobs.orphaned_jobs(ledger, stale_after):
        if not await jobs.claim_orphan(ledger, job):
            continue
        if job.resumes + 1 > jobs.MAX_RESUMES:
            log.error("job.given_up id=%s resumes=%d", job.id, job.resumes + 1)
            await jobs.finish_job(
                ledger,
                job.id,
                "failed",
                error=(
                    f"its runner stopped {job.resumes + 1} times (killed for memory or time?); "
                    "see the worker's log, then start a new retraining"
                ),
            )
            continue
        log.warning(
            "job.resuming id=%s stage=%s (its runner %s is gone)", job.id, job.stage, job.runner or "never started"
        )
        await runner.submit(job.id)  # if this fails, the claim's lease runs out and it is tried again
        resumed.append(job.id)
    return resumed
