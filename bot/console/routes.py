"""The review console at `/console`: sign-in, the review queue, one turn with the review form,
the dashboard and the export. Server-rendered (Jinja2); the only script is our own small
`console.js` (keyboard shortcuts, plots) and the vendored uPlot."""

from __future__ import annotations

import json
import logging
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from bot.console.auth import COOKIE, Sessions, Viewer, console_secret, redeem_token
from bot.console.queries import Filters, dashboard, next_unreviewed, queue, turn_view
from bot.export import csv_header, rated_turns, to_csv_row, to_jsonl
from bot.ledger import TurnRow
from bot.ratings import VERDICTS, Rating, RatingRefused, submit, unchanged

if TYPE_CHECKING:
    from bot.app import Deskmate

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
VIEWER = web.RequestKey("console_viewer", Viewer)


class Console:
    def __init__(self, deskmate: Deskmate) -> None:
        s = deskmate.settings
        self.deskmate = deskmate
        secret = console_secret(s.console_secret.get_secret_value() if s.console_secret else None, Path(s.data_dir))
        self.sessions = Sessions(secret, s.console_session_hours, deskmate.roles)
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=jinja2.select_autoescape(["html"]))
        self.templates.filters["when"] = lambda d: d.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if d else ""

    # --- who is asking -----------------------------------------------------------------------
    def viewer(self, request: web.Request) -> Viewer | None:
        s = self.deskmate.settings
        if s.console_auth_header:
            email = request.headers.get(s.console_auth_header, "").strip()
            if email:
                groups = [g.strip() for g in request.headers.get(s.console_groups_header, "").split(",")
                          if g.strip()] if s.console_groups_header else []
                return self.sessions.viewer_from_proxy(email, groups)
        return self.sessions.viewer_from_cookie(request.cookies.get(COOKIE))

    def person(self, user_key: str, name: str = "") -> str:
        if self.deskmate.settings.console_pseudonymous:
            return self.sessions.pseudonym(user_key)
        return f"{name} <{user_key}>" if name else user_key

    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        viewer = request.get(VIEWER)
        html = self.templates.get_template(template).render(
            viewer=viewer, csrf=self.sessions.csrf_token(viewer) if viewer else "", verdicts=VERDICTS,
            person=self.person, **context)
        return web.Response(text=html, content_type="text/html", status=status,
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                     "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"})

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Sign-in for everything under /console except the sign-in page and static files; a
        lead role for everything else; a CSRF token on every form post."""
        path = request.path
        if not path.startswith("/console") or path.startswith(("/console/static/", "/console/login")):
            return await handler(request)
        viewer = self.viewer(request)
        if viewer is None:
            raise web.HTTPFound("/console/login")
        request[VIEWER] = viewer
        if not viewer.can_review:
            log.warning("console.refused user=%s path=%s", viewer.user_key, path)
            return self.render(request, "refused.html", status=403)
        if request.method == "POST" and path != "/console/logout":
            form = await request.post()
            if not self.sessions.csrf_ok(viewer, form.get("csrf")):
                log.warning("console.csrf_refused user=%s path=%s", viewer.user_key, path)
                return self.render(request, "error.html", status=403,
                                   message="This form has expired or did not come from the console. "
                                           "Reload the page and try again.")
        return await handler(request)

    # --- pages -------------------------------------------------------------------------------
    async def login_page(self, request: web.Request) -> web.Response:
        return self.render(request, "login.html", proxy=bool(self.deskmate.settings.console_auth_header))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))[:200]
        redeemed = await redeem_token(self.deskmate.ledger, token) if token.startswith("dmt_") else None
        if redeemed is None:
            log.warning("console.login_refused remote=%s", request.remote)
            return self.render(request, "login.html", status=401, error="That token is not valid: it may "
                               "be mistyped, used already, or older than a day. Ask an admin for a new one.")
        user_key, fixed_role = redeemed
        response = web.HTTPFound("/console/queue")
        response.set_cookie(COOKIE, self.sessions.cookie_for(user_key, fixed_role), httponly=True,
                            samesite="Strict", secure=request.secure, path="/console",
                            max_age=self.sessions.max_age)
        log.info("console.login user=%s", user_key)
        raise response

    async def logout(self, _request: web.Request) -> web.Response:
        response = web.HTTPFound("/console/login")
        response.del_cookie(COOKIE, path="/console")
        raise response

    async def queue_page(self, request: web.Request) -> web.Response:
        filters = Filters.from_query(request.query)
        raw_page = request.query.get("page", "")
        page = int(raw_page) if raw_page.isdigit() else 0
        rows, more = await queue(self.deskmate.ledger, filters, page)
        return self.render(request, "queue.html", rows=rows, filters=filters, page=page, more=more,
                           query=filters.as_query())

    async def turn_page(self, request: web.Request, *, error: str = "", saved: bool = False,
                        status: int = 200) -> web.Response:
        view = await turn_view(self.deskmate.ledger, request.match_info["turn_id"])
        if view is None:
            return self.render(request, "error.html", status=404,
                               message="No such answer: it may have been forgotten on request.")
        return self.render(request, "turn.html", view=view, error=error, saved=saved, status=status,
                           post_corrections=self.deskmate.settings.post_corrections)

    async def rate(self, request: web.Request) -> web.Response:
        viewer: Viewer = request[VIEWER]
        form = await request.post()
        turn_id = request.match_info["turn_id"]
        turn = await self.deskmate.ledger.get_turn(turn_id)
        correction = str(form.get("correction", ""))
        if turn is not None and unchanged(correction, turn.answer):
            correction = ""
        try:
            score_text = str(form.get("score", "")).strip()
            rating = Rating(turn_id=turn_id, rater_key=viewer.user_key, role=viewer.role, platform="console",
                            score=int(score_text) if score_text else None,
                            verdict=str(form.get("verdict", "")).strip() or None,
                            note=str(form.get("note", "")), correction=correction)
            await submit(self.deskmate.ledger, rating)
        except ValueError as exc:  # RatingRefused, or a score that is not a number
            message = str(exc) if isinstance(exc, RatingRefused) else "The score must be a whole number from 1 to 5."
            return await self.turn_page(request, error=message, status=400)
        log.info("console.rated turn=%s by=%s", turn_id, viewer.user_key)
        posted = await self._post_correction(turn, rating, form.get("post_correction") == "on")
        if posted is False:
            return await self.turn_page(request, saved=True, error="Saved, but the correction could not be "
                                        "posted in the conversation (see the server log).")
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
        series = {"days": data.days, "turns": data.turns_by_platform, "thumbs_up": data.thumbs_up,
                  "thumbs_down": data.thumbs_down, "scores": data.score_by_adapter, "latency": data.latency}
        # Escaped so that no value (an adapter name) can close the <script> block it sits in.
        return self.render(request, "dashboard.html", data=data, series=json.dumps(series).replace("<", "\\u003c"))

    async def export(self, request: web.Request) -> web.StreamResponse:
        fmt = request.match_info["fmt"]
        filters = Filters.from_query(request.query)
        response = web.StreamResponse(headers={
            "Content-Type": "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="deskmate-ratings.{fmt}"', "Cache-Control": "no-store"})
        await response.prepare(request)
        if fmt == "csv":
            await response.write(csv_header().encode())
        count = 0
        async for record in rated_turns(self.deskmate.ledger, filters):
            await response.write((to_jsonl(record) if fmt == "jsonl" else to_csv_row(record)).encode())
            count += 1
        await response.write_eof()
        log.info("console.export user=%s format=%s records=%d", request[VIEWER].user_key, fmt, count)
        return response

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
    app.router.add_static("/console/static/", HERE / "static")
    return console
