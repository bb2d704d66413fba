"""Personal data out of training text, before anything is written.

What goes: email addresses, phone numbers (`phonenumbers`, Google's libphonenumber port, which
works offline), IP addresses (candidates checked by `ipaddress`), secrets and tokens (the
prefixes of Slack, GitHub, OpenAI, AWS and our own console tokens, bearer headers, JWTs, long
high-entropy strings), payment card numbers (Luhn-checked) and the names of people in the user
directory. Each is replaced by a placeholder that says what was there, so the model still
learns the shape of an answer ("write to [EMAIL]").

No offline-capable library covers this list (Presidio needs spaCy models from outside PyPI),
so these are tested patterns; tests/finetune/test_scrub.py plants each kind.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import phonenumbers

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
SECRET_PATTERNS = [
    re.compile(r"\b(?:xox[abposr]|xapp)-[A-Za-z0-9-]{8,}"),          # Slack tokens
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),                       # GitHub tokens
    re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{16,}"),                  # OpenAI-style keys
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),                      # AWS access key ids
    re.compile(r"\bdmt_[A-Za-z0-9_-]{16,}"),                           # Deskmate console tokens
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),  # JWTs
    re.compile(r"(?i)\b(bearer|token|password|passwd|pwd|secret|api[_-]?key)\s*[:=]\s*\S{6,}"),
]
LONG_TOKEN = re.compile(r"\b[A-Za-z0-9+/_=-]{24,}\b")
IP_CANDIDATE = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})\b")
CARD_CANDIDATE = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")


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
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        words = {n.strip() for n in self.names if n and len(n.strip()) >= 3}
        # Full names first, then each part of a name (a first name alone is still a name).
        parts = {p for n in words for p in n.split() if len(p) >= 3}
        ordered = sorted(words | parts, key=len, reverse=True)
        self._names = re.compile(r"\b(?:" + "|".join(map(re.escape, ordered)) + r")\b", re.IGNORECASE) if ordered else None

    def _sub(self, pattern: re.Pattern, text: str, kind: str, check=None) -> str:
        def replace(match: re.Match) -> str:
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
        text = self._sub(LONG_TOKEN, text, "secret",
                         lambda s: _entropy(s) > 4.0 and any(c.isdigit() for c in s) and any(c.isalpha() for c in s))
        if self._names is not None:
            text = self._sub(self._names, text, "name")
        return text

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
            text = text[:match.start] + "[PHONE]" + text[match.end:]
        return text
