"""MCP tools over the official ``mcp`` SDK: ``remember``, ``recall``, ``forget`` and ``stats``.

The same server serves stdio (``rememory mcp``, one namespace given on the command line) and
streamable HTTP (``/mcp`` in ``rememory serve``, the namespace of the request's API key).
Tools run on worker threads, and a failure comes back as a tool error whose text says what to
do next. Nothing here writes to stdout: in stdio mode stdout is the JSON-RPC stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from ..episodes import MAX_ID_CHARS
from ..errors import RememoryError
from ..memory import Memory

MAX_TOP_K = 100

NamespaceFor = Callable[[Context], str]

INSTRUCTIONS = (
    "ReMemory is a long-term episodic memory. Call `remember` to store something worth keeping "
    "(an event, a fact about the user, a decision) as keywords plus its exact text; call `recall` "
    "with a phrase to get the closest memories back, word for word; `forget` deletes one by id."
)


Keywords = Annotated[
    str,
    Field(
        max_length=4096,
        description="A few comma-separated words about the episode: people, places, topics. They help "
        "recall find it; they may be empty.",
    ),
]
Text = Annotated[
    str,
    Field(
        min_length=1,
        description="The exact text to remember (UTF-8, up to 16384 bytes by default). `recall` returns it "
        "character for character.",
    ),
]
Time = Annotated[str | None, Field(description="When it happened, ISO 8601, e.g. 2023-05-08T13:56:00. Optional.")]


class Remembered(BaseModel):
    id: str = Field(description="The stored episode's id (use it with `forget`).")


class RecalledMemory(BaseModel):
    id: str = Field(description="The episode's id.")
    score: float = Field(description="How well the episode matches the query; higher is better.")
    keywords: str = Field(description="The episode's keywords.")
    text: str = Field(description="The episode's exact text, as it was remembered.")
    time: str | None = Field(description="When it happened (ISO 8601), if it was given.")


class Recalled(BaseModel):
    memories: list[RecalledMemory] = Field(description="The closest episodes, best first (empty if nothing is stored).")


class Forgotten(BaseModel):
    id: str = Field(description="The id that was forgotten.")
    forgotten: bool = Field(description="Always true: a missing id is a tool error instead.")


class Stats(BaseModel):
    episodes: int = Field(description="Episodes stored in this namespace.")
    text_bytes: int = Field(description="Total size of their texts, in UTF-8 bytes.")
    cell_bytes: int = Field(description="Size of their memory cells (weights and metadata), in bytes.")
    embedder: str = Field(description="The embedding model that makes the recall keys.")


def build_mcp_server(memory: Memory, namespace_for: NamespaceFor) -> MCPServer:
    """An MCP server with the four memory tools; ``namespace_for(ctx)`` gives each call's namespace.

    >>> server = build_mcp_server(Memory("store"), lambda ctx: "default")
    >>> server.run("stdio")
    """
    # MCPServer() calls logging.basicConfig(), which would install a root handler in a library
    # call; a handler already on the root logger makes that a no-op.
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        server = MCPServer("rememory", version=package_version(), instructions=INSTRUCTIONS, log_level="WARNING")
    finally:
        root.removeHandler(guard)

    @server.tool(
        name="remember",
        title="Remember an episode",
        description="Store an episode in long-term memory: its exact text, findable later by meaning. Returns its "
        "id. Storing the same keywords, text and time again returns the same id and stores nothing new.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
    )
    def remember(keywords: Keywords, text: Text, ctx: Context, time: Time = None) -> Remembered:
        try:
            return Remembered(id=memory.add(keywords, text, time=time, namespace=namespace_for(ctx)))
        except RememoryError as exc:
            raise ToolError(str(exc)) from None

    @server.tool(
        name="recall",
        title="Recall memories",
        description="Find the stored episodes closest in meaning to the query; returns their exact texts, best first.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    def recall(
        query: Annotated[str, Field(min_length=1, description="What to look for, in your own words.")],
        ctx: Context,
        top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K, description="How many memories to return (1-100).")] = 3,
    ) -> Recalled:
        try:
            hits = memory.recall(query, top_k=top_k, namespace=namespace_for(ctx))
        except RememoryError as exc:
            raise ToolError(str(exc)) from None
        return Recalled(memories=[RecalledMemory(**h.to_dict()) for h in hits])

    @server.tool(
        name="forget",
        title="Forget an episode",
        description="Delete one episode for good: its text and its memory cell. An unknown id is an error.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False),
    )
    def forget(
        id: Annotated[
            str, Field(min_length=1, max_length=MAX_ID_CHARS, description="The episode's id, from remember or recall.")
        ],
        ctx: Context,
    ) -> Forgotten:
        try:
            memory.forget(id, namespace=namespace_for(ctx))
        except RememoryError as exc:
            raise ToolError(str(exc)) from None
        return Forgotten(id=id, forgotten=True)

    @server.tool(
        name="stats",
        title="Memory statistics",
        description="How many episodes are stored, and how many bytes their texts and memory cells take.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    def stats(ctx: Context) -> Stats:
        try:
            st = memory.stats(namespace_for(ctx))
        except RememoryError as exc:
            raise ToolError(str(exc)) from None
        return Stats(episodes=st.episodes, text_bytes=st.text_bytes, cell_bytes=st.cell_bytes, embedder=st.embedder)

    return server


def package_version() -> str:
    """The installed rememory's version ("0" when run from a source tree that is not installed)."""
    try:
        return version("rememory")
    except PackageNotFoundError:
        return "0"


def fixed_namespace(namespace: str) -> NamespaceFor:
    """A ``namespace_for`` that always answers ``namespace`` (stdio mode)."""

    def namespace_for(ctx: Context) -> str:
        return namespace

    return namespace_for
