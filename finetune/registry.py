"""The adapter registry: one folder per adapter version, never changed once written.

A version's name says what it is and when it was made (`smollm2-135m-instruct-20261123-2104-a3f9`),
so a model server can load several side by side and never serve a stale one under a reused name.
Each folder holds the PEFT adapter (for TGI / vLLM and for further training), the GGUF LoRA (for
the local generator) and `metadata.json`: base model id and revision, dataset card, training
config, evaluation report, who started it, and a SHA-256 of every file, so a damaged or edited
folder is refused instead of served.

Which version is live is not stored here: promotions are events in the bot's ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{2,120}$")
REQUIRED = ("adapter_config.json", "adapter_model.safetensors", "adapter.gguf")


class AdapterInvalid(ValueError):
    """The adapter folder is missing, incomplete or altered since it was registered."""


class BaseModelMismatch(ValueError):
    """The adapter was trained on another base model (or another revision of it)."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    metadata: dict[str, Any]

    @property
    def gguf(self) -> Path:
        return self.path / "adapter.gguf"


def new_name(base_model_id: str, now: datetime | None = None) -> str:
    """An immutable version name: base model, UTC minute, four random hex digits."""
    stem = re.sub(r"[^a-z0-9]+", "-", base_model_id.rsplit("/", 1)[-1].lower()).strip("-")
    return f"{stem}-{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Registry:
    """Adapter versions under one root folder (a shared volume in production)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def register(self, name: str, source: Path, metadata: dict[str, Any]) -> AdapterInfo:
        """Copy the adapter files in under `name` and seal them. Refuses a name in use."""
        if not NAME.match(name):
            raise AdapterInvalid(f"{name!r} is not a valid adapter version name")
        missing = [f for f in REQUIRED if not (Path(source) / f).is_file()]
        if missing:
            raise AdapterInvalid(f"{source} lacks {', '.join(missing)}")
        target = self.root / name
        if target.exists():
            raise AdapterInvalid(f"adapter version {name} already exists; versions are never overwritten")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for file in REQUIRED:
            shutil.copy2(Path(source) / file, staging / file)
        sealed = {
            **metadata,
            "name": name,
            "registered_at": datetime.now(UTC).isoformat(),
            "files": {f: _digest(staging / f) for f in REQUIRED},
        }
        (staging / "metadata.json").write_text(json.dumps(sealed, indent=2, default=str) + "\n")
        for path in staging.iterdir():
            os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        staging.rename(target)  # all or nothing: a crash leaves only a hidden .partial folder
        return AdapterInfo(name, target, sealed)

    def get(self, name: str) -> AdapterInfo:
        """The adapter, after checking every file against its recorded hash."""
        path = self.root / name
        if not NAME.match(name) or not path.is_dir():
            raise AdapterInvalid(f"no adapter version {name!r} in {self.root}")
        try:
            metadata = json.loads((path / "metadata.json").read_text())
        except (OSError, ValueError) as exc:
            raise AdapterInvalid(f"adapter {name}: metadata.json unreadable ({exc})") from None
        for file, expected in (metadata.get("files") or {}).items():
            if not (path / file).is_file():
                raise AdapterInvalid(f"adapter {name}: {file} is missing")
            if _digest(path / file) != expected:
                raise AdapterInvalid(f"adapter {name}: {file} changed since it was registered")
        if set(metadata.get("files") or {}) != set(REQUIRED):
            raise AdapterInvalid(f"adapter {name}: metadata does not list its files")
        return AdapterInfo(name, path, metadata)

    def check_base(self, info: AdapterInfo, base_model: str, revision: str | None) -> None:
        """Refuse an adapter trained on a different base model than the one serving."""
        trained = info.metadata.get("base_model", "")
        if trained != base_model:
            raise BaseModelMismatch(
                f"adapter {info.name} was trained on {trained!r}, but the server runs {base_model!r}"
            )
        trained_rev = info.metadata.get("base_revision", "")
        if revision and trained_rev and trained_rev != revision:
            raise BaseModelMismatch(
                f"adapter {info.name} was trained on revision {trained_rev}, but the server runs {revision}"
            )

    def names(self) -> list[str]:
        """Every registered version, oldest first (names sort by time)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
