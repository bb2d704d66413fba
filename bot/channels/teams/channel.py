"""Deskmate in Microsoft Teams: `botbuilder-core` behind `/api/messages`.

botbuilder-python is archived upstream (its successor is the Microsoft 365 Agents SDK), so every
import of it lives in this package (here and cards.py): switching SDKs is a change in this folder and nowhere else.

The endpoint authenticates first (the Bot Framework JWT when an app id is configured), then
answers messages in the background and returns 202 at once; only invokes (the feedback button,
the support leads' review form) are answered inline, because Teams reads their response body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web
from botbuilder.core import (
    ActivityHandler,
    CardFactory,
    InvokeResponse,
    MessageFactory,
    TurnContext,
)
from botbuilder.core.teams import TeamsInfo
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity, ActivityTypes, ChannelAccount, ConversationReference, Entity

from bot.answering.messages import Answer, AnswerEvent, Done, IncomingMessage, Status
from bot.channels.common import (
    ANSWER_MESSAGE_TTL_SECONDS,
    Background,
    Person,
    Update,
    answer_groups,
    batched,
    channel_rule,
    first_time,
    identify,
    remember_answer_message,
    turn_of_message,
)
from bot.channels.teams.cards import (
    CHANNELS,
    REVIEW_ACTION,
    STREAM_MIN_GAP_SECONDS,
    WELCOME,
    AiMessage,
    StreamInfo,
    conversation_of,
    correction_reply,
    final_text,
    plain_text,
    review_button,
    review_form,
    review_from_form,
    saved_summary,
    task_message,
)
from bot.deskmate import Deskmate
from bot.exposure import allowed_authorities, refusal
from bot.feedback.ratings import LEADS_ONLY, NOT_ON_RECORD, Rating, RatingRefused, submit
from bot.feedback.roles import Role
from bot.ledger.rows import TurnRow
from bot.training import commands

log = logging.getLogger(__name__)


class DeskmateTeamsBot(ActivityHandler):  # type: ignore[misc]  # botbuilder ships no type information
    """Turns Teams activities into Deskmate turns."""

    def __init__(self, deskmate: Deskmate) -> None:
        self.deskmate = deskmate
        self.settings = deskmate.settings
        self._streaming: set[str] = set()  # Teams allows one streamed answer per chat at a time

    # --- messages --------------------------------------------------------------------------
    async def on_message_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if activity.id and not await first_time(self.deskmate.retrieval.cache, f"teams:{activity.id}"):
            log.info("teams.duplicate_activity id=%s", activity.id)
            return
        conversation = conversation_of(activity)
        if not conversation.private:
            mentioned = any(
                (m.additional_properties.get("mentioned") or {}).get("id") == activity.recipient.id
                for m in turn_context.get_mentions(activity)
            )
            if not mentioned and channel_rule(self.settings, "teams", conversation.channel).mention_only:
                return
        if not activity.from_property or not activity.from_property.id:
            log.warning("teams.message_without_user id=%s", activity.id)
            return
        text = plain_text(activity)
        if not text:
            if activity.attachments:
                await turn_context.send_activity(
                    "I can only read text for now: paste the part of the "
                    "file you have a question about, and ask it in words."
                )
            else:
                await turn_context.send_activity(
                    "Ask me a question in words, for example: *How do I reset my VPN password?*"
                )
            return
        if text.lower() in ("help", "/help", "?"):
            await turn_context.send_activity(MessageFactory.text(WELCOME))
            return
        person = await self.person(turn_context)
        words = text.split()
        if words[0].lower() in ("retrain", "adapters") and len(words) <= 4:
            reply = await commands.command(self.deskmate, person.key, self.role_of(person), words)
            await turn_context.send_activity(MessageFactory.text(reply))
            return
        await self._remember_conversation(turn_context)
        rule = channel_rule(self.settings, "teams", conversation.channel)
        message = IncomingMessage(
            platform="teams",
            user_key=person.key,
            user_name=person.name,
            text=text,
            workspace=(activity.conversation.tenant_id or "") if activity.conversation else "",
            channel=conversation.channel,
            thread_id=conversation.id,
            groups=answer_groups(person, private=conversation.private, rule=rule),
            private=conversation.private,
        )
        if conversation.private and conversation.id not in self._streaming:
            self._streaming.add(conversation.id)
            try:
                await self._stream(turn_context, self.deskmate.orchestrator.handle(message))
            finally:
                self._streaming.discard(conversation.id)
        else:
            await self._reply_once(turn_context, message)

    async def _stream(self, turn_context: TurnContext, events: AsyncGenerator[AnswerEvent, None]) -> None:
        """1:1 chats: informative → streaming → final `streaminfo` activities, at least
        `STREAM_MIN_GAP_SECONDS` apart. If Teams refuses an update the answer still arrives, as
        an ordinary message; if the user pressed Stop, nothing more is sent."""
        stream_id: str | None = None
        sequence, streaming, broken, stopped = 0, False, False, False
        last_sent: float | None = None
        interval = max(self.settings.stream_interval, STREAM_MIN_GAP_SECONDS)
        async for item in batched(events, interval):
            if isinstance(item, Status | Update):
                informative = isinstance(item, Status)
                if broken or (informative and streaming):
                    continue  # status lines only come before the text starts to flow
                if last_sent is not None and time.monotonic() - last_sent < STREAM_MIN_GAP_SECONDS:
                    continue  # the next update (or the final message) carries this text too
                sequence += 1
                typing = Activity(
                    type=ActivityTypes.typing,
                    text=item.text,
                    entities=[
                        StreamInfo(
                            stream_type="informative" if informative else "streaming",
                            stream_id=stream_id,
                            stream_sequence=sequence,
                        )
                    ],
                )
                try:
                    response = await turn_context.send_activity(typing)
                except Exception as exc:  # noqa: BLE001 (the connector raises its own error types)
                    broken, stopped = True, "ContentStreamNotAllowed" in str(exc) or "403" in str(exc)
                    log.warning("teams.stream_update_failed error=%s stopped_by_user=%s", exc, stopped)
                    continue
                last_sent = time.monotonic()
                streaming = streaming or not informative
                if stream_id is None and response is not None:
                    stream_id = response.id
            elif isinstance(item, Done):
                if stopped:
                    log.info("teams.stream_stopped turn=%s", item.answer.turn_id)
                    return
                entities: list[Entity] = [AiMessage(item.answer)]
                if stream_id is not None and not broken:
                    entities.insert(0, StreamInfo(stream_type="final", stream_id=stream_id))
                await self._send_answer(turn_context, item.answer, entities, stream_id)

    async def _reply_once(self, turn_context: TurnContext, message: IncomingMessage) -> None:
        """Group chats and channels: a typing indicator while working, then one message."""
        typing = asyncio.create_task(self._keep_typing(turn_context))
        try:
            answer = await self.deskmate.orchestrator.ask(message)
        finally:
            typing.cancel()
        await self._send_answer(turn_context, answer, [AiMessage(answer)], None)

    @staticmethod
    async def _keep_typing(turn_context: TurnContext) -> None:
        while True:  # Teams shows "typing" for about three seconds per activity
            try:
                await turn_context.send_activity(Activity(type=ActivityTypes.typing))
            except Exception as exc:  # noqa: BLE001 (a missed indicator must not stop the answer)
                log.info("teams.typing_failed error=%s", type(exc).__name__)
                return
            await asyncio.sleep(3)

    async def _send_answer(
        self, turn_context: TurnContext, answer: Answer, entities: list[Entity], stream_id: str | None
    ) -> None:
        reply = MessageFactory.text(final_text(answer))
        reply.text_format = "markdown"
        reply.entities = entities
        if answer.outcome in ("answered", "unknown"):
            reply.channel_data = {"feedbackLoopEnabled": True}
        reply.attachments = [CardFactory.adaptive_card(review_button(answer.turn_id))]
        response = await turn_context.send_activity(reply)
        for message_id in {stream_id, response.id if response else None}:
            if message_id:
                await remember_answer_message(self.deskmate.retrieval.cache, "teams", message_id, answer.turn_id)

    async def _remember_conversation(self, turn_context: TurnContext) -> None:
        """Where to post proactively later: a lead's correction from the console, or, when the
        replica answering dies mid-answer, another replica's apology (bot/replicas.py)."""
        reference = TurnContext.get_conversation_reference(turn_context.activity)
        await self.deskmate.retrieval.cache.set(
            f"teams-conversation:{reference.conversation.id}",
            json.dumps(reference.serialize()).encode(),
            ttl=ANSWER_MESSAGE_TTL_SECONDS,
        )

    async def person(self, turn_context: TurnContext) -> Person:
        """The Teams user as a Deskmate person: email or UPN, the key Slack shares."""
        sender: ChannelAccount = turn_context.activity.from_property

        async def lookup() -> tuple[str | None, str]:
            member = await TeamsInfo.get_member(turn_context, sender.id)
            return member.email or member.user_principal_name, member.name or sender.name or ""

        return await identify(
            self.deskmate.retrieval.cache,
            self.deskmate.retrieval.store,
            platform="teams",
            platform_id=sender.aad_object_id or sender.id,
            lookup=lookup,
            fallback_name=sender.name or "",
        )

    # --- installs ----------------------------------------------------------------------------
    async def on_members_added_activity(self, members_added: list[ChannelAccount], turn_context: TurnContext) -> None:
        """Say hello once, when Deskmate itself is added to a chat or team."""
        if any(m.id == turn_context.activity.recipient.id for m in members_added):
            await turn_context.send_activity(MessageFactory.text(WELCOME))

    # --- invokes -----------------------------------------------------------------------------
    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse:
        activity = turn_context.activity
        value: dict[str, Any] = activity.value if isinstance(activity.value, dict) else {}
        if activity.name == "message/submitAction" and value.get("actionName") == "feedback":
            return await self._feedback(turn_context, value.get("actionValue") or {})
        # ActivityHandler does not route task modules (TeamsActivityHandler would, with models
        # around the same JSON); the two review invokes are handled here.
        data: dict[str, Any] = value["data"] if isinstance(value.get("data"), dict) else {}
        if activity.name in ("task/fetch", "task/submit"):
            if data.get("action") != REVIEW_ACTION:
                return task_message("Deskmate does not know this action.")
            if not activity.from_property or not activity.from_property.id:
                return task_message("Teams did not say who you are; please try again.")
            if activity.name == "task/fetch":
                return await self._review_form(turn_context, data)
            return await self._review_submit(turn_context, data)
        log.warning("teams.invoke_ignored name=%s", activity.name)
        return InvokeResponse(status=400, body={"error": f"Deskmate does not handle {activity.name!r}"})

    async def _feedback(self, turn_context: TurnContext, value: dict[str, Any]) -> InvokeResponse:
        reaction = value.get("reaction")
        if reaction not in ("like", "dislike"):
            return InvokeResponse(status=400, body={"error": "reaction must be like or dislike"})
        note = None
        try:
            note = (json.loads(value.get("feedback") or "{}") or {}).get("feedbackText") or None
        except (json.JSONDecodeError, AttributeError):
            note = str(value.get("feedback"))[:2000] or None
        message_id = turn_context.activity.reply_to_id or ""
        turn_id = await turn_of_message(self.deskmate.retrieval.cache, "teams", message_id)
        if turn_id is None:
            log.warning("teams.feedback_unknown_message message=%s", message_id)
            return InvokeResponse(status=200)
        person = await self.person(turn_context)
        rating = Rating(
            turn_id=turn_id,
            rater_key=person.key,
            role=self.role_of(person),
            platform="teams",
            thumb=1 if reaction == "like" else -1,
            note=note,
        )
        try:
            await submit(self.deskmate.ledger, rating)
        except RatingRefused as refusal:
            # Teams shows no text for this invoke, so the refusal is only logged.
            log.warning("teams.feedback_refused turn=%s reason=%s", turn_id, refusal)
        except LookupError:
            log.warning("teams.feedback_unknown_turn turn=%s", turn_id)
        else:
            log.info("teams.feedback turn=%s reaction=%s", turn_id, reaction)
        return InvokeResponse(status=200)

    def role_of(self, person: Person) -> Role:
        """Teams tells a bot nothing of group membership, so a role comes from the person's key."""
        return self.deskmate.roles.role_of(person.key)

    async def _review_form(self, turn_context: TurnContext, data: dict[str, Any]) -> InvokeResponse:
        """`task/fetch` from the Review button: the form for leads and admins, a refusal for others."""
        person = await self.person(turn_context)
        if self.role_of(person) < Role.lead:
            log.info("teams.review_refused reason=not_a_lead action=fetch")
            return task_message(LEADS_ONLY)
        turn_id = data.get("turn_id")
        turn = await self.deskmate.ledger.get_turn(turn_id) if isinstance(turn_id, str) and turn_id else None
        if turn is None:
            log.info("teams.review_unknown_turn turn=%s", turn_id)
            return task_message(NOT_ON_RECORD)
        card = review_form(turn, post_corrections=self.settings.post_corrections)
        return InvokeResponse(
            status=200,
            body={
                "task": {
                    "type": "continue",
                    "value": {
                        "title": "Review answer",
                        "width": "large",
                        "height": "large",
                        "card": {"contentType": "application/vnd.microsoft.card.adaptive", "content": card},
                    },
                }
            },
        )

    async def _review_submit(self, turn_context: TurnContext, data: dict[str, Any]) -> InvokeResponse:
        """`task/submit` from the form. The role is checked again: anyone can post this invoke."""
        person = await self.person(turn_context)
        role = self.role_of(person)
        if role < Role.lead:
            log.warning("teams.review_refused reason=not_a_lead action=submit")
            return task_message(LEADS_ONLY)
        turn_id = data.get("turn_id")
        turn = await self.deskmate.ledger.get_turn(turn_id) if isinstance(turn_id, str) and turn_id else None
        if turn is None:
            return task_message(NOT_ON_RECORD)
        try:
            rating = review_from_form(data, turn, person.key, role)
            await submit(self.deskmate.ledger, rating)
        except RatingRefused as refusal:
            log.info("teams.review_refused turn=%s reason=%s", turn.id, refusal)
            return task_message(str(refusal))
        except LookupError:  # forgotten between the read above and the write
            return task_message(NOT_ON_RECORD)
        summary = saved_summary(rating)
        post = data.get("post_correction") in (True, "true")
        if rating.correction and post:
            summary += " " + await self._post_correction(turn_context, turn, rating.correction)
        log.info("teams.review_saved turn=%s role=%s", turn.id, role.name)
        return task_message(summary)

    async def _post_correction(self, turn_context: TurnContext, turn: TurnRow, correction: str) -> str:
        """Post a lead's correction where the answer was given; returns what to tell the lead.
        Only into the answer's own conversation, so a correction never lands in an unrelated chat."""
        if turn.platform != "teams" or turn.thread_id != conversation_of(turn_context.activity).id:
            return "The correction was not posted: the answer was given in another conversation."
        reply = correction_reply(turn, correction)
        try:
            await turn_context.send_activity(reply)
        except Exception as exc:  # noqa: BLE001 (the connector raises its own error types; the review is saved)
            log.warning("teams.correction_post_failed turn=%s error=%s", turn.id, type(exc).__name__)
            return "Posting the correction in the conversation failed; the review is saved."
        return "The correction was posted in the conversation."


class TeamsConfig:
    """The attribute names botbuilder's configuration reader expects."""

    def __init__(self, app_id: str, password: str, app_type: str, tenant_id: str) -> None:
        self.APP_ID = app_id
        self.APP_PASSWORD = password
        self.APP_TYPE = app_type
        self.APP_TENANTID = tenant_id


class TeamsChannel:
    """The Teams face of one Deskmate process: authentication, then the bot."""

    def __init__(
        self, deskmate: Deskmate, background: Background, *, dev_open: bool = False, bind_host: str = "127.0.0.1"
    ) -> None:
        s = deskmate.settings
        password = s.teams_app_password.get_secret_value() if s.teams_app_password else ""
        if not s.teams_app_id and not dev_open:
            # The server decides (bot/exposure.py); this is the last line, should a caller not.
            raise ValueError("Teams without an app id is served only with DESKMATE_TEAMS_DEV_OPEN on loopback")
        self.open = not s.teams_app_id
        self.tenants = frozenset(t.strip().lower() for t in s.teams_tenants if t.strip())
        self.allowed = allowed_authorities(bind_host, s.allowed_hosts)
        self.app_id = s.teams_app_id
        self.auth = ConfigurationBotFrameworkAuthentication(
            TeamsConfig(
                s.teams_app_id,
                password,
                s.teams_app_type if s.teams_app_id else "MultiTenant",  # open: no credentials
                s.teams_tenant_id,
            )
        )
        self.adapter = CloudAdapter(self.auth)
        self.adapter.on_turn_error = self._on_turn_error
        self.bot = DeskmateTeamsBot(deskmate)
        self.background = background
        # The Bot Framework Emulator talks as `emulator`; accepted only while the endpoint is open.
        self.channels = CHANNELS | ({"emulator"} if self.open else set())

    @staticmethod
    async def _on_turn_error(turn_context: TurnContext, error: Exception) -> None:
        log.error("teams.turn_error activity=%s error=%r", turn_context.activity.type, error, exc_info=error)
        try:
            await turn_context.send_activity("Sorry, something went wrong on my side. Please try again.")
        except Exception:
            log.exception("teams.error_reply_failed")

    async def endpoint(self, request: web.Request) -> web.Response:
        """`POST /api/messages`."""
        if self.open:
            # Unauthenticated on loopback: a web page in the developer's browser must not be
            # able to post here either (the Emulator sends JSON and no Origin).
            reason = (
                "send the activity as JSON"
                if request.content_type != "application/json"
                else refusal(request, self.allowed)
            )
            if reason is not None:
                log.warning("teams.open_endpoint_refused reason=%s", reason)
                return web.json_response({"error": f"refused: {reason}"}, status=403)
        try:
            body = await request.json()
            activity = Activity().deserialize(body) if isinstance(body, dict) else Activity()
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError):
            log.warning("teams.malformed_activity bytes=%s", request.content_length)
            return web.json_response({"error": "the body must be a Bot Framework activity (JSON)"}, status=400)
        if not activity.type:
            log.warning("teams.activity_without_type")
            return web.json_response({"error": "the activity has no type"}, status=400)
        if activity.channel_id not in self.channels:
            # Web Chat or Direct Line would let a client claim any user: Teams only.
            log.warning("teams.other_channel channel=%s", activity.channel_id)
            return web.json_response(
                {"error": f"Deskmate answers here only for Microsoft Teams, not {activity.channel_id!r}"}, status=400
            )
        try:
            authenticated = await self.auth.authenticate_request(activity, request.headers.get("Authorization", ""))
        except Exception as exc:  # noqa: BLE001 (PermissionError, or a token that is not a JWT at all)
            log.warning("teams.unauthorized remote=%s error=%s", request.remote, type(exc).__name__)
            return web.json_response({"error": "unauthorized"}, status=401)
        tenant = tenant_of(activity)
        if self.tenants and tenant not in self.tenants:
            # A multi-tenant bot is reachable from every Entra tenant: answer only the listed ones.
            log.warning("teams.tenant_refused tenant=%s", tenant or "-")
            return web.json_response({"error": "this Deskmate does not serve your organisation"}, status=403)
        if activity.type == ActivityTypes.invoke:
            if activity.id and not await first_time(self.bot.deskmate.retrieval.cache, f"teams-invoke:{activity.id}"):
                # A replayed invoke (same activity id) must not store a second rating.
                log.warning("teams.replayed_invoke id=%s name=%s", activity.id, activity.name)
                return web.Response(status=200)
            response = await self.adapter.process_activity(authenticated, activity, self.bot.on_turn)
            if response is None:
                return web.Response(status=200)
            if response.body is None:
                return web.Response(status=response.status)  # Teams wants an empty body here
            return web.json_response(response.body, status=response.status)
        self.background.spawn(
            self.adapter.process_activity(authenticated, activity, self.bot.on_turn), f"teams-{activity.id}"
        )
        return web.Response(status=202)


def tenant_of(activity: Activity) -> str:
    """The Entra tenant an activity comes from (conversation.tenantId, else channelData.tenant.id),
    lowercased; "" when it names none."""
    conv = activity.conversation
    tenant = (conv.tenant_id if conv else None) or ""
    if not tenant and isinstance(activity.channel_data, dict):
        tenant = ((activity.channel_data.get("tenant") or {}).get("id")) or ""
    return str(tenant).strip().lower()


async def _post_into_conversation(channel: TeamsChannel, turn: TurnRow, reply: Activity) -> bool:
    """A proactive message into the turn's conversation (its reference was kept in the cache
    when the question arrived)."""
    raw = await channel.bot.deskmate.retrieval.cache.get(f"teams-conversation:{turn.thread_id}")
    if raw is None:
        log.warning("teams.not_posted turn=%s reason=no_conversation_reference", turn.id)
        return False
    reference = ConversationReference().deserialize(json.loads(raw))

    async def send(turn_context: TurnContext) -> None:
        await turn_context.send_activity(reply)

    try:
        await channel.adapter.continue_conversation(reference, send, channel.app_id or None)
    except Exception as exc:  # noqa: BLE001 (the connector raises its own error types)
        log.warning("teams.post_failed turn=%s error=%s", turn.id, type(exc).__name__)
        return False
    return True


async def _post_correction_for(channel: TeamsChannel, turn: TurnRow, correction: str) -> bool:
    """A correction from the console, where the employee asked."""
    return await _post_into_conversation(channel, turn, correction_reply(turn, correction))


def add_routes(
    app: web.Application,
    deskmate: Deskmate,
    background: Background,
    *,
    dev_open: bool = False,
    bind_host: str = "127.0.0.1",
) -> TeamsChannel:
    """Mount /api/messages: with the Bot Framework's JWT checked, or (`dev_open`, which the server
    allows only on loopback) without any authentication, for the Emulator and local tests."""
    channel = TeamsChannel(deskmate, background, dev_open=dev_open, bind_host=bind_host)
    deskmate.correctors["teams"] = lambda turn, correction: _post_correction_for(channel, turn, correction)
    deskmate.notifiers["teams"] = lambda turn, text: _post_into_conversation(channel, turn, MessageFactory.text(text))
    if channel.open:
        log.warning(
            "teams.open_endpoint /api/messages accepts UNAUTHENTICATED requests "
            "(DESKMATE_TEAMS_DEV_OPEN, loopback only): development only"
        )
    app.router.add_post("/api/messages", channel.endpoint)
    return channel
