"""The body of an OpenAI ``/v1/chat/completions`` request, as both of this package's chat servers read it.

The body is a FastAPI body parameter, so FastAPI reads it exactly as it reads the REST API's
bodies: only a JSON ``Content-Type`` is parsed (a ``text/plain`` body, which a web page may send
to another site without asking, never is), and a body that is not JSON is a 4xx. On top of
that, every value is checked for what JSON allows but the rest of the pipeline cannot take:
``NaN`` and infinities, lone surrogates (not Unicode; a tokenizer or an encoder fails on
them) and nesting deeper than :data:`MAX_JSON_DEPTH`.

:class:`OpenAIErrorRoute` renders the rejections as OpenAI-style errors, so that OpenAI clients
show their message.
"""

from __future__ import annotations

import email.message
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator
from starlette.exceptions import HTTPException

# Chat bodies nest a few levels (messages, content parts, tool schemas); far deeper is an attack.
MAX_JSON_DEPTH = 64


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """What in a parsed JSON value cannot go on (a non-finite number, a lone surrogate, too deep), or ``None``.

    >>> json_problem({"messages": [{"content": "hi"}]}) is None
    True
    >>> json_problem({"temperature": float("nan")})
    'temperature: nan is not a JSON number; send a finite number'
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]  # iterative: deep input must not recurse here
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            return f"{path or 'body'}: nested more than {max_depth} levels deep"
        if isinstance(item, float) and not math.isfinite(item):
            return f"{path or 'body'}: {item} is not a JSON number; send a finite number"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"{path or 'body'}: a lone surrogate at character {exc.start} is not valid Unicode text"
        elif isinstance(item, dict):
            for key, sub in item.items():
                stack.append((key, path, depth + 1))  # keys are text too
                stack.append((sub, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
    return None


class ChatMessage(BaseModel):
    """One message; fields other than ``role`` and ``content`` (``name``, ``tool_calls``...) pass through."""

    model_config = ConfigDict(extra="allow")

    role: StrictStr = Field(description="system, developer, user, assistant or tool.")
    content: StrictStr | list[Any] | None = Field(default=None, description="Text, or a list of content parts.")


class ChatRequest(BaseModel):
    """An OpenAI chat completion request; fields other than ``messages`` pass through unchanged."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(description="The conversation so far, oldest first.")

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any) -> Any:
        problem = json_problem(data)
        if problem is not None:
            raise ValueError(problem)
        return data

    def forwarded(self) -> dict[str, Any]:
        """The body as the client sent it (no defaults added), for an upstream."""
        return self.model_dump(exclude_unset=True)


class RememoryOptions(BaseModel):
    """The proxy's own controls, in the body's ``rememory`` field (removed before forwarding)."""

    model_config = ConfigDict(extra="forbid")

    remember: StrictBool = Field(default=False, description="Store this exchange as an episode.")


class ProxyChatRequest(ChatRequest):
    rememory: RememoryOptions | None = Field(default=None, description="ReMemory's controls for this request.")

    def forwarded(self) -> dict[str, Any]:
        body = super().forwarded()
        body.pop("rememory", None)
        return body


def openai_error(
    status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None
) -> JSONResponse:
    """An OpenAI-style error response: ``{"error": {"message", "type", "param", "code"}}``.

    >>> openai_error(504, "The upstream timed out.", type="upstream_error", code="upstream_timeout").status_code
    504
    """
    return JSONResponse({"error": {"message": message, "type": type, "param": None, "code": code}}, status_code=status)


def _is_json(content_type: str | None) -> bool:
    msg = email.message.Message()
    msg["content-type"] = content_type or ""
    sub = msg.get_content_subtype()
    return msg.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    msg = str(first.get("msg", "invalid"))
    if first.get("type") == "json_invalid":
        return f"The request body is not valid JSON ({first.get('ctx', {}).get('error', msg)})."
    if first.get("type") == "extra_forbidden":
        return f"Invalid request: unknown field {loc!r}; the valid fields are in the API schema (/docs)."
    return f"Invalid request: {loc}: {msg}."


class OpenAIErrorRoute(APIRoute):
    """An APIRoute whose rejected request bodies come back as OpenAI-style errors.

    A body sent without a JSON ``Content-Type`` is a 415; a body that is not JSON, or not a
    valid chat request, is a 400.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                if request.method == "POST" and not _is_json(request.headers.get("content-type")):
                    return openai_error(
                        415,
                        f"The request body must be JSON sent with `Content-Type: application/json`, not "
                        f"{request.headers.get('content-type') or 'no Content-Type'!r}.",
                    )
                return openai_error(400, _validation_message(exc))
            except HTTPException as exc:
                if exc.status_code != 400:
                    raise
                return openai_error(400, "The request body is not valid UTF-8 JSON, or nests too deeply to read; send "
                                    "one JSON object with a 'messages' list.")  # fmt: skip

        return handle
