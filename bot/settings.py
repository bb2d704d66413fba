"""The one settings object. Read once at start-up and passed down; nothing else reads the
environment, so every knob is listed (and documented) here."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    cache_url: str = Field(
        "memory://", description="`memory://` (in-process, bounded) or `redis://host:6379/0`."
    )
    cache_prefix: str = Field("deskmate:", description="Prefix of every cache key.")

    embedding_model: str = Field(
        "", description="sentence-transformers model name or path; empty = bundled MiniLM."
    )
    embedding_batch_size: int = Field(64, ge=1)

    chunk_size: int = Field(800, ge=100, description="Characters per chunk.")
    chunk_overlap: int = Field(100, ge=0)
    max_file_mb: float = Field(10.0, gt=0, description="Larger files are skipped at ingest.")

    hybrid_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the vector side in hybrid ranking."
    )
    min_confidence: float = Field(
        0.35, ge=0.0, le=1.0, description="Below this best-passage similarity, 'not sure'."
    )
    max_query_chars: int = Field(2000, ge=10, description="Longer queries are truncated.")
    search_k: int = Field(5, ge=1, le=50)

    def resolved_store_url(self) -> str:
        """The store URL with the embedded default filled in."""
        if self.store_url:
            return self.store_url
        return f"lancedb://{(self.data_dir / 'kb').resolve()}"
