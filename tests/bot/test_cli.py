"""The `deskmate` command as a user runs it, on the example handbook: the real Typer app in this
process (tests/support/cli.py), and as a real process where only a process can show it (the
console script starts, `serve` listens and says what it serves)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import Ran, deskmate

DESKMATE = str(Path(sys.executable).parent / "deskmate")


def run(args: list[str], tmp_path: Path, store_url: str, **env: str) -> Ran:
    return deskmate(args, cwd=tmp_path, DESKMATE_DATA_DIR=str(tmp_path), DESKMATE_STORE_URL=store_url, **env)


def test_search_prints_the_right_passage_first_with_its_source(tmp_path: Path, example_store_url: str) -> None:
    done = run(["search", "how do I reset my VPN password"], tmp_path, example_store_url)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("1. Resetting your VPN password") and "it/vpn-password-reset.md" in first
    assert "https://intranet.northwind.example/help/vpn-password-reset" in done.stdout.splitlines()[1]


def test_search_as_a_user_outside_hr_never_shows_hr_documents(tmp_path: Path, example_store_url: str) -> None:
    done = run(
        [
            "search",
            "salary bands compensation review",
            "--user",
            "lukas.becker@northwind.example",
            "--k",
            "20",
            "--json",
        ],
        tmp_path,
        example_store_url,
    )
    hits = json.loads(done.stdout)["hits"]
    assert hits and all("hr" not in h["groups"] for h in hits)
    hr = run(
        ["search", "salary bands compensation review", "--user", "ana.ribeiro@northwind.example", "--k", "3", "--json"],
        tmp_path,
        example_store_url,
    )
    assert json.loads(hr.stdout)["hits"][0]["doc_id"] == "hr/salary-bands-compensation-review.md"


def test_empty_search_and_unknown_user_exit_with_a_message(tmp_path: Path, example_store_url: str) -> None:
    empty = run(["search", "  "], tmp_path, example_store_url)
    assert empty.returncode == 2 and "the question is empty" in empty.stderr
    stranger = run(
        ["ask", "hello?", "--user", "nobody@northwind.example"],
        tmp_path,
        example_store_url,
        DESKMATE_GENERATOR_URL="echo://",
    )
    assert stranger.returncode == 2 and "unknown user" in stranger.stderr


def test_ask_streams_an_answer_with_its_source_and_records_it(tmp_path: Path, example_store_url: str) -> None:
    done = run(
        ["ask", "How do I report a phishing email?", "--user", "emily.carter@northwind.example"],
        tmp_path,
        example_store_url,
        DESKMATE_GENERATOR_URL="echo://",
    )
    assert done.returncode == 0, done.stderr
    assert "source: Reporting a phishing email" in done.stdout
    assert "· answered ·" in done.stdout
    assert (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize("bad", ["--k=0", "--k=51"])
def test_search_rejects_an_out_of_range_k(tmp_path: Path, example_store_url: str, bad: str) -> None:
    done = run(["search", "wifi", bad], tmp_path, example_store_url)
    assert done.returncode == 2


def test_chat_keeps_the_conversation(tmp_path: Path, example_store_url: str) -> None:
    done = deskmate(
        ["chat", "--user", "lukas.becker@northwind.example"],
        cwd=tmp_path,
        stdin="How do I install the NorthGate VPN client?\nAnd on Linux?\n\n",
        DESKMATE_DATA_DIR=str(tmp_path),
        DESKMATE_STORE_URL=example_store_url,
        DESKMATE_GENERATOR_URL="echo://",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("deskmate>") == 2 and done.stdout.count("· answered ·") == 2


def test_serve_without_platform_credentials_starts_and_says_so(tmp_path: Path, example_store_url: str) -> None:
    import urllib.request

    from tests.support.services import free_port

    port = free_port()
    environment = {
        k: v for k, v in os.environ.items() if "SLACK" not in k and "TEAMS" not in k and "MICROSOFT" not in k
    }
    environment.update(
        {
            "DESKMATE_DATA_DIR": str(tmp_path),
            "DESKMATE_STORE_URL": example_store_url,
            "DESKMATE_GENERATOR_URL": "echo://",
            "DESKMATE_PORT": str(port),
            "HF_HUB_OFFLINE": "1",
        }
    )
    process = subprocess.Popen(
        [DESKMATE, "serve"], env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        while not any(line.startswith("Teams:") for line in lines):
            line = process.stdout.readline()  # type: ignore[union-attr]
            assert line, f"serve stopped early: {process.stderr.read()}"  # type: ignore[union-attr]
            lines.append(line.strip())
        assert any(line.startswith("Slack: off") and "SLACK_BOT_TOKEN" in line for line in lines)
        assert any(line.startswith("Teams: off") and "DESKMATE_TEAMS_APP_ID" in line for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0


def _count(summary: str, what: str) -> int:
    return int(re.search(rf"(\d+) {what}", summary).group(1))  # type: ignore[union-attr]


def test_ingest_of_a_subfolder_keeps_ids_and_prunes_only_inside_it(tmp_path: Path, kb_copy: Path) -> None:
    store = f"lancedb://{tmp_path / 'store'}"
    first = run(["ingest", str(kb_copy)], tmp_path, store)
    assert first.returncode == 0, first.stderr
    documents = _count(first.stdout, "added")

    (kb_copy / "it" / "printer-setup.md").unlink()
    pruned = run(["ingest", str(kb_copy / "it"), "--prune"], tmp_path, store)
    assert pruned.returncode == 0, pruned.stderr
    assert [line for line in pruned.stdout.splitlines() if line.startswith("removed")] == [
        "removed it/printer-setup.md"
    ]
    assert _count(pruned.stdout, "added") == 0
    stats = json.loads(run(["kb", "stats", "--json"], tmp_path, store).stdout)
    assert stats["documents"] == documents - 1 and stats["chunks_by_group"].get("hr")

    again = run(["ingest", str(kb_copy)], tmp_path, store)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"0 added, 0 updated, {documents - 1} unchanged, 0 removed")
    hit = json.loads(run(["search", "how do I reset my VPN password", "--json"], tmp_path, store).stdout)
    assert hit["hits"][0]["doc_id"] == "it/vpn-password-reset.md"


def test_ingest_outside_the_knowledge_folder_is_refused_until_the_setting_moves_it(
    tmp_path: Path, kb_copy: Path
) -> None:
    import shutil

    store = f"lancedb://{tmp_path / 'store'}"
    assert run(["ingest", str(kb_copy)], tmp_path, store).returncode == 0
    moved = tmp_path / "moved-kb"
    shutil.copytree(kb_copy, moved)
    refused = run(["ingest", str(moved / "it"), "--prune"], tmp_path, store)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert f"outside the knowledge folder {kb_copy.resolve()}" in message
    assert "DESKMATE_KB_ROOT" in message

    allowed = run(["ingest", str(moved / "it"), "--prune"], tmp_path, store, DESKMATE_KB_ROOT=str(moved))
    assert allowed.returncode == 0, allowed.stderr
    assert _count(allowed.stdout, "added") == 0 and _count(allowed.stdout, "removed") == 0
    assert _count(allowed.stdout, "unchanged") == len(list((moved / "it").rglob("*.*")))


def test_an_empty_optional_setting_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`NAME=` in .env or a manifest is "unset", not a parse error at start-up or the working
    directory as a folder."""
    from bot.settings import Settings

    for name in (
        "DESKMATE_WEB_CHAT",
        "DESKMATE_OPS_PORT",
        "DESKMATE_KB_ROOT",
        "DESKMATE_LEDGER_SPOOL_DIR",
        "DESKMATE_METRICS_TOKEN",
    ):
        monkeypatch.setenv(name, "")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.web_chat, s.ops_port, s.kb_root, s.ledger_spool_dir, s.metrics_token) == (None,) * 5
    assert s.resolved_spool_dir() == s.data_dir.resolve()


def test_version_is_printed() -> None:
    from importlib.metadata import version

    done = subprocess.run([DESKMATE, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"deskmate {version('deskmate')}"
