"""An OpenAI-compatible memory proxy: recall, inject into the system message, forward upstream.

Mount :func:`build_proxy_router` in a FastAPI app; any OpenAI client can then point at it.
For each ``/v1/chat/completions`` request the proxy recalls episodes for the conversation,
puts them in the system message (see :mod:`rememory.chat.prompt`) and forwards the request to
the upstream OpenAI-compatible server (Ollama, vLLM, llama.cpp, OpenAI...). It can also store
the exchange as a new episode, trained on a background thread.

Per-request controls (the ``rememory`` body field is removed before forwarding):

- namespace: header ``X-Rememory-Namespace``, else the body's ``user``, else ``"default"``;
- remembering: header ``X-Rememory-Remember: true`` or ``"rememory": {"remember": true}``.

Responses carry ``X-Rememory-Recalled`` (the injected episode ids, URL-quoted, comma-separated)
and, when remembering, ``X-Rememory-Episode`` (the id the exchange is stored under).
Request bodies must be JSON sent as ``Content-Type: application/json`` (else 415), with no
``NaN``, lone surrogate or deep nesting (else 400): see :mod:`rememory.chat.request`.
Upstream failures come back as OpenAI-style JSON errors: 502 (unreachable, redirected, HTTP 5xx,
garbage, an event over :data:`MAX_SSE_EVENT_BYTES`), 504 (no answer within the per-read
``timeout``, or not finished within the overall ``deadline``), or the upstream's own 4xx.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..episodes import validate_namespace
from ..errors import ConfigError, InvalidEpisodeError, RememoryError
from ..memory import Memory
from ..records import RecallHit
from .client import Rememberer, new_episode_id
from .prompt import DEFAULT_BASE_PROMPT, build_system_prompt, message_text, recall_query
from .request import OpenAIErrorRoute, ProxyChatRequest, openai_error

logger = logging.getLogger(__name__)

NAMESPACE_HEADER = "X-Rememory-Namespace"
REMEMBER_HEADER = "X-Rememory-Remember"
RECALLED_HEADER = "X-Rememory-Recalled"
EPISODE_HEADER = "X-Rememory-Episode"
DRAIN_TIMEOUT_S = 120.0  # at shutdown, how long to wait for exchanges still training
DEFAULT_DEADLINE_S = 600.0  # a whole upstream exchange, streamed or not, from request to last byte
MAX_SSE_EVENT_BYTES = 1 << 20  # one server-sent event line; a chat chunk is a few hundred bytes
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}

NamespaceFor = Callable[[Request, dict[str, Any]], str]

__all__ = ["build_proxy_router", "default_namespace_for", "inject_memories", "openai_error"]


def default_namespace_for(request: Request, body: dict[str, Any]) -> str:
    """The ``X-Rememory-Namespace`` header, else the body's ``user`` field, else ``"default"``."""
    header = request.headers.get(NAMESPACE_HEADER)
    if header:
        return header
    user = body.get("user")
    return user if isinstance(user, str) and user.strip() else "default"


class _BadRequest(Exception):
    pass


def _remember_flag(request: Request, body: ProxyChatRequest) -> bool:
    """Whether to store this exchange: the header, else the body's ``rememory.remember`` field."""
    header = request.headers.get(REMEMBER_HEADER)
    if header is not None:
        value = header.strip().lower()
        if value not in _TRUE | _FALSE:
            raise _BadRequest(f"{REMEMBER_HEADER} must be true or false, got {header!r}.")
        return value in _TRUE
    return body.rememory.remember if body.rememory is not None else False


def inject_memories(messages: list[Any], hits: list[RecallHit]) -> list[Any]:
    """``messages`` with the recalled episodes in the system message (one is added if there is none).

    An existing system (or developer) message is the base prompt; otherwise the default one is.

    >>> inject_memories([{"role": "user", "content": "Hi"}], [])[0]["role"]
    'system'
    """
    out = list(messages)
    for i, m in enumerate(out):
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            out[i] = {**m, "content": build_system_prompt(message_text(m.get("content")), hits)}
            return out
    return [{"role": "system", "content": build_system_prompt(DEFAULT_BASE_PROMPT, hits)}, *out]


def _snippet(text: str, limit: int = 300) -> str:
    text = re.sub(r"<[^>]*>", " ", text)  # an HTML error page becomes its words
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


def _upstream_status_error(upstream: str, status: int, raw: bytes) -> JSONResponse:
    """Map an upstream HTTP error: its OpenAI-style 4xx pass through; 5xx and non-JSON become 502."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, str):
        err = {"message": err}
    message = err.get("message") if isinstance(err, dict) else None
    if not isinstance(message, str) or not message:
        message = _snippet(raw.decode("utf-8", "replace")) or "(empty body)"
    if 400 <= status < 500:
        etype = str(err["type"]) if isinstance(err, dict) and isinstance(err.get("type"), str) else "upstream_error"
        code = err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), str) else None
        return openai_error(status, message, type=etype, code=code)
    return openai_error(
        502,
        f"The upstream model server {upstream} failed with HTTP {status}: {message}",
        type="upstream_error",
        code="upstream_http_error",
    )


def _not_openai(upstream: str, raw: bytes, what: str) -> JSONResponse:
    return openai_error(
        502,
        f"The upstream model server {upstream} answered with {what}: {_snippet(raw.decode('utf-8', 'replace'))!r}. "
        "Check that --upstream is the base URL of an OpenAI-compatible API (it usually ends in /v1).",
        type="upstream_error",
        code="upstream_bad_response",
    )


def _redirected(upstream: str, status: int, location: str | None) -> JSONResponse:
    return openai_error(
        502,
        f"The upstream model server {upstream} redirected the request (HTTP {status} to {location or 'nowhere'}); "
        "the proxy does not follow redirects. Set --upstream to the final URL.",
        type="upstream_error",
        code="upstream_redirect",
    )


def _deadline_error(upstream: str, deadline: float) -> JSONResponse:
    return openai_error(
        504,
        f"The upstream model server {upstream} did not finish its answer within the proxy's deadline of "
        f"{deadline:g} s. Ask for a shorter answer (max_tokens), or raise the deadline.",
        type="upstream_error",
        code="upstream_timeout",
    )


def _transport_error(upstream: str, exc: httpx.HTTPError, timeout: float) -> JSONResponse:
    if isinstance(exc, httpx.TimeoutException):
        return openai_error(
            504,
            f"The upstream model server {upstream} did not answer within {timeout:g} s. It may be overloaded "
            "or still loading the model; retry, or raise the proxy's timeout.",
            type="upstream_error",
            code="upstream_timeout",
        )
    return openai_error(
        502,
        f"Could not reach the upstream model server {upstream} ({type(exc).__name__}: {exc}). "
        "Check that it is running and that the --upstream URL is right.",
        type="upstream_error",
        code="upstream_unreachable",
    )


class EventTooLarge(Exception):
    """An upstream server-sent event line is over :data:`MAX_SSE_EVENT_BYTES`."""


class _SseCollector:
    r"""Collects the assistant's text from an OpenAI SSE stream as it passes through.

    Linear in the stream's size: only each new chunk is searched for line ends, and the
    unfinished line grows in place; a line over ``max_line`` raises :class:`EventTooLarge`.

    >>> c = _SseCollector()
    >>> for b in b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\ndata: [DONE]\n':
    ...     c.feed(bytes([b]))
    >>> c.parts, c.done
    (['Hi'], True)
    """

    def __init__(self, max_line: int = MAX_SSE_EVENT_BYTES) -> None:
        self._line = bytearray()
        self._max_line = max_line
        self.parts: list[str] = []
        self.done = False
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._line += chunk[start:end]
            self._check()
            self._event(bytes(self._line))
            self._line.clear()
            start = end + 1
        self._line += chunk[start:]
        self._check()

    def _check(self) -> None:
        if len(self._line) > self._max_line:
            self.failed = True
            raise EventTooLarge(f"an event line over {self._max_line} bytes")

    def _event(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            event = json.loads(payload)
        except ValueError:
            self.failed = True
            return
        if not isinstance(event, dict) or "error" in event:
            self.failed = True
            return
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
            if isinstance(content, str) and choice.get("index", 0) == 0:
                self.parts.append(content)


def _error_event(response: JSONResponse) -> bytes:
    """An error response as the SSE event that ends a stream already under way (the blank line first
    ends any event the upstream left unfinished)."""
    return b"\n\ndata: " + bytes(response.body) + b"\n\n"


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return message_text(m.get("content"))
    return ""


def _answer_of(data: Any) -> str | None:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


@dataclass(frozen=True)
class _Turn:
    """One chat request after recall: the body to forward and how to remember the exchange."""

    body: dict[str, Any]
    headers: dict[str, str]  # X-Rememory-* headers of the response
    namespace: str
    user_text: str
    episode_id: str | None  # None: not remembered


_OPENAI_ERROR = {"error": {"message": "...", "type": "...", "param": None, "code": None}}
_ERROR_DOC = {"content": {"application/json": {"example": _OPENAI_ERROR}}}
_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upstream's completion (JSON), or its event stream when `stream` is true.",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    400: {**_ERROR_DOC, "description": "The body is not JSON, or not a valid chat request."},
    415: {**_ERROR_DOC, "description": "The body was not sent as `Content-Type: application/json`."},
    502: {**_ERROR_DOC, "description": "The upstream is unreachable, redirected, failed, or did not speak OpenAI."},
    504: {**_ERROR_DOC, "description": "The upstream did not answer in time."},
}


class _Proxy:
    """The proxy's work for one router: recall and inject, forward, stream, remember."""

    def __init__(
        self,
        memory: Memory,
        upstream: str,
        *,
        namespace_for: NamespaceFor,
        upstream_api_key: str | None,
        timeout: float,
        deadline: float,
        top_k: int,
    ):
        self.memory, self.base, self.namespace_for = memory, upstream.rstrip("/"), namespace_for
        self.timeout, self.deadline, self.top_k = timeout, deadline, top_k
        self.rememberer = Rememberer(memory)
        self.headers = {"Accept": "application/json, text/event-stream"}
        if upstream_api_key:
            self.headers["Authorization"] = f"Bearer {upstream_api_key}"

    def client(self) -> httpx.AsyncClient:
        # One client per request: a router may serve several event loops (tests, embedded servers).
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), headers=self.headers, follow_redirects=False)

    def _status_error(self, resp: httpx.Response, raw: bytes) -> JSONResponse | None:
        if 300 <= resp.status_code < 400:
            return _redirected(self.base, resp.status_code, resp.headers.get("location"))
        if resp.status_code >= 400:
            return _upstream_status_error(self.base, resp.status_code, raw)
        return None

    async def models(self) -> JSONResponse:
        async with self.client() as http:
            try:
                with anyio.fail_after(self.deadline):
                    resp = await http.get(f"{self.base}/models")
            except TimeoutError:
                return _deadline_error(self.base, self.deadline)
            except httpx.HTTPError as exc:
                return _transport_error(self.base, exc, self.timeout)
        error = self._status_error(resp, resp.content)
        if error is not None:
            return error
        try:
            return JSONResponse(resp.json())
        except ValueError:
            return _not_openai(self.base, resp.content, "something that is not JSON")

    async def chat(self, request: Request, body: ProxyChatRequest) -> JSONResponse | StreamingResponse:
        try:
            turn = await self.recall_and_inject(request, body)
        except (_BadRequest, InvalidEpisodeError, ConfigError) as exc:
            return openai_error(400, str(exc))
        except RememoryError as exc:
            return openai_error(500, f"Recalling memories failed: {exc}", type="rememory_error")
        if turn.body.get("stream"):
            return await self.stream(turn)
        return await self.forward(turn)

    async def recall_and_inject(self, request: Request, body: ProxyChatRequest) -> _Turn:
        """Recall for the conversation and put the episodes in its system message."""
        remember = _remember_flag(request, body)
        forwarded = body.forwarded()
        namespace = validate_namespace(self.namespace_for(request, forwarded))
        messages = forwarded["messages"]
        query = recall_query(messages)
        user_text = _last_user_text(messages)
        hits = await run_in_threadpool(self.memory.recall, query, self.top_k, namespace) if query else []
        forwarded["messages"] = inject_memories(messages, hits)
        headers = {RECALLED_HEADER: ",".join(quote(h.id, safe="") for h in hits)}
        episode_id = new_episode_id() if remember and user_text.strip() else None
        if episode_id is not None:
            headers[EPISODE_HEADER] = episode_id
        return _Turn(forwarded, headers, namespace, user_text, episode_id)

    async def forward(self, turn: _Turn) -> JSONResponse:
        """One non-streamed completion, within the deadline."""
        async with self.client() as http:
            try:
                with anyio.fail_after(self.deadline):
                    resp = await http.post(f"{self.base}/chat/completions", json=turn.body)
            except TimeoutError:
                return _deadline_error(self.base, self.deadline)
            except httpx.HTTPError as exc:
                return _transport_error(self.base, exc, self.timeout)
        error = self._status_error(resp, resp.content)
        if error is not None:
            return error
        try:
            data = resp.json()
        except ValueError:
            return _not_openai(self.base, resp.content, "something that is not JSON")
        self.remember(turn, _answer_of(data))
        return JSONResponse(data, status_code=resp.status_code, headers=turn.headers)

    async def stream(self, turn: _Turn) -> JSONResponse | StreamingResponse:
        """A streamed completion, relayed event by event; the deadline covers the whole stream."""
        ends = time.monotonic() + self.deadline
        http = self.client()
        try:
            with anyio.fail_after(self.deadline):
                request = http.build_request("POST", f"{self.base}/chat/completions", json=turn.body)
                resp = await http.send(request, stream=True)
        except TimeoutError:
            await http.aclose()
            return _deadline_error(self.base, self.deadline)
        except httpx.HTTPError as exc:
            await http.aclose()
            return _transport_error(self.base, exc, self.timeout)
        if not 200 <= resp.status_code < 300 or not resp.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            try:
                with anyio.fail_after(max(0.0, ends - time.monotonic())):
                    raw = await resp.aread()
            except TimeoutError:
                return _deadline_error(self.base, self.deadline)
            except httpx.HTTPError as exc:
                return _transport_error(self.base, exc, self.timeout)
            finally:
                await resp.aclose()
                await http.aclose()
            return self._status_error(resp, raw) or _not_openai(self.base, raw, "something that is not an event stream")
        return StreamingResponse(self._relay(turn, http, resp, ends), media_type="text/event-stream",
                                 headers=turn.headers)  # fmt: skip

    async def _relay(
        self, turn: _Turn, http: httpx.AsyncClient, resp: httpx.Response, ends: float
    ) -> AsyncIterator[bytes]:
        collector = _SseCollector()
        chunks = resp.aiter_bytes()  # decoded, should the upstream compress
        try:
            while True:
                with anyio.fail_after(max(0.0, ends - time.monotonic())):
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                collector.feed(chunk)
                yield chunk
        except TimeoutError:
            logger.warning("The upstream stream from %s ran past the deadline of %g s.", self.base, self.deadline)
            yield _error_event(_deadline_error(self.base, self.deadline))
            return
        except EventTooLarge as exc:
            logger.warning("The upstream stream from %s sent %s.", self.base, exc)
            yield _error_event(_not_openai(self.base, b"", f"{exc}, which no chat completion chunk needs"))
            return
        except httpx.HTTPError as exc:
            logger.warning("The upstream stream from %s broke: %s", self.base, exc)
            yield _error_event(_transport_error(self.base, exc, self.timeout))
            return
        finally:
            await resp.aclose()
            await http.aclose()
        self.remember(turn, "".join(collector.parts) if collector.done and not collector.failed else None)

    def remember(self, turn: _Turn, answer: str | None) -> None:
        """Queue the exchange for training, when the request asked for it and the answer is complete."""
        if turn.episode_id is None:
            return
        if answer and answer.strip():
            self.rememberer.submit(turn.user_text, answer, namespace=turn.namespace, id=turn.episode_id)
        else:
            logger.warning("Exchange %s was not remembered: no complete answer from the upstream.", turn.episode_id)


def build_proxy_router(
    memory: Memory,
    upstream: str,
    *,
    namespace_for: NamespaceFor | None = None,
    upstream_api_key: str | None = None,
    timeout: float = 60.0,
    deadline: float = DEFAULT_DEADLINE_S,
    top_k: int = 3,
) -> APIRouter:
    """An APIRouter with ``POST /v1/chat/completions`` and ``GET /v1/models`` proxying to ``upstream``.

    ``upstream`` is the base URL an OpenAI client would use (e.g. ``http://localhost:11434/v1``).
    ``upstream_api_key`` is sent upstream as a bearer token; the client's own ``Authorization``
    header is never forwarded (it may be this server's key). ``timeout`` bounds connecting to
    and each read from the upstream; ``deadline`` bounds a whole exchange, so that an upstream
    that drips bytes cannot hold a request open. The router's lifespan waits for exchanges still
    being trained when the app shuts down.

    >>> app = FastAPI()
    >>> app.include_router(build_proxy_router(Memory("store"), "http://localhost:11434/v1"))
    """
    if not re.match(r"^https?://[^/]", upstream):
        raise ConfigError(f"The upstream must be an http(s) URL such as http://localhost:11434/v1, got {upstream!r}.")
    if not timeout > 0 or not deadline > 0:
        raise ConfigError(f"timeout and deadline must be positive seconds, got {timeout!r} and {deadline!r}.")
    proxy = _Proxy(memory, upstream, namespace_for=namespace_for or default_namespace_for,
                   upstream_api_key=upstream_api_key, timeout=timeout, deadline=deadline, top_k=top_k)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(proxy.rememberer.close, DRAIN_TIMEOUT_S)

    router = APIRouter(lifespan=lifespan, route_class=OpenAIErrorRoute)

    @router.get("/v1/models", response_model=None, responses={k: _CHAT_RESPONSES[k] for k in (502, 504)})
    async def models() -> JSONResponse:
        """The upstream's models."""
        return await proxy.models()

    @router.post("/v1/chat/completions", response_model=None, responses=_CHAT_RESPONSES)
    async def chat_completions(request: Request, body: ProxyChatRequest) -> JSONResponse | StreamingResponse:
        """A chat completion from the upstream, with recalled episodes in the system message."""
        return await proxy.chat(request, body)

    return router
