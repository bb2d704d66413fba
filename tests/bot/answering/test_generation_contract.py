"""The generator contract: the local llama.cpp backend always; the remote client against a real
OpenAI-compatible server (llama.cpp's, started here); TGI when DESKMATE_TGI_URL is set."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.answering.generation import (
    AdapterNotServed,
    Generator,
    GeneratorOverloaded,
    GeneratorTimeout,
    GeneratorUnavailable,
    LlamaCppGenerator,
    RemoteGenerator,
)
from tests.support.model_server import openai_compatible
from tests.support.services import free_port

pytestmark = pytest.mark.slow

QUESTION = [
    {"role": "system", "content": "Answer briefly and only from the context."},
    {
        "role": "user",
        "content": "Context:\n[1] Wi-Fi: Staff join the NW-Staff network with their Northwind ID; "
        "guests use NW-Guest.\nQuestion: Which network do guests use?",
    },
]
ALIAS = "smollm2-base"


@pytest.fixture(scope="session")
def llama_server(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on the bundled GGUF, as a real OpenAI-compatible server."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf_path),
                "--model_alias",
                ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_threads",
                "1",
                "--n_ctx",
                "2048",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"llama_cpp.server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(params=["local", "remote-llama.cpp", "remote-tgi"])
async def generator(request: pytest.FixtureRequest, local_generator: LlamaCppGenerator) -> AsyncIterator[Generator]:
    if request.param == "local":
        yield local_generator
        return
    if request.param == "remote-tgi":
        url = os.environ.get("DESKMATE_TGI_URL")
        if not url:
            pytest.skip("TGI contract run skipped: DESKMATE_TGI_URL is not set (no GPU server here)")
    else:
        url = request.getfixturevalue("llama_server")
    remote = RemoteGenerator(url, timeout=120)
    yield remote
    await remote.close()


async def test_streams_text_and_generate_matches(generator: Generator) -> None:
    pieces = [p async for p in generator.stream(QUESTION, max_tokens=40)]
    assert len(pieces) >= 2 and all(isinstance(p, str) for p in pieces)
    text = "".join(pieces)
    assert text.strip()
    assert await generator.generate(QUESTION, max_tokens=40) == text  # greedy: the same answer again
    assert "NW-Guest" in text or "guest" in text.lower()


async def test_max_tokens_bounds_the_answer(generator: Generator) -> None:
    short = [p async for p in generator.stream(QUESTION, max_tokens=5)]
    assert 1 <= len(short) <= 6


async def test_an_adapter_the_server_does_not_serve_is_refused(generator: Generator) -> None:
    before = generator.adapter
    with pytest.raises(AdapterNotServed):
        await generator.use_adapter("deskmate-v999-never-trained")
    assert generator.adapter == before
    assert await generator.ping()


async def test_remote_lists_what_it_serves(llama_server: str) -> None:
    remote = RemoteGenerator(llama_server)
    assert ALIAS in await remote.served_models()
    await remote.use_adapter(ALIAS)  # a name the server lists is accepted, and then sent as `model`
    assert remote.adapter == ALIAS and (await remote.generate(QUESTION, max_tokens=8)).strip()
    await remote.close()


async def test_unreachable_server_is_unavailable_after_retries() -> None:
    remote = RemoteGenerator(f"http://127.0.0.1:{free_port()}", timeout=2, retries=2, backoff=0.05)
    started = time.perf_counter()
    with pytest.raises(GeneratorUnavailable):
        await remote.generate(QUESTION, max_tokens=5)
    assert time.perf_counter() - started >= 0.05 + 0.1  # it backed off twice before giving up
    assert not await remote.ping()
    await remote.close()


async def test_a_server_that_never_answers_times_out() -> None:
    """A real socket that accepts the request and then says nothing, like a wedged GPU server."""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3)
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    remote = RemoteGenerator(f"http://127.0.0.1:{port}", timeout=0.5, retries=0)
    started = time.perf_counter()
    with pytest.raises(GeneratorTimeout):
        await remote.generate(QUESTION, max_tokens=20)
    assert time.perf_counter() - started < 5
    await remote.close()
    server.close()


async def test_local_wait_line_is_bounded(gguf_path: Path) -> None:
    small = LlamaCppGenerator(gguf_path, n_threads=1, max_waiting=1)
    await small.load()
    first = small.stream(QUESTION, max_tokens=30)
    started = asyncio.ensure_future(first.__anext__())
    await asyncio.sleep(0)  # the first request now holds the only place in line
    with pytest.raises(GeneratorOverloaded):
        await small.generate(QUESTION, max_tokens=5)
    await started
    await first.aclose()
    assert (await small.generate(QUESTION, max_tokens=5)).strip()  # the line frees up again
    await small.close()


async def test_without_an_adapter_the_server_s_own_model_name_is_asked_for() -> None:
    """vLLM answers an unknown `model` with 404 (huggingface_hub would send "dummy"): with no
    adapter live, the client must ask for a name the server lists."""
    import json

    from aiohttp import web

    asked: list[str] = []

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "org/base-1b", "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        asked.append(body.get("model"))
        if body.get("model") != "org/base-1b":  # as vLLM does
            return web.json_response(
                {"error": {"message": f"The model `{body.get('model')}` does not exist."}}, status=404
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {
            "id": "1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "org/base-1b",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}],
        }
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        return response

    async with openai_compatible(models, chat) as url:
        remote = RemoteGenerator(url, retries=0)
        try:
            assert await remote.generate(QUESTION, max_tokens=8) == "Hello"
            assert asked == ["org/base-1b"] and remote.model == ""  # the configured name stays unset
        finally:
            await remote.close()
