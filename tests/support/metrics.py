"""Waiting on a Prometheus counter of the in-process server: the way a test knows that
something was deliberately NOT done (an event skipped) before it checks that it was not."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY


def counter(name: str, **labels: str) -> float:
    """The counter's value now (0 before its first increment)."""
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


async def wait_for_counter(name: str, at_least: float, timeout: float = 15.0, **labels: str) -> None:
    """Until the counter reaches `at_least`; an AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while counter(name, **labels) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} stayed at {counter(name, **labels)}, not {at_least}")
        await asyncio.sleep(0.02)
