"""How fast are the review console's queue and turn pages on a full ledger?

For each backend (a SQLite file, and a fresh PostgreSQL database that is dropped afterwards) the
ledger is migrated and seeded with synthetic but realistically shaped data: by default 100,000
turns over 60 days (Slack DMs, assistant threads and channel threads, Teams chats and channels,
the web chat, the CLI; mostly answered, some "I don't know" and failures; three ~700-character
retrieved passages and the two-message prompt per turn, as real turns store) and 20,000 ratings
(employees' thumbs, leads' scores, verdicts, notes and corrections; a thumbs-down raises the
turn's risk and a lead review marks it reviewed, as the ledger does). No text is copied from any
data set: it is all generated here, from a fixed seed.

A real `deskmate serve` process is then started on that ledger (echo generator, in-process
cache), a lead signs in with a one-time token, and the client times, over real HTTP and one
request at a time, after a few warm-up requests (the kinds interleaved in a shuffled order):

  queue             GET /console/queue                 (the first page, unfiltered)
  queue_page5       GET /console/queue?page=5          (rows 251-300)
  queue_platform    GET /console/queue?platform=...    (slack, teams, web, cli in turn)
  queue_search      GET /console/queue?q=...           (a topic word: vpn, expense, printer ...)
  queue_search_rare GET /console/queue?q=0x80070005    (an error code in ~0.1% of questions)
  turn              GET /console/turns/{id}            (200 ids: half rated turns, half any)

Figures, per backend and page kind: requests, p50/p95/p99/max in ms (client clock) and whether
the issue's target (p95 <= 150 ms with 100k turns and 20k ratings) is met, with a breakdown per
platform (filter or turn's platform) and search word in the JSON; also the seeding time, row
counts, the database size and the EXPLAIN of the slowest candidate queries. The PostgreSQL
database is ANALYZEd after seeding (as autovacuum would soon do); the SQLite file is left as the
app leaves it (no ANALYZE). On SQLite the turn page's thread query uses ix_turns_channel or
ix_turns_platform depending on the order the migration happened to create the indexes in (it
varies from one migration to the next), so its figure varies between runs: read the recorded plan.

    python bench/console_load.py                              # 100k turns, 20k ratings, both backends
    python bench/console_load.py --turns 20000 --ratings 4000 --backends sqlite   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    free_port,
    percentile,
    pg_admin,
    print_table,
    server_env,
    stop_server,
    wait_healthy,
    write_result,
)
from sqlalchemy import func, insert, select, text

from bot.console.auth import issue_token
from bot.ledger.ledger import Ledger
from bot.ledger.review import turn_risk
from bot.ledger.rows import FeedbackRow, TurnRow

DESKMATE = str(Path(sys.executable).parent / "deskmate")
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
LEAD = "bench.lead@example.com"
OTHER_LEADS = ["amira.haddad@example.com", "jonas.berg@example.com", "li.wei@example.com", "marta.silva@example.com"]
TARGET_P95_MS = 150.0
DAYS = 60
BATCH = 1000
SEED = 20261123

# --- synthetic vocabulary ----------------------------------------------------------------------

FIRST = [
    "Anna",
    "Ben",
    "Chloe",
    "David",
    "Elif",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jakub",
    "Kenji",
    "Lena",
    "Mateo",
    "Nadia",
    "Oscar",
    "Priya",
    "Quinn",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "Wen",
    "Yara",
    "Zoe",
    "Tomas",
    "Aisha",
    "Noah",
    "Maja",
    "Luca",
]
LAST = [
    "Andersen",
    "Brown",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Muller",
    "Nguyen",
    "Okafor",
    "Patel",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Umarov",
    "Virtanen",
    "Walsh",
    "Xu",
    "Yilmaz",
    "Zhang",
    "Moreau",
    "Novak",
    "Santos",
    "Khan",
    "Larsen",
]
DEPARTMENTS = ["engineering", "sales", "finance", "hr", "support", "marketing", "legal", "operations"]


@dataclass(frozen=True)
class Topic:
    word: str  # what a lead would search for; appears in its questions
    title: str
    doc: str
    headings: tuple[str, ...]
    questions: tuple[str, ...]
    facts: tuple[str, ...]
    groups: tuple[str, ...] = ()


TOPICS: list[Topic] = [
    Topic(
        "vpn",
        "VPN access",
        "it/vpn.md",
        ("Connecting from home", "Troubleshooting", "Travel"),
        (
            "How do I connect to the VPN from {place}?",
            "The VPN keeps disconnecting every {n} minutes, what can I do?",
            "Why does the VPN client say my certificate expired?",
            "Can I use the VPN on my personal {device}?",
        ),
        (
            "Open the GlobalConnect client and choose the gateway closest to you, for example {city}.",
            "If the tunnel drops every few minutes, switch the protocol from UDP to TCP under Settings > Advanced.",
            "Certificates renew automatically when you are on the office network at least once every {n} days.",
            "Personal devices may only use the browser-based VPN portal, not the full client.",
            "When travelling outside the EU, tell the service desk {n} working days in advance.",
        ),
    ),
    Topic(
        "password",
        "Passwords and sign-in",
        "it/passwords.md",
        ("Resetting", "Rules", "Locked accounts"),
        (
            "How do I reset my password?",
            "My account is locked after I typed the password wrong {n} times.",
            "How often do I have to change my password?",
            "I forgot my password and I'm on my {device}, help",
        ),
        (
            "Go to the self-service portal and choose Forgot password; the reset link is valid for {n} minutes.",
            "Passwords need at least 14 characters and cannot reuse any of your last {n} passwords.",
            "A locked account unlocks by itself after 30 minutes, or the service desk can unlock it at once.",
            "You will be asked to confirm the reset with your authenticator app on your {device}.",
        ),
    ),
    Topic(
        "mfa",
        "Multi-factor authentication",
        "it/mfa.md",
        ("New phone", "Authenticator app"),
        (
            "I got a new {device}, how do I move my MFA?",
            "The MFA prompt never arrives on my phone.",
            "Can I use SMS instead of the authenticator app for mfa?",
        ),
        (
            "Before wiping the old phone, add the new one under My Sign-ins > Security info.",
            "If prompts do not arrive, open the app and pull down to refresh; check the phone's clock is automatic.",
            "SMS is only allowed as a backup method, never as the default one.",
            "Lost both devices? Call the service desk on extension {n} and bring your badge.",
        ),
    ),
    Topic(
        "expense",
        "Expense claims",
        "finance/expenses.md",
        ("Submitting", "Receipts", "Limits"),
        (
            "How do I claim travel expenses for my trip to {city}?",
            "What is the expense limit for a client dinner?",
            "My expense claim was rejected, why?",
            "Do I need a receipt for expenses under {n} euros?",
        ),
        (
            "Submit claims in the Expenses app within {n} days of the purchase, with a photo of every receipt.",
            "Client dinners are reimbursed up to 85 euros per person including drinks.",
            "Claims are usually rejected because the cost centre is missing or the receipt is unreadable.",
            "Mileage is paid at 0.30 euros per kilometre; add the start and end address.",
        ),
        ("finance", "all-staff"),
    ),
    Topic(
        "parental leave",
        "Parental leave",
        "hr/parental-leave.md",
        ("Eligibility", "Applying", "Pay"),
        (
            "How much parental leave do I get?",
            "When should I tell my manager about parental leave?",
            "Can I split my parental leave into {n} blocks?",
        ),
        (
            "Every employee gets 20 weeks of paid parental leave, regardless of gender.",
            "Tell your manager and HR at least {n} weeks before the leave starts.",
            "Leave can be taken in up to three blocks within the first two years.",
            "Pay during leave is 100% of base salary for the first 16 weeks.",
        ),
        ("hr", "all-staff"),
    ),
    Topic(
        "holiday",
        "Holiday allowance",
        "hr/holidays.md",
        ("Allowance", "Carry-over", "Booking"),
        (
            "How many holiday days do I have left?",
            "Can I carry over holiday days to next year?",
            "How do I book a holiday in {month}?",
        ),
        (
            "The allowance is 27 days a year plus public holidays, pro rata for part-time staff.",
            "Up to {n} unused days can be carried over and must be taken before the end of March.",
            "Book holidays in the HR portal; your manager approves them within {n} working days.",
        ),
    ),
    Topic(
        "printer",
        "Printing",
        "it/printing.md",
        ("Adding a printer", "Scanning"),
        (
            "How do I add the printer on floor {n}?",
            "The printer says my badge is not recognised.",
            "How can I scan a document to email?",
        ),
        (
            "Printers are installed from the Software Centre: search for FollowMe and install it.",
            "Jobs wait in the queue for {n} hours and print when you tap your badge on any printer.",
            "Scans go to your own mailbox; choose Scan to me on the printer's screen.",
        ),
    ),
    Topic(
        "laptop",
        "Laptops and equipment",
        "it/laptops.md",
        ("Replacement", "Repairs", "Peripherals"),
        (
            "When can I get a new laptop?",
            "My laptop battery only lasts {n} minutes, can it be replaced?",
            "How do I order a second monitor for home?",
        ),
        (
            "Laptops are replaced every four years, or sooner when the service desk finds a hardware fault.",
            "Battery replacements take about {n} working days; you get a loan laptop meanwhile.",
            "Order monitors, keyboards and headsets in the IT shop; the budget is 300 euros per year.",
        ),
    ),
    Topic(
        "payroll",
        "Payroll",
        "finance/payroll.md",
        ("Payslips", "Pay dates", "Tax"),
        ("When is salary paid in {month}?", "Where can I find my payslip?", "My payroll shows the wrong tax code."),
        (
            "Salary is paid on the 25th, or the last working day before it.",
            "Payslips are in the HR portal under Pay > Documents for the last {n} months.",
            "Tax code changes come from the tax office; payroll applies them in the next run.",
        ),
        ("finance", "all-staff"),
    ),
    Topic(
        "meeting room",
        "Meeting rooms",
        "facilities/rooms.md",
        ("Booking", "Equipment"),
        (
            "How do I book a meeting room for {n} people?",
            "The screen in meeting room {n} doesn't work.",
            "Can I book a meeting room in the {city} office?",
        ),
        (
            "Book rooms in the calendar by adding the room as a guest; rooms over {n} seats need approval.",
            "Every room has a USB-C cable for the screen; report faults with the QR code by the door.",
        ),
    ),
    Topic(
        "phishing",
        "Phishing and security",
        "security/phishing.md",
        ("Reporting", "Recognising"),
        (
            "How do I report a phishing email?",
            "I clicked a link in a phishing mail, what now?",
            "Is this email from the CEO asking for gift cards real?",
        ),
        (
            "Use the Report button in Outlook; the security team answers within {n} hours.",
            "If you entered your password, change it at once and call the security hotline.",
            "Nobody at the company will ever ask you to buy gift cards or share a code.",
        ),
    ),
    Topic(
        "software",
        "Installing software",
        "it/software.md",
        ("Software Centre", "Licences"),
        (
            "How do I install {app} on my laptop?",
            "Can I get a licence for {app}?",
            "Why is {app} blocked on my machine?",
        ),
        (
            "Most software is in the Software Centre and installs without admin rights.",
            "Paid licences need your manager's approval in the IT shop; it takes about {n} days.",
            "Software that is not on the approved list is blocked until security reviews it.",
        ),
    ),
    Topic(
        "onboarding",
        "Onboarding",
        "hr/onboarding.md",
        ("First day", "Accounts"),
        (
            "A new hire starts on {month} {n}, what do I need to prepare for onboarding?",
            "My new team member has no laptop yet, who do I ask?",
        ),
        (
            "Managers open the onboarding request at least {n} working days before the first day.",
            "The laptop and badge are ready at the service desk on the first morning.",
        ),
    ),
    Topic(
        "badge",
        "Badges and access",
        "facilities/badges.md",
        ("Lost badge", "Access rights"),
        (
            "I lost my badge, what do I do?",
            "My badge doesn't open the door on floor {n}.",
            "How do I get a visitor badge for a guest?",
        ),
        (
            "Report a lost badge in the facilities portal; it is blocked at once and a new one costs nothing.",
            "Access to floors is granted by your department head; changes take effect within {n} hours.",
            "Visitors are registered at reception and must be collected by their host.",
        ),
    ),
    Topic(
        "wifi",
        "Wi-Fi",
        "it/wifi.md",
        ("Office Wi-Fi", "Guests"),
        (
            "How do I connect to the office wifi?",
            "The guest wifi password doesn't work.",
            "Wifi is very slow in the {city} office today.",
        ),
        (
            "Company laptops join CorpNet automatically with your certificate; phones use CorpNet-BYOD.",
            "The guest password changes every {n} days and is shown on the screens at reception.",
        ),
    ),
    Topic(
        "sick leave",
        "Sick leave",
        "hr/sick-leave.md",
        ("Reporting sick", "Doctor's note"),
        ("How do I report sick leave?", "Do I need a doctor's note for {n} days of sick leave?"),
        (
            "Tell your manager before 9:00 and record the absence in the HR portal the same day.",
            "A doctor's note is needed from the fourth day of sick leave onwards.",
        ),
        ("hr", "all-staff"),
    ),
    Topic(
        "shared drive",
        "Shared drives",
        "it/shared-drives.md",
        ("Access", "Storage"),
        ("How do I get access to the {dept} shared drive?", "The shared drive is full, can it be extended?"),
        (
            "Ask the drive's owner to add you; owners are listed in the drive's properties.",
            "Shared drives hold up to {n} GB; larger needs go through the data team.",
        ),
    ),
    Topic(
        "travel",
        "Business travel",
        "finance/travel.md",
        ("Booking", "Insurance"),
        ("How do I book a flight to {city}?", "Am I insured on a business trip to {city}?"),
        (
            "Book all travel through the travel portal so that the company knows where you are.",
            "Business travel insurance covers you automatically; the policy number is in the portal.",
            "Trains are preferred over flights for trips shorter than {n} hours.",
        ),
    ),
]
PLACES = ["home", "a hotel", "the airport", "a client site", "the train", "my parents' house"]
DEVICES = ["phone", "laptop", "tablet", "iPad", "Android phone", "MacBook"]
CITIES = ["Berlin", "Lisbon", "Warsaw", "Amsterdam", "Dublin", "Madrid", "Stockholm", "Milan"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
APPS = ["Visio", "Tableau", "Figma", "Docker Desktop", "Power BI", "Adobe Acrobat Pro", "Zoom", "Miro"]
OPENERS = [
    "Hi!",
    "Hello Deskmate,",
    "Quick question:",
    "Hey,",
    "Good morning.",
    "Sorry to bother you again.",
    "I'm new here.",
    "My manager told me to ask you.",
]
DETAILS = [
    "I already tried restarting twice.",
    "I need this sorted before Friday.",
    "It worked fine last week.",
    "I'm working from the {city} office this week.",
    "A colleague said the intranet page is out of date.",
    "This is for my team of {n} people.",
    "I get error 0x80070005 when I try.",
    "Nothing in the intranet helped.",
]
FILLER = [
    "This page is owned by the {dept} team and was last reviewed in {month}.",
    "If anything here is unclear, open a ticket in the service portal and mention the page title.",
    "Exceptions need written approval from your department head.",
    "The rules apply to employees and contractors alike, unless their contract says otherwise.",
    "See also the related pages linked at the bottom of this article.",
    "Changes to this process are announced in the monthly newsletter.",
    "For urgent problems outside office hours, call the on-call number on the intranet home page.",
]
CLOSERS = [
    "Let me know if you need anything else.",
    "Hope that helps!",
    "If that doesn't work, the service desk can help on extension {n}.",
    "",
]
NOTES = [
    "Answer is fine but too long.",
    "Cited the wrong page.",
    "Outdated: the limit changed in {month}.",
    "Should have asked which office.",
    "Good, but missing the approval step.",
    "Perfect.",
    "The user was asking about something else.",
    "Mixed up two policies.",
]
VERBS = [
    "Open",
    "Select",
    "Check",
    "Confirm",
    "Enter",
    "Choose",
    "Restart",
    "Sign in to",
    "Download",
    "Attach",
    "Review",
    "Submit",
    "Update",
    "Print",
    "Forward",
    "Look up",
]
OBJECTS = [
    "the self-service portal",
    "the request form",
    "your profile page",
    "the settings menu",
    "the approval screen",
    "the attachment field",
    "the cost centre",
    "the confirmation email",
    "the status page",
    "the team calendar",
    "the ticket number",
    "the policy summary",
    "the FAQ section",
    "your manager's approval",
    "the device inventory",
    "the booking reference",
]
QUALIFIERS = [
    "before the end of the month",
    "using your company account",
    "from a managed device",
    "within {n} working days",
    "and wait for the green tick",
    "unless your manager has already done so",
    "if the page shows a warning",
    "as described in section {n}",
    "on the first working day",
    "after the change window on Sunday",
    "and keep a copy for your records",
    "when the {city} office is closed",
    "in the {month} release",
    "for every member of your team",
]
THUMB_NOTES = ["Didn't answer my question", "Wrong office", "Too long", "The link is broken", "Outdated"]
SYSTEM_PROMPT = (
    "You are Deskmate, a helpful company support assistant. Answer briefly and only from the "
    "context. If the context does not answer the question, say: I don't know."
)
UNKNOWN = (
    "I don't know: that isn't covered in the knowledge base yet. You can ask the service desk "
    "(servicedesk@example.com, extension 4400) and I'll let the team know the question came up."
)
ERRORS = [
    "GeneratorTimeout: no answer within 60 s",
    "GeneratorError: connection refused (llama.cpp at :8081)",
    "GeneratorError: HTTP 503 from the model server",
]
SEARCH_WORDS = ["vpn", "expense", "printer", "parental leave", "password", "badge"]
RARE_WORD = "0x80070005"
PLATFORM_FILTERS = ["slack", "teams", "web", "cli"]
KINDS = ["queue", "queue_page5", "queue_platform", "queue_search", "queue_search_rare", "turn"]


def fill(template: str, rng: random.Random) -> str:
    return template.format(
        place=rng.choice(PLACES),
        device=rng.choice(DEVICES),
        city=rng.choice(CITIES),
        month=rng.choice(MONTHS),
        app=rng.choice(APPS),
        dept=rng.choice(DEPARTMENTS),
        n=rng.randint(2, 40),
    )


def step(rng: random.Random, topic: Topic) -> str:
    """A procedural sentence assembled from parts, so that passages and answers vary."""
    lead = f"For {topic.title.lower()}, " if rng.random() < 0.3 else ""
    verb = rng.choice(VERBS)
    return fill(f"{lead}{verb.lower() if lead else verb} {rng.choice(OBJECTS)} {rng.choice(QUALIFIERS)}.", rng)


def sentences(rng: random.Random, topic: Topic, chars: int) -> list[str]:
    """Topic facts (each at most once), procedural steps and boilerplate, up to about `chars`."""
    facts = rng.sample(topic.facts, len(topic.facts))
    out: list[str] = []
    while sum(len(s) + 1 for s in out) < chars:
        roll = rng.random()
        if facts and roll < 0.45:
            out.append(fill(facts.pop(), rng))
        elif roll < 0.85:
            out.append(step(rng, topic))
        else:
            out.append(fill(rng.choice(FILLER), rng))
    return out


# --- the knowledge base the turns "retrieved" from ---------------------------------------------


def make_chunks(rng: random.Random, per_topic: int = 25) -> list[list[dict[str, Any]]]:
    """~700-character passages per topic, shaped like `Orchestrator._served_chunk`."""
    chunks: list[list[dict[str, Any]]] = []
    for topic in TOPICS:
        mine = []
        for i in range(per_topic):
            text = " ".join(sentences(rng, topic, 700))[:720]
            slug = topic.doc.rsplit("/", 1)[-1].removesuffix(".md")
            mine.append(
                {
                    "chunk_id": f"{topic.doc}#{i}",
                    "doc_id": topic.doc,
                    "title": topic.title,
                    "heading": rng.choice(topic.headings),
                    "url": f"https://intranet.example.com/kb/{slug}",
                    "groups": list(topic.groups),
                    "text": text,
                }
            )
        chunks.append(mine)
    return chunks


# --- turn skeletons: who asked where and when, and how it went ----------------------------------


@dataclass
class Skeleton:
    """The cheap part of a turn, decided up front (ratings depend on it); the text is made later."""

    index: int
    id: str
    created_at: datetime
    platform: str
    workspace: str
    channel: str
    thread_id: str
    user_key: str
    user_name: str
    private: bool
    groups: list[str]
    topic: int
    status: str
    confidence: float | None
    latency_ms: dict[str, float]
    cache_hit: bool
    risk: int = 0
    reviewed: bool = False
    rated: bool = False


@dataclass(frozen=True)
class Person:
    key: str
    name: str
    groups: list[str]
    slack_dm: str
    teams_chat: str


def make_people(rng: random.Random, n: int = 3000) -> list[Person]:
    people = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        key = f"{first}.{last}{i if i >= 900 else ''}@example.com".lower()
        people.append(
            Person(
                key,
                f"{first} {last}",
                ["all-staff", rng.choice(DEPARTMENTS)],
                f"D{uuid.UUID(int=rng.getrandbits(128)).hex[:10].upper()}",
                f"a:1{uuid.UUID(int=rng.getrandbits(128)).hex}",
            )
        )
    return people


def pick_place(rng: random.Random, person: Person, start: datetime) -> tuple[str, str, str, str, bool]:
    """(platform, workspace, channel, thread_id, private) the way the adapters fill them in."""
    roll = rng.random()
    ts = f"{start.timestamp():.6f}"
    if roll < 0.55:  # Slack
        kind = rng.random()
        if kind < 0.6:
            return "slack", "T0ACME", person.slack_dm, person.slack_dm, True
        if kind < 0.7:
            return "slack", "T0ACME", person.slack_dm, ts, True
        channel = f"C0{rng.choice(['ITHELP', 'HRASK', 'FINQ', 'FACIL', 'SECURITY', 'GENERAL', 'ENGHELP', 'SALESOPS'])}"
        return "slack", "T0ACME", channel, ts, False
    if roll < 0.90:  # Teams
        tenant = "6f1c2b7e-0c1d-4c61-9a51-acme00000001"
        if rng.random() < 0.7:
            return "teams", tenant, person.teams_chat, person.teams_chat, True
        channel = f"19:{rng.choice(['it-help', 'hr-questions', 'finance', 'office'])}@thread.tacv2"
        return "teams", tenant, channel, f"{channel};messageid={int(start.timestamp() * 1000)}", False
    if roll < 0.98:
        return "web", "", "web", str(uuid.UUID(int=rng.getrandbits(128))), True
    return "cli", "", "cli", str(uuid.UUID(int=rng.getrandbits(128))), True


def random_start(rng: random.Random, now: datetime) -> datetime:
    """A moment on one of the DAYS days before today (UTC), mostly in office hours; never today,
    so the same seed gives the same ledger whatever the time of day."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=rng.randint(1, DAYS))
    hour = rng.choice([8, 9, 9, 10, 10, 11, 11, 12, 13, 14, 14, 15, 15, 16, 17, 18, 20, 22])
    return day.replace(
        hour=hour, minute=rng.randrange(60), second=rng.randrange(60), microsecond=rng.randrange(1_000_000)
    )


def outcome(rng: random.Random) -> tuple[str, float | None, dict[str, float], bool]:
    """status, confidence, latency_ms, cache_hit."""
    roll = rng.random()
    retrieval = round(rng.uniform(15, 140), 1)
    if roll < 0.002:
        return "pending", None, {}, False
    if roll < 0.11:
        return "unknown", round(rng.uniform(0.05, 0.34), 3), {"retrieval": retrieval, "total": retrieval + 5}, False
    if roll < 0.145:
        total = 60_000.0 if rng.random() < 0.5 else round(rng.uniform(200, 3000), 1)
        return "failed", round(rng.uniform(0.3, 0.9), 3), {"retrieval": retrieval, "total": total}, False
    if rng.random() < 0.05:
        return "answered", round(rng.uniform(0.55, 0.97), 3), {"retrieval": retrieval, "total": retrieval + 3}, True
    generation = round(min(rng.lognormvariate(7.8, 0.6), 45_000), 1)  # median ~2.4 s, ~3% over 10 s
    confidence = round(rng.uniform(0.35, 0.5) if rng.random() < 0.08 else rng.uniform(0.5, 0.97), 3)
    return (
        "answered",
        confidence,
        {
            "retrieval": retrieval,
            "first_token": round(generation * 0.2, 1),
            "generation": generation,
            "total": round(retrieval + generation, 1),
        },
        False,
    )


def make_skeletons(rng: random.Random, n: int, people: list[Person], now: datetime) -> list[Skeleton]:
    """Conversations of 1-6 turns a few minutes apart, flattened and sorted by time."""
    out: list[Skeleton] = []
    heavy = rng.sample(people, len(people) // 10)  # a tenth of the people ask half the questions
    while len(out) < n:
        person = rng.choice(heavy) if rng.random() < 0.5 else rng.choice(people)
        start = random_start(rng, now)
        platform, workspace, channel, thread_id, private = pick_place(rng, person, start)
        topic = rng.randrange(len(TOPICS))
        length = rng.choices([1, 2, 3, 4, 5, 6], weights=[55, 20, 12, 6, 4, 3])[0]
        moment = start
        for _ in range(min(length, n - len(out))):
            status, confidence, latency, cache_hit = outcome(rng)
            out.append(
                Skeleton(
                    0,
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    moment,
                    platform,
                    workspace,
                    channel,
                    thread_id,
                    person.key,
                    person.name,
                    private,
                    person.groups,
                    topic,
                    status,
                    confidence,
                    latency,
                    cache_hit,
                )
            )
            moment += timedelta(seconds=rng.uniform(20, 600))
            if rng.random() < 0.15:
                topic = rng.randrange(len(TOPICS))
    out.sort(key=lambda s: s.created_at)
    for i, s in enumerate(out):
        s.index = i
        s.risk = turn_risk({"status": s.status, "confidence": s.confidence, "latency_ms": s.latency_ms})
    return out


# --- ratings ----------------------------------------------------------------------------------


def correction_text(rng: random.Random, topic: Topic) -> str:
    return " ".join(sentences(rng, topic, rng.randint(150, 700))) + " [1]"


def make_ratings(rng: random.Random, turns: list[Skeleton], n: int, now: datetime) -> list[dict[str, Any]]:
    """Thumbs first (a thumbs-down adds 3 to the risk), then lead reviews of ~15% of the turns,
    chosen the riskier the likelier (leads work down the queue); a few are reviewed twice.
    Marks the skeletons `reviewed`/`rated`/`risk` as the ledger would."""
    eligible = [t for t in turns if t.status != "pending"]
    leads_wanted = min(int(n * 0.8), round(len(turns) * 0.15 * 1.06))
    reviewed_count = min(len(eligible), round(leads_wanted / 1.06))
    thumbs_count = n - leads_wanted
    rows: list[dict[str, Any]] = []
    for t in rng.sample(eligible, min(thumbs_count, len(eligible))):
        down = rng.random() < (0.55 if t.status != "answered" or (t.confidence or 1) < 0.5 else 0.22)
        t.risk += 3 if down else 0
        t.rated = True
        note = rng.choice(THUMB_NOTES) if down and rng.random() < 0.4 else None
        rows.append(
            {
                "turn_id": t.id,
                "created_at": min(now, t.created_at + timedelta(seconds=rng.uniform(5, 1800))),
                "rater_key": t.user_key,
                "rater_role": "employee",
                "platform": t.platform,
                "thumb": -1 if down else 1,
                "score": None,
                "verdict": None,
                "note": note,
                "correction": None,
            }
        )
    # Weighted sampling without replacement (Efraimidis-Spirakis): key = u ** (1 / weight).
    keyed = sorted(eligible, key=lambda t: rng.random() ** (1 / (1 + 2 * t.risk)), reverse=True)
    reviewed = keyed[:reviewed_count]
    twice = rng.sample(reviewed, leads_wanted - reviewed_count) if reviewed else []
    for t in reviewed + twice:
        t.reviewed = t.rated = True
        rows.append(lead_review(rng, t, now))
    rows.sort(key=lambda r: r["created_at"])
    return rows


def lead_review(rng: random.Random, t: Skeleton, now: datetime) -> dict[str, Any]:
    score = rng.choices([1, 2, 3, 4, 5], weights=[6, 9, 15, 30, 40])[0]
    verdict = {5: "correct", 4: "correct", 3: "incomplete", 2: "wrong", 1: "wrong"}[score]
    if rng.random() < 0.03:
        verdict = rng.choice(["unsafe", "should_not_answer"])
    if rng.random() < 0.1:
        score = None  # a verdict only
    topic = TOPICS[t.topic]
    return {
        "turn_id": t.id,
        "created_at": min(now, t.created_at + timedelta(hours=rng.uniform(1, 120))),
        "rater_key": rng.choice([LEAD, *OTHER_LEADS]),
        "rater_role": "lead",
        "platform": rng.choice(["console", "console", "console", "slack"]),
        "thumb": None,
        "score": score,
        "verdict": verdict,
        "note": fill(rng.choice(NOTES), rng) if rng.random() < 0.4 else None,
        "correction": correction_text(rng, topic) if verdict in ("incomplete", "wrong") else None,
    }


# --- full turn rows ---------------------------------------------------------------------------


def question_text(rng: random.Random, topic: Topic) -> str:
    parts = [rng.choice(OPENERS)] if rng.random() < 0.35 else []
    parts.append(fill(rng.choice(topic.questions), rng))
    for _ in range(rng.choices([0, 1, 2], weights=[40, 40, 20])[0]):
        detail = rng.choice(DETAILS)
        if detail.startswith("I get error") and rng.random() > 0.02:
            continue  # the rare search term: ~0.1% of questions
        parts.append(fill(detail, rng))
    return " ".join(parts)


def answer_text(rng: random.Random, topic: Topic) -> str:
    cited = [f"{s} [{rng.randint(1, 3)}]" for s in sentences(rng, topic, rng.randint(150, 900))]
    return " ".join([*cited, fill(rng.choice(CLOSERS), rng)]).strip()


def turn_row(s: Skeleton, chunks: list[list[dict[str, Any]]], seed: int) -> dict[str, Any]:
    """Every column of one turn, from its skeleton and its own random stream."""
    rng = random.Random(seed * 1_000_003 + s.index)
    topic = TOPICS[s.topic]
    question = question_text(rng, topic)
    retrieved: list[dict[str, Any]] = []
    if s.status != "pending":
        top = max(0.2, (s.confidence or 0.5) + 0.05)
        picks = rng.sample(chunks[s.topic], 2) + [rng.choice(chunks[rng.randrange(len(TOPICS))])]
        retrieved = [{**c, "score": round(top - 0.07 * i, 4)} for i, c in enumerate(picks)]
    context = "\n".join(f"[{i}] {c['title']} > {c['heading']}: {c['text']}" for i, c in enumerate(retrieved, 1))
    answer = {"answered": answer_text(rng, topic), "unknown": UNKNOWN}.get(s.status)
    completed = None if s.status == "pending" else s.created_at + timedelta(milliseconds=s.latency_ms.get("total", 0))
    day = (s.created_at - datetime(2026, 1, 1, tzinfo=UTC)).days
    return {
        "id": s.id,
        "reference": s.id.replace("-", "")[:8].upper(),
        "created_at": s.created_at,
        "completed_at": completed,
        "platform": s.platform,
        "workspace": s.workspace,
        "channel": s.channel,
        "thread_id": s.thread_id,
        "user_key": s.user_key,
        "user_name": s.user_name,
        "private": s.private,
        "groups": s.groups,
        "question": question,
        "search_query": question[:300],
        "status": s.status,
        "answer": answer,
        "error": rng.choice(ERRORS) if s.status == "failed" else None,
        "retrieved": retrieved,
        "cited": [c["chunk_id"] for c in retrieved[: rng.randint(1, 2)]] if s.status == "answered" else [],
        "user_facts": [f"Works in {s.groups[-1]}."] if rng.random() < 0.3 else [],
        "prompt": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"},
        ]
        if retrieved
        else [],
        "prompt_version": "v1",
        "model": "qwen2.5-3b-instruct-q4_k_m",
        "adapter_version": "deskmate-lora-2026-10" if day % 60 > 40 else "",
        "kb_version": 12 + day // 7,
        "confidence": s.confidence,
        "cache_hit": s.cache_hit,
        "latency_ms": s.latency_ms,
        "risk": s.risk,
        "reviewed": s.reviewed,
    }


# --- seeding ----------------------------------------------------------------------------------


@dataclass
class Seeded:
    seconds: float
    rows: dict[str, int]
    platform_of: dict[str, str]  # every turn id -> its platform
    rated_ids: list[str]
    token: str
    db_size_mb: float = 0.0
    plans: dict[str, list[str]] = field(default_factory=dict)


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def seed(ledger: Ledger, turns: int, ratings: int) -> Seeded:
    """Migrate, bulk-insert the turns and ratings, and issue the lead's sign-in token."""
    rng = random.Random(SEED)
    now = datetime.now(UTC)
    started = time.perf_counter()
    await ledger.migrate()
    people = make_people(rng)
    chunks = make_chunks(rng)
    skeletons = make_skeletons(rng, turns, people, now)
    rating_rows = make_ratings(rng, skeletons, ratings, now)
    for chunk in batches(skeletons, BATCH):
        rows = [turn_row(s, chunks, SEED) for s in chunk]
        async with ledger.engine.begin() as conn:
            await conn.execute(insert(TurnRow.__table__), rows)
    for chunk in batches(rating_rows, BATCH * 5):
        async with ledger.engine.begin() as conn:
            await conn.execute(insert(FeedbackRow.__table__), chunk)
    if ledger.url.startswith("postgresql"):
        async with ledger.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE")
    seconds = time.perf_counter() - started
    token = await issue_token(ledger, LEAD)
    return Seeded(
        seconds,
        await row_counts(ledger),
        {s.id: s.platform for s in skeletons},
        [s.id for s in skeletons if s.rated],
        token,
    )


async def row_counts(ledger: Ledger) -> dict[str, int]:
    async with ledger.sessions() as session:

        async def count(query: Any) -> int:
            return int(await session.scalar(query) or 0)

        return {
            "turns": await count(select(func.count()).select_from(TurnRow)),
            "ratings": await count(select(func.count()).select_from(FeedbackRow)),
            "reviewed_turns": await count(select(func.count()).select_from(TurnRow).where(TurnRow.reviewed.is_(True))),
            "rated_turns": await count(select(func.count(FeedbackRow.turn_id.distinct()))),
            "lead_ratings": await count(
                select(func.count()).select_from(FeedbackRow).where(FeedbackRow.rater_role == "lead")
            ),
            "thumbs": await count(select(func.count()).select_from(FeedbackRow).where(FeedbackRow.thumb.is_not(None))),
        }


# The slow candidates among the pages' queries, as `bot/console/queries.py` builds them, for
# EXPLAIN: the plan is recorded with the figures, because the planner decides these.
PLAN_QUERIES = {
    "turn_thread": "SELECT * FROM turns WHERE platform = :platform AND workspace = :workspace "
    "AND channel = :channel AND thread_id = :thread_id AND created_at < :created_at AND id != :id "
    "ORDER BY created_at DESC LIMIT 5",
    "queue_platform": "SELECT * FROM turns WHERE status != 'pending' AND platform || '' = 'slack' "
    "ORDER BY reviewed, risk DESC, created_at DESC LIMIT 51",
    "queue_search_rare": "SELECT * FROM turns WHERE status != 'pending' AND (lower(question) LIKE :pattern "
    "OR lower(answer) LIKE :pattern) ORDER BY reviewed, risk DESC, created_at DESC LIMIT 51",
}


async def query_plans(ledger: Ledger) -> dict[str, list[str]]:
    """EXPLAIN (QUERY PLAN) of PLAN_QUERIES, for a recent Slack DM turn's thread."""
    sqlite = ledger.url.startswith("sqlite")
    plans: dict[str, list[str]] = {}
    async with ledger.engine.connect() as conn:
        sample = (
            (
                await conn.execute(
                    text(
                        "SELECT id, platform, workspace, channel, thread_id, created_at FROM turns "
                        "WHERE platform = 'slack' AND private ORDER BY created_at DESC LIMIT 1"
                    )
                )
            )
            .mappings()
            .one()
        )
        values = {**sample, "pattern": f"%{RARE_WORD}%"}
        for name, sql in PLAN_QUERIES.items():
            params = {k: v for k, v in values.items() if f":{k}" in sql}
            rows = await conn.execute(text(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql), params)
            plans[name] = [str(r[3] if sqlite else r[0]) for r in rows]
    return plans


async def pg_size_mb(ledger: Ledger) -> float:
    async with ledger.engine.connect() as conn:
        size = (await conn.exec_driver_sql("SELECT pg_database_size(current_database())")).scalar_one()
    return round(size / 1e6, 1)


async def prepare(url: str, data_dir: Path, turns: int, ratings: int) -> Seeded:
    ledger = Ledger(url, data_dir / "bench-spool.jsonl")
    try:
        seeded = await seed(ledger, turns, ratings)
        seeded.plans = await query_plans(ledger)
        if ledger.url.startswith("postgresql"):
            seeded.db_size_mb = await pg_size_mb(ledger)
        else:
            db = Path(ledger.url.split("///", 1)[1])
            seeded.db_size_mb = round(sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 1e6, 1)
        return seeded
    finally:
        await ledger.close()


# --- the server -------------------------------------------------------------------------------


def start_server(ledger_url: str, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = server_env(
        DESKMATE_LEDGER_URL=ledger_url,
        DESKMATE_GENERATOR_URL="echo://",
        DESKMATE_DATA_DIR=str(tmp),
        DESKMATE_PORT=str(port),
        DESKMATE_LEADS=LEAD,
        DESKMATE_CACHE_URL="memory://",
    )
    return subprocess.Popen(
        [DESKMATE, "serve"], env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "w")
    )


# --- measuring --------------------------------------------------------------------------------


def schedule(rng: random.Random, seeded: Seeded, requests: int, turn_pages: int) -> list[tuple[str, str, str]]:
    """(kind, parameter, path) for every timed request, shuffled so the kinds interleave."""
    plan: list[tuple[str, str, str]] = []
    for i in range(requests):
        platform = PLATFORM_FILTERS[i % len(PLATFORM_FILTERS)]
        word = SEARCH_WORDS[i % len(SEARCH_WORDS)]
        plan += [
            ("queue", "", "/console/queue"),
            ("queue_page5", "5", "/console/queue?page=5"),
            ("queue_platform", platform, f"/console/queue?platform={platform}"),
            ("queue_search", word, "/console/queue?q=" + word.replace(" ", "+")),
            ("queue_search_rare", RARE_WORD, f"/console/queue?q={RARE_WORD}"),
        ]
    rated = rng.sample(seeded.rated_ids, min(turn_pages // 2, len(seeded.rated_ids)))
    others = rng.sample(sorted(seeded.platform_of), turn_pages - len(rated))
    plan += [("turn", seeded.platform_of[t], f"/console/turns/{t}") for t in rated + others]
    rng.shuffle(plan)
    return plan


async def sign_in(http: aiohttp.ClientSession, url: str, token: str) -> None:
    """As a browser does: the sign-in page sets the pre-session cookie its form's CSRF value is
    tied to, then the form is posted."""
    async with http.get(f"{url}/console/login") as page:
        html = await page.text()
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    csrf = html[start : html.index('"', start)]
    async with http.post(
        f"{url}/console/login", data={"token": token, "csrf": csrf}, allow_redirects=False
    ) as response:
        await response.read()
        if response.status != 302 or response.headers.get("Location") != "/console/queue":
            raise RuntimeError(f"sign-in failed: HTTP {response.status}")


async def timed_get(http: aiohttp.ClientSession, url: str) -> tuple[int, float, bytes]:
    started = time.perf_counter()
    async with http.get(url, allow_redirects=False) as response:
        body = await response.read()
    return response.status, (time.perf_counter() - started) * 1000, body


async def measure(url: str, token: str, plan: list[tuple[str, str, str]], warmup: int) -> dict[str, Any]:
    """Sign in, warm up on each kind, then time the plan one request at a time."""
    timings: dict[str, dict[str, list[float]]] = {}
    bad: list[str] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, url, token)
        kinds: dict[str, list[str]] = {}
        for kind, _param, path in plan:
            kinds.setdefault(kind, []).append(path)
        for paths in kinds.values():
            for path in paths[:warmup]:
                await timed_get(http, url + path)
        for kind, param, path in plan:
            status, ms, body = await timed_get(http, url + path)
            marker = b'class="queue"' if kind.startswith("queue") else b'id="review"'
            if status != 200 or marker not in body:
                bad.append(f"{path}: HTTP {status}")
            timings.setdefault(kind, {}).setdefault(param, []).append(ms)
    if bad:
        print(f"{len(bad)} requests did not return the page, e.g. {bad[:3]}")
    return {"pages": {kind: summarise(timings[kind]) for kind in KINDS if kind in timings}, "not_ok": len(bad)}


def summarise(by_param: dict[str, list[float]]) -> dict[str, Any]:
    values = [v for vs in by_param.values() for v in vs]
    p95 = percentile(values, 95)
    figures: dict[str, Any] = {
        "requests": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(max(values), 1),
        "target_met": p95 <= TARGET_P95_MS,
    }
    if len(by_param) > 1:
        figures["by_param"] = {
            p: {"requests": len(vs), "p50_ms": round(percentile(vs, 50), 1), "p95_ms": round(percentile(vs, 95), 1)}
            for p, vs in sorted(by_param.items())
        }
    return figures


# --- one backend, start to finish -------------------------------------------------------------


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"console-load-{backend}-") as name:
        tmp = Path(name)
        database = f"deskmate_bench_{uuid.uuid4().hex[:10]}"
        if backend == "sqlite":
            url = f"sqlite:///{tmp / 'ledger.db'}"
        else:
            url = f"postgresql://postgres@127.0.0.1:5432/{database}"
            asyncio.run(pg_admin(PG_ADMIN_DSN, f'CREATE DATABASE "{database}"'))
        try:
            print(f"[{backend}] seeding {args.turns:,} turns and {args.ratings:,} ratings ...", flush=True)
            seeded = asyncio.run(prepare(url, tmp, args.turns, args.ratings))
            print(f"[{backend}] seeded in {seeded.seconds:.1f} s: {seeded.rows} ({seeded.db_size_mb} MB)", flush=True)
            port = free_port()
            server = start_server(url, tmp, port)
            try:
                base = f"http://127.0.0.1:{port}"
                wait_healthy(base, server)
                plan = schedule(random.Random(SEED + 1), seeded, args.requests, args.turn_pages)
                print(f"[{backend}] timing {len(plan)} requests ...", flush=True)
                measured = asyncio.run(measure(base, seeded.token, plan, args.warmup))
            finally:
                log_errors = stop_server(server, tmp / "serve.log")
        finally:
            if backend == "postgresql":
                asyncio.run(pg_admin(PG_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    return {
        "seed_seconds": round(seeded.seconds, 1),
        "rows": seeded.rows,
        "db_size_mb": seeded.db_size_mb,
        **measured,
        "turn_pages_of_rated_turns": min(args.turn_pages // 2, len(seeded.rated_ids)),
        "server_log_errors": log_errors,
        "query_plans": seeded.plans,
    }


def plan_summary(lines: list[str]) -> str:
    """The access paths of an EXPLAIN, without costs: "SEARCH ... USING INDEX ..." / "Seq Scan on ..."."""
    keep = [
        re.sub(r"\s*\(cost=.*?\)", "", line).strip(" ->")
        for line in lines
        if any(w in line for w in ("SCAN", "SEARCH", "TEMP B-TREE", "Scan"))
    ]
    return " / ".join(keep)


def report(results: dict[str, dict[str, Any]]) -> None:
    table = []
    for backend, r in results.items():
        for kind, f in r["pages"].items():
            table.append(
                [
                    backend,
                    kind,
                    f["requests"],
                    f["p50_ms"],
                    f["p95_ms"],
                    f["p99_ms"],
                    f["max_ms"],
                    "met" if f["target_met"] else "NOT met",
                ]
            )
    print_table(
        ["backend", "page", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms", f"p95 <= {TARGET_P95_MS:.0f} ms"], table
    )
    print()
    print_table(
        ["backend", "seeding s", "turns", "ratings", "reviewed", "rated turns", "db MB", "not 200"],
        [
            [
                b,
                r["seed_seconds"],
                r["rows"]["turns"],
                r["rows"]["ratings"],
                r["rows"]["reviewed_turns"],
                r["rows"]["rated_turns"],
                r["db_size_mb"],
                r["not_ok"],
            ]
            for b, r in results.items()
        ],
    )
    print()
    print_table(
        ["backend", "query", "plan"],
        [[b, name, plan_summary(lines)] for b, r in results.items() for name, lines in r["query_plans"].items()],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--ratings", type=int, default=20_000)
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--requests", type=int, default=100, help="Timed requests per queue page kind.")
    parser.add_argument("--turn-pages", type=int, default=200, help="Turn pages timed (half of them rated turns).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed requests per page kind first.")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    results = {backend: run_backend(backend, args) for backend in args.backends}
    report(results)
    path = write_result(
        "console_load",
        {
            "target": f"p95 <= {TARGET_P95_MS:.0f} ms per page with 100k turns and 20k ratings",
            "turns": args.turns,
            "ratings": args.ratings,
            "seed": SEED,
            "requests_per_queue_kind": args.requests,
            "turn_pages": args.turn_pages,
            "search_words": SEARCH_WORDS,
            "rare_search_word": RARE_WORD,
            "platform_filters": PLATFORM_FILTERS,
            "timing": "client clock, sequential, over HTTP to `deskmate serve`",
            "backends": results,
        },
        args.out,
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
