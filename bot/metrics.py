"""Prometheus metrics: what an on-call engineer looks at first. Served at `/metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TURNS = Counter("deskmate_turns_total", "Turns handled, by platform and outcome.", ["platform", "outcome"])
STAGE_SECONDS = Histogram(
    "deskmate_stage_seconds",
    "Time spent per stage of a turn.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ANSWER_CACHE_HITS = Counter("deskmate_answer_cache_hits_total", "Answers served from the answer cache.")
UNSUPPORTED_SENTENCES = Counter(
    "deskmate_unsupported_sentences_total",
    "Answer sentences the passages did not support (removed before the answer was sent).",
)
ERRORS = Counter("deskmate_errors_total", "Failures by kind (generator, ledger, internal).", ["kind"])
LEDGER_SPOOLED = Gauge("deskmate_ledger_spooled_writes", "Ledger writes waiting in the local spool.")
LEDGER_REACHABLE = Gauge(
    "deskmate_ledger_reachable",
    "1 when the ledger database answered the last check, "
    "0 when it did not (a spool that is not empty while this is 1 is stuck).",
)
LEDGER_DEAD_LETTERS = Counter(
    "deskmate_ledger_dead_letters_total",
    "Ledger writes the database refused, kept in the dead-letter file, by kind (begin, finish, record, feedback).",
    ["kind"],
)
LEDGER_DEAD_LETTER_ROWS = Gauge(
    "deskmate_ledger_dead_letter_rows",
    "Refused writes in the dead-letter file next to the spool (every process's), waiting for an operator.",
)
FORGOTTEN_PURGES = Counter(
    "deskmate_forgotten_purges_total", "Forget requests (ledger tombstones) this replica has applied to its own cache."
)
REPLICA_HEARTBEATS = Counter(
    "deskmate_replica_heartbeats_total",
    "This replica's heartbeats: `ok` (written to the ledger) or `skipped` (the ledger did not take it; retried next beat).",
    ["result"],
)
REPLICA_SWEEPS = Counter(
    "deskmate_replica_sweeps_total",
    "Finished passes of this replica's sweep for turns a dead replica left unfinished (one an interval once healthy).",
)
EVENTS_SKIPPED = Counter(
    "deskmate_events_skipped_total",
    "Platform events deliberately not answered: "
    "`duplicate` (a redelivery or another replica's), `not_addressed` (a channel "
    "message without a mention where one is needed), `ignored` (a bot's message, an edit, a deletion, a join).",
    ["platform", "reason"],
)
