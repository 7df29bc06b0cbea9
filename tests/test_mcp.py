"""MCP end to end, driven by the official ``mcp`` client SDK: ``rememory mcp`` over stdio, and
``/mcp`` of a real server over streamable HTTP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client

from rememory import Memory
from rememory.server import KeyStore, create_app

from .test_server import BIN, LiveServer, doc_blocks

pytestmark = pytest.mark.model

TEXT = "Прогулка с Ильёй по мосту ночью 🌉\n\tодин пробел  , два пробела\r\nend "  # odd whitespace on purpose
TIME = "2023-05-08T23:10:00"


async def roundtrip(client: Client) -> None:
    """The tools are described; remember → recall byte-exact → forget → gone; bad input is a tool error."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"remember", "recall", "forget", "stats"}
    for tool in tools.values():
        assert tool.description and tool.input_schema["type"] == "object" and tool.output_schema
        assert all(p.get("description") for p in tool.input_schema["properties"].values())
    assert tools["remember"].input_schema["required"] == ["keywords", "text"]
    assert set(tools["remember"].input_schema["properties"]) == {"keywords", "text", "time"}
    assert tools["recall"].input_schema["properties"]["top_k"]["maximum"] == 100
    assert {"since", "until", "explain"} <= set(tools["recall"].input_schema["properties"])
    assert tools["recall"].annotations.read_only_hint and tools["forget"].annotations.destructive_hint

    before = (await client.call_tool("stats", {})).structured_content["episodes"]
    res = await client.call_tool("remember", {"keywords": "Илья, мост, ночь", "text": TEXT, "time": TIME})
    assert not res.is_error, res.content
    id_ = res.structured_content["id"]
    query = {"query": "прогулка с Ильёй по мосту ночью", "top_k": 5}
    res = await client.call_tool("recall", query)
    assert not res.is_error, res.content
    [hit] = [h for h in res.structured_content["memories"] if h["id"] == id_]
    assert (hit["text"], hit["time"], hit["keywords"]) == (TEXT, TIME + "+00:00", "Илья, мост, ночь")  # byte-exact
    res = await client.call_tool("recall", {**query, "since": "2023-05-01", "until": "2023-05-08"})
    assert id_ in [h["id"] for h in res.structured_content["memories"]]
    res = await client.call_tool("recall", {**query, "since": "2023-05-09"})
    assert id_ not in [h["id"] for h in res.structured_content["memories"]]
    res = await client.call_tool("recall", {**query, "since": "2023-05-01", "explain": True})
    [hit] = [h for h in res.structured_content["memories"] if h["id"] == id_]
    assert sum(hit["explain"].values()) == pytest.approx(hit["score"])
    stats = (await client.call_tool("stats", {})).structured_content
    assert stats["episodes"] == before + 1 and stats["text_bytes"] >= len(TEXT.encode("utf-8"))

    res = await client.call_tool("forget", {"id": id_})
    assert res.structured_content == {"id": id_, "forgotten": True}
    res = await client.call_tool("recall", query)
    assert id_ not in [h["id"] for h in res.structured_content["memories"]]
    assert (await client.call_tool("stats", {})).structured_content["episodes"] == before
    res = await client.call_tool("forget", {"id": id_})
    assert res.is_error and "No memory with id" in res.content[0].text

    for name, args in [("recall", {"query": "x", "top_k": 0}), ("remember", {"keywords": "k", "text": ""}),
                       ("remember", {"keywords": "k", "text": "t", "time": "soon"}), ("forget", {}),
                       ("recall", {"query": "x", "since": "soon"})]:  # fmt: skip
        res = await client.call_tool(name, args)
        assert res.is_error and res.content[0].text, (name, args)


async def roundtrip_over_http(url: str, headers: dict[str, str]) -> None:
    """:func:`roundtrip` against ``url`` (a server's /mcp), with ``headers`` on every request."""
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        await roundtrip(client)


def test_stdio_from_the_docs_snippet(tmp_path: Path) -> None:
    """The desktop-agent configuration of docs/service.md, launched by the SDK's stdio client."""
    config = json.loads(doc_blocks("json")[0])["mcpServers"]["rememory"]
    store = tmp_path / "memories"
    params = StdioServerParameters(
        command=config["command"],
        args=[a.replace("/path/to/memories", str(store)) for a in config["args"]],
        env={
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "REMEMORY_HOME": str(tmp_path / "home"),
            "HF_HUB_OFFLINE": "1",
        },
    )
    stray: list[Exception] = []

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, Exception):  # a stdout line that is not JSON-RPC
            stray.append(message)

    async def main() -> None:
        with (tmp_path / "stderr.log").open("w") as errlog:
            transport = stdio_client(params, errlog=errlog)
            async with Client(transport, message_handler=on_message, read_timeout_seconds=120) as client:
                await roundtrip(client)

    anyio.run(main)
    assert not stray, stray
    assert (store / "rememory.db").exists()  # the store of the snippet's --store
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()


@pytest.fixture(scope="module")
def mcp_service(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[tuple[str, dict[str, str]]]:
    memory = Memory(tmp_path_factory.mktemp("mcp") / "store", embedder=embedder)
    keys = KeyStore.for_store(memory.path)
    key = {"dora": keys.create("dora"), "eve": keys.create("eve")}
    with LiveServer(create_app(memory, keys=keys)) as url:
        yield url, key
    keys.close()
    memory.close()


def test_http_roundtrip(mcp_service: tuple[str, dict[str, str]]) -> None:
    url, key = mcp_service
    anyio.run(roundtrip_over_http, f"{url}/mcp", {"Authorization": f"Bearer {key['dora']}"})


def test_http_tenants_and_auth(mcp_service: tuple[str, dict[str, str]]) -> None:
    url, key = mcp_service

    async def main() -> None:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {key['eve']}"}, timeout=120) as h_eve,
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {key['dora']}"}, timeout=120) as h_dora,
            Client(streamable_http_client(f"{url}/mcp", http_client=h_eve)) as eve,
            Client(streamable_http_client(f"{url}/mcp", http_client=h_dora)) as dora,
        ):
            res = await eve.call_tool("remember", {"keywords": "eve, diary", "text": "Eve's private diary entry."})
            id_ = res.structured_content["id"]
            res = await dora.call_tool("recall", {"query": "Eve's private diary", "top_k": 10})
            assert id_ not in json.dumps(res.structured_content) and "diary" not in json.dumps(res.structured_content)
            res = await dora.call_tool("forget", {"id": id_})
            assert res.is_error and "No memory" in res.content[0].text
            res = await eve.call_tool("recall", {"query": "Eve's private diary", "top_k": 1})
            assert res.structured_content["memories"][0]["text"] == "Eve's private diary entry."
            assert (await eve.call_tool("stats", {})).structured_content["episodes"] == 1

    anyio.run(main)
    for headers in ({}, {"Authorization": "Bearer rmk_nope"}):
        res = httpx.post(f"{url}/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert res.status_code == 401 and res.json()["error"]["type"] == "unauthorized"


# --- malformed frames over stdio: each gets a JSON-RPC error reply, and the server carries on ---


class StdioPeer:
    """A real ``rememory mcp`` subprocess, spoken to line by line (a watchdog kills it if it stops answering)."""

    def __init__(self, store: Path, home: Path):
        env = {**os.environ, "REMEMORY_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([str(BIN / "rememory"), "--store", str(store), "mcp"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
        self.send(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}}}
        ).encode())  # fmt: skip
        assert self.reply()["id"] == 0
        self.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')

    def send(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame + b"\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        watchdog = threading.Timer(120, self.proc.kill)  # a hang fails the test instead of blocking it
        watchdog.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            watchdog.cancel()
        assert line, "the server closed stdout: " + self.proc.stderr.read().decode("utf-8", "replace")[-2000:]
        return json.loads(line)

    def close(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)
        return self.proc.stderr.read().decode("utf-8", "replace") if self.proc.stderr else ""


@pytest.fixture(scope="module")
def stdio_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StdioPeer]:
    root = tmp_path_factory.mktemp("mcp-stdio")
    peer = StdioPeer(root / "store", root / "home")
    yield peer
    assert "Traceback" not in peer.close()


HAND_MADE = [
    (b"not json", -32700),
    (b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "recall", '
     b'"arguments": {"query": "\\ud800"}}}', -32700),  # a lone surrogate escape is not Unicode
    (b"[1, 2", -32700),
    (b"\xff\xfe{", -32700),
    (b"", -32700),
    (b"[" * 100_000, -32700),
    (b'{"id": 7}', -32600),
    (b'{"jsonrpc": "1.0", "id": "x", "method": "ping"}', -32600),
    (b"[]", -32600),
    (b"42", -32600),
]


def test_stdio_answers_malformed_frames_then_valid_requests(stdio_peer: StdioPeer) -> None:
    for frame, code in HAND_MADE:
        stdio_peer.send(frame)
        reply = stdio_peer.reply()
        assert reply["error"]["code"] == code, (frame[:80], reply)
        assert reply["id"] == (7 if frame == b'{"id": 7}' else "x" if b'"x"' in frame else None)  # null: unreadable
    stats = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "stats", "arguments": {}}}
    stdio_peer.send(json.dumps(stats).encode())
    reply = stdio_peer.reply()
    assert reply["id"] == 8 and reply["result"]["structuredContent"]["episodes"] == 0


# Lines that are not JSON-RPC messages: arbitrary bytes and text, and JSON values other than objects
# with a method. A newline or carriage return would split a frame in two.
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda inner: st.lists(inner, max_size=4), max_leaves=20)  # fmt: skip
_frames = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    st.text(max_size=200).map(lambda t: t.replace("\n", "").replace("\r", "").encode("utf-8", "surrogatepass")),
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["id", "jsonrpc", "params", "result"]), _json).map(
        lambda d: json.dumps(d).encode()
    ),
)


@given(frames=st.lists(_frames, min_size=1, max_size=5))
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
def test_stdio_fuzzed_frames_each_get_an_error_reply(stdio_peer: StdioPeer, frames: list[bytes]) -> None:
    for frame in frames:
        stdio_peer.send(frame)
    for frame in frames:
        reply = stdio_peer.reply()
        assert reply.get("error", {}).get("code") in (-32700, -32600), (frame[:80], reply)
    stdio_peer.send(b'{"jsonrpc": "2.0", "id": "after", "method": "ping"}')
    assert stdio_peer.reply() == {"jsonrpc": "2.0", "id": "after", "result": {}}


class _WatchedHandlers(list):
    """The root logger's handler list, recording every change made to it."""

    changes: list[str]

    def append(self, item: object) -> None:
        self.changes.append(f"+{item!r}")
        super().append(item)

    def remove(self, item: object) -> None:
        self.changes.append(f"-{item!r}")
        super().remove(item)


@pytest.mark.parametrize("preset", [[], [logging.NullHandler()]], ids=["bare-root", "configured-root"])
def test_building_servers_leaves_the_root_logger_alone(tmp_path: Path, embedder, preset: list) -> None:
    from rememory.server.mcp import build_mcp_server, fixed_namespace

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers, root.level
    watched = _WatchedHandlers(preset)
    watched.changes = []
    root.handlers = watched
    try:
        with Memory(tmp_path / "store", embedder=embedder) as memory:
            for _ in range(2):  # two apps in one process, as in a test suite
                build_mcp_server(memory, fixed_namespace("default"))
                create_app(memory, auth=False)
        assert watched.changes == [] and root.handlers == preset
        assert root.level == saved_level
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
