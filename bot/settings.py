"""The one settings object. Read once at start-up and passed down; nothing else reads the
environment, so every knob is listed (and documented) here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ChannelRule(BaseModel):
    """How Deskmate behaves in one Slack or Teams channel."""

    mention_only: bool = Field(
        True,
        description="Answer only when @mentioned (and in its own "
        "threads); false answers every message posted in the channel.",
    )
    groups: list[str] = Field(
        default_factory=list,
        description="Access groups whose documents answers in this channel may draw on (besides public ones).",
    )


def _env(name: str, *aliases: str) -> AliasChoices:
    """The DESKMATE_ name, the bare name (Slack's own `SLACK_BOT_TOKEN`: names match in any case)
    and any other conventional names."""
    return AliasChoices(f"DESKMATE_{name}", name.lower(), *aliases)


class Settings(BaseSettings):
    """Deskmate configuration from `DESKMATE_*` variables or a `.env` file.

    Each external part is named by one URL; an empty or `memory://` value picks the embedded
    default that needs no server.
    """

    model_config = SettingsConfigDict(
        env_prefix="DESKMATE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(Path(".deskmate"), description="Where embedded backends keep files.")

    store_url: str = Field(
        "",
        description="Knowledge store: empty for the embedded LanceDB store under data_dir, "
        "`lancedb:///path` for another folder, `http(s)://host:8080` for Weaviate.",
    )
    weaviate_api_key: SecretStr | None = Field(None, description="Weaviate Cloud API key.")
    weaviate_grpc_port: int | None = Field(
        None, description="Weaviate gRPC port when it is not the HTTP port's usual partner."
    )

    cache_url: str = Field("memory://", description="`memory://` (in-process, bounded) or `redis://host:6379/0`.")
    cache_prefix: str = Field("deskmate:", description="Prefix of every cache key.")

    embedding_model: str = Field("", description="sentence-transformers model name or path; empty = bundled MiniLM.")
    embedding_batch_size: int = Field(64, ge=1)

    kb_root: Path | None = Field(
        None,
        description="The knowledge folder document ids are relative "
        "to. Empty: the folder of the first `deskmate ingest`, remembered in "
        "the store; ingesting a subfolder keeps ids relative to it.",
    )
    chunk_size: int = Field(800, ge=100, description="Characters per chunk.")
    chunk_overlap: int = Field(100, ge=0)
    max_file_mb: float = Field(10.0, gt=0, description="Larger files are skipped at ingest.")

    hybrid_alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the vector side in hybrid ranking.")
    min_confidence: float = Field(
        0.30,
        ge=0.0,
        le=1.0,
        description="Below this best-passage similarity, nothing is read (answerability decides above it).",
    )
    max_query_chars: int = Field(2000, ge=10, description="Longer queries are truncated.")
    search_k: int = Field(5, ge=1, le=50)

    # --- answering -------------------------------------------------------------------------
    ledger_url: str = Field(
        "",
        description="Ledger database: empty for SQLite in data_dir, or `postgresql://user:pass@host:5432/deskmate`.",
    )
    generator_url: str = Field(
        "local",
        description="`local` (the bundled SmolLM2 GGUF via llama.cpp), "
        "`llama:///path/model.gguf`, `http(s)://tgi-or-vllm:8080`, or `echo://` (no model).",
    )
    generator_api_key: SecretStr | None = Field(None, description="Bearer token for the model server.")
    generator_timeout: float = Field(60.0, gt=0, description="Seconds one answer may take.")
    generator_threads: int | None = Field(None, ge=1, description="CPU threads for the local model.")
    generator_max_waiting: int = Field(16, ge=1, description="Answers that may wait for the local model.")
    adapter: str = Field("", description="Adapter version to serve until the registry names one.")
    adapter_path: Path | None = Field(None, description="GGUF LoRA file of `adapter` (local model).")
    max_answer_tokens: int = Field(200, ge=16, le=2048)
    prompt_version: str = Field("v1", description="Prompt template version (bot/answering/prompts.py).")
    context_passages: int = Field(3, ge=1, le=10, description="Passages put in front of the model.")
    answer_strategy: Literal["auto", "quote", "generate"] = Field(
        "auto",
        description="`quote`: the answer is the passages' own sentences and table rows, chosen for "
        "the question and the asker (no model call). `generate`: the model writes it and every "
        "sentence is checked against the passages. `auto`: `generate` while a fine-tuned adapter "
        "is live whose answers beat quoting at the evaluation gate, else `quote` "
        "(bot/answering/quoting.py and finetune/evaluate.answer_strategy say why).",
    )
    quote_passages: int = Field(5, ge=1, le=20, description="Passages a quoted answer chooses from.")
    # 0.56 is read off MTRAG dev's sweep (bench/answer_quality.py, `answerable_min_sweep`): the
    # highest value that still answers 90% of its answerable turns, where it declines 79% of the
    # unanswerable ones. A company's own value comes from `deskmate calibrate` on its rated turns.
    answerable_min: float = Field(
        0.56,
        ge=0.0,
        le=1.0,
        description="Below this answerability (0-1, bot/answering/answerability.py), Deskmate says the "
        "documents do not answer the question instead of answering (bench/answer_quality.py measures it).",
    )
    fallback_contact: str = Field(
        "the IT service desk (#it-help in Slack, or servicedesk@northwind.example)",
        description="Who to ask when the knowledge base does not cover a question.",
    )
    rate_limit_per_minute: int = Field(12, ge=0, description="Questions per user per minute; 0 = off.")
    answer_cache_ttl: float = Field(24 * 3600, ge=0, description="Seconds a cached answer lives; 0 = off.")
    history_turns: int = Field(3, ge=0, le=20, description="Earlier exchanges kept per thread.")
    web_chat: bool | None = Field(
        None,
        description="Serve the local web chat page at `/`. It trusts "
        "the person picked on the page, so by default (empty) it is on only "
        "when the server listens on loopback; `true` on any other address "
        "also needs DESKMATE_WEB_CHAT_BEYOND_LOOPBACK.",
    )
    web_chat_beyond_loopback: bool = Field(
        False,
        description="The operator's explicit yes to the web "
        "chat on a non-loopback address (a container whose port is "
        "published to the host's loopback only). Anyone who reaches "
        "it can ask as anyone.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (`host` or `host:port`) the web chat accepts in "
        "the Host and Origin headers besides loopback names and the bound address (JSON list or "
        "comma-separated). Stops cross-site and DNS-rebinding pages.",
    )
    trust_forwarded_headers: bool = Field(
        False,
        description="Believe X-Forwarded-Proto, -Host and "
        "-For from the proxy in front (a TLS-terminating ingress). "
        "ONLY behind such a proxy: a client could send them itself.",
    )
    ops_host: str = Field(
        "127.0.0.1", description="Address of the separate operations listener (with DESKMATE_OPS_PORT)."
    )
    ops_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics and /readyz (and "
        "/healthz) on this port of DESKMATE_OPS_HOST only, not on the main "
        "port; empty keeps them on the main port.",
    )
    metrics_token: SecretStr | None = Field(
        None, description="When set, /metrics and /readyz's details need `Authorization: Bearer <token>`."
    )

    # --- the platforms ---------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(
        None, validation_alias=_env("SLACK_BOT_TOKEN"), description="Bot token (xoxb-…). Without it Slack is off."
    )
    slack_signing_secret: SecretStr | None = Field(
        None,
        validation_alias=_env("SLACK_SIGNING_SECRET"),
        description="Verifies requests to /slack/events (HTTP mode).",
    )
    slack_app_token: SecretStr | None = Field(
        None,
        validation_alias=_env("SLACK_APP_TOKEN"),
        description="App-level token (xapp-…): connect over Socket Mode, no public URL needed.",
    )
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base URL.")
    slack_streaming: bool = Field(
        True,
        description="Stream with chat.startStream where the workspace supports it; off uses throttled chat.update.",
    )
    stream_interval: float = Field(
        1.0,
        ge=0.2,
        description="Seconds between streamed updates of one message (Slack and Teams both limit the rate).",
    )
    channels: dict[str, ChannelRule] = Field(
        default_factory=dict,
        description="Per-channel rules as JSON, keyed `slack:<channel id>` "
        "or `teams:<conversation id>`; unlisted channels are mention-only and public-only.",
    )
    teams_app_id: str = Field(
        "",
        validation_alias=_env("TEAMS_APP_ID", "MICROSOFT_APP_ID"),
        description="Azure Bot app id. Empty: Teams is off (no /api/messages "
        "route) unless DESKMATE_TEAMS_DEV_OPEN is set on a loopback server.",
    )
    teams_app_password: SecretStr | None = Field(
        None,
        validation_alias=_env("TEAMS_APP_PASSWORD", "MICROSOFT_APP_PASSWORD"),
        description="Azure Bot client secret.",
    )
    teams_app_type: str = Field(
        "SingleTenant",
        validation_alias=_env("TEAMS_APP_TYPE", "MICROSOFT_APP_TYPE"),
        description="`SingleTenant`, `MultiTenant` or `UserAssignedMSI`.",
    )
    teams_tenant_id: str = Field(
        "",
        validation_alias=_env("TEAMS_TENANT_ID", "MICROSOFT_APP_TENANT_ID"),
        description="The tenant of a single-tenant bot.",
    )
    teams_tenants: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Entra tenant ids whose activities are answered (JSON list "
        "or comma-separated); empty answers any tenant the Bot Framework lets through. A multi-tenant "
        "bot should list its customers' tenants.",
    )
    teams_dev_open: bool = Field(
        False,
        description="Development only: serve /api/messages WITHOUT "
        "authentication when no Teams app id is set (the Bot Framework "
        "Emulator, local tests). Refused unless the server listens on "
        "loopback only.",
    )
    # --- roles, ratings, the review console ---------------------------------------------------
    roles_file: Path | None = Field(
        None,
        description="YAML naming admins and leads by email, Slack user group and Entra group id (see bot/feedback/roles.py).",
    )
    admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Admin emails (JSON list or comma-separated)."
    )
    leads: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Support lead emails (JSON list or comma-separated)."
    )
    post_corrections: bool = Field(
        True,
        description="A lead's correction is also posted in the conversation, so the employee gets the right answer.",
    )
    console_secret: SecretStr | None = Field(
        None,
        description="Signs console sessions. Empty: a random one kept in data_dir "
        "(set it explicitly when several replicas serve the console).",
    )
    console_auth_header: str = Field(
        "",
        description="Trust this header for the signed-in email, "
        "e.g. `X-Forwarded-Email` behind oauth2-proxy. ONLY behind such a proxy.",
    )
    console_groups_header: str = Field(
        "",
        description="With console_auth_header: the header "
        "carrying the user's groups (comma-separated Entra group ids).",
    )
    console_pseudonymous: bool = Field(
        False, description="Show people in the console as stable pseudonyms instead of their email and name."
    )
    console_session_hours: float = Field(12, gt=0, description="How long a console sign-in lasts.")
    console_see_all: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Emails of the leads and admins who may read every access "
        "group's passages and answers in the console (JSON list or comma-separated). Everyone else "
        "sees only what their own groups allow; the rest is redacted with a marker.",
    )
    # --- retraining ----------------------------------------------------------------------------
    adapters_dir: Path | None = Field(
        None, description="The adapter registry (a shared volume in production); empty = data_dir/adapters."
    )
    jobs_dir: Path | None = Field(
        None, description="Job folders (dataset, checkpoints, report); empty = data_dir/jobs."
    )
    model_cache_dir: Path | None = Field(
        None, description="The base model converted for training (made once, ~0.5 GB); empty = data_dir/cache."
    )
    job_queue: str = Field(
        "inprocess",
        description="`inprocess`: retraining runs inside the bot; "
        "`redis`: queued in Redis (cache_url) for `deskmate worker`.",
    )
    promotion_margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Token F1 a candidate must gain over the live adapter on held-out turns to go live.",
    )
    auto_promote: bool = Field(
        True, description="Put a candidate live as soon as it passes the gate (off: an admin promotes it)."
    )
    guard_questions: Path | None = Field(
        None,
        description="JSONL of questions that must stay right "
        "(`question`, `must_include`, optional `doc`); empty = none.",
    )
    train_user_facts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Fields of the asker's facts that may stay in training "
        "prompts (e.g. `location,department`; JSON list or comma-separated). Empty: the whole "
        "'About the person asking' block is removed from every training prompt.",
    )
    train_config: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON overrides of the dataset and "
        'training settings: {"dataset": {...}, "train": {...}} (finetune/).',
    )
    eval_max_turns: int = Field(200, ge=1, description="Held-out turns the gate replays at most.")
    adapter_poll_seconds: float = Field(
        5.0, gt=0, description="How often a server checks the ledger for a newly promoted adapter."
    )
    replica_heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        description="How often a server records that "
        "it is alive; after 4 missed beats another replica closes "
        "its unfinished turns and tells their users.",
    )
    host: str = Field("127.0.0.1", description="Address `deskmate serve` listens on.")
    port: int = Field(8000, ge=1, le=65535)

    ledger_spool_dir: Path | None = Field(
        None,
        description="Where ledger writes wait while the "
        "database is away, one file per process, and where rows it "
        "rejected are dead-lettered; empty = data_dir. A persistent "
        "volume in production.",
    )

    @field_validator("web_chat", "ops_port", "metrics_token", "kb_root", "ledger_spool_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `NAME=` in .env or a manifest means "the default", not an empty path (the working
        # directory) or a parse error at start-up.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "admins", "leads", "allowed_hosts", "teams_tenants", "console_see_all", "train_user_facts", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def resolved_ledger_url(self) -> str:
        """The ledger URL with the embedded default filled in."""
        return self.ledger_url or f"sqlite:///{(self.data_dir / 'ledger.db').resolve()}"

    def resolved_spool_dir(self) -> Path:
        return (self.ledger_spool_dir or self.data_dir).resolve()

    def resolved_adapters_dir(self) -> Path:
        return (self.adapters_dir or self.data_dir / "adapters").resolve()

    def resolved_model_cache(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "cache").resolve()

    def resolved_jobs_dir(self) -> Path:
        return (self.jobs_dir or self.data_dir / "jobs").resolve()

    def resolved_store_url(self) -> str:
        """The store URL with the embedded default filled in."""
        if self.store_url:
            return self.store_url
        return f"lancedb://{(self.data_dir / 'kb').resolve()}"
