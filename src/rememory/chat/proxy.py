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
Upstream failures come back as OpenAI-style JSON errors: 502 (unreachable, HTTP 5xx, garbage),
504 (timeout), or the upstream's own 4xx.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

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

logger = logging.getLogger(__name__)

NAMESPACE_HEADER = "X-Rememory-Namespace"
REMEMBER_HEADER = "X-Rememory-Remember"
RECALLED_HEADER = "X-Rememory-Recalled"
EPISODE_HEADER = "X-Rememory-Episode"
BODY_FIELD = "rememory"
DRAIN_TIMEOUT_S = 120.0  # at shutdown, how long to wait for exchanges still training
_BODY_KEYS = {"remember"}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}

NamespaceFor = Callable[[Request, dict[str, Any]], str]


def openai_error(
    status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None
) -> JSONResponse:
    """An OpenAI-style error response: ``{"error": {"message", "type", "param", "code"}}``.

    >>> openai_error(504, "The upstream timed out.", type="upstream_error", code="upstream_timeout").status_code
    504
    """
    return JSONResponse({"error": {"message": message, "type": type, "param": None, "code": code}}, status_code=status)


def default_namespace_for(request: Request, body: dict[str, Any]) -> str:
    """The ``X-Rememory-Namespace`` header, else the body's ``user`` field, else ``"default"``."""
    header = request.headers.get(NAMESPACE_HEADER)
    if header:
        return header
    user = body.get("user")
    return user if isinstance(user, str) and user.strip() else "default"


class _BadRequest(Exception):
    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


def _remember_flag(request: Request, options: Any) -> bool:
    """Whether to store this exchange: the header, else the body's ``rememory.remember`` field."""
    if options is not None:
        if not isinstance(options, dict):
            raise _BadRequest(f"'{BODY_FIELD}' must be an object such as {{\"remember\": true}}.")
        unknown = sorted(set(options) - _BODY_KEYS)
        if unknown:
            raise _BadRequest(f"Unknown '{BODY_FIELD}' field(s) {unknown}; valid: {sorted(_BODY_KEYS)}.")
    header = request.headers.get(REMEMBER_HEADER)
    if header is not None:
        value = header.strip().lower()
        if value not in _TRUE | _FALSE:
            raise _BadRequest(f"{REMEMBER_HEADER} must be true or false, got {header!r}.")
        return value in _TRUE
    flag = (options or {}).get("remember", False)
    if not isinstance(flag, bool):
        raise _BadRequest(f"'{BODY_FIELD}.remember' must be true or false, got {flag!r}.")
    return flag


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
        etype = err.get("type") if isinstance(err, dict) and isinstance(err.get("type"), str) else "upstream_error"
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


class _SseCollector:
    """Collects the assistant's text from an OpenAI SSE stream as it passes through."""

    def __init__(self) -> None:
        self._buf = b""
        self.parts: list[str] = []
        self.done = False
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                self.failed = True
                continue
            if not isinstance(event, dict) or "error" in event:
                self.failed = True
                continue
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
                if isinstance(content, str) and choice.get("index", 0) == 0:
                    self.parts.append(content)


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


def build_proxy_router(
    memory: Memory,
    upstream: str,
    *,
    namespace_for: NamespaceFor | None = None,
    upstream_api_key: str | None = None,
    timeout: float = 60.0,
    top_k: int = 3,
) -> APIRouter:
    """An APIRouter with ``POST /v1/chat/completions`` and ``GET /v1/models`` proxying to ``upstream``.

    ``upstream`` is the base URL an OpenAI client would use (e.g. ``http://localhost:11434/v1``).
    ``upstream_api_key`` is sent upstream as a bearer token; the client's own ``Authorization``
    header is never forwarded (it may be this server's key). ``timeout`` bounds connecting to
    and each read from the upstream. The router's lifespan waits for exchanges still being
    trained when the app shuts down.

    >>> app = FastAPI()
    >>> app.include_router(build_proxy_router(Memory("store"), "http://localhost:11434/v1"))
    """
    if not re.match(r"^https?://[^/]", upstream):
        raise ConfigError(f"The upstream must be an http(s) URL such as http://localhost:11434/v1, got {upstream!r}.")
    base = upstream.rstrip("/")
    pick_namespace = namespace_for or default_namespace_for
    rememberer = Rememberer(memory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(rememberer.close, DRAIN_TIMEOUT_S)

    router = APIRouter(lifespan=lifespan)
    headers = {"Accept": "application/json, text/event-stream"}
    if upstream_api_key:
        headers["Authorization"] = f"Bearer {upstream_api_key}"

    def client() -> httpx.AsyncClient:
        # One client per request: a router may serve several event loops (tests, embedded servers).
        return httpx.AsyncClient(timeout=httpx.Timeout(timeout), headers=headers, follow_redirects=False)

    @router.get("/v1/models", response_model=None)
    async def models() -> JSONResponse:
        async with client() as http:
            try:
                resp = await http.get(f"{base}/models")
            except httpx.HTTPError as exc:
                return _transport_error(base, exc, timeout)
        if resp.status_code >= 400:
            return _upstream_status_error(base, resp.status_code, resp.content)
        try:
            return JSONResponse(resp.json())
        except ValueError:
            return _not_openai(base, resp.content, "something that is not JSON")

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return openai_error(400, "The request body must be a JSON object with a 'messages' list.")
        try:
            remember = _remember_flag(request, body.pop(BODY_FIELD, None))
            namespace = validate_namespace(pick_namespace(request, body))
        except (_BadRequest, InvalidEpisodeError) as exc:
            return openai_error(400, str(exc))
        messages = body["messages"]
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            return openai_error(400, "Each message must be an object with a 'role' and a 'content'.")
        try:
            query = recall_query(messages)
            user_text = _last_user_text(messages)
        except ConfigError as exc:
            return openai_error(400, str(exc))
        try:
            hits = await run_in_threadpool(memory.recall, query, top_k, namespace) if query else []
        except RememoryError as exc:
            return openai_error(500, f"Recalling memories failed: {exc}", type="rememory_error")
        body["messages"] = inject_memories(messages, hits)
        extra = {RECALLED_HEADER: ",".join(quote(h.id, safe="") for h in hits)}
        episode_id = new_episode_id() if remember and user_text.strip() else None
        if episode_id is not None:
            extra[EPISODE_HEADER] = episode_id

        def store(answer: str | None) -> None:
            if episode_id is None:
                return
            if answer and answer.strip():
                rememberer.submit(user_text, answer, namespace=namespace, id=episode_id)
            else:
                logger.warning("Exchange %s was not remembered: no complete answer from the upstream.", episode_id)

        if body.get("stream"):
            return await _stream(body, extra, store)
        async with client() as http:
            try:
                resp = await http.post(f"{base}/chat/completions", json=body)
            except httpx.HTTPError as exc:
                return _transport_error(base, exc, timeout)
        if resp.status_code >= 400:
            return _upstream_status_error(base, resp.status_code, resp.content)
        try:
            data = resp.json()
        except ValueError:
            return _not_openai(base, resp.content, "something that is not JSON")
        store(_answer_of(data))
        return JSONResponse(data, status_code=resp.status_code, headers=extra)

    async def _stream(
        body: dict[str, Any], extra: dict[str, str], store: Callable[[str | None], None]
    ) -> JSONResponse | StreamingResponse:
        http = client()
        try:
            resp = await http.send(http.build_request("POST", f"{base}/chat/completions", json=body), stream=True)
        except httpx.HTTPError as exc:
            await http.aclose()
            return _transport_error(base, exc, timeout)
        if resp.status_code >= 400 or not resp.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                raw = await resp.aread()
            except httpx.HTTPError as exc:
                return _transport_error(base, exc, timeout)
            finally:
                await resp.aclose()
                await http.aclose()
            if resp.status_code >= 400:
                return _upstream_status_error(base, resp.status_code, raw)
            return _not_openai(base, raw, "something that is not an event stream")

        async def relay() -> AsyncIterator[bytes]:
            collector = _SseCollector()
            try:
                async for chunk in resp.aiter_bytes():  # decoded, should the upstream compress
                    collector.feed(chunk)
                    yield chunk
            except httpx.HTTPError as exc:
                logger.warning("The upstream stream from %s broke: %s", base, exc)
                err = json.loads(_transport_error(base, exc, timeout).body)
                yield f"data: {json.dumps(err)}\n\n".encode()
                return
            finally:
                await resp.aclose()
                await http.aclose()
            store("".join(collector.parts) if collector.done and not collector.failed else None)

        return StreamingResponse(relay(), media_type="text/event-stream", headers=extra)

    return router
