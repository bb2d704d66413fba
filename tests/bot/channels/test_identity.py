"""One person, two platforms: Slack's users.info email and Teams' member UPN lead to the same
directory entry, so the same question gets the same user context in both."""

from __future__ import annotations

from tests.support.platforms import ANA, activity, event_callback, message, slack_event, wait_for_turns


async def test_the_same_person_has_the_same_context_in_slack_and_teams(serve_chat, recorder) -> None:
    from tests.support.platforms import teams_post

    question = "Which laptop do I have and how do I get a replacement charger?"
    async with serve_chat(answer_cache_ttl=0) as server:
        await slack_event(server.url, event_callback(message(question, user="U2")))
        await teams_post(
            server.url,
            activity(
                question, service_url=recorder.url, sender="29:ana", aad="aad-ana", conversation="a:1personal-ana"
            ),
        )
        slack = await wait_for_turns(server, "slack", 1)
        teams = await wait_for_turns(server, "teams", 1)
    [s], [t] = slack, teams
    assert s.user_key == t.user_key == ANA
    assert s.user_name == t.user_name == "Ana Ribeiro"
    assert s.groups == t.groups == ["hr"]
    assert s.user_facts and s.user_facts == t.user_facts
    assert any("Dell Latitude 7440" in fact for fact in s.user_facts)
    assert s.search_query == t.search_query
