"""The adapter registry: sealed, immutable versions; damaged folders and other base models refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from finetune.model import BASE_MODEL_ID
from finetune.registry import AdapterInvalid, BaseModelMismatch, Registry, new_name


def test_a_version_is_sealed_and_never_overwritten(tmp_path: Path, blank_adapter: Path) -> None:
    registry = Registry(tmp_path / "adapters")
    name = new_name(BASE_MODEL_ID)
    assert name.startswith("smollm2-135m-instruct-")
    info = registry.register(name, blank_adapter, {"base_model": BASE_MODEL_ID, "started_by": "a@b"})
    assert registry.get(name).metadata["started_by"] == "a@b"
    assert set(info.metadata["files"]) == {"adapter_config.json", "adapter_model.safetensors", "adapter.gguf"}
    assert not os.stat(info.gguf).st_mode & stat.S_IWUSR  # read-only once registered
    with pytest.raises(AdapterInvalid, match="never overwritten"):
        registry.register(name, blank_adapter, {"base_model": BASE_MODEL_ID})
    assert registry.names() == [name]


def test_a_damaged_or_incomplete_folder_is_refused(tmp_path: Path, blank_adapter: Path) -> None:
    registry = Registry(tmp_path / "adapters")
    name = new_name(BASE_MODEL_ID)
    info = registry.register(name, blank_adapter, {"base_model": BASE_MODEL_ID})
    os.chmod(info.gguf, stat.S_IWUSR | stat.S_IRUSR)
    with open(info.gguf, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00garbage\x00")
    with pytest.raises(AdapterInvalid, match="changed since it was registered"):
        registry.get(name)
    (info.path / "adapter.gguf").unlink()
    with pytest.raises(AdapterInvalid, match="missing"):
        registry.get(name)
    (info.path / "metadata.json").chmod(0o600)
    (info.path / "metadata.json").write_text("{not json")
    with pytest.raises(AdapterInvalid, match="unreadable"):
        registry.get(name)
    with pytest.raises(AdapterInvalid, match="no adapter version"):
        registry.get("../../etc")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterInvalid, match="lacks"):
        registry.register(new_name(BASE_MODEL_ID), empty, {})


def test_another_base_model_is_refused(tmp_path: Path, blank_adapter: Path) -> None:
    registry = Registry(tmp_path / "adapters")
    info = registry.register(
        new_name(BASE_MODEL_ID),
        blank_adapter,
        {"base_model": "meta-llama/Llama-3.2-1B-Instruct", "base_revision": "r1"},
    )
    with pytest.raises(BaseModelMismatch, match="Llama-3.2-1B"):
        registry.check_base(info, BASE_MODEL_ID, None)
    same = registry.register(
        new_name(BASE_MODEL_ID), blank_adapter, {"base_model": BASE_MODEL_ID, "base_revision": "r1"}
    )
    registry.check_base(same, BASE_MODEL_ID, "r1")
    with pytest.raises(BaseModelMismatch, match="revision"):
        registry.check_base(same, BASE_MODEL_ID, "r2")
