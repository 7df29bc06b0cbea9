"""MCP tools over the official ``mcp`` SDK: ``remember``, ``recall``, ``forget`` and ``stats``.

The same server serves stdio (``rememory mcp``, one namespace given on the command line) and
streamable HTTP (``/mcp`` in ``rememory serve``, the namespace of the request's API key).
Tools run on worker threads, and a failure comes back as a tool error whose text says what to
do next. Nothing here writes to stdout: in stdio mode stdout is the JSON-RPC stream.
"""

# No `from __future__ import annotations` here: the SDK reads the tools' annotations at runtime,
# and some name types local to build_mcp_server (the episode text, whose limit is the store's).
import functools
import types
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from ..errors import RememoryError
from ..limits import MAX_ID_CHARS, MAX_KEYWORDS_BYTES, MAX_QUERY_CHARS, MAX_TOP_K
from ..memory import Memory
from .schemas import KEYWORDS_DOC, SINCE_DOC, TIME_DOC, TOP_K_DOC, UNTIL_DOC, Forgotten, Hit, Stats, text_doc

NamespaceFor = Callable[[Context], str]
R = TypeVar("R")

INSTRUCTIONS = (
    "ReMemory is a long-term episodic memory. Call `remember` to store something worth keeping "
    "(an event, a fact about the user, a decision) as keywords plus its exact text; call `recall` "
    "with a phrase to get the closest memories back, word for word; `forget` deletes one by id."
)

Keywords = Annotated[str, Field(max_length=MAX_KEYWORDS_BYTES, description=KEYWORDS_DOC)]
Time = Annotated[str | None, Field(description=TIME_DOC)]
Since = Annotated[str | None, Field(max_length=64, description=SINCE_DOC)]
Until = Annotated[str | None, Field(max_length=64, description=UNTIL_DOC)]
Query = Annotated[
    str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for, in your own words.")
]
TopK = Annotated[int, Field(ge=1, le=MAX_TOP_K, description=TOP_K_DOC)]
Explain = Annotated[bool, Field(description="Add each hit's per-signal score shares.")]
EpisodeId = Annotated[
    str, Field(min_length=1, max_length=MAX_ID_CHARS, description="The episode's id, from remember or recall.")
]


class Remembered(BaseModel):
    id: str = Field(description="The stored episode's id (use it with `forget`).")


class Recalled(BaseModel):
    memories: list[Hit] = Field(description="The closest episodes, best first (empty if nothing is stored).")


def _tool_errors(fn: Callable[..., R]) -> Callable[..., R]:
    """Turn the library's typed errors into MCP tool errors; their message says what to do next."""

    @functools.wraps(fn)
    def tool(*args: Any, **kwargs: Any) -> R:
        try:
            return fn(*args, **kwargs)
        except RememoryError as exc:
            raise ToolError(str(exc)) from None

    return tool


def build_mcp_server(memory: Memory, namespace_for: NamespaceFor) -> MCPServer:
    """An MCP server with the four memory tools; ``namespace_for(ctx)`` gives each call's namespace.

    >>> server = build_mcp_server(Memory("store"), lambda ctx: "default")  # doctest: +SKIP
    >>> server.run("stdio")  # doctest: +SKIP
    """
    server = _mcp_server_without_logging_setup(
        name="rememory", version=package_version(), instructions=INSTRUCTIONS, log_level="WARNING"
    )
    Text = Annotated[str, Field(min_length=1, description=text_doc(memory.max_text_bytes))]

    @server.tool(
        name="remember",
        title="Remember an episode",
        description="Store an episode in long-term memory: its exact text, findable later by meaning. Returns its "
        "id. Storing the same keywords, text and time again returns the same id and stores nothing new.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
    )
    @_tool_errors
    def remember(keywords: Keywords, text: Text, ctx: Context, time: Time = None) -> Remembered:
        return Remembered(id=memory.add(keywords, text, time=time, namespace=namespace_for(ctx)))

    @server.tool(
        name="recall",
        title="Recall memories",
        description="Find the stored episodes closest in meaning to the query; returns their exact texts, best "
        "first, each with its relevance score in [0, 1]. `since`/`until` (ISO 8601) keep only episodes of that time.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    @_tool_errors
    def recall(
        query: Query, ctx: Context, top_k: TopK = 3, since: Since = None, until: Until = None, explain: Explain = False
    ) -> Recalled:
        hits = memory.recall(query, top_k=top_k, namespace=namespace_for(ctx), since=since, until=until,
                             explain=explain)  # fmt: skip
        return Recalled(memories=[Hit.of(h) for h in hits])

    @server.tool(
        name="forget",
        title="Forget an episode",
        description="Delete one episode for good: its text and its memory cell. An unknown id is an error.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False),
    )
    @_tool_errors
    def forget(id: EpisodeId, ctx: Context) -> Forgotten:
        memory.forget(id, namespace=namespace_for(ctx))
        return Forgotten(id=id)

    @server.tool(
        name="stats",
        title="Memory statistics",
        description="How many episodes are stored, and how many bytes their texts and memory cells take.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    @_tool_errors
    def stats(ctx: Context) -> Stats:
        return Stats.of(memory.stats(namespace_for(ctx)))

    return server


def _mcp_server_without_logging_setup(**settings: Any) -> MCPServer:
    """``MCPServer(**settings)`` minus its ``logging.basicConfig()`` call, which no library may make.

    The SDK configures the root logger in ``MCPServer.__init__`` with no way to opt out
    (modelcontextprotocol/python-sdk#1656). This runs that ``__init__`` with its module's
    ``configure_logging`` replaced by a no-op in a private copy of the globals: neither the
    SDK's module nor the logging configuration of the process is touched, so two apps (or one
    per test) leave the root logger exactly as they found it. tests/test_mcp.py checks it.
    """
    init = MCPServer.__init__
    if "configure_logging" not in init.__code__.co_names:  # a fixed SDK: nothing to step around
        return MCPServer(**settings)
    quiet_globals = {**init.__globals__, "configure_logging": _leave_logging_alone}
    quiet_init = types.FunctionType(init.__code__, quiet_globals, init.__name__, init.__defaults__, init.__closure__)
    quiet_init.__kwdefaults__ = init.__kwdefaults__
    server = MCPServer.__new__(MCPServer)
    quiet_init(server, **settings)
    return server


def _leave_logging_alone(level: str) -> None:
    """Logging is the application's to configure (`rememory mcp` sends it to stderr)."""


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
