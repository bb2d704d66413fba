"""The `deskmate` command: a thin face on library calls (see `bot.wiring`)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.answering.generation import Generator, LlamaCppGenerator, generator_from_settings
from bot.answering.messages import Delta, Done, IncomingMessage, Status
from bot.console.auth import LOCAL_ADMIN, issue_token
from bot.deskmate import Deskmate, Records, Retrieval
from bot.exposure import Exposure, StartupRefused, exposure
from bot.feedback.calibration import Calibration, labelled_scores
from bot.feedback.calibration import calibrate as calibration_of
from bot.feedback.export import csv_header, rated_turns, to_csv_row, to_jsonl
from bot.feedback.forget import forget as forget_person
from bot.feedback.roles import roles_from_settings
from bot.ledger.filters import Filters, Support
from bot.ledger.ledger import Ledger
from bot.settings import Settings
from bot.training import jobs
from bot.training.adapters import (
    PromotionRefused,
    list_adapters,
    live_adapter,
    lora_adapters_value,
    promote,
    rollback,
    to_serve,
)
from bot.training.commands import describe_adapters, describe_job
from bot.training.jobs import list_jobs, queue_name, request_cancel
from bot.training.retrain import KIND, Retrainer
from bot.wiring import open_deskmate, open_ledger, open_records, open_retrieval
from finetune.registry import AdapterInvalid, Registry
from retrieval.ingest import IngestReport, OutsideKnowledgeFolder
from retrieval.records import StoreStats
from retrieval.search import QueryError, SearchResult
from retrieval.users import import_users, load_directory

app = typer.Typer(
    help="Deskmate: answers from your knowledge base, in Slack and Teams.", no_args_is_help=True, add_completion=False
)
kb_app = typer.Typer(help="The knowledge base.", no_args_is_help=True)
users_app = typer.Typer(help="The employee directory (user context).", no_args_is_help=True)
roles_app = typer.Typer(help="Who is a support lead or an admin.", no_args_is_help=True)
console_app = typer.Typer(help="The review console at /console.", no_args_is_help=True)
export_app = typer.Typer(help="Datasets out of the ledger.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(users_app, name="users")
app.add_typer(roles_app, name="roles")
app.add_typer(console_app, name="console")
app.add_typer(export_app, name="export")
jobs_app = typer.Typer(help="Background jobs (retraining).", no_args_is_help=True)
adapters_app = typer.Typer(help="Adapter versions: list, show, promote, roll back.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(adapters_app, name="adapters")


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


class PlatformName(StrEnum):
    slack = "slack"
    teams = "teams"
    web = "web"
    cli = "cli"


out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")
R = TypeVar("R")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _run_with(connect: Callable[[Settings], Awaitable[R]], work: Callable[[R], Awaitable[T]]) -> T:
    """Connect what `connect` opens from settings, run one coroutine on it, close it."""

    async def main() -> T:
        parts = await connect(Settings())
        try:
            return await work(parts)
        finally:
            await parts.close()  # type: ignore[attr-defined]

    return asyncio.run(main())


def _run(work: Callable[[Retrieval], Awaitable[T]]) -> T:
    """The retrieval stack only: searching and ingesting need no model or ledger."""
    return _run_with(open_retrieval, work)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"deskmate {version('deskmate')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _setup_logging(verbose)


@app.command(epilog="Example: deskmate ingest examples/kb   ·   deskmate ingest kb/policies --prune")
def ingest(
    path: Annotated[Path, typer.Argument(help="A folder (read recursively) or one file.")],
    prune: Annotated[
        bool, typer.Option(help="Remove documents whose files were under PATH and are gone (nothing outside PATH).")
    ] = False,
) -> None:
    """Ingest Markdown, HTML, text and PDF files. Unchanged files are skipped.

    PATH is the knowledge folder or a folder or file inside it: document ids are relative to
    the knowledge folder (DESKMATE_KB_ROOT, else the folder of the first ingest)."""
    if not path.exists():
        err.print(f"[red]error:[/] no such file or folder: {path}")
        raise typer.Exit(2)

    async def work(r: Retrieval) -> IngestReport:
        with Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=None)

            def progress(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, description=label)

            return await r.ingestor.ingest_path(path, prune=prune, progress=progress, root=r.settings.kb_root)

    try:
        report = _run(work)
    except OutsideKnowledgeFolder as exc:
        err.print(
            f"[red]error:[/] {exc}. Ingest a folder or file inside it, or set "
            "DESKMATE_KB_ROOT to the folder that holds the whole knowledge base "
            "(a moved folder keeps its document ids)."
        )
        raise typer.Exit(2) from None
    for source, reason in report.failed:
        err.print(f"[yellow]skipped[/] {source}: {reason}")
    for doc_id in report.removed:
        out.print(f"removed {doc_id}")
    out.print(f"{report.summary()}; knowledge base version {report.kb_version}")
    if not report.ok:
        raise typer.Exit(1)


def _print_result(result: SearchResult) -> None:
    if result.truncated:
        err.print(f"[yellow]note:[/] the question was cut to {len(result.query)} characters")
    if not result.hits:
        out.print("No passage matches (or none you may see).")
    for rank, hit in enumerate(result.hits, start=1):
        c = hit.chunk
        where = " › ".join(p for p in (c.title, c.heading) if p)
        out.print(f"[bold]{rank}. {where}[/]  [dim]{c.doc_id}  score {hit.score:.3f}[/]", highlight=False)
        if c.url:
            out.print(f"   {c.url}", highlight=False)
        excerpt = " ".join(c.text.split())
        out.print(f"   {excerpt[:300]}{'…' if len(excerpt) > 300 else ''}", highlight=False)
    for fact in result.user_facts:
        out.print(f"[dim]about you: {fact}[/]", highlight=False)
    verdict = "confident" if result.confident else "not confident: the knowledge base may not cover this"
    out.print(f"[dim]confidence {result.confidence:.2f} ({verdict}) · knowledge base v{result.kb_version}[/]")


@app.command(epilog='Example: deskmate search "How do I reset my password?" --user ana@example.com --k 3')
def search(
    question: Annotated[str | None, typer.Argument(help="Leave out for an interactive prompt.")] = None,
    user: Annotated[str | None, typer.Option(help="Search as this user (email): their groups and context.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, max=50, help="How many passages.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Search the knowledge base as a user would see it."""

    async def one(r: Retrieval, text: str, groups: tuple[str, ...], key: str | None) -> None:
        try:
            result = await r.searcher.search(text, groups=groups, k=k, user_key=key)
        except QueryError as exc:
            if as_json:
                print(json.dumps({"error": str(exc)}))
            else:
                err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        if as_json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            _print_result(result)

    async def work(r: Retrieval) -> None:
        groups: tuple[str, ...] = ()
        key = None
        if user:
            profile = await r.store.get_user(user.strip().lower())
            if profile is None:
                err.print(
                    f"[red]error:[/] unknown user {user!r}: import the directory with `deskmate users import FILE`"
                )
                raise typer.Exit(2)
            groups, key = profile.groups, profile.key
        if question is not None:
            await one(r, question, groups, key)
            return
        out.print("Ask the knowledge base (empty line or Ctrl-D to quit).")
        while True:
            try:
                text = await asyncio.to_thread(input, "? ")
            except (EOFError, KeyboardInterrupt):
                break
            if not text.strip():
                break
            try:
                await one(r, text, groups, key)
            except typer.Exit:
                continue

    _run(work)


@kb_app.command("stats")
def kb_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Documents, chunks and users in the knowledge store."""
    settings = Settings()

    async def work(r: Retrieval) -> StoreStats:
        return await r.store.stats()

    stats = _run(work)
    data = {
        "store": settings.resolved_store_url(),
        "embedding_model": settings.embedding_model or "all-MiniLM-L6-v2 (bundled)",
        "documents": stats.documents,
        "chunks": stats.chunks,
        "users": stats.users,
        "kb_version": stats.kb_version,
        "chunks_by_group": stats.chunks_by_group,
    }
    if as_json:
        print(json.dumps(data))
        return
    table = Table(show_header=False, box=None)
    for name, value in data.items():
        shown = ", ".join(f"{g}: {n}" for g, n in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(name.replace("_", " "), shown)
    out.print(table)


@users_app.command("import", epilog="Example: deskmate users import examples/users.csv")
def users_import(path: Annotated[Path, typer.Argument(help="CSV or JSON directory file.")]) -> None:
    """Import employees (email, name, department, location, role, groups, devices)."""
    try:
        directory = load_directory(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        err.print(f"[red]error:[/] cannot read {path}: {exc}")
        raise typer.Exit(2) from None
    for row, reason in directory.errors:
        err.print(f"[yellow]skipped[/] row {row}: {reason}")

    async def work(r: Retrieval) -> int:
        return await import_users(directory.profiles, r.store, r.embedder)

    count = _run(work)
    out.print(f"imported {count} users, {len(directory.errors)} rows skipped")
    if directory.errors:
        raise typer.Exit(1)


# --- answering -------------------------------------------------------------------------------


def _run_deskmate(work: Callable[[Deskmate], Awaitable[T]]) -> T:
    """Every part: retrieval, ledger, generator, orchestrator."""
    return _run_with(open_deskmate, work)


async def _cli_message(d: Deskmate, user: str | None, text: str, thread: str) -> IncomingMessage:
    if not user:
        return IncomingMessage(platform="cli", user_key="cli:local", text=text, channel="cli", thread_id=thread)
    profile = await d.retrieval.store.get_user(user.strip().lower())
    if profile is None:
        err.print(f"[red]error:[/] unknown user {user!r}: import the directory with `deskmate users import FILE`")
        raise typer.Exit(2)
    return IncomingMessage(
        platform="cli",
        user_key=profile.key,
        user_name=profile.name,
        text=text,
        channel="cli",
        thread_id=thread,
        groups=profile.groups,
        private=True,
    )


async def _stream_answer(d: Deskmate, message: IncomingMessage, as_json: bool) -> str:
    """Print one turn as it streams; returns its outcome."""
    streamed = ""
    async for event in d.orchestrator.handle(message):
        if isinstance(event, Status) and not as_json:
            err.print(f"[dim]{event.text}[/]")
        elif isinstance(event, Delta):
            streamed += event.text
            if not as_json:
                out.print(event.text, end="", highlight=False)
        elif isinstance(event, Done):
            answer = event.answer
            if as_json:
                print(json.dumps(answer.to_dict(), ensure_ascii=False))
                return answer.outcome
            # The final text may add to what streamed (who to ask) or replace it (an apology).
            rest = answer.text[len(streamed) :] if answer.text.startswith(streamed) else "\n" + answer.text
            out.print(rest, highlight=False)
            for source in answer.sources:
                where = " › ".join(p for p in (source.title, source.heading) if p)
                out.print(f"[dim]source:[/] {where}  {source.url}", highlight=False)
            if answer.notice:
                err.print(f"[yellow]note:[/] {answer.notice}")
            adapter = f" + {answer.adapter_version}" if answer.adapter_version else ""
            out.print(
                f"[dim]ref {answer.reference} · {answer.outcome}{' (cached)' if answer.cache_hit else ''}"
                f" · {answer.model}{adapter}[/]",
                highlight=False,
            )
            return answer.outcome
    return "failed"


@app.command(epilog='Example: deskmate ask "Can I expense a monitor?" --user ana@example.com --json')
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    user: Annotated[str | None, typer.Option(help="Ask as this user (email): their groups and context.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Ask one question and stream the answer with its sources."""

    async def work(d: Deskmate) -> str:
        return await _stream_answer(d, await _cli_message(d, user, question, "ask"), as_json)

    outcome = _run_deskmate(work)
    if outcome == "failed":
        raise typer.Exit(1)


@app.command(epilog="Example: deskmate chat --user ana@example.com")
def chat(
    user: Annotated[str | None, typer.Option(help="Chat as this user (email).")] = None,
) -> None:
    """A conversation in the terminal: follow-up questions keep their context."""
    import uuid

    async def work(d: Deskmate) -> None:
        thread = str(uuid.uuid4())
        out.print("Chat with Deskmate (empty line or Ctrl-D to quit).")
        while True:
            try:
                text = await asyncio.to_thread(input, "you> ")
            except (EOFError, KeyboardInterrupt):
                break
            if not text.strip():
                break
            out.print("[bold]deskmate>[/] ", end="")
            await _stream_answer(d, await _cli_message(d, user, text, thread), False)

    _run_deskmate(work)


# --- roles, the console, ratings, forgetting -------------------------------------------------


@roles_app.command("list")
def roles_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every rule that makes someone a support lead or an admin (settings and roles file)."""

    settings = Settings()
    try:
        rows = roles_from_settings(settings).rows()
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/] cannot read the roles file: {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps([{"role": r, "kind": k, "who": w} for r, k, w in rows]))
        return
    if not rows:
        out.print(
            "No leads or admins yet: set DESKMATE_LEADS / DESKMATE_ADMINS or DESKMATE_ROLES_FILE. "
            "Everyone else is an employee."
        )
        return
    table = Table("role", "by", "who")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    source = f" and {settings.roles_file}" if settings.roles_file else ""
    out.print(f"[dim]from settings{source}; everyone else is an employee[/]")


@console_app.command("token")
def console_token(
    user: Annotated[
        str | None,
        typer.Option(help="Sign this email in (its role comes from the roles). Without it: the first-start admin."),
    ] = None,
) -> None:
    """A one-time sign-in token for the console, valid for a day. Shown once, stored hashed."""

    settings = Settings()
    token = _run_with(open_ledger, lambda ledger: issue_token(ledger, user))
    who = user or f"{LOCAL_ADMIN} (admin)"
    out.print(f"Sign-in token for {who}, valid once within 24 hours:\n\n  {token}\n", highlight=False)
    out.print(f"Open http://{settings.host}:{settings.port}/console/login and paste it.", highlight=False)


@export_app.command(
    "ratings",
    epilog="Example: deskmate export ratings --out ratings.csv --format csv --since 2026-11-01 --platform slack",
)
def export_ratings(
    out_path: Annotated[Path, typer.Option("--out", help="File to write.")] = Path("ratings.jsonl"),
    fmt: Annotated[ExportFormat, typer.Option("--format", help="The file's format.")] = ExportFormat.jsonl,
    since: Annotated[str | None, typer.Option(help="From this day (YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option(help="Up to and including this day.")] = None,
    platform: Annotated[PlatformName | None, typer.Option(help="Only turns asked on this platform.")] = None,
    verdict: Annotated[str | None, typer.Option(help="Only turns with this verdict.")] = None,
    support: Annotated[
        Support | None, typer.Option(help="Only answers with unsupported sentences, or only fully supported ones.")
    ] = None,
) -> None:
    """Write the rated turns (what retraining reads): prompt as served, answer, correction,
    latest lead score and verdict, thumbs. No user identities."""
    filters = Filters.from_query(
        {
            "since": since or "",
            "until": until or "",
            "platform": platform.value if platform else "",
            "verdict": verdict or "",
            "support": support.value if support else "",
        }
    )

    async def work(ledger: Ledger) -> int:
        count = 0
        tmp = out_path.with_suffix(out_path.suffix + ".part")
        with open(tmp, "w", encoding="utf-8", newline="") as f:  # noqa: ASYNC230 (a CLI run, nothing else waits)
            if fmt is ExportFormat.csv:
                f.write(csv_header())
            async for record in rated_turns(ledger, filters):
                f.write(to_jsonl(record) if fmt is ExportFormat.jsonl else to_csv_row(record))
                count += 1
        tmp.replace(out_path)
        return count

    count = _run_with(open_ledger, work)
    out.print(f"{count} rated turns written to {out_path}", highlight=False)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@app.command(epilog="Example: deskmate calibrate   ·   deskmate calibrate --answered 0.95 --json")
def calibrate(
    answered: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of approved answers that must still be answered.")
    ] = 0.9,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Calibrate DESKMATE_ANSWERABLE_MIN on the turns leads rated: for each threshold, the share
    of "should not answer" turns Deskmate would decline and of approved answers it would keep."""

    async def work(ledger: Ledger) -> Calibration:
        refuse, good = await labelled_scores(ledger)
        return calibration_of(refuse, good, answered_target=answered)

    result = _run_with(open_ledger, work)
    if as_json:
        out.print_json(data=asdict(result))
        return
    out.print(
        f"{result.should_not_answer} turns rated 'should not answer', {result.good} approved answers "
        f"(current threshold {Settings().answerable_min:.2f})",
        highlight=False,
    )
    table = Table("threshold", "declined (should not answer)", "answered (approved)")
    for point in result.points:
        table.add_row(f"{point.threshold:.2f}", _share(point.declined), _share(point.answered))
    out.print(table)
    if result.recommended is None:
        out.print("Not enough rated turns of both kinds to recommend a threshold.", highlight=False)
    else:
        out.print(f"Recommended: DESKMATE_ANSWERABLE_MIN={result.recommended:.2f}", highlight=False)


@app.command(epilog="Example: deskmate retrain --dry-run   ·   deskmate retrain   ·   deskmate jobs list")
def retrain(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build and show the training set only.")] = False,
    include_restricted: Annotated[
        bool, typer.Option(help="Keep turns whose context held a document restricted to an access group.")
    ] = False,
    steps: Annotated[int, typer.Option(help="Stop training after this many steps (0: the configured epochs).")] = 0,
    actor: Annotated[str, typer.Option(help="Who is asking (recorded with the job and the adapter).")] = "cli",
) -> None:
    """Retrain from the rated turns, here and now: training set, LoRA training, the evaluation
    gate against the live adapter, and promotion if it wins. Progress is shown and recorded."""

    settings = Settings()
    params: dict[str, Any] = {"dataset": {"include_restricted": include_restricted}}
    if steps:
        params["train"] = {"max_steps": steps}

    async def work(d: Records) -> Any:
        try:
            job = await jobs.create_job(d.ledger, KIND, actor, {"dry_run": dry_run, **params})
        except jobs.JobBusy as exc:
            err.print(f"[red]Not started:[/] {exc}")
            raise typer.Exit(1) from None
        task = asyncio.create_task(Retrainer(settings, d.ledger, d.retrieval).run(job.id))
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            shown = bar.add_task("queued", total=1.0)
            while not task.done():
                await asyncio.wait([task], timeout=1.0)
                row = await jobs.get_job(d.ledger, job.id)
                if row is not None:
                    bar.update(shown, completed=row.progress, description=row.stage or row.status)
        return await task

    job = _run_with(open_records, work)
    out.print(describe_job(job), highlight=False)
    folder = (job.result or {}).get("folder") or str(settings.resolved_jobs_dir() / job.id)
    if dry_run and (Path(folder) / "dataset" / "card.md").is_file():
        out.print((Path(folder) / "dataset" / "card.md").read_text(), highlight=False)
    out.print(f"job folder: {folder}", highlight=False)
    if job.status != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list() -> None:
    """Recent jobs, newest first."""

    rows = _run_with(open_ledger, lambda ledger: list_jobs(ledger))
    if not rows:
        out.print("No jobs yet.")
    for job in rows:
        out.print(f"{job.created_at:%Y-%m-%d %H:%M} {describe_job(job)}", highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="Job id (or its first 8 characters).")]) -> None:
    """Stop a job at its next training step; its checkpoint is kept."""

    job = _run_with(open_ledger, lambda ledger: request_cancel(ledger, job_id))
    if job is None:
        err.print(f"[red]No job {job_id!r}.[/]")
        raise typer.Exit(1)
    out.print(f"job {job.id[:8]}: {job.status}", highlight=False)


def _adapter_call(action: Callable[[Records, Registry, Generator], Awaitable[T]]) -> T:
    """Run an adapters action with the ledger, the registry and a generator of the serving kind."""

    settings = Settings()

    async def work(d: Records) -> T:
        generator = generator_from_settings(settings)
        try:
            return await action(d, Registry(settings.resolved_adapters_dir()), generator)
        finally:
            await generator.close()

    try:
        return _run_with(open_records, work)
    except PromotionRefused as exc:
        err.print(f"[red]Refused, nothing changed:[/] {exc}")
        raise typer.Exit(1) from None


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version: live, candidate (passed the gate), rejected or retired."""

    async def work(d: Records, _registry: Registry, _generator: Generator) -> str:
        return describe_adapters(await list_adapters(d.ledger), await live_adapter(d.ledger))

    out.print(_adapter_call(work), highlight=False)


@adapters_app.command("show")
def adapters_show(name: Annotated[str, typer.Argument(help="Adapter version.")]) -> None:
    """Its metadata: base model, dataset card, training config and evaluation report."""

    try:
        info = Registry(Settings().resolved_adapters_dir()).get(name)
    except AdapterInvalid as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    out.print_json(json.dumps(info.metadata, default=str))


@adapters_app.command("lora-env")
def adapters_lora_env(
    root: Annotated[str, typer.Option(help="Where the model server mounts the adapter registry.")] = "/shared/adapters",
    previous: Annotated[int, typer.Option(help="Earlier live versions to keep loaded (for rollback).")] = 2,
    candidates: Annotated[int, typer.Option(help="Newest gate-passing candidates to preload.")] = 2,
) -> None:
    """Print the LORA_ADAPTERS value for TGI (which loads adapters only at start-up): feed it to
    the TGI deployment's ConfigMap, roll TGI, then promote (deploy/README.md)."""

    async def work(d: Records, _registry: Registry, _generator: Generator) -> list[str]:
        return await to_serve(d.ledger, previous=previous, candidates=candidates)

    print(lora_adapters_value(_adapter_call(work), root))


@adapters_app.command(
    "promote",
    epilog="Example: deskmate adapters list   ·   deskmate adapters promote <name>   ·   deskmate adapters rollback",
)
def adapters_promote(
    name: Annotated[str, typer.Argument(help="Adapter version.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even though the gate rejected it.")] = False,
    actor: Annotated[str, typer.Option(help="Who is promoting (recorded).")] = "cli",
) -> None:
    """Put an adapter live (running servers pick it up within seconds)."""

    async def work(d: Records, registry: Registry, generator: Generator) -> str:
        info = await promote(d.ledger, registry, name, actor=actor, generator=generator, force=force)
        return info.name

    out.print(f"{_adapter_call(work)} is live.", highlight=False)


@adapters_app.command("rollback")
def adapters_rollback(actor: Annotated[str, typer.Option(help="Who is rolling back (recorded).")] = "cli") -> None:
    """Put back what was live before the current adapter."""

    async def work(d: Records, registry: Registry, generator: Generator) -> str:
        return await rollback(d.ledger, registry, actor=actor, generator=generator)

    target = _adapter_call(work)
    out.print(f"Rolled back: {target or 'the base model'} is live.", highlight=False)


@app.command()
def worker() -> None:
    """Run retraining jobs from the Redis queue (DESKMATE_JOB_QUEUE=redis)."""
    from redis import Redis
    from rq import Queue, Worker

    settings = Settings()
    if not settings.cache_url.startswith(("redis://", "rediss://")):
        err.print("[red]deskmate worker needs DESKMATE_CACHE_URL=redis://…[/] (the queue lives in Redis)")
        raise typer.Exit(2)
    # Jobs whose runner died are put back on the queue by the bot replicas' sweep (bot/replicas.py).
    queue = queue_name(settings.cache_prefix)
    connection = Redis.from_url(settings.cache_url)
    out.print(f"deskmate worker: waiting for jobs on the '{queue}' queue", highlight=False)
    Worker([Queue(queue, connection=connection)], connection=connection).work(with_scheduler=False)


@app.command(epilog="Example: deskmate forget ana@example.com --yes")
def forget(
    user: Annotated[str, typer.Argument(help="The person's email (user key).")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a person everywhere: ledger, spool and dead letters, job folders, adapter cards,
    cache (running servers' too, within a heartbeat) and store. Prints each place and its count,
    and what it could not reach."""

    if not yes and not typer.confirm(f"Remove everything Deskmate keeps about {user}? This cannot be undone"):
        raise typer.Exit(1)
    report = _run_with(open_records, lambda d: forget_person(d, user))
    for name, value in report.items():
        shown = (", ".join(map(str, value)) or "none") if isinstance(value, list) else value
        out.print(f"{name.replace('_', ' ')}: {shown}", highlight=False)


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def bound_addresses(runner: object) -> list[tuple[str, int]]:
    """(address, port) of every socket the server really listens on (a wildcard bind shows as
    0.0.0.0 or ::, which is what an operator must see)."""
    found = []
    for address in getattr(runner, "addresses", []):
        if isinstance(address, tuple) and len(address) >= 2:
            found.append((str(address[0]), int(address[1])))
    return found


def platform_lines(settings: Settings, faces: Exposure, base: str) -> list[str]:
    """One line per face: how it is connected and who can reach it, or what to set."""
    if settings.slack_bot_token is None:
        slack = "Slack: off (put SLACK_BOT_TOKEN and SLACK_APP_TOKEN in .env; see README, Install in Slack)"
    elif settings.slack_app_token is not None:
        slack = "Slack: Socket Mode (connecting; the log says when it is connected)"
        if settings.slack_signing_secret is not None:
            slack += f", and HTTP events at {base}/slack/events"
    elif settings.slack_signing_secret is not None:
        slack = f"Slack: HTTP events at {base}/slack/events"
    else:
        slack = "Slack: SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN nor SLACK_SIGNING_SECRET: not connected"
    if faces.teams == "authenticated":
        teams = f"Teams: {base}/api/messages (Bot Framework JWT checked for app {settings.teams_app_id})"
        if settings.teams_tenants:
            teams += f", tenants {', '.join(settings.teams_tenants)} only"
    elif faces.teams_open:
        teams = (
            f"Teams: {base}/api/messages is OPEN without authentication (DESKMATE_TEAMS_DEV_OPEN, "
            "loopback only): local development and the Bot Framework Emulator"
        )
    else:
        teams = "Teams: off (set DESKMATE_TEAMS_APP_ID and DESKMATE_TEAMS_APP_PASSWORD; see README, Install in Teams)"
    web_chat = (
        f"Web chat: {base}/ (anyone who can open it may ask as anyone in the directory)"
        if faces.web_chat
        else "Web chat: off (it is served on loopback only unless DESKMATE_WEB_CHAT says otherwise)"
    )
    if settings.console_auth_header:
        console = f"Review console: {base}/console (signed in by the proxy's {settings.console_auth_header})"
    else:
        console = f"Review console: {base}/console (sign in with a token from `deskmate console token`)"
    return [slack, teams, web_chat, console]


@app.command(
    epilog="Example: deskmate serve   ·   deskmate serve --host 0.0.0.0 --port 8080 (needs the platforms' credentials: see README, Security)"
)
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default from settings: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run the server: the console, /healthz, /readyz, /metrics, the platform endpoints, and on
    loopback the web chat at /. Refuses to start when the settings would expose a face that
    authenticates nobody beyond loopback, and says what to set."""
    import gc
    import signal

    from aiohttp import web

    from bot.server import build_ops_app, build_web_app  # lazy: the Slack and Teams SDKs, for `serve` only

    settings = Settings()
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    settings = settings.model_copy(update=updates)
    try:
        faces = exposure(settings)
    except StartupRefused as refusal:
        err.print(f"[red]Deskmate did not start:[/] {refusal}", highlight=False)
        raise typer.Exit(2) from None

    async def main() -> None:
        deskmate = await open_deskmate(settings, patient=True)
        if isinstance(deskmate.generator, LlamaCppGenerator):
            await deskmate.generator.load()  # the first question should not wait for it
        runner = web.AppRunner(build_web_app(deskmate), access_log=None)
        await runner.setup()
        ops_runner = None
        if settings.ops_port:
            ops_runner = web.AppRunner(build_ops_app(deskmate), access_log=None)
            await ops_runner.setup()
        # Everything loaded so far (models, libraries) lives as long as the process: keeping it
        # out of the garbage collector's full passes removes pauses of a tenth of a second or
        # more that would otherwise land on whichever request is in flight.
        gc.collect()
        gc.freeze()
        await web.TCPSite(runner, settings.host, settings.port).start()
        bound = bound_addresses(runner)
        base = _url(*bound[0]) if bound else _url(settings.host, settings.port)
        out.print(
            f"Deskmate is running: {', '.join(_url(*a) for a in bound) or base}  (Ctrl-C to stop)", highlight=False
        )
        if not faces.loopback:
            out.print(
                "  listening beyond loopback: put TLS and a network policy in front (README, Security)", highlight=False
            )
        for line in platform_lines(settings, faces, base):
            out.print(line, highlight=False)
        if ops_runner is not None:
            await web.TCPSite(ops_runner, settings.ops_host, settings.ops_port).start()
            ops = ", ".join(_url(*a) for a in bound_addresses(ops_runner))
            out.print(f"Operations: {ops}/metrics, /readyz, /healthz (not on the main port)", highlight=False)
        else:
            out.print(
                f"Operations: {base}/metrics, /readyz, /healthz"
                + (" (metrics need the bearer token)" if settings.metrics_token else ""),
                highlight=False,
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()  # spooled ledger writes are replayed by the heartbeat (bot/replicas.py)
        finally:
            if ops_runner is not None:
                await ops_runner.cleanup()
            await runner.cleanup()
            await deskmate.close()

    asyncio.run(main())
