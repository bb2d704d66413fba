"""Personal data out of training text, before anything is written.

What goes: email addresses, phone numbers (`phonenumbers`, Google's libphonenumber port, which
works offline), IP addresses (candidates checked by `ipaddress`), secrets and tokens (the
prefixes of Slack, GitHub, OpenAI, AWS and our own console tokens, bearer headers, JWTs, long
high-entropy strings), payment card numbers (Luhn-checked) and the names of people in the user
directory. Each is replaced by a placeholder that says what was there, so the model still
learns the shape of an answer ("write to [EMAIL]").

The asker's directory facts ("About the person asking: …", which every served prompt carries)
go too, except the fields an operator allowed (`strip_asker_facts`); the values that identify
the person (name, email, location, devices, other columns) are then replaced wherever else they
appear in that turn (`Scrubber.for_person`): a greeting, the question, the answer, a correction.

No offline-capable library covers this list (Presidio needs spaCy models from outside PyPI),
so these are tested patterns; tests/finetune/test_scrub.py plants each kind.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import phonenumbers

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
SECRET_PATTERNS = [
    re.compile(r"\b(?:xox[abposr]|xapp)-[A-Za-z0-9-]{8,}"),  # Slack tokens
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub tokens
    re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{16,}"),  # OpenAI-style keys
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key ids
    re.compile(r"\bdmt_[A-Za-z0-9_-]{16,}"),  # Deskmate console tokens
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),  # JWTs
    re.compile(r"(?i)\b(bearer|token|password|passwd|pwd|secret|api[_-]?key)\s*[:=]\s*\S{6,}"),
]
LONG_TOKEN = re.compile(r"\b[A-Za-z0-9+/_=-]{24,}\b")
IP_CANDIDATE = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})\b")
CARD_CANDIDATE = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")


def literal_pattern(values: Iterable[str], *, name_parts: bool = False) -> re.Pattern[str] | None:
    """One case-insensitive, whole-word pattern for these values, longest first, or None.

    Values under 3 characters are left out: they would hit ordinary words. With `name_parts`,
    each word of a value counts too (a first name alone is still a name)."""
    whole = {v.strip() for v in values if v and len(v.strip()) >= 3}
    parts = {p for v in whole for p in v.split() if len(p) >= 3} if name_parts else set()
    ordered = sorted(whole | parts, key=len, reverse=True)
    if not ordered:
        return None
    # Lookarounds rather than \b: a device such as "MacBook Pro 14 (M3)" ends in a bracket.
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, ordered)) + r")(?!\w)", re.IGNORECASE)


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _luhn(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = int(ch) * (2 if double else 1)
        total += d - 9 if d > 9 else d
        double = not double
    return total % 10 == 0


@dataclass
class Scrubber:
    """Replaces personal data; counts what it replaced (for the dataset card)."""

    names: Iterable[str] = ()
    region: str = "US"
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._names = literal_pattern(self.names, name_parts=True)

    def _sub(self, pattern: re.Pattern[str], text: str, kind: str, check: Callable[[str], bool] | None = None) -> str:
        def replace(match: re.Match[str]) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            self.counts[kind] += 1
            return f"[{kind.upper()}]"

        return pattern.sub(replace, text)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for pattern in SECRET_PATTERNS:
            text = self._sub(pattern, text, "secret")
        text = self._sub(EMAIL, text, "email")
        text = self._sub(CARD_CANDIDATE, text, "card", lambda s: _luhn(re.sub(r"\D", "", s)))
        text = self._sub(IP_CANDIDATE, text, "ip", self._is_ip)
        text = self._phones(text)
        text = self._sub(
            LONG_TOKEN,
            text,
            "secret",
            lambda s: _entropy(s) > 4.0 and any(c.isdigit() for c in s) and any(c.isalpha() for c in s),
        )
        if self._names is not None:
            text = self._sub(self._names, text, "name")
        return text

    def for_person(self, known: Mapping[str, Iterable[str]]) -> Callable[[str], str]:
        """This scrubber, also replacing one person's own values (kind → values, e.g. from
        `Stripped.identifying`) with `[KIND]`: for the texts of one turn.

        Their values go before the general patterns, which could cut a device name apart
        before it is recognised whole; their name goes last, as the directory's names do, so
        that an address made of it is still recognised as one."""
        names = literal_pattern(known.get("name", ()), name_parts=True)
        others = [
            (kind, p) for kind, values in known.items() if kind != "name" and (p := literal_pattern(values)) is not None
        ]

        def scrub(text: str) -> str:
            for kind, pattern in others:
                text = self._sub(pattern, text, kind)
            text = self(text)
            return self._sub(names, text, "name") if names is not None else text

        return scrub

    @staticmethod
    def _is_ip(candidate: str) -> bool:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            return False
        return candidate.count(":") >= 2 or not address.is_unspecified

    def _phones(self, text: str) -> str:
        found = list(phonenumbers.PhoneNumberMatcher(text, self.region))
        for match in reversed(found):
            self.counts["phone"] += 1
            text = text[: match.start] + "[PHONE]" + text[match.end :]
        return text


# --- the asker's directory facts --------------------------------------------------------------
# bot/answering/prompts.py puts the asker's facts in the user turn as one line, "About the person asking: "
# and the facts joined by spaces, right before "\nQuestion: "; retrieval/users.py writes each
# fact as one sentence about the person. finetune imports neither, so their shapes are restated
# here; tests/finetune/test_dataset.py renders a block through both, so a change shows up there.

FACTS_INTRO = "About the person asking: "
#: To the line end before "\nQuestion: " (a value with a line break in it must not leave half a
#: block behind); a block anywhere else runs to its line's end.
FACTS_BLOCK = re.compile(r"^About the person asking: (?:(.*?)\n(?=\nQuestion: )|([^\n]*)\n?)", re.MULTILINE | re.DOTALL)
NAME_SENTENCE = "The person asking is "
#: (field, what follows the person's name in the sentence); "" takes the field from the sentence.
FACT_SHAPES: list[tuple[str, str]] = [
    ("department", r" works in the (?P<value>.+) department\."),
    ("role", r"'s role is (?P<value>.+)\."),
    ("location", r" works from (?P<value>.+)\."),
    ("groups", r" belongs to the groups: (?P<value>.+)\."),
    # retrieval/users.py adds the system a device runs ("…, which runs Linux"): not the value.
    ("devices", r" uses this device: (?P<value>.+?)(?:, which runs [A-Za-z ]+)?\."),
    ("", r"'s (?P<field>[^:]+): (?P<value>.+)\."),  # any other directory column
]
NAME_FOLLOWERS = (" works in the ", "'s ", " works from ", " belongs to the groups: ", " uses this device: ")
#: Removed facts whose values identify a person wherever they appear. Department, role and
#: groups are not here: their values are everyday words ("IT", "Finance", "hr") that passages
#: and answers use in their own right, and they leave with the block.
NOT_IDENTIFYING = {"department", "role", "groups"}
FIELD_ALIASES = {"device": "devices", "group": "groups"}


def fact_field(name: str) -> str:
    """The canonical name of a fact's field: `Employee ID`, `employee-id` → `employee_id`."""
    key = re.sub(r"[\s-]+", "_", name.strip().lower())
    return FIELD_ALIASES.get(key, key)


def fact_fields(names: Iterable[str] | str) -> frozenset[str]:
    """Allowed fields from a list or a comma-separated string (as a JSON config may hold)."""
    items = names.split(",") if isinstance(names, str) else names
    return frozenset(fact_field(n) for n in items if n.strip())


@dataclass(frozen=True)
class Fact:
    field: str  # name, department, role, location, groups, devices, or another directory column
    value: str
    sentence: str


@dataclass(frozen=True)
class AskerFacts:
    """One facts block, read back into the person's name (or email) and their facts."""

    who: str
    email: str
    facts: tuple[Fact, ...]


def _who_candidates(body: str) -> list[str]:
    """What the person's name could be, shortest first; every sentence starts with it, except
    the name sentence, which carries it after NAME_SENTENCE."""
    found: set[str] = set()
    if body.startswith(NAME_SENTENCE):
        rest = body[len(NAME_SENTENCE) :]
        for dot in re.finditer(r"\.", rest):
            head = rest[: dot.start()]
            found |= {head, re.sub(r" \([^()]*\)$", "", head)}
    else:
        for follower in NAME_FOLLOWERS:
            found |= {body[: m.start()] for m in re.finditer(re.escape(follower), body)}
    return sorted((c for c in found if c.strip()), key=len)


def _read_as(body: str, who: str) -> AskerFacts | None:
    name = re.escape(who)
    intro = re.escape(NAME_SENTENCE)
    starts = re.compile(rf"(?<=\.) (?={intro}|{name}(?:'s | works | belongs | uses ))")
    email, facts = "", []
    for sentence in starts.split(body):
        if found := re.fullmatch(rf"{intro}{name}(?: \((?P<email>[^()]*)\))?\.", sentence):
            email = found.group("email") or email
            facts.append(Fact("name", who, sentence))
            continue
        for field_name, shape in FACT_SHAPES:
            if found := re.fullmatch(name + shape, sentence):
                what = field_name or fact_field(found.group("field"))
                facts.append(Fact(what, found.group("value"), sentence))
                break
        else:
            return None
    return AskerFacts(who, email, tuple(facts))


def read_asker_facts(body: str) -> AskerFacts | None:
    """The facts in one block's text (after the intro), or None when it is not in the shape
    retrieval/users.py writes: the caller then removes the whole block."""
    body = body.strip()
    for who in _who_candidates(body):
        if (facts := _read_as(body, who)) is not None:
            return facts
    return None


@dataclass
class Stripped:
    """One text with its facts blocks filtered, and what went."""

    text: str
    blocks: int = 0
    unreadable: int = 0  # blocks not in the known shape, removed whole
    removed: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)
    #: kind → values of the removed facts that identify the person, for `Scrubber.for_person`.
    identifying: dict[str, set[str]] = field(default_factory=dict)


def strip_asker_facts(text: str, keep: frozenset[str] = frozenset()) -> Stripped:
    """The text without the asker's facts, except the sentences of the fields in `keep`.

    A kept sentence names the person only when `name` is kept too; otherwise the name becomes
    [NAME]. With nothing kept, the block goes whole, leaving the prompt exactly as it is served
    to someone the directory does not know."""
    out = Stripped(text)

    def filtered(match: re.Match[str]) -> str:
        out.blocks += 1
        facts = read_asker_facts(match.group(1) if match.group(1) is not None else match.group(2))
        if facts is None:
            out.unreadable += 1
            return ""
        kept: list[str] = []
        for fact in facts.facts:
            if fact.field in keep:
                out.kept.add(fact.field)
                anonymous = fact.field != "name" and "name" not in keep
                sentence = "[NAME]" + fact.sentence[len(facts.who) :] if anonymous else fact.sentence
                kept.append(sentence)
                continue
            out.removed.add(fact.field)
            if fact.field == "name":
                out.identifying.setdefault("name", set()).add(facts.who)
                if facts.email:
                    out.identifying.setdefault("email", set()).add(facts.email)
            elif fact.field not in NOT_IDENTIFYING:
                out.identifying.setdefault("device" if fact.field == "devices" else fact.field, set()).add(fact.value)
        if "name" not in keep:
            # The name is in every sentence, so it leaves with any of them: also from the
            # rest of the turn (a greeting, a correction), even when no name sentence was served.
            out.identifying.setdefault("name", set()).add(facts.who)
            out.removed.add("name")
        return FACTS_INTRO + " ".join(kept) + "\n" if kept else ""

    out.text = FACTS_BLOCK.sub(filtered, text)
    return out
