"""Generation: one interface, three backends, and the errors the orchestrator handles.

- `LlamaCppGenerator` (the embedded default): the bundled SmolLM2 GGUF in-process through
  llama.cpp, one model instance in one worker thread, a bounded wait line, token streaming into
  the event loop. Chosen over transformers because it is 2-3x faster on this CPU at a sixth of
  the memory (see README, Performance).
- `RemoteGenerator`: TGI or vLLM over the OpenAI-compatible chat API through
  `huggingface_hub.AsyncInferenceClient`. The adapter goes in the `model` field by its versioned
  name, and is checked against what the server lists, because TGI silently serves the base model
  for a name it does not know.
- `EchoGenerator` (`echo://`): no model; quotes the first passage of the context. For checking
  the plumbing and for load tests, where a model would measure the model instead.

Failures of any backend become one of a few named errors, decided in `parse_error`, as the TGI
client does: the orchestrator reacts to the kind of failure, never to a library's exception.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from bot.answering.prompts import ChatMessage
from bot.settings import Settings
from finetune.model import base_gguf_path

log = logging.getLogger(__name__)


# --- errors ----------------------------------------------------------------------------------


class GenerationError(Exception):
    """Base of every generation failure. `kind` names it in logs and metrics."""

    kind = "error"


class GeneratorUnavailable(GenerationError):
    """The model server cannot be reached, or the local model cannot be loaded."""

    kind = "unavailable"


class ModelNotFound(GeneratorUnavailable):
    """HTTP 404: no such endpoint, or no such model (a server redeployed with another one)."""


class GeneratorOverloaded(GenerationError):
    """Too many requests are waiting (HTTP 429/503, or the local wait line is full)."""

    kind = "overloaded"


class GeneratorTimeout(GenerationError):
    """No answer (or no next token) within the time allowed."""

    kind = "timeout"


class GeneratorRejected(GenerationError):
    """The server refused the request itself (too long, bad parameters): retrying will not help."""

    kind = "rejected"


class AdapterNotServed(GenerationError):
    """The server does not serve the adapter version we would claim to be using."""

    kind = "adapter_not_served"


def parse_error(exc: BaseException) -> GenerationError:
    """Map any backend's exception to our named errors (the one place that knows them)."""
    if isinstance(exc, GenerationError):
        return exc
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

    from_http_library = type(exc).__module__.startswith(("httpx", "aiohttp"))
    if isinstance(exc, (InferenceTimeoutError, asyncio.TimeoutError, TimeoutError)) or (
        from_http_library and "Timeout" in type(exc).__name__
    ):
        return GeneratorTimeout(f"the model did not answer in time ({type(exc).__name__})")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        message = (exc.server_message or str(exc)).splitlines()[0][:300]
        if status in (429, 503):
            return GeneratorOverloaded(f"model server busy (HTTP {status}): {message}")
        if status in (400, 413, 422):
            return GeneratorRejected(f"model server refused the request (HTTP {status}): {message}")
        if status == 404:
            return ModelNotFound(f"model server has no such endpoint or model (HTTP 404): {message}")
        return GeneratorUnavailable(f"model server error (HTTP {status}): {message}")
    if isinstance(exc, (ConnectionError, OSError)) or from_http_library:
        return GeneratorUnavailable(f"model server unreachable: {type(exc).__name__}: {exc}")
    return GenerationError(f"{type(exc).__name__}: {exc}")


# --- the interface ---------------------------------------------------------------------------


class Generator(ABC):
    """Streams a chat answer. `model` names the base model; `adapter` the live adapter version
    ('' for none); both go into every turn record. `adapter_strategy` is how the evaluation gate
    found the live adapter answers best ("generate", or "quote" when quoting the passages beat
    its own writing; "" until `training.adapters.apply_live` has read it), which
    `DESKMATE_ANSWER_STRATEGY=auto` follows."""

    model: str = ""
    adapter: str = ""
    adapter_strategy: str = ""

    @abstractmethod
    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> AsyncGenerator[str, None]:
        """Answer text in pieces, as the model produces them."""

    async def generate(self, messages: Sequence[ChatMessage], **kwargs: Any) -> str:
        """The whole answer at once."""
        return "".join([piece async for piece in self.stream(messages, **kwargs)])

    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend can answer now."""

    async def use_adapter(self, name: str, path: Path | None = None) -> None:
        """Serve `name` from now on ('' for the base model); raises `AdapterNotServed` when the
        backend cannot, leaving the current adapter in place."""
        if name:
            raise AdapterNotServed(f"{type(self).__name__} cannot serve adapters")
        self.adapter = ""

    async def close(self) -> None:
        """Release the model or connections."""


# --- local: llama.cpp ------------------------------------------------------------------------

_END = object()
_LOADING = threading.Lock()


class LlamaCppGenerator(Generator):
    """The GGUF model in-process. One instance serves everyone: requests take turns on one
    worker thread (two generations on two cores only thrash), and at most `max_waiting` wait;
    more are refused at once with `GeneratorOverloaded` instead of queueing for minutes."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_threads: int | None = None,
        n_ctx: int = 2048,
        max_waiting: int = 16,
        token_timeout: float = 30.0,
        model_name: str = "SmolLM2-135M-Instruct",
    ) -> None:
        self.model_path = Path(model_path)
        self.model = model_name
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.max_waiting = max_waiting
        self.token_timeout = token_timeout
        self._llm: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._waiting = 0
        self._load_lock = threading.Lock()

    def _new_llama(self, lora_path: Path | None = None) -> Any:
        from llama_cpp import Llama

        if not self.model_path.is_file():
            raise GeneratorUnavailable(f"model file not found: {self.model_path}")
        # One load at a time in the process: with verbose=False llama-cpp-python points the
        # process's stdout/stderr at /dev/null while it loads, and two overlapping loads can
        # leave them there.
        with _LOADING:
            return Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                lora_path=str(lora_path) if lora_path else None,
                verbose=False,
            )

    def _loaded(self) -> Any:
        with self._load_lock:
            if self._llm is None:
                self._llm = self._new_llama()
            return self._llm

    async def load(self) -> None:
        """Load the model now rather than on the first question."""
        await asyncio.to_thread(self._loaded)

    async def use_adapter(self, name: str, path: Path | None = None) -> None:
        """Load the base model with a GGUF LoRA on top and swap it in. Generations already
        running keep the instance they started with."""
        if name and (path is None or not Path(path).exists()):
            raise AdapterNotServed(f"adapter {name!r} has no GGUF LoRA file at {path}")
        try:
            fresh = await asyncio.to_thread(self._new_llama, Path(path) if name and path else None)
        except (ValueError, RuntimeError, OSError) as exc:
            raise AdapterNotServed(f"adapter {name!r} could not be loaded: {exc}") from None
        with self._load_lock:
            self._llm, self.adapter = fresh, name

    async def ping(self) -> bool:
        return self.model_path.is_file()

    def _run(
        self,
        llm: Any,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        emit: Any,
        cancelled: threading.Event,
    ) -> None:
        try:
            chunks = llm.create_chat_completion(
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
            )
            for chunk in chunks:
                if cancelled.is_set():
                    break
                piece = chunk["choices"][0].get("delta", {}).get("content")
                if piece:
                    emit(piece)
            emit(_END)
        except BaseException as exc:  # noqa: BLE001 (handed to the event loop, raised there)
            emit(exc)

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> AsyncGenerator[str, None]:
        if self._waiting >= self.max_waiting:
            raise GeneratorOverloaded(f"{self._waiting} answers are already waiting for the model")
        self._waiting += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        try:
            llm = await asyncio.to_thread(self._loaded)
        except GenerationError:
            self._waiting -= 1
            raise
        except Exception as exc:  # noqa: BLE001
            self._waiting -= 1
            raise GeneratorUnavailable(f"the local model could not be loaded: {exc}") from None

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(
            self._worker, self._run, llm, list(messages), max_tokens, temperature, emit, cancelled
        )
        started = False
        try:
            while True:
                try:
                    # The wait for the first token includes the wait for the worker.
                    item = await asyncio.wait_for(queue.get(), None if not started else self.token_timeout)
                except TimeoutError:
                    raise GeneratorTimeout(f"no token for {self.token_timeout:.0f} s") from None
                if not started:
                    started = True
                    self._waiting -= 1
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, ValueError) and "context" in str(item).lower():
                        raise GeneratorRejected(f"prompt too long for the model: {item}")
                    raise GenerationError(f"local model failed: {type(item).__name__}: {item}")
                yield item
        finally:
            cancelled.set()
            if not started:
                self._waiting -= 1
            # Wait for the worker so the next request does not start mid-generation.
            await asyncio.shield(future)

    async def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._llm = None


# --- remote: TGI / vLLM / any OpenAI-compatible server ---------------------------------------

_MODEL_SERVER_HOSTS: set[str] = set()


def _allow_model_server(url: str) -> None:
    """Let huggingface_hub's client reach our own model server in offline mode.

    `HF_HUB_OFFLINE=1` is how we promise never to download from the Hub, but huggingface_hub
    applies it to every request its clients make, including to a TGI server we run ourselves.
    So its async client factory is replaced (process-wide, once) by one whose request hook
    lets the configured model servers through and still refuses everything else when offline.
    """
    import httpx2
    from huggingface_hub import constants, set_async_client_factory
    from huggingface_hub.errors import OfflineModeIsEnabled

    host = urlparse(url).hostname or ""
    if host in _MODEL_SERVER_HOSTS:
        return
    first = not _MODEL_SERVER_HOSTS
    _MODEL_SERVER_HOSTS.add(host)
    if not first:
        return

    async def on_request(request: httpx2.Request) -> None:
        if request.url.host not in _MODEL_SERVER_HOSTS and constants.is_offline_mode():
            raise OfflineModeIsEnabled(f"Cannot reach {request.url}: offline mode is enabled")

    async def on_response(response: httpx2.Response) -> None:
        # Read a small error body now, so the raised error can say what the server said.
        if response.status_code >= 400 and int(response.headers.get("content-length") or 1_000_001) < 1_000_000:
            await response.aread()

    set_async_client_factory(
        lambda: httpx2.AsyncClient(
            event_hooks={"request": [on_request], "response": [on_response]},
            follow_redirects=True,
            timeout=None,
        )
    )


class RemoteGenerator(Generator):
    """A model server's chat API. Retries with backoff when the server says it is overloaded
    or cannot be reached, but only before the first token: a half-streamed answer is never
    started again."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        model_name: str = "",
    ) -> None:
        from huggingface_hub import AsyncInferenceClient

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.model = model_name
        self._listed_name: str | None = None  # the server's own model name (served_models sets it)
        self._api_key = api_key
        _allow_model_server(self.base_url)
        self._client = AsyncInferenceClient(base_url=self.base_url, api_key=api_key, timeout=timeout)

    async def _get_json(self, path: str) -> Any:
        import aiohttp

        root = re.sub(r"/v1$", "", self.base_url)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=min(self.timeout, 10))) as session:
            async with session.get(f"{root}{path}", headers=headers) as response:
                if response.status != 200:
                    return None
                return await response.json(content_type=None)

    async def _listed_models(self) -> list[dict[str, Any]]:
        """The entries of the server's OpenAI-style `/v1/models` that carry an id."""
        models = await self._get_json("/v1/models")
        data = models.get("data", []) if isinstance(models, dict) else []
        return [m for m in data if isinstance(m, dict) and m.get("id")]

    async def served_models(self) -> set[str]:
        """Model and adapter names the server lists (`/v1/models`, and TGI's `/info`)."""
        try:
            models = await self._listed_models()
            info = await self._get_json("/info")
        except Exception as exc:  # noqa: BLE001
            raise parse_error(exc) from None
        names = {str(m["id"]) for m in models}
        # vLLM lists loaded adapters too, each with a `parent`: the base is the one without.
        self._listed_name = next((str(m["id"]) for m in models if not m.get("parent")), "")
        if isinstance(info, dict):
            if info.get("model_id"):
                names.add(str(info["model_id"]))
            for key in ("lora_adapters", "adapters", "adapter_ids"):
                value = info.get(key)
                if isinstance(value, list):
                    names.update(str(v.get("id", v)) if isinstance(v, dict) else str(v) for v in value)
        return names

    async def use_adapter(self, name: str, path: Path | None = None) -> None:
        if name:
            served = await self.served_models()
            if name not in served:
                raise AdapterNotServed(
                    f"the model server at {self.base_url} does not list adapter {name!r} "
                    f"(it lists: {', '.join(sorted(served)) or 'nothing'}); TGI would silently "
                    "answer with the base model, so Deskmate will not claim it"
                )
        self.adapter = name

    async def _base_name(self) -> str | None:
        """The name to ask for when no adapter is live. Left empty, huggingface_hub sends
        `"model": "dummy"`, which TGI and llama.cpp ignore but vLLM answers with 404; so ask
        for the configured name, else the first model the server lists. The list is read once
        (and again by every readiness probe), not per answer."""
        if not self.model and self._listed_name is None:
            try:
                await self.served_models()
            except GenerationError:
                return None  # the chat call itself will report the outage
        return self.model or self._listed_name or None

    async def ping(self) -> bool:
        try:
            await self.served_models()
        except GenerationError:
            return False
        return True

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> AsyncGenerator[str, None]:
        attempt = 0
        while True:
            started = False
            try:
                chunks = await self._client.chat_completion(
                    list(messages),
                    model=self.adapter or await self._base_name(),
                    stream=True,
                    max_tokens=max_tokens,
                    temperature=temperature,
                )
                async for chunk in chunks:
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if piece:
                        started = True
                        yield piece
                return
            except Exception as exc:  # noqa: BLE001
                error = parse_error(exc)
                if isinstance(error, ModelNotFound):
                    self._listed_name = None  # redeployed with another model? read the list again
                retryable = isinstance(error, (GeneratorOverloaded, GeneratorUnavailable))
                if started or not retryable or attempt >= self.retries:
                    raise error from None
                attempt += 1
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning("generation.retry attempt=%d kind=%s delay=%.1fs", attempt, error.kind, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]  # huggingface_hub's close is untyped


# --- echo: the plumbing check ----------------------------------------------------------------


class EchoGenerator(Generator):
    """Answers by quoting the first context passage, citing it as [1]; `delay` seconds per
    answer, spread over its pieces. Not a model: a way to test and load-test everything else."""

    CONTEXT_LINE = re.compile(r"^\[1\] [^:]*: (.+)$", re.MULTILINE)

    def __init__(self, delay: float = 0.0, model_name: str = "echo") -> None:
        self.delay = delay
        self.model = model_name

    async def use_adapter(self, name: str, path: Path | None = None) -> None:
        self.adapter = name  # echo answers the same with any adapter: there is no model to load

    async def ping(self) -> bool:
        return True

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.0
    ) -> AsyncGenerator[str, None]:
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        found = self.CONTEXT_LINE.search(user)
        text = f"{found.group(1)[:300]} [1]" if found else "I don't know."
        words = text.split(" ")
        pause = self.delay / max(1, len(words))
        for i, word in enumerate(words[:max_tokens]):
            if pause:
                await asyncio.sleep(pause)
            yield word if i == 0 else " " + word


# --- choosing one by URL ---------------------------------------------------------------------


def open_generator(
    url: str, *, api_key: str | None = None, timeout: float = 60.0, n_threads: int | None = None, max_waiting: int = 16
) -> Generator:
    """`local` (or empty: the bundled GGUF), `llama:///path/model.gguf`, `echo://?delay=2`,
    or `http(s)://server` for TGI / vLLM."""
    parsed = urlparse(url or "local")
    if parsed.scheme in ("", "local", "llama"):
        path = Path(parsed.path) if parsed.scheme == "llama" and parsed.path else base_gguf_path()
        return LlamaCppGenerator(path, n_threads=n_threads, max_waiting=max_waiting)
    if parsed.scheme == "echo":
        query = parse_qs(parsed.query)
        return EchoGenerator(delay=float(query.get("delay", ["0"])[0]))
    if parsed.scheme in ("http", "https"):
        return RemoteGenerator(url, api_key=api_key, timeout=timeout)
    raise ValueError(f"unsupported generator URL {url!r}: use local, llama:///file.gguf, echo:// or http(s)://")


def generator_from_settings(settings: Settings) -> Generator:
    """The generator the settings name (DESKMATE_GENERATOR_URL), with their key and limits."""
    key = settings.generator_api_key.get_secret_value() if settings.generator_api_key else None
    return open_generator(
        settings.generator_url,
        api_key=key,
        timeout=settings.generator_timeout,
        n_threads=settings.generator_threads,
        max_waiting=settings.generator_max_waiting,
    )
