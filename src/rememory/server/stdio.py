"""MCP over stdio that answers every frame, malformed ones included.

The SDK's stdio transport hands a line it cannot parse to the server as an exception, and the
server drops it without a reply: a client that sent invalid JSON (or a lone surrogate escape,
which is not valid Unicode) waits forever. Here such a frame gets the JSON-RPC 2.0 error reply
instead: -32700 (parse error) for a line that is not JSON, -32600 (invalid request) for JSON
that is not a JSON-RPC message, with the request's id when it can be read, else ``null``.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

logger = logging.getLogger(__name__)


def frame_error(exc: Exception) -> JSONRPCError:
    """The JSON-RPC error reply to a frame that the transport could not read as a message.

    >>> frame_error(ValueError("boom")).error.code
    -32700
    """
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    if not errors or any(e.get("type") == "json_invalid" for e in errors):
        why = next((str(e.get("ctx", {}).get("error", "")) for e in errors if e.get("ctx")), "") or str(exc)
        return JSONRPCError(
            jsonrpc="2.0",
            id=None,
            error=ErrorData(
                code=PARSE_ERROR,
                message=f"Parse error: the line is not valid JSON in UTF-8 ({why}). "
                "Send one JSON-RPC message per line, with no lone surrogate escapes.",
            ),
        )
    # A missing field's error carries the whole object, so the id is known; other errors carry only
    # the bad value, and the id is then null, as JSON-RPC 2.0 asks when it cannot be detected.
    objects = [e["input"] for e in errors if isinstance(e.get("input"), dict)]
    req_id: Any = objects[0].get("id") if objects else None
    if isinstance(req_id, bool) or not isinstance(req_id, (str, int)):
        req_id = None
    return JSONRPCError(
        jsonrpc="2.0",
        id=req_id,
        error=ErrorData(
            code=INVALID_REQUEST,
            message="Invalid request: the line is JSON but not a JSON-RPC 2.0 message; it needs "
            "'jsonrpc': '2.0', a 'method' (and an 'id' for a request).",
        ),
    )


async def _screen(
    frames: ObjectReceiveStream[SessionMessage | Exception],
    inbox: ObjectSendStream[SessionMessage | Exception],
    outbox: ObjectSendStream[SessionMessage],
) -> None:
    """Pass messages on to the server; answer unreadable frames directly."""
    async with inbox:
        async for frame in frames:
            if isinstance(frame, Exception):
                reply = frame_error(frame)
                logger.warning("Answered an unreadable MCP frame with error %d.", reply.error.code)
                await outbox.send(SessionMessage(reply))
            else:
                await inbox.send(frame)


async def serve_stdio(server: MCPServer) -> None:
    """Serve ``server`` on stdin/stdout until stdin closes (what ``MCPServer.run_stdio_async`` does, plus replies
    to malformed frames)."""
    lowlevel = server._lowlevel_server  # run_stdio_async drives the same object
    async with stdio_server() as (frames, outbox):
        inbox_send, inbox = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_screen, frames, inbox_send, outbox)
            await lowlevel.run(inbox, outbox, lowlevel.create_initialization_options())
