"""The install files an admin uses: the Slack manifest asks for what the adapter listens to, and
the Teams package builds with the bot's id and valid icons."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from tests.support.services import REPO


def test_the_slack_manifest_covers_every_event_and_scope_the_adapter_needs() -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "slack" / "manifest.yaml").read_text())
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"app_mention", "message.im", "message.channels", "assistant_thread_started"} <= events
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"users:read.email", "chat:write", "assistant:write", "commands", "im:history"} <= scopes
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/deskmate"]


def test_the_teams_package_builds_with_the_app_id_and_icons(tmp_path: Path) -> None:
    app_id = "6a0a8ef4-9cf1-4a36-9c5c-2b0a1d3d5f11"
    out = tmp_path / "deskmate.zip"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "teams" / "package.py"),
            "--app-id",
            app_id,
            "--domain",
            "https://deskmate.northwind.example/",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(out) as package:
        assert sorted(package.namelist()) == ["color.png", "manifest.json", "outline.png"]
        manifest = json.loads(package.read("manifest.json"))
        sizes = {name: struct.unpack(">II", package.read(name)[16:24]) for name in ("color.png", "outline.png")}
    assert manifest["id"] == manifest["bots"][0]["botId"] == app_id
    assert manifest["validDomains"] == ["deskmate.northwind.example"]
    assert sizes == {"color.png": (192, 192), "outline.png": (32, 32)}

    bad = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "teams" / "package.py"),
            "--app-id",
            "my-bot",
            "--domain",
            "x",
            "--out",
            str(tmp_path / "x.zip"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "GUID" in bad.stderr
