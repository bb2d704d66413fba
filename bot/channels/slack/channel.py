"""Deskmate in Slack: `slack-bolt` (async) over the HTTP Events API (`/slack/events`) or Socket
Mode, with the orchestrator behind it.

Every listener acknowledges first and answers afterwards (in `Background`), so Slack always
gets its ack well inside 3 seconds. The exception is a modal's submission, whose ack carries the
verdict (errors shown under the fields), so it is checked and stored before the ack. Each
event id is handled once across replicas (the shared cache), so Slack's retries are
acknowledged and dropped. What a message looks like is blocks.py's; what a submitted view says
is forms.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    async_default_handlers,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot import metrics
from bot.answering.messages import Answer, AnswerEvent, Done, IncomingMessage, Source, Status
from bot.channels.common import (
    DEDUP_TTL_SECONDS,
    HELP_TEXT,
    Background,
    Person,
    Update,
    answer_groups,
    batched,
    channel_rule,
    first_time,
    identify,
)
from bot.channels.slack.blocks import (
    THANKS_BAD,
    THANKS_GOOD,
    answer_blocks,
    answer_footer,
    mrkdwn_escape,
    plain_text,
    reason_modal,
    review_modal,
)
from bot.channels.slack.forms import private_metadata, review_from, state_value
from bot.deskmate import Deskmate
from bot.feedback.ratings import CORRECTION_PREFIX, LEADS_ONLY, NOT_ON_RECORD, Rating, RatingRefused, submit
from bot.feedback.roles import Role
from bot.ledger.rows import TurnRow
from bot.training import commands

log = logging.getLogger(__name__)

THREAD_TTL_SECONDS = 7 * 24 * 3600
IGNORED_SUBTYPES = {
    "message_changed",
    "message_deleted",
    "bot_message",
    "channel_join",
    "channel_leave",
    "channel_topic",
    "channel_purpose",
    "channel_name",
    "pinned_item",
    "thread_broadcast",
    "assistant_app_thread",
    "message_replied",
    "ekm_access_denied",
    "me_message",
}
SUGGESTED_PROMPTS = [
    {"title": "Reset my password", "message": "How do I reset my password?"},
    {"title": "Set up the VPN", "message": "How do I connect to the VPN from home?"},
    {"title": "Get new hardware", "message": "How do I request a new laptop or monitor?"},
]
STREAMING_MISSING = {"unknown_method", "feature_not_enabled"}
USERGROUP_TTL_SECONDS = 10 * 60


@dataclass(frozen=True)
class Where:
    """Where an answer goes: the channel, the thread (None = the top level of a DM)."""

    team: str
    channel: str
    thread_ts: str | None
    user: str
    private: bool
    assistant_thread: bool = False


class SlackChannel:
    """The Slack face of one Deskmate process."""

    def __init__(self, deskmate: Deskmate, background: Background) -> None:
        settings = deskmate.settings
        assert settings.slack_bot_token is not None
        self.deskmate = deskmate
        self.background = background
        self.settings = settings
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
        self.verifier = SignatureVerifier(secret) if secret else None
        # Rate limits are per method and workspace (chat.update: about 50 a minute): wait as Slack
        # says (Retry-After) rather than lose an update.
        self.client = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(),
            base_url=settings.slack_api_url,
            retry_handlers=[*async_default_handlers(), AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
        )
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret or None,
            request_verification_enabled=bool(secret),
            process_before_response=False,
            logger=logging.getLogger("slack_bolt"),
        )
        self.streaming = settings.slack_streaming
        self.socket_mode: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._register()

    # --- connection ------------------------------------------------------------------------
    async def start_socket_mode(self) -> None:
        """Connect over Socket Mode (the app token): no public URL needed. Runs until connected:
        a Slack outage at start-up must not keep the web chat and Teams from starting, and a
        token Slack refuses is reported once, not retried."""
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        assert self.settings.slack_app_token is not None
        token = self.settings.slack_app_token.get_secret_value()
        self.socket_mode = AsyncSocketModeHandler(self.app, token)
        pause = 1.0
        while True:
            # Asked here rather than by the SDK, which retries a refused token forever.
            try:
                opened = await self.client.apps_connections_open(app_token=token)  # the token check
            except SlackApiError as exc:
                error = exc.response.get("error")
                if error in (
                    "invalid_auth",
                    "not_allowed_token_type",
                    "not_authed",
                    "account_inactive",
                    "token_revoked",
                ):
                    log.error(
                        "slack.socket_mode_refused error=%s (SLACK_APP_TOKEN must be an xapp- "
                        "token with connections:write)",
                        error,
                    )
                    return
                log.warning("slack.socket_mode_failed error=%s; retrying in %.0f s", error, pause)
            except Exception as exc:  # noqa: BLE001 (aiohttp's errors are not all OSErrors)
                log.warning("slack.socket_mode_failed error=%r; retrying in %.0f s", exc, pause)
            else:
                if opened.get("url"):
                    try:
                        await self.socket_mode.connect_async()
                        log.info("slack.socket_mode_connected")
                        return
                    except Exception as exc:  # noqa: BLE001
                        log.warning("slack.socket_mode_failed error=%r; retrying in %.0f s", exc, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 60.0)

    async def stop(self) -> None:
        """Stop taking events (called before answers in flight are drained)."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self.socket_mode is not None:
            await self.socket_mode.close_async()

    async def http_endpoint(self, request: web.Request) -> web.Response:
        """`POST /slack/events`: events, interactivity and slash commands in HTTP mode."""
        if self.verifier is None:
            return web.json_response({"error": "Slack's HTTP mode needs SLACK_SIGNING_SECRET"}, status=503)
        body = await request.read()
        stamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not stamp.isdigit() or not self.verifier.is_valid(body, stamp, request.headers.get("X-Slack-Signature", "")):
            log.warning("slack.bad_signature remote=%s", request.remote)
            return web.json_response({"error": "invalid or stale signature"}, status=401)
        if request.content_type == "application/json":
            try:
                json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("slack.malformed_json bytes=%d", len(body))
                return web.json_response({"error": "the body is not valid JSON"}, status=400)
        return await to_aiohttp_response(await self.app.async_dispatch(await to_bolt_request(request)))

    # --- listeners -------------------------------------------------------------------------
    def _register(self) -> None:
        app = self.app
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.event("assistant_thread_started")(self._on_assistant_thread_started)
        app.event(re.compile(".*"))(self._on_other_event)
        app.action("feedback")(self._on_feedback)
        app.action("share")(self._on_share)
        app.action("review")(self._on_review)
        app.view("review")(self._on_review_submitted)
        app.view("feedback_reason")(self._on_reason_submitted)
        app.action(re.compile(".*"))(self._on_other_action)
        app.command("/deskmate")(self._on_command)
        app.error(self._on_error)

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("slack.listener_error type=%s error=%r", body.get("type"), error, exc_info=error)

    async def _on_other_event(self, event: dict[str, Any]) -> None:
        log.info("slack.event_ignored type=%s", event.get("type"))

    async def _on_other_action(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        log.info("slack.action_ignored action=%s", (body.get("actions") or [{}])[0].get("action_id"))

    async def _first_delivery(self, kind: str, key: str) -> bool:
        """False for an interactive payload seen before: a signed request replayed within
        Slack's five-minute window must not add a second rating."""
        if await first_time(self.deskmate.retrieval.cache, f"slack-{kind}:{key}"):
            return True
        log.warning("slack.replayed_%s key=%s", kind, key)
        return False

    async def _already_stored(self, view: dict[str, Any]) -> bool:
        """A modal submission that was stored before (a replay). Checked before and marked only
        after storing, because a submission refused for a field error is sent again, unchanged
        in id and hash, once the lead fixes the field."""
        if await self.deskmate.retrieval.cache.get(f"slack-view:{view.get('id')}:{view.get('hash')}") is None:
            return False
        log.warning("slack.replayed_view view=%s", view.get("id"))
        return True

    async def _stored(self, view: dict[str, Any]) -> None:
        await self.deskmate.retrieval.cache.set(
            f"slack-view:{view.get('id')}:{view.get('hash')}", b"1", ttl=DEDUP_TTL_SECONDS
        )

    async def _fresh(self, body: dict[str, Any], request: Any) -> bool:
        """False for an event this process or another replica already took. `request` is Bolt's,
        whose headers carry Slack's redelivery count over HTTP and Socket Mode alike."""
        event_id = body.get("event_id")
        if not event_id:
            return True
        values = request.headers.get("x-slack-retry-num") if request is not None else None
        # Bolt gives each header as a list of values ("0" marks Socket Mode's first delivery).
        retry = values[0] if isinstance(values, list | tuple) and values else values or ""
        redelivery = str(retry) not in ("", "0")
        if await first_time(self.deskmate.retrieval.cache, f"slack:{event_id}", redelivery=redelivery):
            return True
        log.info("slack.duplicate_event event_id=%s", event_id)
        metrics.EVENTS_SKIPPED.labels("slack", "duplicate").inc()
        return False

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any], request: Any) -> None:
        if event.get("bot_id") or not event.get("user") or not await self._fresh(body, request):
            return
        where = Where(
            team=body.get("team_id", ""),
            channel=event["channel"],
            thread_ts=event.get("thread_ts") or event["ts"],
            user=event["user"],
            private=False,
        )
        self.background.spawn(self._answer(where, event.get("text", ""), event), f"slack-{body.get('event_id')}")

    async def _on_message(
        self, event: dict[str, Any], body: dict[str, Any], context: dict[str, Any], request: Any
    ) -> None:
        if event.get("bot_id") or event.get("subtype") in IGNORED_SUBTYPES:
            metrics.EVENTS_SKIPPED.labels("slack", "ignored").inc()
            return
        if not event.get("user") or "channel" not in event:
            log.warning("slack.message_without_user event_id=%s", body.get("event_id"))
            return
        text = event.get("text") or ""
        kind = event.get("channel_type")
        bot_user = context.get("bot_user_id") or ""
        if kind != "im" and bot_user and f"<@{bot_user}" in text:
            return  # the app_mention event for the same message answers it
        thread = event.get("thread_ts")
        private = kind == "im"
        if not private:
            rule = channel_rule(self.settings, "slack", event["channel"])
            if thread and await self.deskmate.retrieval.cache.get(self._thread_key(event["channel"], thread)):
                pass  # a follow-up in a thread Deskmate answers in
            elif not thread and not rule.mention_only:
                thread = event["ts"]
            else:
                metrics.EVENTS_SKIPPED.labels("slack", "not_addressed").inc()
                return
        where = Where(
            team=body.get("team_id", ""),
            channel=event["channel"],
            thread_ts=thread,
            user=event["user"],
            private=private,
            # in a DM, a thread is Slack's assistant thread
            assistant_thread=private and thread is not None,
        )
        if not await self._fresh(body, request):
            return
        self.background.spawn(self._answer(where, text, event), f"slack-{body.get('event_id')}")

    async def _on_assistant_thread_started(self, event: dict[str, Any], body: dict[str, Any], request: Any) -> None:
        thread = event.get("assistant_thread") or {}
        if not thread.get("channel_id") or not await self._fresh(body, request):
            return
        try:
            await self.client.assistant_threads_setSuggestedPrompts(
                channel_id=thread["channel_id"],
                thread_ts=thread["thread_ts"],
                title="Ask me about IT and company how-tos",
                prompts=SUGGESTED_PROMPTS,
            )
        except SlackApiError as exc:
            log.warning("slack.suggested_prompts_failed error=%s", exc.response.get("error"))

    # --- answering -------------------------------------------------------------------------
    @staticmethod
    def _thread_key(channel: str, thread_ts: str) -> str:
        return f"slack-thread:{channel}:{thread_ts}"

    async def person(self, team: str, user: str) -> Person:
        """The Slack user as a Deskmate person: their email is the key Teams shares."""

        async def lookup() -> tuple[str | None, str]:
            try:
                info = (await self.client.users_info(user=user))["user"]
            except SlackApiError as exc:
                raise RuntimeError(f"users.info: {exc.response.get('error')} (is users:read.email granted?)") from exc
            profile = info.get("profile") or {}
            return profile.get("email"), info.get("real_name") or profile.get("real_name") or info.get("name") or ""

        return await identify(
            self.deskmate.retrieval.cache,
            self.deskmate.retrieval.store,
            platform="slack",
            platform_id=user,
            cache_id=f"{team}:{user}",
            lookup=lookup,
        )

    async def role_of(self, team: str, user: str) -> Role:
        """What the Slack user may do: by their email (settings, roles file) or by membership of
        a Slack user group the roles file names."""
        return (await self._rater(team, user))[1]

    async def _rater(self, team: str, user: str) -> tuple[Person, Role]:
        person = await self.person(team, user)
        groups = sorted(self.deskmate.roles.slack_groups())
        members = await asyncio.gather(*(self._usergroup_members(team, g) for g in groups))
        mine = [g for g, users in zip(groups, members, strict=True) if user in users]
        return person, self.deskmate.roles.role_of(person.key, slack_groups=mine)

    async def _usergroup_members(self, team: str, group: str) -> set[str]:
        """A user group's members, cached for 10 minutes across replicas (Slack allows about 20
        calls a minute). A failed lookup counts as "not a member" and is not cached, so granting
        `usergroups:read` takes effect at the next click."""
        cache = self.deskmate.retrieval.cache
        cache_key = f"slack-usergroup:{team}:{group}"
        raw = await cache.get(cache_key)
        if raw is not None:
            return set(json.loads(raw))
        try:
            users = list((await self.client.usergroups_users_list(usergroup=group)).get("users") or [])
        except SlackApiError as exc:
            log.warning(
                "slack.usergroup_failed group=%s error=%s (is usergroups:read granted?)",
                group,
                exc.response.get("error"),
            )
            return set()
        except (ClientError, TimeoutError) as exc:
            log.warning("slack.usergroup_failed group=%s error=%r", group, exc)
            return set()
        await cache.set(cache_key, json.dumps(users).encode(), ttl=USERGROUP_TTL_SECONDS)
        return set(users)

    async def _message(self, where: Where, text: str, *, thread_id: str) -> IncomingMessage:
        """The question as the orchestrator takes it: who asked (their directory identity) and
        what they may read here (their groups, narrowed by the channel's rule)."""
        person = await self.person(where.team, where.user)
        rule = channel_rule(self.settings, "slack", where.channel)
        return IncomingMessage(
            platform="slack",
            user_key=person.key,
            user_name=person.name,
            text=text,
            workspace=where.team,
            channel=where.channel,
            thread_id=thread_id,
            groups=answer_groups(person, private=where.private, rule=rule),
            private=where.private,
        )

    async def _answer(self, where: Where, raw_text: str, event: dict[str, Any]) -> None:
        text = plain_text(raw_text)
        if not text and event.get("files"):
            await self._say(
                where,
                "I can only read text for now: paste the part of the file you "
                "have a question about, and ask it in words.",
            )
            return
        message = await self._message(where, text, thread_id=where.thread_ts or where.channel)
        if where.thread_ts and not where.private:
            await self.deskmate.retrieval.cache.set(
                self._thread_key(where.channel, where.thread_ts), b"1", ttl=THREAD_TTL_SECONDS
            )
        await self._stream(where, self.deskmate.orchestrator.handle(message))

    async def _stream(self, where: Where, events: AsyncGenerator[AnswerEvent, None]) -> None:
        """Show an answer as it is written: `chat.startStream` in threads where the workspace
        has it, else a posted message edited at most once per `stream_interval`. An update Slack
        refuses is skipped; the final answer is always delivered (as a new message if need be)."""
        ts: str | None = None
        streamed = False
        shown = ""
        async with contextlib.aclosing(events):
            async for item in batched(events, self.settings.stream_interval):
                if isinstance(item, Status):
                    if where.assistant_thread:
                        await self._set_status(where, item.text)
                elif isinstance(item, Update):
                    try:
                        if ts is None:
                            ts, streamed = await self._open(where, item.text)
                        elif streamed:
                            await self.client.chat_appendStream(channel=where.channel, ts=ts, markdown_text=item.new)
                        else:
                            await self.client.chat_update(channel=where.channel, ts=ts, text=item.text + " …")
                        shown = item.text
                    except SlackApiError as exc:
                        log.warning("slack.update_failed error=%s; skipped", exc.response.get("error"))
                elif isinstance(item, Done):
                    await self._close(where, ts, streamed, shown, item.answer)

    async def _open(self, where: Where, text: str) -> tuple[str, bool]:
        if self.streaming and where.thread_ts:
            try:
                response = await self.client.chat_startStream(
                    channel=where.channel,
                    thread_ts=where.thread_ts,
                    markdown_text=text,
                    recipient_team_id=where.team or None,
                    recipient_user_id=where.user,
                )
                return response["ts"], True
            except SlackApiError as exc:
                # Workspaces or surfaces without streaming: edit a message instead, from now on
                # when Slack says the method is not there, for this answer otherwise.
                error = exc.response.get("error")
                if error in STREAMING_MISSING:
                    self.streaming = False
                log.warning("slack.stream_unavailable error=%s; editing a message instead", error)
        response = await self.client.chat_postMessage(
            channel=where.channel, thread_ts=where.thread_ts, text=text + " …"
        )
        return response["ts"], False

    async def _close(self, where: Where, ts: str | None, streamed: bool, shown: str, answer: Answer) -> None:
        """End the message with the final text and its footer. A streamed message whose text
        turned out different (an apology after partial output, a repetition cut) is rewritten."""
        if where.assistant_thread:
            await self._set_status(where, "")
        try:
            if ts is not None and streamed:
                seen = shown.strip()
                if answer.text.startswith(seen):
                    rest = answer.text[len(seen) :]
                    await self.client.chat_stopStream(
                        channel=where.channel, ts=ts, markdown_text=rest or None, blocks=answer_footer(answer)
                    )
                    return
                await self.client.chat_stopStream(channel=where.channel, ts=ts)
            if ts is not None:
                await self.client.chat_update(
                    channel=where.channel, ts=ts, text=answer.text, blocks=answer_blocks(answer)
                )
                return
        except SlackApiError as exc:
            log.warning(
                "slack.final_update_failed turn=%s error=%s; posting the answer anew",
                answer.turn_id,
                exc.response.get("error"),
            )
        await self.client.chat_postMessage(
            channel=where.channel, thread_ts=where.thread_ts, text=answer.text, blocks=answer_blocks(answer)
        )

    async def _set_status(self, where: Where, status: str) -> None:
        try:
            await self.client.assistant_threads_setStatus(
                channel_id=where.channel, thread_ts=where.thread_ts or "", status=status
            )
        except SlackApiError as exc:
            log.info("slack.set_status_failed error=%s", exc.response.get("error"))

    async def _say(self, where: Where, text: str) -> None:
        await self.client.chat_postMessage(channel=where.channel, thread_ts=where.thread_ts, text=text)

    # --- feedback, reviews and sharing ---------------------------------------------------------
    async def _tell(self, body: dict[str, Any], user: str, text: str) -> None:
        """A message only `user` sees, where they clicked."""
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        if not channel:
            log.info("slack.tell_skipped reason=no_channel user=%s", user)
            return
        thread = (body.get("message") or {}).get("thread_ts") or (body.get("container") or {}).get("thread_ts")
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread)
        except SlackApiError as exc:
            log.info("slack.ephemeral_failed error=%s", exc.response.get("error"))

    async def _on_feedback(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        verdict, _, turn_id = str(action.get("value", "")).partition(":")
        user = (body.get("user") or {}).get("id")
        if verdict not in ("good", "bad") or not turn_id or not user:
            log.warning("slack.feedback_malformed value=%r", action.get("value"))
            return
        if not await self._first_delivery("action", f"{user}:{action.get('action_ts')}:{turn_id}"):
            return
        self.background.spawn(self._store_feedback(body, user, verdict, turn_id), f"slack-feedback-{turn_id}")

    async def _store_feedback(self, body: dict[str, Any], user: str, verdict: str, turn_id: str) -> None:
        team = (body.get("team") or {}).get("id", "")
        person, role = await self._rater(team, user)
        rating = Rating(turn_id, person.key, role, "slack", thumb=1 if verdict == "good" else -1)
        try:
            await submit(self.deskmate.ledger, rating)
        except RatingRefused as exc:
            log.info("slack.feedback_refused turn=%s user=%s", turn_id, user)
            await self._tell(body, user, str(exc))
            return
        except LookupError:  # forgotten between the check and the write
            log.warning("slack.feedback_unknown_turn turn=%s", turn_id)
            return
        log.info("slack.feedback turn=%s thumb=%s role=%s", turn_id, verdict, role.name)
        if verdict == "bad" and body.get("trigger_id"):
            try:
                await self.client.views_open(
                    trigger_id=body["trigger_id"], view=reason_modal(json.dumps({"turn": turn_id}))
                )
                return
            except SlackApiError as exc:  # the trigger lasts 3 s: thank them in words instead
                log.info("slack.reason_modal_failed turn=%s error=%s", turn_id, exc.response.get("error"))
        await self._tell(body, user, THANKS_GOOD if verdict == "good" else THANKS_BAD)

    async def _on_reason_submitted(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        """The reason after a 👎, stored as a note-only rating under the same rules as the thumb."""
        user = (body.get("user") or {}).get("id", "")
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id", "")
        turn_id = private_metadata(view).get("turn") or ""
        reason = (state_value(view, "reason") or "").strip()
        if not reason:
            await ack()  # the reason is optional: sending it empty is a skip
            return
        if await self._already_stored(view):
            await ack()
            return
        person, role = await self._rater(team, user)
        try:
            await submit(self.deskmate.ledger, Rating(str(turn_id), person.key, role, "slack", note=reason))
        except (RatingRefused, LookupError) as exc:
            message = str(exc) if isinstance(exc, RatingRefused) else "That answer is not on record."
            log.info("slack.reason_refused turn=%s user=%s", turn_id, user)
            await ack(response_action="errors", errors={"reason": message})
            return
        await self._stored(view)
        await ack()
        log.info("slack.feedback_reason turn=%s role=%s", turn_id, role.name)

    async def _on_review(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        turn_id = str(action.get("value", ""))
        user = (body.get("user") or {}).get("id")
        if not turn_id or not user:
            log.warning("slack.review_malformed value=%r", action.get("value"))
            return
        self.background.spawn(self._open_review(body, user, turn_id), f"slack-review-{turn_id}")

    async def _open_review(self, body: dict[str, Any], user: str, turn_id: str) -> None:
        """The review modal, for leads and admins only; the role is asked again on submission."""
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id", "")
        if await self.role_of(team, user) < Role.lead:
            log.info("slack.review_refused reason=not_a_lead user=%s turn=%s", user, turn_id)
            await self._tell(body, user, LEADS_ONLY)
            return
        row = await self.deskmate.ledger.get_turn(turn_id)
        if row is None:
            await self._tell(body, user, NOT_ON_RECORD)
            return
        message = body.get("message") or {}
        container = body.get("container") or {}
        metadata = json.dumps(
            {
                "turn": turn_id,
                "channel": (body.get("channel") or {}).get("id") or container.get("channel_id"),
                "thread_ts": message.get("thread_ts") or container.get("thread_ts"),
            }
        )
        view = review_modal(
            row.question or "", row.answer or "", metadata, post_corrections=self.settings.post_corrections
        )
        try:
            await self.client.views_open(trigger_id=body.get("trigger_id", ""), view=view)
        except SlackApiError as exc:
            log.warning("slack.review_modal_failed turn=%s error=%s", turn_id, exc.response.get("error"))
            await self._tell(body, user, "Slack did not open the review form in time; click Review again.")

    async def _on_review_submitted(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        """A lead's review. The role is checked again here: a submission is a request like any
        other and proves nothing about who was shown the modal."""
        user = (body.get("user") or {}).get("id", "")
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id", "")
        meta = private_metadata(view)
        turn_id = str(meta.get("turn") or "")
        person, role = await self._rater(team, user)
        if role < Role.lead:
            log.warning("slack.review_refused reason=not_a_lead user=%s turn=%s", user, turn_id)
            await ack(response_action="errors", errors={"score": LEADS_ONLY})
            return
        if await self._already_stored(view):
            await ack()  # the first delivery of this submission was stored
            return
        row = await self.deskmate.ledger.get_turn(turn_id) if turn_id else None
        rating, errors = review_from(view, row.answer if row else None, turn_id, person.key, role)
        if not errors:
            try:
                await submit(self.deskmate.ledger, rating)
            except RatingRefused as exc:
                errors = {"score": str(exc)}
            except LookupError:
                errors = {"score": NOT_ON_RECORD}
        if errors:
            log.info("slack.review_invalid turn=%s fields=%s", turn_id, ",".join(errors))
            await ack(response_action="errors", errors=errors)
            return
        await self._stored(view)
        await ack()
        log.info(
            "slack.review turn=%s role=%s score=%s verdict=%s correction=%s",
            turn_id,
            role.name,
            rating.score,
            rating.verdict,
            rating.correction is not None,
        )
        if rating.correction and "post" in (state_value(view, "post") or []):
            self.background.spawn(self._post_correction(meta, row, rating.correction), f"slack-correction-{turn_id}")

    async def _post_correction(self, meta: dict[str, Any], row: TurnRow | None, correction: str) -> None:
        """The corrected answer in the conversation, only where that answer was given."""
        if row is None or not meta.get("channel") or meta.get("channel") != row.channel:
            log.warning("slack.correction_not_posted turn=%s reason=channel_mismatch", meta.get("turn"))
            return
        await _post_correction_for(self, row, correction)

    async def _on_share(self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        await ack()
        turn_id = str(action.get("value", ""))
        channel = (body.get("channel") or {}).get("id")
        user = (body.get("user") or {}).get("id")
        row = await self.deskmate.ledger.get_turn(turn_id) if turn_id else None
        if row is None or not channel or not row.answer:
            await respond(text="Sorry, I can't find that answer any more.", response_type="ephemeral")
            return
        cited = set(row.cited or [])
        sources = [
            Source(i + 1, c["doc_id"], c["title"], c["url"], c.get("heading", ""), c["chunk_id"])
            for i, c in enumerate(row.retrieved or [])
            if c["chunk_id"] in cited
        ]
        answer = Answer(turn_id=row.id, reference=row.reference, text=row.answer, outcome="answered", sources=sources)
        blocks = [
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"<@{user}> asked: {mrkdwn_escape(row.question[:300])}"}],
            },
            *answer_blocks(answer),
        ]
        try:
            await self.client.chat_postMessage(channel=channel, text=row.answer, blocks=blocks)
        except SlackApiError as exc:
            log.info("slack.share_failed channel=%s error=%s", channel, exc.response.get("error"))
            await respond(
                text="I can't post in this conversation. Invite me to the channel "
                "(`/invite @Deskmate`) and share again.",
                response_type="ephemeral",
                replace_original=False,
            )
            return
        await respond(delete_original=True)

    # --- the slash command -------------------------------------------------------------------
    async def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        """`/deskmate help`, `/deskmate ask <question>`, and for admins `retrain …`, `adapters …`."""
        words = (command.get("text") or "").strip()
        name, _, rest = words.partition(" ")
        name = name.lower()
        if name in ("", "help"):
            await ack(
                text=f"{HELP_TEXT}\n\nCommands: `/deskmate ask <question>` (only you see the "
                "answer, with a button to share it), `/deskmate help`. Admins: `/deskmate retrain "
                "[dry-run|status|cancel]`, `/deskmate adapters [list|show NAME|promote NAME|rollback]`."
            )
            return
        if name in ("retrain", "adapters"):
            await ack(text=f"`/deskmate {mrkdwn_escape(words[:100])}`: checking…")
            self.background.spawn(self._admin(command, words.split(), respond), "slack-admin")
            return
        if name == "ask":
            if not rest.strip():
                await ack(text="Ask a question after `ask`, for example `/deskmate ask how do I reset my password?`")
                return
            await ack(text=f"Looking that up: _{mrkdwn_escape(rest.strip()[:200])}_")
            where = Where(
                team=command.get("team_id", ""),
                channel=command.get("channel_id", ""),
                thread_ts=None,
                user=command.get("user_id", ""),
                private=command.get("channel_name") == "directmessage",
            )
            self.background.spawn(self._answer_privately(where, rest, respond), "slack-command")
            return
        await ack(text=f"I don't know `/deskmate {mrkdwn_escape(name)}`. Try `/deskmate help`.")

    async def _admin(self, command: dict[str, Any], words: list[str], respond: Any) -> None:
        """Retraining and adapters for admins (the role is checked here, after the ack)."""

        person, role = await self._rater(command.get("team_id", ""), command.get("user_id", ""))
        reply = await commands.command(self.deskmate, person.key, role, words)
        await respond(text=reply, response_type="ephemeral", replace_original=False)

    async def _answer_privately(self, where: Where, text: str, respond: Any) -> None:
        message = await self._message(where, text, thread_id=f"command:{time.time_ns()}")
        answer = await self.deskmate.orchestrator.ask(message)
        blocks = answer_blocks(answer, review=False)  # only the asker sees it: Review goes on the shared copy
        if answer.outcome == "answered":
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": "share",
                            "value": answer.turn_id,
                            "text": {"type": "plain_text", "text": "Share to channel"},
                        }
                    ],
                }
            )
        await respond(text=answer.text, blocks=blocks, response_type="ephemeral", replace_original=False)


async def _post_into_conversation(channel: SlackChannel, turn: TurnRow, text: str) -> bool:
    """A message into the turn's own conversation: its thread in a channel or an assistant
    thread, the top of the DM when the turn was asked there."""
    thread = turn.thread_id if turn.thread_id and turn.thread_id != turn.channel else None
    try:
        await channel.client.chat_postMessage(channel=turn.channel, thread_ts=thread, text=text)
    except SlackApiError as exc:
        log.warning("slack.post_failed turn=%s error=%s", turn.id, exc.response.get("error"))
        return False
    return True


async def _post_correction_for(channel: SlackChannel, turn: TurnRow, correction: str) -> bool:
    """A correction from the console, where the employee asked."""
    text = f"{CORRECTION_PREFIX}\n{mrkdwn_escape(correction)}\n_ref `{turn.reference}`_"
    return await _post_into_conversation(channel, turn, text)


def add_routes(app: web.Application, deskmate: Deskmate, background: Background) -> SlackChannel | None:
    """Mount Slack when a bot token is configured; say in one line why not otherwise."""
    settings = deskmate.settings
    if settings.slack_bot_token is None:
        log.info("slack.off reason=no SLACK_BOT_TOKEN (set it with SLACK_SIGNING_SECRET or SLACK_APP_TOKEN)")

        async def off(_request: web.Request) -> web.Response:
            return web.json_response({"error": "Slack is not configured on this Deskmate"}, status=503)

        app.router.add_post("/slack/events", off)
        return None
    channel = SlackChannel(deskmate, background)
    app.router.add_post("/slack/events", channel.http_endpoint)
    deskmate.correctors["slack"] = lambda turn, correction: _post_correction_for(channel, turn, correction)
    deskmate.notifiers["slack"] = lambda turn, text: _post_into_conversation(channel, turn, mrkdwn_escape(text))

    async def start(_app: web.Application) -> None:
        if settings.slack_app_token is not None:
            channel._connecting = asyncio.create_task(channel.start_socket_mode())

    async def stop(_app: web.Application) -> None:
        await channel.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)  # before the answers in flight are drained (registered later)
    return channel
