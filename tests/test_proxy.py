"""The memory proxy, end to end: the official openai client → the proxy → a real model, over real HTTP.

Servers run in real uvicorn instances on 127.0.0.1. The model is the real SmolLM2-135M-Instruct
(loaded once per test session); small deliberately failing or recording upstreams cover the
error paths and the proxy's own rules. Nothing asserts the exact words of the model.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from rememory import Memory
from rememory.chat.local import LOCAL_MODEL_ID, BackgroundServer, LocalChatModel, create_local_app
from rememory.chat.proxy import build_proxy_router

from .conftest import REPO

pytestmark = pytest.mark.model

MODEL = LOCAL_MODEL_ID
BIN = Path(sys.executable).parent / "rememory"
ZOE = "My sister Zoe keeps three beehives on the roof of her house in Lyon."


def doc_text() -> str:
    return (REPO / "docs" / "agents.md").read_text(encoding="utf-8")


def doc_command(prefix: str) -> str:
    """The one command line in the docs' bash blocks that starts with ``prefix``."""
    blocks = re.findall(r"```bash\n(.*?)```", doc_text(), re.S)
    (line,) = [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith(prefix)]
    return line


def doc_python() -> str:
    (block,) = re.findall(r"```python\n(.*?)```", doc_text(), re.S)
    return block


@functools.cache
def local_model_server() -> tuple[BackgroundServer, list[dict[str, Any]], LocalChatModel]:
    """The real model behind a real OpenAI-compatible server, once per test session (the chat
    tests import this). Returns the server, the request bodies it received, and the model."""
    seen: list[dict[str, Any]] = []
    model = LocalChatModel()
    server = BackgroundServer(create_local_app(model, on_request=seen.append)).start()
    return server, seen, model


def wait_for(memory: Memory, id_: str, namespace: str, timeout: float = 120.0) -> str:
    """The text of episode ``id_`` once the background training has stored it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return memory.get(id_, namespace=namespace).text
        except KeyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def proxy_app(memory: Memory, upstream: str, **kw: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(build_proxy_router(memory, upstream, **kw))
    return app


def client_for(server: BackgroundServer, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, **kw)


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[Memory]:
    mem = Memory(tmp_path_factory.mktemp("proxy") / "store", embedder=embedder)
    mem.add_many([
        {"id": "zoe-bees", "keywords": "Zoe, sister, bees, roof", "text": ZOE, "time": "2025-06-01T10:00:00"},
        {"id": "van", "keywords": "Sergey, van, repair", "text": "Sergey brought an old van with a stuck window."},
    ])  # fmt: skip
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def model_upstream() -> tuple[BackgroundServer, list[dict[str, Any]]]:
    documented_model_server()  # starts loading in its own process now; used at the end of this module
    server, seen, _ = local_model_server()
    return server, seen


@pytest.fixture(scope="module")
def proxy(memory: Memory, model_upstream) -> Iterator[BackgroundServer]:
    upstream, _ = model_upstream
    with BackgroundServer(proxy_app(memory, f"{upstream.url}/v1")) as server:
        yield server


def system_message(body: dict[str, Any]) -> str:
    systems = [m["content"] for m in body["messages"] if m["role"] == "system"]
    assert len(systems) == 1
    return systems[0]


# --- against the real model ---


def test_models_are_forwarded(proxy) -> None:
    assert [m.id for m in client_for(proxy).models.list()] == [MODEL]


def test_completion_carries_the_recalled_episode(proxy, model_upstream) -> None:
    _, seen = model_upstream
    raw = client_for(proxy).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Who keeps bees on a roof?"}], max_tokens=16, temperature=0
    )
    assert raw.headers["x-rememory-recalled"].split(",")[0] == "zoe-bees"
    assert "x-rememory-episode" not in raw.headers  # not asked to remember
    system = system_message(seen[-1])
    assert ZOE in system and 'id="zoe-bees"' in system and 'time="2025-06-01T10:00:00+00:00"' in system
    assert seen[-1]["messages"][-1] == {"role": "user", "content": "Who keeps bees on a roof?"}
    done = raw.parse()
    assert done.object == "chat.completion" and done.model == MODEL and len(done.choices) == 1
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 16


def test_streaming_through_the_official_client(proxy, model_upstream) -> None:
    _, seen = model_upstream
    stream = client_for(proxy).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Where are the bees?"}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    system = system_message(seen[-1])  # the client's system message is the base, memories appended
    assert system.startswith("You are terse.\n\n<memory>\n") and ZOE in system


def test_streaming_wire_format_ends_with_done(proxy) -> None:
    with client_for(proxy).chat.completions.with_streaming_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0, stream=True
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_remembered_exchange_is_recalled_in_a_later_request(proxy, memory, model_upstream) -> None:
    _, seen = model_upstream
    client = client_for(proxy)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Remember this: my parrot Kiwi can whistle the Moonlight Sonata."}],
        max_tokens=12,
        temperature=0,
        extra_headers={"X-Rememory-Remember": "true", "X-Rememory-Namespace": "alice"},
    )
    answer = raw.parse().choices[0].message.content
    episode = raw.headers["x-rememory-episode"]
    stored = wait_for(memory, episode, "alice")
    assert (
        stored == f"User: Remember this: my parrot Kiwi can whistle the Moonlight Sonata.\nAssistant: {answer.strip()}"
    )
    assert "Kiwi" in memory.get(episode, namespace="alice").keywords
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What can my parrot whistle?"}], max_tokens=8,
        temperature=0, stream=True, user="alice",
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    system = system_message(seen[-1])
    assert f'<episode id="{episode}"' in system and "Kiwi can whistle the Moonlight Sonata" in system
    assert ZOE not in system  # alice's namespace holds only her own memories
    assert all(h.id != episode for h in memory.recall("parrot Kiwi", top_k=5))  # not in "default"


# --- the proxy's rules, against a small recording upstream ---


def recording_upstream() -> tuple[FastAPI, list[dict[str, Any]]]:
    """A minimal OpenAI-compatible upstream that records each body and answers 'Noted.'."""
    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    async def complete(request: Request) -> Any:
        body = await request.json()
        seen.append({"body": body, "authorization": request.headers.get("authorization")})
        if body.get("stream"):

            async def events() -> Any:
                for piece in ("No", "ted."):
                    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        message = {"role": "assistant", "content": "Noted."}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip

    return app, seen


@pytest.fixture(scope="module")
def recording(memory: Memory) -> Iterator[tuple[BackgroundServer, list[dict[str, Any]]]]:
    app, seen = recording_upstream()
    with BackgroundServer(app) as upstream:
        proxy_app_ = proxy_app(memory, f"{upstream.url}/v1/", upstream_api_key="sk-upstream")
        with BackgroundServer(proxy_app_) as server:
            yield server, seen


def test_body_field_remembers_and_user_field_picks_the_namespace(recording, memory) -> None:
    server, seen = recording
    raw = client_for(server).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Bob likes green tea."}], user="bob",
        extra_body={"rememory": {"remember": True}},
    )  # fmt: skip
    forwarded = seen[-1]["body"]
    assert "rememory" not in forwarded and forwarded["user"] == "bob"  # non-standard field stripped
    assert seen[-1]["authorization"] == "Bearer sk-upstream"  # the upstream key, never the client's
    assert "No episodes were recalled" in system_message(forwarded)  # bob has no memories yet
    assert wait_for(memory, raw.headers["x-rememory-episode"], "bob") == "User: Bob likes green tea.\nAssistant: Noted."


def test_streamed_exchange_is_remembered(recording, memory) -> None:
    server, _ = recording
    with client_for(server).chat.completions.with_streaming_response.create(
        model="m", messages=[{"role": "user", "content": "Carol's cat is called Pixel."}], stream=True,
        extra_headers={"X-Rememory-Remember": "yes", "X-Rememory-Namespace": "carol"},
    ) as resp:  # fmt: skip
        episode = resp.headers["x-rememory-episode"]
        assert [line for line in resp.iter_lines() if line][-1] == "data: [DONE]"
    assert wait_for(memory, episode, "carol") == "User: Carol's cat is called Pixel.\nAssistant: Noted."


def test_header_beats_body_and_false_stores_nothing(recording, memory) -> None:
    server, _ = recording
    before = memory.count()
    raw = client_for(server).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Do not keep this."}],
        extra_headers={"X-Rememory-Remember": "false"}, extra_body={"rememory": {"remember": True}},
    )  # fmt: skip
    assert "x-rememory-episode" not in raw.headers
    time.sleep(0.5)
    assert memory.count() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"extra_headers": {"X-Rememory-Remember": "maybe"}}, "must be true or false"),
        ({"extra_body": {"rememory": {"remember": True, "forever": 1}}}, "unknown field 'rememory.forever'"),
        ({"extra_body": {"rememory": {"remember": "yes"}}}, "rememory.remember: Input should be a valid boolean"),
        ({"extra_headers": {"X-Rememory-Namespace": "x" * 300}}, "namespace must be"),
    ],
)
def test_bad_rememory_controls_are_openai_style_400s(recording, kwargs: dict[str, Any], message: str) -> None:
    server, _ = recording
    with pytest.raises(openai.BadRequestError) as err:
        client_for(server).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert message in err.value.message


def post_raw(server: BackgroundServer, content: bytes, content_type: str | None = "application/json",
             **headers: str) -> httpx.Response:  # fmt: skip
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=headers, timeout=60)


HI = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "m"}', "messages: Field required"),
        (b"\xb9\xdfm", "not valid"),  # not UTF-8
        # A lone surrogate reached the tokenizer (500); NaN made the forwarding encoder fail (500).
        (HI[:-1] + b', {"role": "user", "content": "\\ud800"}]}', "messages[1].content: a lone surrogate"),
        (HI + b', "temperature": NaN}', "temperature: nan is not a JSON number"),
        (HI + b', "x": -Infinity}', "x: -inf is not a JSON number"),
        (HI + b', "\\udc00": 1}', "lone surrogate"),
        (HI + b', "x": ' + b"[" * 100 + b"]" * 100 + b"}", "nested more than 64 levels"),
        (HI + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests too deeply"),  # past the JSON parser's
    ],
)
def test_malformed_request_bodies(recording, content: bytes, expected: str) -> None:
    server, seen = recording
    before = len(seen)
    resp = post_raw(server, content)
    assert resp.status_code == 400 and expected in resp.json()["error"]["message"], resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert len(seen) == before  # nothing reached the upstream


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])  # fmt: skip
def test_a_body_that_is_not_declared_json_is_refused(recording, memory, content_type: str | None) -> None:
    """What a web page can send to another site without a CORS preflight never plants an episode."""
    server, seen = recording
    before, count = len(seen), memory.count("web")
    body = HI + b', "rememory": {"remember": true}, "user": "web"}'
    resp = post_raw(server, body, content_type)
    assert resp.status_code == 415, resp.text
    assert "Content-Type: application/json" in resp.json()["error"]["message"]
    assert len(seen) == before and memory.count("web") == count
    assert post_raw(server, HI + b"}", "application/json; charset=utf-8").status_code == 200  # declared JSON


def test_malformed_messages_are_400s(recording) -> None:
    server, _ = recording
    for messages in (["just a string"], [{"content": "no role"}], [{"role": "user", "content": 42}]):
        resp = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "m", "messages": messages})
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_shutdown_waits_for_exchanges_still_training(memory) -> None:
    app, _ = recording_upstream()
    with BackgroundServer(app) as upstream:
        server = BackgroundServer(proxy_app(memory, f"{upstream.url}/v1")).start()
        raw = client_for(server).chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "Dave parks by the old mill."}],
            extra_headers={"X-Rememory-Remember": "true", "X-Rememory-Namespace": "dave"},
        )  # fmt: skip
        server.stop(timeout=120)  # the router's lifespan drains the training queue before the app exits
    assert memory.get(raw.headers["x-rememory-episode"], namespace="dave").text.startswith("User: Dave parks")


def test_local_model_server_rejects_what_it_cannot_honour(model_upstream) -> None:
    upstream, _ = model_upstream
    client = client_for(upstream)
    with pytest.raises(openai.NotFoundError, match="serves only"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="does not support stop"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stop=["\n"])
    with pytest.raises(openai.BadRequestError, match="role 'tool'"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])


# --- failing upstreams: always an OpenAI-style error, never a hang or an HTML page ---


def failing_upstream() -> FastAPI:
    app = FastAPI()

    @app.post("/html500/chat/completions")
    async def html500() -> HTMLResponse:
        return HTMLResponse("<html><body><h1>500 Internal Server Error</h1>nginx</body></html>", status_code=500)

    @app.post("/json401/chat/completions")
    async def json401() -> JSONResponse:
        err = {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}
        return JSONResponse({"error": err}, status_code=401)

    @app.post("/garbage/chat/completions")
    async def garbage() -> HTMLResponse:
        return HTMLResponse("<html>Welcome to nginx!</html>")

    @app.get("/html500/models")
    async def models500() -> HTMLResponse:
        return HTMLResponse("<html>boom</html>", status_code=500)

    @app.post("/slow/chat/completions")
    async def slow(request: Request) -> JSONResponse:
        for _ in range(300):  # silent for up to 30 s, until the proxy gives up and hangs up
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.1)
        return JSONResponse({})

    @app.post("/drips/chat/completions")
    async def drips(request: Request) -> StreamingResponse:
        async def body() -> Any:  # one byte every 0.3 s: each read is quick, the answer never ends
            for _ in range(1000):
                if await request.is_disconnected():
                    return
                yield b" "
                await asyncio.sleep(0.3)

        stream = (await request.json()).get("stream")
        return StreamingResponse(body(), media_type="text/event-stream" if stream else "application/json")

    @app.post("/moved/chat/completions")
    async def moved() -> JSONResponse:
        return JSONResponse({"choices": []}, status_code=307, headers={"Location": "http://elsewhere.invalid/v1"})

    @app.get("/moved/models")
    async def models_moved() -> JSONResponse:
        return JSONResponse({"data": []}, status_code=301, headers={"Location": "http://elsewhere.invalid/v1"})

    @app.post("/huge/chat/completions")
    async def huge() -> StreamingResponse:
        async def events() -> Any:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: "
            for _ in range(64):  # 4 MiB with no newline: over the proxy's event limit
                yield b"x" * 65536

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/breaks/chat/completions")
    async def breaks() -> StreamingResponse:
        async def events() -> Any:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            await asyncio.sleep(30)  # then silence: the proxy's read timeout fires mid-stream

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def failing(memory: Memory) -> Iterator[dict[str, BackgroundServer]]:
    with BackgroundServer(failing_upstream(), graceful_shutdown_s=0.5) as up:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            refused_port = s.getsockname()[1]  # closed again: nothing listens there
        proxies = {
            "refused": f"http://127.0.0.1:{refused_port}/v1",
            "html500": f"{up.url}/html500",
            "json401": f"{up.url}/json401",
            "garbage": f"{up.url}/garbage",
            "slow": f"{up.url}/slow",
            "breaks": f"{up.url}/breaks",
            "drips": f"{up.url}/drips",
            "moved": f"{up.url}/moved",
            "huge": f"{up.url}/huge",
        }
        servers = {k: BackgroundServer(proxy_app(memory, v, timeout=1.0, deadline=3.0), graceful_shutdown_s=0.5)
                   .start() for k, v in proxies.items()}  # fmt: skip
        yield servers
        for server in servers.values():
            server.stop()


def ask(server: BackgroundServer, **kw: Any) -> Any:
    return client_for(server, timeout=20).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], **kw
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("name", "status", "code", "words"),
    [
        ("refused", 502, "upstream_unreachable", "Could not reach the upstream"),
        ("html500", 502, "upstream_http_error", "failed with HTTP 500: 500 Internal Server Error nginx"),
        ("slow", 504, "upstream_timeout", "did not answer within 1 s"),
        ("garbage", 502, "upstream_bad_response", "not "),
        ("json401", 401, "invalid_api_key", "Incorrect API key provided."),
        ("drips", 504, "upstream_timeout", "within the proxy's deadline of 3 s"),
        ("moved", 502, "upstream_redirect", "redirected the request (HTTP 307 to http://elsewhere.invalid/v1)"),
    ],
)
def test_upstream_failures(failing, name: str, status: int, code: str, words: str, stream: bool) -> None:
    if name == "drips" and stream:
        pytest.skip("a stream already under way ends with an error event: see test_dripping_stream_hits_the_deadline")
    with pytest.raises(openai.APIStatusError) as err:
        ask(failing[name], stream=stream)
    assert err.value.status_code == status
    body = err.value.response.json()
    assert set(body["error"]) >= {"message", "type", "code"} and body["error"]["code"] == code
    assert words in body["error"]["message"] and "<html" not in body["error"]["message"]
    assert err.value.response.headers["content-type"] == "application/json"


def test_models_upstream_failure(failing) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client_for(failing["html500"]).models.list()
    assert err.value.status_code == 502 and "HTTP 500" in err.value.message


def test_models_redirect_is_a_502(failing) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client_for(failing["moved"]).models.list()
    assert err.value.status_code == 502 and "HTTP 301" in err.value.message


def test_an_event_over_the_limit_ends_the_stream_with_an_error(failing) -> None:
    with httpx.stream("POST", f"{failing['huge'].url}/v1/chat/completions", timeout=60,
                      json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as resp:
        assert resp.status_code == 200
        received = b"".join(resp.iter_bytes())  # fmt: skip
    assert len(received) < 2 * 1024 * 1024  # cut at the 1 MiB limit, not relayed whole
    *_, last = [line for line in received.split(b"\n") if line.startswith(b"data: {")]
    error = json.loads(last[len(b"data: "):])["error"]
    assert error["code"] == "upstream_bad_response" and "an event line over 1048576 bytes" in error["message"]


def test_sse_events_split_across_many_small_chunks_assemble() -> None:
    from rememory.chat.proxy import EventTooLarge, _SseCollector

    pieces = ["Hel", "lo, ", "мир", " 🌉"]
    stream = "".join(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]})}\r\n\r\n"
                     for p in pieces).encode() + b"data: [DONE]\n\n"  # fmt: skip
    for size in (1, 2, 7, len(stream)):
        collector = _SseCollector()
        for i in range(0, len(stream), size):
            collector.feed(stream[i : i + size])
        assert collector.parts == pieces and collector.done and not collector.failed
    collector = _SseCollector(max_line=100)
    collector.feed(b"data: " + b"x" * 94)  # exactly at the limit
    with pytest.raises(EventTooLarge):
        collector.feed(b"x")


def test_dripping_stream_hits_the_deadline(failing) -> None:
    """Each read is quick, so only the overall deadline can end it."""
    with pytest.raises(openai.APIError, match="within the proxy's deadline of 3 s"):
        list(ask(failing["drips"], stream=True))


def test_stream_that_stalls_midway_ends_with_an_error_event(failing) -> None:
    stream = ask(failing["breaks"], stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "Hel"
    with pytest.raises(openai.APIError, match="did not answer within"):
        list(stream)


def test_bad_upstream_url_is_a_config_error(memory) -> None:
    from rememory.errors import ConfigError

    with pytest.raises(ConfigError, match="http"):
        build_proxy_router(memory, "localhost:11434")


# --- the commands docs/agents.md shows, run as documented ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A server subprocess; its stderr goes to ``log`` (a pipe nobody reads could fill and block it)."""
    with log.open("wb") as err:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{proc.args} did not start serving {url} within {timeout:g} s:\n{log.read_text(errors='replace')}")


@functools.cache
def documented_model_server() -> tuple[str, subprocess.Popen[bytes], Path]:
    """``python -m rememory.chat.local --port N`` as the docs show it, started once per test session.

    Not awaited here: callers start it early so that it loads while other tests run, and
    :func:`wait_until_serving` before using it. It is stopped when the test process exits.
    """
    port = free_port()
    cmd = shlex.split(doc_command("python -m rememory.chat.local").replace("8081", str(port)))
    logs = tempfile.mkdtemp(prefix="rememory-local-model-")
    log = Path(logs) / "stderr.log"
    proc = start([sys.executable, *cmd[1:]], log)
    atexit.register(shutil.rmtree, logs, True)
    atexit.register(proc.terminate)  # atexit runs last-in first-out: stop, then clean up
    return f"http://127.0.0.1:{port}", proc, log


def test_documented_no_server_flow(tmp_path: Path, embedder) -> None:
    """`python -m rememory.chat.local`, then `rememory serve --no-auth --upstream ...`, then the docs'
    Python snippet, with only the addresses, the model name and the answer length changed."""
    model_url, model_proc, model_log = documented_model_server()
    wait_until_serving(model_url, model_proc, model_log)
    store, port = tmp_path / "store", free_port()
    serve = doc_command("rememory serve --no-auth --upstream http://127.0.0.1:8081/v1")
    args = shlex.split(serve.replace("8081", model_url.rsplit(":", 1)[1]))
    log = tmp_path / "serve.log"
    proc = start([str(BIN), "--store", str(store), *args[1:], "--port", str(port)], log)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", proc, log)
        from rememory.cli.serve import DEFAULT_PORT

        assert f"http://127.0.0.1:{DEFAULT_PORT}/v1" in doc_python()  # the docs use serve's default port
        snippet = doc_python().replace(f"http://127.0.0.1:{DEFAULT_PORT}/v1", f"http://127.0.0.1:{port}/v1")
        snippet = snippet.replace('model="llama3.2"', f'model="{MODEL}", max_tokens=8, temperature=0')
        scope: dict[str, Any] = {}
        exec(compile(snippet, "docs/agents.md", "exec"), scope)
        reply = scope["reply"]
        assert reply.object == "chat.completion" and isinstance(reply.choices[0].message.content, str)
    finally:
        proc.terminate()  # a graceful stop: exchanges still training are stored first
        proc.wait(60)
    with Memory(store, embedder=embedder) as mem:
        (episode,) = mem.list(namespace="alice")
    assert episode.text.startswith("User: Do you remember the bridge at night?\nAssistant: ")
