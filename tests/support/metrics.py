"""Waiting on a Prometheus counter, of the in-process server or of another process: the way a
test knows that something was deliberately NOT done (an event skipped, a sweep that found
nothing left to do) before it checks that it was not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families


def counter(name: str, **labels: str) -> float:
    """The counter's value now (0 before its first increment)."""
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


async def wait_for_counter(name: str, at_least: float, timeout: float = 15.0, **labels: str) -> None:
    """Until the counter reaches `at_least`; an AssertionError after `timeout` seconds."""

    async def now() -> float:
        return counter(name, **labels)

    await _wait_until(now, at_least, timeout, f"{name}{labels}", every=0.02)


async def _wait_until(
    read: Callable[[], Awaitable[float]], at_least: float, timeout: float, what: str, every: float
) -> None:
    deadline = time.monotonic() + timeout
    while (value := await read()) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} stayed at {value}, not {at_least}")
        await asyncio.sleep(every)


async def remote_counter(url: str, name: str, **labels: str) -> float:
    """The counter's value in another process, read from its `/metrics` as Prometheus would."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_total" and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def wait_for_remote_counter(url: str, name: str, at_least: float, timeout: float = 30.0, **labels: str) -> None:
    """Until another process's counter reaches `at_least`; an AssertionError after `timeout`."""

    async def now() -> float:
        return await remote_counter(url, name, **labels)

    await _wait_until(now, at_least, timeout, f"{name}{labels} at {url}", every=0.1)
