"""Deskmate as separate operating-system processes (`deskmate serve`, `deskmate worker`) on the
real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.services import free_port

DESKMATE = str(Path(sys.executable).parent / "deskmate")


@dataclass
class Process:
    """One `deskmate …` process; its output goes to a file that a failing test prints."""

    name: str
    popen: subprocess.Popen
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, as when a node dies or the OOM killer strikes."""
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops a pod: answers in flight are drained first."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    """The settings every process shares (one Redis prefix, one PostgreSQL database, one
    adapter registry) and the processes started on them."""

    env: dict[str, str]
    root: Path
    processes: list[Process] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str], extra: dict[str, str]) -> Process:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        env = {**self.env, "DESKMATE_DATA_DIR": str(data), **extra}
        with open(log, "wb") as out:
            popen = subprocess.Popen([DESKMATE, *args], env=env, cwd=data, stdout=out, stderr=subprocess.STDOUT)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    async def serve(self, name: str, **extra: str) -> Process:
        """A `deskmate serve` replica, returned once `/healthz` answers."""
        port = free_port()
        process = self._spawn(name, ["serve", "--host", "127.0.0.1", "--port", str(port)], extra)
        process.url = f"http://127.0.0.1:{port}"
        await wait_until_up(process)
        return process

    def worker(self, name: str = "worker", **extra: str) -> Process:
        return self._spawn(name, ["worker"], extra)

    def stop_all(self) -> None:
        """SIGTERM to all at once, then wait for each (blocking: call it from a thread in async
        code, or a forwarder on the caller's loop stalls and a replica's last write hangs)."""
        for process in self.processes:
            if process.alive():
                process.popen.terminate()
        for process in self.processes:
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-4000:]}" for p in self.processes)


async def wait_until_up(process: Process, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if not process.alive():
                raise AssertionError(f"{process.name} exited:\n{process.output()[-4000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{process.url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.3)
    raise AssertionError(f"{process.name} did not come up:\n{process.output()[-4000:]}")


async def readiness(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
        return response.status, await response.json()


def child_env(**settings: str) -> dict[str, str]:
    """This environment without any DESKMATE_ or Slack/Teams setting of the developer's, plus
    `settings`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("DESKMATE_", "SLACK_", "MICROSOFT_"))}
    return {**kept, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **settings}
