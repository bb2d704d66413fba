"""`deskmate …` run in the test's own process through Typer's CliRunner: the real command-line
app with its argument parsing, settings from the environment, exit codes and output, without a
new interpreter per command. A new process pays for importing torch and sentence-transformers
(about 9 s on this machine) before it does anything; here that was paid once per run.

What only a process can show stays a process: `deskmate --version` proves the console script is
installed and starts (tests/bot/test_cli.py), and every server is a real `deskmate serve`
(tests/support/serve.py, tests/support/cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from bot.cli import app


@dataclass(frozen=True)
class Ran:
    """What a finished command left, named as `subprocess.CompletedProcess` names it."""

    returncode: int
    stdout: str
    stderr: str


def deskmate(args: Sequence[str], *, cwd: Path, stdin: str | None = None, **settings: str) -> Ran:
    """Run one command in `cwd` (so no `.env` of the developer's is read) with only the
    `settings` it is given (DESKMATE_… names; any of the developer's shell are unset while it
    runs), as `child_env` starts a process."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("DESKMATE_", "SLACK_", "MICROSOFT_"))}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **settings})
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(app, list(args), env=env, input=stdin, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


async def deskmate_from_async(args: Sequence[str], *, cwd: Path, stdin: str | None = None, **settings: str) -> Ran:
    """The same from an async test: the command runs its own event loop, so it runs in a worker
    thread while the test's loop waits. Its working directory and environment are the
    process's for that while; an in-process server of the test keeps running meanwhile."""
    return await asyncio.to_thread(deskmate, args, cwd=cwd, stdin=stdin, **settings)
