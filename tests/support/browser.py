"""Headless Chromium for the browser tests: Debian's build (never `playwright install`), the
flags that keep it off the network, and where screenshots of a failure go."""

from __future__ import annotations

from tests.support.services import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
