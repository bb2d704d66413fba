"""Who is asking: the employee directory, imported from CSV or JSON, stored as facts the search
can retrieve for that user (and only that user)."""

from __future__ import annotations

import asyncio
import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.embeddings import Embedder
from retrieval.records import UserProfile
from retrieval.store import KnowledgeStore

KNOWN_COLUMNS = {
    "email",
    "name",
    "department",
    "location",
    "role",
    "groups",
    "devices",
    "platform",
    "platform_id",
    "id",
}


def user_key(email: str | None = None, platform: str | None = None, platform_id: str | None = None) -> str:
    """The canonical key of a person: the lower-cased email when known (the same person in Slack
    and Teams), else `platform:id`."""
    if email and email.strip():
        return email.strip().lower()
    if platform and platform_id:
        return f"{platform.strip().lower()}:{platform_id.strip()}"
    raise ValueError("a user needs an email, or a platform and an id on it")


def _split(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    text = str(value)
    separator = ";" if ";" in text else ","
    return tuple(part.strip() for part in text.split(separator) if part.strip())


def profile_from_row(row: dict[str, object]) -> UserProfile:
    """One directory row (CSV columns or JSON keys, any case) as a profile."""
    data = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    email = str(data.get("email") or "").strip()
    key = user_key(email, str(data.get("platform") or ""), str(data.get("platform_id") or data.get("id") or ""))
    return UserProfile(
        key=key,
        name=str(data.get("name") or "").strip(),
        email=email.lower(),
        department=str(data.get("department") or "").strip(),
        location=str(data.get("location") or "").strip(),
        role=str(data.get("role") or "").strip(),
        groups=tuple(g.lower() for g in _split(data.get("groups"))),
        devices=_split(data.get("devices")),
        extra={k: str(v) for k, v in data.items() if k not in KNOWN_COLUMNS and v not in (None, "")},
    )


@dataclass
class DirectoryFile:
    """Profiles read from a file, and the rows that could not be read (row number, reason)."""

    profiles: list[UserProfile] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


def load_directory(path: Path) -> DirectoryFile:
    """Read users from CSV (one row each) or JSON (a list, or `{"users": [...]}`)."""
    result = DirectoryFile()
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        rows = data.get("users", []) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ValueError('JSON directory must be a list of users or {"users": [...]}')
        numbered = list(enumerate(rows, start=1))
    else:
        numbered = list(enumerate(csv.DictReader(text.splitlines()), start=2))
    for number, row in numbered:
        if not isinstance(row, dict):
            result.errors.append((number, "not an object"))
            continue
        try:
            result.profiles.append(profile_from_row(row))
        except ValueError as exc:
            result.errors.append((number, str(exc)))
    return result


#: Device families and the platform they run, so "MacBook Air 13 (M3)" finds the macOS steps
#: and "ThinkPad X1 Carbon (Ubuntu 24.04)" the Linux ones. An operating system named in the
#: device itself wins over the family (a ThinkPad may run Ubuntu).
PLATFORM_OF_SYSTEM = {
    "ubuntu": "Linux",
    "fedora": "Linux",
    "debian": "Linux",
    "linux": "Linux",
    "windows": "Windows",
    "macos": "macOS",
    "chromeos": "ChromeOS",
}
PLATFORM_OF_FAMILY = {
    "macbook": "macOS",
    "imac": "macOS",
    "mac": "macOS",
    "iphone": "iOS",
    "ipad": "iPadOS",
    "pixel": "Android",
    "galaxy": "Android",
    "android": "Android",
    "oneplus": "Android",
    "thinkpad": "Windows",
    "latitude": "Windows",
    "xps": "Windows",
    "surface": "Windows",
    "elitebook": "Windows",
    "chromebook": "ChromeOS",
}


def device_platform(device: str) -> str:
    """The operating system a device runs, as far as its name tells ("" when it does not)."""
    words = [w.strip("(),").lower() for w in device.split()]
    for word in words:
        if word in PLATFORM_OF_SYSTEM:
            return PLATFORM_OF_SYSTEM[word]
    for word in words:
        if word in PLATFORM_OF_FAMILY:
            return PLATFORM_OF_FAMILY[word]
    return ""


def profile_facts(profile: UserProfile) -> list[str]:
    """Short sentences about a person, each embedded on its own so a question retrieves the
    ones that matter ("my laptop" finds the devices, "payroll" the department)."""
    who = profile.name or profile.email or profile.key
    facts = [f"The person asking is {who}" + (f" ({profile.email})." if profile.email else ".")]
    if profile.department:
        facts.append(f"{who} works in the {profile.department} department.")
    if profile.role:
        facts.append(f"{who}'s role is {profile.role}.")
    if profile.location:
        facts.append(f"{who} works from {profile.location}.")
    if profile.groups:
        facts.append(f"{who} belongs to the groups: {', '.join(profile.groups)}.")
    for device in profile.devices:
        runs = device_platform(device)
        facts.append(f"{who} uses this device: {device}" + (f", which runs {runs}." if runs else "."))
    facts.extend(f"{who}'s {name.replace('_', ' ')}: {value}." for name, value in sorted(profile.extra.items()))
    return facts


# Words that, after "my" or "our", point at one of the asker's directory fields. The field's
# value then joins the lexical query: "who leads my department" is about "Engineering" for one
# person and "Sales" for another, and the table row that answers it names the department, not
# the word "department" (nor "leads": its column says "Leader").
FIELD_WORDS: dict[str, tuple[str, ...]] = {
    "department": ("department", "team", "dept", "division"),
    "location": ("office", "location", "city", "site", "country", "building", "campus"),
    "devices": ("laptop", "computer", "phone", "device", "mac", "pc", "notebook", "mobile", "tablet"),
    "role": ("role", "job", "position", "title"),
}
# "my own office", "my current laptop"; not "my home office" (the asker's home is not the office).
POSSESSIVE = re.compile(r"\b(?:my|our)\s+(?:own\s+|current\s+|work\s+)?([a-z]+)(?:\s+([a-z]+))?", re.IGNORECASE)
# "my phone number", "my office hours": the words name something else than the field's value.
NOT_THE_FIELD = {"number", "numbers", "extension", "hours", "chair", "desk", "supplies", "account"}
MOBILE_SYSTEMS = {"iOS", "iPadOS", "Android"}
MOBILE_WORDS = {"phone", "mobile", "tablet"}
COMPUTER_WORDS = {"laptop", "computer", "notebook"}
SYSTEM_WORDS = {"mac": "macOS", "pc": "Windows"}  # "my Mac": only a device that runs macOS


_ANY_FIELD_WORD = {w for words in FIELD_WORDS.values() for w in words}


def _field_word(word: str) -> str:
    """The word as FIELD_WORDS spells it ("laptops" → "laptop"), or "" when it is none."""
    word = word.lower()
    if word in _ANY_FIELD_WORD:
        return word
    return word[:-1] if word.endswith("s") and word[:-1] in _ANY_FIELD_WORD else ""


def asked_about(profile: UserProfile, question: str) -> list[str]:
    """The asker's directory values that the question points at ("my office" → "Lisbon",
    "Portugal"; "my laptop" → the laptops and the systems they run), for the lexical side of
    the search; also a column of the directory's own that the question names ("my cost
    center" → the `cost_center` value). Only fields the question names: adding every fact to
    every query would pull each answer towards the asker's office page whatever was asked.
    The field words are English, like the knowledge base the search reads."""
    named = set()
    phrases = set()  # "cost", "cost center": for the directory's own columns (profile.extra)
    for match in POSSESSIVE.finditer(question):
        first, after = match.group(1).lower(), (match.group(2) or "").lower()
        phrases |= {first, f"{first} {after}".strip()}
        word = _field_word(first)
        if word and after not in NOT_THE_FIELD:
            named.add(word)
    values: list[str] = []
    for name, words in FIELD_WORDS.items():
        if not named & set(words):
            continue
        if name == "location":
            values += [profile.location, profile.extra.get("country", "")]
        elif name == "devices":  # the system too: instructions say "on Windows", not "on a Latitude"
            values += [part for device in _devices_named(profile, named) for part in (device, device_platform(device))]
        else:
            values.append(getattr(profile, name))
    # A column the directory adds ("cost_center", "region") is pointed at by its own name.
    values += [value for key, value in sorted(profile.extra.items()) if key.replace("_", " ").lower() in phrases]
    return [v for v in dict.fromkeys(values) if v]


def _devices_named(profile: UserProfile, named: set[str]) -> list[str]:
    """The asker's devices of the kind the question names: "my phone" is not the laptop, "my
    Mac" is a device running macOS (none, if the asker has no Mac), "my laptop" the devices
    running a desktop system (or, when none is known, those whose system the name does not tell:
    a "Dell Precision 5680")."""
    systems = {SYSTEM_WORDS[w] for w in named if w in SYSTEM_WORDS}
    if systems:
        return [d for d in profile.devices if device_platform(d) in systems]
    wants_mobile, wants_computer = bool(named & MOBILE_WORDS), bool(named & COMPUTER_WORDS)
    if wants_mobile == wants_computer:  # "my device", or both kinds named
        return list(profile.devices)
    if wants_mobile:
        return [d for d in profile.devices if device_platform(d) in MOBILE_SYSTEMS]
    computers = [d for d in profile.devices if device_platform(d) and device_platform(d) not in MOBILE_SYSTEMS]
    return computers or [d for d in profile.devices if not device_platform(d)]


async def import_users(profiles: Sequence[UserProfile], store: KnowledgeStore, embedder: Embedder) -> int:
    """Store each profile and its facts (replacing what was there); returns how many."""
    for profile in profiles:
        facts = profile_facts(profile)
        vectors = await asyncio.to_thread(embedder.embed, facts)
        await store.put_user(profile, facts, vectors)
    return len(profiles)
