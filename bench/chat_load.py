"""Do Slack and Teams get their HTTP answers fast while Deskmate is busy answering?

A real `deskmate serve` process (Slack HTTP mode and Teams, a generator that takes 2 s per answer)
gets N Slack events and N Teams messages at once (N = 1, 10, 50: the "burst" that starts N
answers on each platform), then one more of each every 100 ms while those answers are being
written ("during": the latency a new message sees while Deskmate is busy). A tenth of the burst's
Slack events are re-sent as Slack retries right after their ack ("retry"), which lands them
where the server is busiest: starting N answers on each platform at once. Every Web API / connector call goes to a local
stand-in (the recorder the tests use), which tells how many answers arrived and whether any came
twice.

Figures: Slack ack and Teams response latency p50/p99 per N and phase (over real HTTP, timed by
the client), answers lost and answered twice.

With `--stores` the server runs as in production: its ledger in a PostgreSQL database of its own
and its cache in a Redis server of its own (started here on a free port), so that the load each
puts on them can be counted from their own statistics (Redis `INFO commandstats`, PostgreSQL
`pg_stat_database`) and reported per 1,000 turns (docs/scaling.md).

    python bench/chat_load.py                                # N = 1, 10, 50
    python bench/chat_load.py --n 1 10                       # a quicker run
    python bench/chat_load.py --stores --n 50 100 200 400    # how many conversations one replica holds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp
from _common import (
    REPO,
    free_port,
    percentile,
    pg_admin,
    print_table,
    server_env,
    stop_server,
    wait_healthy,
    write_result,
)
from slack_sdk.signature import SignatureVerifier

from tests.support.recorder import Recorder

SECRET = "bench-signing-secret"
QUESTIONS = [
    "How do I reset my VPN password?",
    "How do I report a phishing email?",
    "How do I book a meeting room?",
    "How do I claim travel expenses?",
]
DESKMATE = str(Path(sys.executable).parent / "deskmate")


def start_recorder() -> Recorder:
    """The Slack/Teams stand-in on its own thread and event loop, so serving Deskmate's calls
    never delays the client's clock."""
    recorder = Recorder()
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(recorder.start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return recorder


class Stores:
    """A Redis server and a PostgreSQL database used by nothing but the benchmarked server, so
    their statistics are its load alone."""

    def __init__(self, pg_admin: str) -> None:
        import shutil

        self.pg_admin = pg_admin
        self.database = f"deskmate_bench_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{self.database}"')
        self.ledger_url = f"{pg_admin.rsplit('/', 1)[0]}/{self.database}"
        port = free_port()
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("--stores needs redis-server on PATH (apt-get install redis-server)")
        self._redis = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        import redis

        self.redis = redis.Redis.from_url(self.redis_url)
        for _ in range(50):
            try:
                self.redis.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)

    def _admin(self, sql: str, fetch: bool = False) -> list:
        return asyncio.run(pg_admin(self.pg_admin, sql, fetch=fetch))

    def snapshot(self) -> dict:
        """Counters now: Redis calls per command and memory; the database's transactions, rows
        written and read, and size; how many turns the ledger holds."""
        commands = {
            name.removeprefix("cmdstat_"): stats["calls"] for name, stats in self.redis.info("commandstats").items()
        }
        [row] = self._admin(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched, tup_returned, "
            f"pg_database_size('{self.database}') AS size FROM pg_stat_database WHERE datname = '{self.database}'",
            fetch=True,
        )
        import asyncpg

        async def turns() -> int:
            conn = await asyncpg.connect(self.ledger_url)
            try:
                return await conn.fetchval("SELECT count(*) FROM turns")
            finally:
                await conn.close()

        return {
            "redis": commands,
            "redis_memory": self.redis.info("memory")["used_memory"],
            "pg": dict(row),
            "turns": asyncio.run(turns()),
        }

    @staticmethod
    def per_thousand_turns(before: dict, after: dict) -> dict:
        turns = after["turns"] - before["turns"]
        scale = 1000 / max(1, turns)
        commands = {
            name: round((calls - before["redis"].get(name, 0)) * scale)
            for name, calls in sorted(after["redis"].items())
            if calls - before["redis"].get(name, 0) > 0 and name not in ("info", "ping")
        }
        pg = {f"pg_{k}": round((after["pg"][k] - before["pg"][k]) * scale) for k in after["pg"] if k != "size"}
        # pg_stat_database is updated asynchronously (at transaction end, flushed about every
        # second): the 2 s pause before the last snapshot lets the counts settle.
        return {
            "turns_measured": turns,
            "redis_commands": sum(commands.values()),
            "redis_memory_bytes": round((after["redis_memory"] - before["redis_memory"]) * scale),
            **pg,
            "pg_size_bytes": round((after["pg"]["size"] - before["pg"]["size"]) * scale),
            "redis_commands_per_1000_turns": commands,
        }

    def close(self) -> None:
        self._redis.terminate()
        self._redis.wait(10)
        self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def redis_or_memory(url: str) -> str:
    if url.startswith("redis://"):
        try:
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            return url
        except Exception:  # noqa: BLE001
            print(f"Redis at {url} is not reachable: using the in-process cache")
    return "memory://"


def slack_request(event_id: str, channel: str, user: str, text: str) -> tuple[bytes, dict[str, str]]:
    ts = f"{time.time():.6f}"
    body = json.dumps(
        {
            "token": "t",
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "event": {
                "type": "message",
                "channel": channel,
                "channel_type": "im",
                "user": user,
                "text": text,
                "ts": ts,
                "event_ts": ts,
                "team": "T1",
            },
        }
    ).encode()
    stamp = str(int(time.time()))
    return body, {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body),
    }


def teams_activity(conversation: str, service_url: str, text: str) -> dict:
    return {
        "type": "message",
        "id": uuid.uuid4().hex,
        "serviceUrl": service_url + "/",
        "channelId": "msteams",
        "from": {"id": "29:bench", "name": "Bench User", "aadObjectId": "aad-bench"},
        "conversation": {"id": conversation, "conversationType": "personal", "tenantId": "t1"},
        "recipient": {"id": "28:bot", "name": "Deskmate"},
        "text": text,
        "textFormat": "plain",
        "channelData": {"tenant": {"id": "t1"}},
    }


async def timed_post(http: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.post(url, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        return response.status, (time.perf_counter() - started) * 1000


def answered(recorder: Recorder, slack_channels: set[str], teams_conversations: set[str]) -> tuple[dict, dict]:
    """Final answers per Slack channel / Teams conversation, as the recorder saw them."""
    slack: dict[str, int] = {}
    teams: dict[str, int] = {}
    for call in list(recorder.calls):
        if call.api in ("chat.update", "chat.postMessage") and call.body.get("blocks"):
            channel = call.body.get("channel", "")
            if channel in slack_channels:
                slack[channel] = slack.get(channel, 0) + 1
        elif call.path.startswith("/v3/conversations/") and call.body.get("type") == "message":
            conversation = call.path.split("/")[3]
            if conversation in teams_conversations:
                teams[conversation] = teams.get(conversation, 0) + 1
    return slack, teams


async def load_round(url: str, recorder: Recorder, n: int, probe_seconds: float) -> dict:
    tag = uuid.uuid4().hex[:6]
    latencies: dict[str, list[float]] = {
        "slack_burst": [],
        "teams_burst": [],
        "slack_during": [],
        "teams_during": [],
        "slack_retry": [],
    }
    statuses: list[int] = []
    slack_channels: set[str] = set()
    teams_conversations: set[str] = set()
    retries = 0

    async def one_slack(http: aiohttp.ClientSession, i: int, retry: bool, phase: str) -> None:
        nonlocal retries
        channel = f"D{tag}{i}"
        slack_channels.add(channel)
        body, headers = slack_request(f"Ev{tag}{i}", channel, f"U{i % 7}", QUESTIONS[i % len(QUESTIONS)])
        status, ms = await timed_post(http, f"{url}/slack/events", data=body, headers=headers)
        statuses.append(status)
        latencies[f"slack_{phase}"].append(ms)
        if retry:
            retries += 1
            headers = {**headers, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
            status, ms = await timed_post(http, f"{url}/slack/events", data=body, headers=headers)
            statuses.append(status)
            latencies["slack_retry"].append(ms)

    async def one_teams(http: aiohttp.ClientSession, i: int, phase: str) -> None:
        conversation = f"a:{tag}{i}"
        teams_conversations.add(conversation)
        status, ms = await timed_post(
            http, f"{url}/api/messages", json=teams_activity(conversation, recorder.url, QUESTIONS[i % len(QUESTIONS)])
        )
        statuses.append(status)
        latencies[f"teams_{phase}"].append(ms)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        # The burst that starts N answers on each platform (a tenth of the Slack ones retried) ...
        await asyncio.gather(
            *[one_slack(http, i, i % 10 == 0, "burst") for i in range(n)],
            *[one_teams(http, i, "burst") for i in range(n)],
        )
        # ... then one request of each every 100 ms while those answers are being written.
        probes, i = [], n
        deadline = time.monotonic() + probe_seconds
        while time.monotonic() < deadline:
            probes += [
                asyncio.create_task(one_slack(http, i, False, "during")),
                asyncio.create_task(one_teams(http, i, "during")),
            ]
            i += 1
            await asyncio.sleep(0.1)
        await asyncio.gather(*probes)

    expected = len(slack_channels), len(teams_conversations)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        slack, teams = answered(recorder, slack_channels, teams_conversations)
        if (len(slack), len(teams)) == expected:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.5)  # a late duplicate would show up here
    slack, teams = answered(recorder, slack_channels, teams_conversations)
    twice = [k for k, v in [*slack.items(), *teams.items()] if v > 1]
    if twice:
        print(f"N={n}: answered more than once: {twice}")
    row: dict = {"n": n, "slack_retries": retries}
    for name, values in latencies.items():
        row[f"{name}_requests"] = len(values)
        if values:
            row[f"{name}_p50_ms"] = round(percentile(values, 50), 2)
            row[f"{name}_p99_ms"] = round(percentile(values, 99), 2)
            row[f"{name}_slowest_ms"] = [round(v, 1) for v in sorted(values)[-5:]]
    row.update(
        {
            "non_2xx": sum(1 for s in statuses if not 200 <= s < 300),
            "answers_expected": sum(expected),
            "lost": (expected[0] - len(slack)) + (expected[1] - len(teams)),
            "answered_twice": len(twice),
        }
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--delay", type=float, default=2.0, help="Seconds the generator takes per answer.")
    parser.add_argument("--probe-seconds", type=float, default=1.5)
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--stores",
        action="store_true",
        help="Ledger in a PostgreSQL database and cache in a Redis of their own, and count the load on each.",
    )
    parser.add_argument(
        "--pg-admin",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="Where --stores creates (and drops) its database.",
    )
    parser.add_argument("--name", default="chat_load", help="Result file name (bench/results/NAME.json).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    recorder = start_recorder()
    stores = Stores(args.pg_admin) if args.stores else None
    cache_url = stores.redis_url if stores else redis_or_memory(args.cache_url)
    prefix = f"deskmate-bench-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        ledger = {"DESKMATE_LEDGER_URL": stores.ledger_url} if stores else {}
        env = server_env(
            **ledger,
            DESKMATE_DATA_DIR=tmp,
            DESKMATE_PORT=str(port),
            DESKMATE_CACHE_URL=cache_url,
            DESKMATE_CACHE_PREFIX=prefix,
            DESKMATE_GENERATOR_URL=f"echo://?delay={args.delay}",
            DESKMATE_RATE_LIMIT_PER_MINUTE="0",
            DESKMATE_ANSWER_CACHE_TTL="0",
            SLACK_BOT_TOKEN="xoxb-bench",
            SLACK_SIGNING_SECRET=SECRET,
            DESKMATE_SLACK_API_URL=f"{recorder.url}/api/",
            # Teams activities are unsigned here: the development flag, allowed on loopback only
            DESKMATE_TEAMS_DEV_OPEN="true",
        )
        subprocess.run(
            [DESKMATE, "ingest", str(REPO / "examples" / "kb")], env=env, cwd=tmp, check=True, capture_output=True
        )
        server = subprocess.Popen(
            [DESKMATE, "serve"], env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "serve.log", "w")
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            asyncio.run(load_round(url, recorder, 1, 0))  # warm-up: first-request costs are not load
            before = stores.snapshot() if stores else None
            rows = [asyncio.run(load_round(url, recorder, n, args.probe_seconds)) for n in args.n]
            time.sleep(2)  # the last ledger writes land
            load = stores.per_thousand_turns(before, stores.snapshot()) if stores else None
        finally:
            stop_server(server, Path(tmp) / "serve.log")
            if stores:
                stores.close()
        if cache_url.startswith("redis://") and not stores:  # a Redis of our own is gone already
            import redis

            client = redis.Redis.from_url(cache_url)
            keys = list(client.scan_iter(f"{prefix}*"))
            if keys:
                client.delete(*keys)

    headers = ["N", "phase", "slack reqs", "slack ack p50", "p99 (ms)", "teams reqs", "teams p50", "p99 (ms)"]
    table = []
    for r in rows:
        for phase in ("burst", "during", "retry"):
            table.append(
                [
                    r["n"],
                    phase,
                    r.get(f"slack_{phase}_requests", 0),
                    r.get(f"slack_{phase}_p50_ms", "-"),
                    r.get(f"slack_{phase}_p99_ms", "-"),
                    r.get(f"teams_{phase}_requests", "-"),
                    r.get(f"teams_{phase}_p50_ms", "-"),
                    r.get(f"teams_{phase}_p99_ms", "-"),
                ]
            )
    print_table(headers, table)
    print_table(
        ["N", "answers expected", "lost", "answered twice", "non-2xx"],
        [[r["n"], r["answers_expected"], r["lost"], r["answered_twice"], r["non_2xx"]] for r in rows],
    )
    figures = {
        "generator_delay_s": args.delay,
        "cache": cache_url.split(":")[0],
        "ledger": "postgresql" if stores else "sqlite",
        "target": "p99 <= 100 ms at N=50, none lost, none twice",
        "rounds": rows,
    }
    if load:
        figures["store_load"] = load
        print_table(["per 1,000 turns", "value"], [[k, v] for k, v in load.items() if not isinstance(v, dict)])
        print("Redis commands per 1,000 turns:", load["redis_commands_per_1000_turns"])
    path = write_result(args.name, figures, args.out)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
