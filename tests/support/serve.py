"""A real `deskmate serve` process for tests that attack it from outside, over HTTP, as an
attacker or an unlucky operator would (tests/security/)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.cluster import DESKMATE, Process, child_env, wait_until_up
from tests.support.services import free_port


def serve_env(root: Path, **settings: object) -> dict[str, str]:
    """The child's environment: nothing of the developer's, the embedded defaults under `root`
    (echo generator: these tests are about doors, not answers), then `settings` as
    DESKMATE_<NAME> variables (lists and dicts as JSON)."""
    import json

    values: dict[str, str] = {"DESKMATE_DATA_DIR": str(root), "DESKMATE_GENERATOR_URL": "echo://"}
    for name, value in settings.items():
        key = name if name.isupper() else f"DESKMATE_{name.upper()}"
        values[key] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return child_env(**values)


@contextlib.asynccontextmanager
async def deskmate_serve(root: Path, *, host: str = "127.0.0.1", **settings: object) -> AsyncIterator[Process]:
    """`deskmate serve --host HOST --port N` with `settings`, yielded once /healthz answers on
    127.0.0.1 (a wildcard bind answers there too); stopped with SIGTERM afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "serve.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [DESKMATE, "serve", "--host", host, "--port", str(port)],
            env=serve_env(root, **settings),
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    process = Process("serve", popen, log, url=f"http://127.0.0.1:{port}")
    try:
        await wait_until_up(process)
        yield process
    finally:
        process.stop()


def serve_refused(root: Path, *, host: str = "127.0.0.1", timeout: float = 120, **settings: object) -> tuple[int, str]:
    """Run `deskmate serve` expecting it to refuse to start: (exit status, everything it
    printed). A server that starts instead is stopped after `timeout` and reported as rc 0."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [DESKMATE, "serve", "--host", host, "--port", str(free_port())],
            env=serve_env(root, **settings),
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        printed = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 0, printed
    return done.returncode, done.stdout + done.stderr
