"""The review console at `/console`: sign-in, the review queue, one turn with the review form,
the dashboard, the export, and the retraining pages (jobs, their reports, adapter versions).
Server-rendered (Jinja2); the only script is our own small `console.js` (keyboard shortcuts,
live job progress), `dashboard.js` (plots) and the vendored uPlot."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from bot.console.auth import (
    COOKIE,
    LOGIN_COOKIE,
    LOGIN_PATH,
    Sessions,
    Viewer,
    console_secret,
    foreign_origin,
    redeem_token,
)
from bot.console.queries import dashboard, next_unreviewed, queue, turn_view
from bot.console.redaction import Lens, Person, Pseudonyms, Reader, queue_match
from bot.deskmate import Deskmate
from bot.feedback.export import csv_header, rated_turns, to_csv_row, to_jsonl
from bot.feedback.ratings import VERDICTS, Rating, RatingRefused, submit, unchanged
from bot.feedback.roles import Role
from bot.ledger.failures import LEDGER_ERRORS
from bot.ledger.filters import Filters
from bot.ledger.rows import JobRow, TurnRow
from bot.training import adapters, jobs, retrain
from bot.training.commands import describe_job

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
VIEWER = web.RequestKey("console_viewer", Viewer)
# Posts that change what the bot learns or serves: admins only, whatever the page shows.
ADMIN_POSTS = ("/console/jobs", "/console/adapters")
# A job id as the routes accept it: a full UUID or a prefix of one (chat replies show 8
# characters). Nothing else, so no id can name a path outside the jobs folder.
JOB_ID = r"[0-9a-f-]{6,36}"
FIGURES = {
    "token_f1": "token F1",
    "rouge_l": "ROUGE-L",
    "citation_rate": "cites the right document",
    "declined_rate": "declines when it should",
}
# http(s), a host, and nothing a browser would strip or reinterpret (spaces, control characters).
WEB_LINK = re.compile(r"https?://[^\s\x00-\x1f\x7f\\]+", re.IGNORECASE)
NOTICES = {
    "promoted": "Promoted: the next answers come from it. Roll back undoes this.",
    "rolled_back": "Rolled back: what was live before is serving again.",
}
FOREIGN_POST = (
    "This form was sent from another site, so it was not accepted. Use the console's own "
    "pages (behind a proxy that rewrites the host, set DESKMATE_TRUST_FORWARDED_HEADERS "
    "or DESKMATE_ALLOWED_HOSTS)."
)
EXPIRED_FORM = "This form has expired or did not come from the console. Reload the page and try again."
EXPIRED_LOGIN = (
    "This sign-in form has expired or did not come from the console. Your token is still unused: paste it again here."
)
NOT_YOURS_TO_RATE = (
    "You cannot review this answer: its context held passages {marker}. Someone in "
    "that group, or listed in DESKMATE_CONSOLE_SEE_ALL, can."
)
SESSION_CHECK_DOWN = "The ledger database is not reachable, so your sign-in cannot be checked. Try again in a minute."


class Console:
    def __init__(self, deskmate: Deskmate) -> None:
        s = deskmate.settings
        self.deskmate = deskmate
        secret = console_secret(s.console_secret.get_secret_value() if s.console_secret else None, Path(s.data_dir))
        self.sessions = Sessions(secret, s.console_session_hours, deskmate.roles)
        self.see_all = frozenset(u.strip().lower() for u in s.console_see_all if u.strip())
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=jinja2.select_autoescape(["html"])
        )
        self.templates.filters["when"] = lambda d: d.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if d else ""
        self.templates.filters["figure"] = lambda v: f"{v:.3f}" if isinstance(v, int | float) else "n/a"
        self.templates.tests["web_link"] = is_web_link

    # --- who is asking -----------------------------------------------------------------------
    async def viewer(self, request: web.Request) -> Viewer | None:
        s = self.deskmate.settings
        if s.console_auth_header:
            email = request.headers.get(s.console_auth_header, "").strip()
            if email:
                groups = (
                    [g.strip() for g in request.headers.get(s.console_groups_header, "").split(",") if g.strip()]
                    if s.console_groups_header
                    else []
                )
                return self.sessions.viewer_from_proxy(email, groups)
        return await self.sessions.viewer_from_cookie(self.deskmate.ledger, request.cookies.get(COOKIE))

    async def reader(self, viewer: Viewer) -> Reader:
        """The access groups `viewer` reads with: their directory groups and the proxy's, as an
        employee asking Deskmate would; everything when listed in `console_see_all`."""
        if viewer.user_key in self.see_all:
            return Reader.of((), see_all=True)
        try:
            profile = await self.deskmate.retrieval.store.get_user(viewer.user_key)
        except Exception as exc:  # noqa: BLE001 (a store outage shows less, never more)
            log.warning("console.groups_unknown user=%s error=%s", viewer.user_key, type(exc).__name__)
            profile = None
        return Reader.of([*(profile.groups if profile else ()), *viewer.groups], see_all=False)

    async def lens(self, request: web.Request, askers: dict[str, str]) -> Lens:
        """How this request's viewer reads turns asked by `askers` (user key -> name)."""
        reader = await self.reader(request[VIEWER])
        if not self.deskmate.settings.console_pseudonymous:
            return Lens(reader)
        return Lens(reader, Pseudonyms([await self._person(k, n) for k, n in askers.items()]))

    async def _person(self, user_key: str, name: str) -> Person:
        """Everything that names an asker: the name on the turn and the directory's entry."""
        names = [name]
        try:
            profile = await self.deskmate.retrieval.store.get_user(user_key)
        except Exception:  # noqa: BLE001 (without the directory, the turn's own name still goes)
            profile = None
        if profile is not None:
            names += [profile.name, profile.email]
        return Person(user_key, tuple(n for n in names if n), self.sessions.pseudonym(user_key))

    def person(self, user_key: str, name: str = "") -> str:
        if self.deskmate.settings.console_pseudonymous:
            return self.sessions.pseudonym(user_key)
        return f"{name} <{user_key}>" if name else user_key

    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        viewer = request.get(VIEWER)
        values = {
            "viewer": viewer,
            "csrf": self.sessions.csrf_token(viewer) if viewer else "",
            "verdicts": VERDICTS,
            "person": self.person,
            "is_admin": bool(viewer and viewer.role is Role.admin),
            **context,
        }
        html = self.templates.get_template(template).render(**values)
        return web.Response(
            text=html,
            content_type="text/html",
            status=status,
            headers={
                "Cache-Control": "no-store",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'",
            },
        )

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every console post from the console's own origin; sign-in for everything under
        /console except the sign-in page (which has its own CSRF check) and static files; a CSRF
        token on every form post, sign-out included; a lead role for everything but sign-out;
        the admin role for posts that retrain or change the live adapter."""
        path = request.path
        if not path.startswith("/console") or path.startswith("/console/static/"):
            return await handler(request)
        if request.method == "POST":
            why = foreign_origin(
                request.headers.get("Origin"), request.scheme, request.host, self.deskmate.settings.allowed_hosts
            )
            if why:
                log.warning("console.cross_site_refused path=%s %s remote=%s", path, why, request.remote)
                return self.render(request, "error.html", status=403, message=FOREIGN_POST)
        if path.startswith(LOGIN_PATH):
            return await handler(request)
        try:
            viewer = await self.viewer(request)
        except LEDGER_ERRORS as exc:
            log.warning("console.session_check_failed error=%s", type(exc).__name__)
            return self.render(request, "error.html", status=503, message=SESSION_CHECK_DOWN)
        if viewer is None:
            raise web.HTTPFound(LOGIN_PATH)
        request[VIEWER] = viewer
        if request.method == "POST":
            form = await request.post()
            if not self.sessions.csrf_ok(viewer, form.get("csrf")):
                log.warning("console.csrf_refused user=%s path=%s", viewer.user_key, path)
                return self.render(request, "error.html", status=403, message=EXPIRED_FORM)
        if path == "/console/logout":
            return await handler(request)
        if not viewer.can_review:
            log.warning("console.refused user=%s path=%s", viewer.user_key, path)
            return self.render(request, "refused.html", status=403)
        if request.method == "POST" and path.startswith(ADMIN_POSTS) and viewer.role is not Role.admin:
            log.warning("console.admin_refused user=%s path=%s", viewer.user_key, path)
            return self.render(
                request,
                "error.html",
                status=403,
                message="Only admins can retrain Deskmate or change its adapters. "
                "Ask an admin (`deskmate roles list` shows who).",
            )
        return await handler(request)

    # --- signing in and out --------------------------------------------------------------------
    def login_form(self, request: web.Request, *, status: int = 200, error: str = "") -> web.Response:
        """The sign-in page with its pre-session cookie (kept if the browser has one) and the
        signed copy of it that the form must send back."""
        nonce = Sessions.login_nonce(request.cookies.get(LOGIN_COOKIE))
        response = self.render(
            request,
            "login.html",
            status=status,
            error=error,
            csrf=self.sessions.login_csrf(nonce),
            proxy=bool(self.deskmate.settings.console_auth_header),
        )
        response.set_cookie(
            LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", secure=request.secure, path=LOGIN_PATH
        )
        return response

    async def login_page(self, request: web.Request) -> web.Response:
        return self.login_form(request)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not self.sessions.login_csrf_ok(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            log.warning("console.login_csrf_refused remote=%s", request.remote)
            return self.login_form(request, status=403, error=EXPIRED_LOGIN)
        token = str(form.get("token", ""))[:200]
        redeemed = await redeem_token(self.deskmate.ledger, token) if token.startswith("dmt_") else None
        if redeemed is None:
            log.warning("console.login_refused remote=%s", request.remote)
            return self.login_form(
                request,
                status=401,
                error="That token is not valid: it may "
                "be mistyped, used already, or older than a day. Ask an admin for a new one.",
            )
        user_key, fixed_role = redeemed
        cookie = await self.sessions.start(self.deskmate.ledger, user_key, fixed_role)
        response = web.HTTPFound("/console/queue")
        response.set_cookie(
            COOKIE,
            cookie,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/console",
            max_age=self.sessions.max_age,
        )
        response.del_cookie(LOGIN_COOKIE, path=LOGIN_PATH)
        log.info("console.login user=%s secure=%s", user_key, request.secure)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        viewer: Viewer = request[VIEWER]
        revoked = await self.sessions.revoke(self.deskmate.ledger, viewer)
        log.info("console.logout user=%s revoked=%s", viewer.user_key, revoked)
        response = web.HTTPFound(LOGIN_PATH)
        response.del_cookie(COOKIE, path="/console")
        raise response

    # --- reviewing -------------------------------------------------------------------------------
    async def queue_page(self, request: web.Request) -> web.Response:
        filters = Filters.from_query(request.query)
        raw_page = request.query.get("page", "")
        page = int(raw_page) if raw_page.isdigit() else 0
        rows, more = await queue(self.deskmate.ledger, filters, page)
        lens = await self.lens(request, {r.turn.user_key: r.turn.user_name for r in rows})
        shown = [(lens.turn(r.turn, brief=True), r) for r in rows]
        shown = [(t, r) for t, r in shown if queue_match(t, filters.text, r.turn.question)]
        return self.render(
            request, "queue.html", rows=shown, filters=filters, page=page, more=more, query=filters.as_query()
        )

    async def turn_page(
        self, request: web.Request, *, error: str = "", saved: bool = False, status: int = 200
    ) -> web.Response:
        view = await turn_view(self.deskmate.ledger, request.match_info["turn_id"])
        if view is None:
            return self.render(
                request, "error.html", status=404, message="No such answer: it may have been forgotten on request."
            )
        lens = await self.lens(request, {t.user_key: t.user_name for t in (*view.before, view.turn)})
        shown = lens.turn(view.turn)
        return self.render(
            request,
            "turn.html",
            t=shown,
            before=[lens.turn(b) for b in view.before],
            ratings=lens.ratings(shown, view.ratings),
            next_id=view.next_id,
            not_yours=NOT_YOURS_TO_RATE.format(marker=shown.marker.strip("[]")),
            error=error,
            saved=saved,
            status=status,
            post_corrections=self.deskmate.settings.post_corrections,
        )

    async def rate(self, request: web.Request) -> web.Response:
        viewer: Viewer = request[VIEWER]
        form = await request.post()
        turn_id = request.match_info["turn_id"]
        turn = await self.deskmate.ledger.get_turn(turn_id)
        if turn is not None and (hidden := (await self.reader(viewer)).restricted(turn.retrieved)):
            # Rating an answer one may not read would be rating it blind (and training learns it).
            log.warning("console.rate_refused turn=%s by=%s restricted=%s", turn_id, viewer.user_key, ",".join(hidden))
            return await self.turn_page(request, status=403)
        correction = str(form.get("correction", ""))
        if turn is not None and unchanged(correction, turn.answer):
            correction = ""
        try:
            score_text = str(form.get("score", "")).strip()
            rating = Rating(
                turn_id=turn_id,
                rater_key=viewer.user_key,
                role=viewer.role,
                platform="console",
                score=int(score_text) if score_text else None,
                verdict=str(form.get("verdict", "")).strip() or None,
                note=str(form.get("note", "")),
                correction=correction,
            )
            await submit(self.deskmate.ledger, rating)
        except ValueError as exc:  # RatingRefused, or a score that is not a number
            message = str(exc) if isinstance(exc, RatingRefused) else "The score must be a whole number from 1 to 5."
            return await self.turn_page(request, error=message, status=400)
        log.info("console.rated turn=%s by=%s", turn_id, viewer.user_key)
        posted = await self._post_correction(turn, rating, form.get("post_correction") == "on")
        if posted is False:
            return await self.turn_page(
                request,
                saved=True,
                error="Saved, but the correction could not be posted in the conversation (see the server log).",
            )
        if form.get("then") == "next" and (next_id := await next_unreviewed(self.deskmate.ledger, turn_id)):
            raise web.HTTPSeeOther(f"/console/turns/{next_id}?saved=1")
        raise web.HTTPSeeOther(f"/console/turns/{turn_id}?saved=1")

    async def _post_correction(self, turn: TurnRow | None, rating: Rating, wanted: bool) -> bool | None:
        """Post a changed answer where it was asked, through the platform's adapter; None when
        there was nothing to post (no correction, not wanted, or a platform without a thread)."""
        if not wanted or not rating.correction or turn is None:
            return None
        corrector = self.deskmate.correctors.get(turn.platform)
        if corrector is None:
            return None
        return await corrector(turn, rating.correction)

    async def turn_get(self, request: web.Request) -> web.Response:
        return await self.turn_page(request, saved=request.query.get("saved") == "1")

    async def dashboard_page(self, request: web.Request) -> web.Response:
        data = await dashboard(self.deskmate.ledger)
        if self.deskmate.settings.console_pseudonymous:
            lens = await self.lens(request, {u.user_key: u.user_name for u in data.unanswered})
            for item in data.unanswered:
                item.question = lens.text(item.question) or ""
        series = {
            "days": data.days,
            "turns": data.turns_by_platform,
            "thumbs_up": data.thumbs_up,
            "thumbs_down": data.thumbs_down,
            "scores": data.score_by_adapter,
            "latency": data.latency,
        }
        # Escaped so that no value (an adapter name) can close the <script> block it sits in.
        return self.render(request, "dashboard.html", data=data, series=json.dumps(series).replace("<", "\\u003c"))

    async def export(self, request: web.Request) -> web.StreamResponse:
        """The rated turns as the viewer may take them away: redacted to their groups, people
        replaced in pseudonymous mode, and (CSV) no cell a spreadsheet would run."""
        fmt = request.match_info["fmt"]
        filters = Filters.from_query(request.query)
        reader = await self.reader(request[VIEWER])
        pseudonymous = self.deskmate.settings.console_pseudonymous
        people: dict[str, Pseudonyms] = {}
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="deskmate-ratings.{fmt}"',
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        if fmt == "csv":
            await response.write(csv_header().encode())
        count = redacted = 0
        async for record in rated_turns(self.deskmate.ledger, filters, asker=True):
            asker = record.pop("asker")
            pseudonyms = None
            if pseudonymous:
                key = asker["user_key"]
                if key not in people:
                    people[key] = Pseudonyms([await self._person(key, asker["user_name"])])
                pseudonyms = people[key]
            shown = Lens(reader, pseudonyms).record(record, facts=asker["user_facts"])
            if (
                shown["redacted"]
                and filters.text
                and filters.text.lower() not in (record.get("question") or "").lower()
            ):
                # As in the queue: a restricted turn matches a search on its question only, so
                # an export cannot confirm guesses at the hidden answer one word at a time.
                continue
            await response.write((to_jsonl(shown) if fmt == "jsonl" else to_csv_row(shown)).encode())
            count += 1
            redacted += bool(shown["redacted"])
        await response.write_eof()
        log.info(
            "console.export user=%s format=%s records=%d redacted=%d", request[VIEWER].user_key, fmt, count, redacted
        )
        return response

    # --- retraining ----------------------------------------------------------------------------
    async def jobs_page(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        recent = await jobs.list_jobs(self.deskmate.ledger, limit=30)
        return self.render(
            request,
            "jobs.html",
            jobs=recent,
            active_states=jobs.ACTIVE,
            describe=describe_job,
            error=error,
            status=status,
        )

    async def start_job(self, request: web.Request) -> web.Response:
        viewer: Viewer = request[VIEWER]
        form = await request.post()
        d = self.deskmate
        try:
            job = await retrain.start(d.settings, d.ledger, d.jobs, viewer.user_key, dry_run=bool(form.get("dry_run")))
        except jobs.JobBusy as exc:
            return await self.jobs_page(request, error=f"Not started: {exc}.", status=409)
        log.info("console.retrain job=%s by=%s dry_run=%s", job.id, viewer.user_key, job.params.get("dry_run"))
        raise web.HTTPSeeOther(f"/console/jobs/{job.id}")

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = await jobs.request_cancel(self.deskmate.ledger, request.match_info["job_id"])
        if job is None:
            return self._no_job(request)
        log.info("console.cancel job=%s by=%s status=%s", job.id, request[VIEWER].user_key, job.status)
        raise web.HTTPSeeOther(f"/console/jobs/{job.id}")

    async def job_page(self, request: web.Request) -> web.Response:
        job = await jobs.get_job(self.deskmate.ledger, request.match_info["job_id"])
        if job is None:
            return self._no_job(request)
        folder = self._folder(job)
        report = _read_json(folder / "report.json")
        return self.render(
            request,
            "job.html",
            job=job,
            active_states=jobs.ACTIVE,
            summary=describe_job(job),
            params=json.dumps(job.params or {}, indent=2, sort_keys=True),
            card=_read_text(folder / "dataset" / "card.md"),
            report=report,
            plot=(folder / "report.png").is_file(),
            figures=FIGURES,
        )

    async def job_json(self, request: web.Request) -> web.Response:
        """What the page's progress bar polls while a job runs."""
        job = await jobs.get_job(self.deskmate.ledger, request.match_info["job_id"])
        if job is None:
            return web.json_response({"error": "no such job"}, status=404)
        return web.json_response(
            {
                "id": job.id,
                "status": job.status,
                "stage": job.stage,
                "progress": job.progress,
                "active": job.status in jobs.ACTIVE,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def job_plot(self, request: web.Request) -> web.StreamResponse:
        job = await jobs.get_job(self.deskmate.ledger, request.match_info["job_id"])
        path = self._folder(job) / "report.png" if job else None
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text="No plot for this job.")
        return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "no-store"})

    def _folder(self, job: JobRow) -> Path:
        """The job's own folder; an id that would lead anywhere else is no job at all."""
        root = self.deskmate.settings.resolved_jobs_dir()
        folder = (root / job.id).resolve()
        if folder.parent != root:
            raise web.HTTPNotFound()
        return folder

    def _no_job(self, request: web.Request) -> web.Response:
        return self.render(request, "error.html", status=404, message="No such retraining job.")

    async def adapters_page(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        ledger = self.deskmate.ledger
        return self.render(
            request,
            "adapters.html",
            adapters=await adapters.list_adapters(ledger),
            live=await adapters.live_adapter(ledger),
            events=await adapters.history(ledger),
            notice=NOTICES.get(request.query.get("done", ""), ""),
            error=error,
            status=status,
        )

    async def promote(self, request: web.Request) -> web.Response:
        viewer: Viewer = request[VIEWER]
        form = await request.post()
        d = self.deskmate
        registry = d.registry
        try:
            await adapters.promote(
                d.ledger,
                registry,
                request.match_info["name"],
                actor=viewer.user_key,
                generator=d.generator,
                force=bool(form.get("force")),
            )
        except adapters.PromotionRefused as exc:
            return await self.adapters_page(request, error=f"Not promoted, nothing changed: {exc}", status=409)
        await adapters.apply_live(d.ledger, registry, d.generator)
        raise web.HTTPSeeOther("/console/adapters?done=promoted")

    async def rollback(self, request: web.Request) -> web.Response:
        d = self.deskmate
        registry = d.registry
        try:
            await adapters.rollback(d.ledger, registry, actor=request[VIEWER].user_key, generator=d.generator)
        except adapters.PromotionRefused as exc:
            return await self.adapters_page(request, error=f"Not rolled back, nothing changed: {exc}", status=409)
        await adapters.apply_live(d.ledger, registry, d.generator)
        raise web.HTTPSeeOther("/console/adapters?done=rolled_back")

    async def root(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound("/console/queue")


def add_routes(app: web.Application, deskmate: Deskmate) -> Console:
    console = Console(deskmate)
    app.middlewares.append(console.guard)
    app.router.add_get("/console", console.root)
    app.router.add_get("/console/login", console.login_page)
    app.router.add_post("/console/login", console.login)
    app.router.add_post("/console/logout", console.logout)
    app.router.add_get("/console/queue", console.queue_page)
    app.router.add_get("/console/turns/{turn_id}", console.turn_get)
    app.router.add_post("/console/turns/{turn_id}/rate", console.rate)
    app.router.add_get("/console/dashboard", console.dashboard_page)
    app.router.add_get(r"/console/export.{fmt:jsonl|csv}", console.export)
    app.router.add_get("/console/jobs", console.jobs_page)
    app.router.add_post("/console/jobs", console.start_job)
    app.router.add_get(f"/console/jobs/{{job_id:{JOB_ID}}}", console.job_page)
    app.router.add_get(f"/console/jobs/{{job_id:{JOB_ID}}}.json", console.job_json)
    app.router.add_get(f"/console/jobs/{{job_id:{JOB_ID}}}/report.png", console.job_plot)
    app.router.add_post(f"/console/jobs/{{job_id:{JOB_ID}}}/cancel", console.cancel_job)
    app.router.add_get("/console/adapters", console.adapters_page)
    app.router.add_post("/console/adapters/rollback", console.rollback)
    app.router.add_post("/console/adapters/{name}/promote", console.promote)
    app.router.add_static("/console/static/", HERE / "static")
    return console


def is_web_link(url: object) -> bool:
    """True for an http(s) URL, the only kind the console makes a link of: a knowledge-base
    document's `javascript:` or `data:` url stays text."""
    return isinstance(url, str) and bool(WEB_LINK.fullmatch(url))


def _read_text(path: Path) -> str | None:
    """A job file, or None while the job has not written it (or wrote it only half)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    text = _read_text(path)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
