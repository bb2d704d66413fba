"""What kind of message a turn is before anything is searched: a greeting or a thanks (answered
kindly, nothing searched), a question in a language the knowledge base is not written in, or a
question.

A greeting searched as a question retrieves whatever is nearest to "hi" and a small model then
answers it with a random passage; a German question embedded by the English MiniLM matches
nothing reliably, and an English answer built from it would be a guess. `py3langid` (its model
ships inside the package) names the language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import py3langid

from bot.answering.evidence import STOPWORDS, WORD

Kind = Literal["question", "greeting", "thanks", "other_language"]

GREETING = re.compile(
    r"^(?:hi|hello|hey|hiya|howdy|yo|good (?:morning|afternoon|evening|day)|morning|hallo|olá|ola|hola|"
    r"bom dia|guten (?:morgen|tag)|moin|servus)(?: there| all| team| deskmate| bot)?$"
)
_THANKS_WORD = (
    r"(?:thanks?|thank you|thx|ty|cheers|great|perfect|awesome|nice|cool|ok(?:ay)?|got it|brilliant|"
    r"obrigad[oa]|danke(?: schön)?|gracias|merci)"
)
_THANKS_TAIL = r"(?:so much|a lot|very much|again|for (?:the|your) help|deskmate|mate|that worked|it worked)"
#: Acknowledgements, alone or strung together ("ok, got it, thanks so much").
THANKS = re.compile(rf"^{_THANKS_WORD}(?: (?:{_THANKS_WORD}|{_THANKS_TAIL}))*$")
#: Below this many words a language guess is noise ("VPN Linux?" is not Latvian).
LANGUAGE_MIN_WORDS = 4
LANGUAGE_MIN_PROBABILITY = 0.9
#: An English question is a quarter or more function words ("how do I", "in the").
ENGLISH_WORDS_MAX = 0.2

LANGUAGE_NAMES = {
    "de": "German",
    "pt": "Portuguese",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "nl": "Dutch",
    "pl": "Polish",
    "tr": "Turkish",
    "sv": "Swedish",
    "da": "Danish",
    "no": "Norwegian",
    "fi": "Finnish",
    "cs": "Czech",
    "ro": "Romanian",
    "hu": "Hungarian",
    "ru": "Russian",
    "uk": "Ukrainian",
    "el": "Greek",
    "ja": "Japanese",
    "zh": "Chinese",
    "ko": "Korean",
    "ar": "Arabic",
    "he": "Hebrew",
    "hi": "Hindi",
}

_IDENTIFIER = py3langid.langid.LanguageIdentifier.from_model_file(py3langid.langid.MODEL_FILE, norm_probs=True)
# Among the languages employees write in, not all 97 the model knows: a short English question
# full of product names then stays English instead of scattering over rare languages.
_IDENTIFIER.set_languages(["en", *LANGUAGE_NAMES])


@dataclass(frozen=True)
class Intent:
    kind: Kind
    language: str = "en"

    @property
    def language_name(self) -> str:
        return LANGUAGE_NAMES.get(self.language, f"language '{self.language}'")


def classify(text: str) -> Intent:
    """The kind of message `text` is (already stripped of mentions by the channel)."""
    bare = " ".join(re.sub(r"[!.,?:;)(*_~👋🙏👍😀🙂]+", " ", text.lower()).split())
    if GREETING.match(bare):
        return Intent("greeting")
    if THANKS.match(bare):
        return Intent("thanks")
    words = WORD.findall(text.lower())
    english = sum(w in STOPWORDS for w in words)
    if len(words) >= LANGUAGE_MIN_WORDS and english / len(words) < ENGLISH_WORDS_MAX:
        language, probability = _IDENTIFIER.classify(text)
        if language != "en" and probability >= LANGUAGE_MIN_PROBABILITY:
            return Intent("other_language", language)
    return Intent("question")
