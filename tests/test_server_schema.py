"""Schemathesis against the live server's /openapi.json: generated requests never get a 5xx,
and every answer matches the schema (documented status, content type and body)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rememory import Memory
from rememory.server import KeyStore, create_app

from .test_server import LiveServer

pytestmark = pytest.mark.model

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[tuple[str, str]]:
    # Small episodes and bodies keep the generated training jobs cheap.
    memory = Memory(tmp_path_factory.mktemp("schema") / "store", embedder=embedder, max_text_bytes=256)
    keys = KeyStore.for_store(memory.path)
    key = keys.create("fuzz")
    memory.add("seed", "A stored episode, so that reads have something to find.", id="seed", namespace="fuzz")
    with LiveServer(create_app(memory, keys=keys, max_body_bytes=16384)) as url:
        yield url, key
    keys.close()
    memory.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(live: tuple[str, str], mode: GenerationMode) -> None:
    """Every operation of /openapi.json, with valid (positive) or invalid (negative) generated requests."""
    url, key = live
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=60)

        check()  # a failure names the request, with a curl line to reproduce it


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[str]:
    """The proxy routes of a no-auth server, in front of a real minimal upstream that always answers."""
    from fastapi import FastAPI, Request

    upstream = FastAPI()

    @upstream.post("/v1/chat/completions")
    async def complete(request: Request) -> dict:
        answer = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": "m", "choices": [answer]}

    @upstream.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    memory = Memory(tmp_path_factory.mktemp("proxy-schema") / "store", embedder=embedder, max_text_bytes=256)
    memory.add("seed", "A stored episode, so that recall has something to find.", id="seed")
    with LiveServer(upstream) as up, LiveServer(create_app(memory, auth=False, upstream=f"{up}/v1")) as url:
        yield url
    memory.close()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_proxy_routes_have_no_server_errors(live_proxy: str, mode: GenerationMode) -> None:
    """/v1/chat/completions and /v1/models, fuzzed the same way (bodies never 'remember': training is slow)."""
    schema = schemathesis.openapi.from_url(f"{live_proxy}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations() if r.ok().path in ("/v1/chat/completions", "/v1/models")]
    assert len(operations) == 2

    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.path == "/v1/models":
            continue  # no parameters, so no invalid request to generate

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            if isinstance(case.body, dict) and isinstance(case.body.get("rememory"), dict):
                case.body["rememory"].pop("remember", None)
            case.call_and_validate(base_url=live_proxy, headers={"X-Rememory-Remember": "false"}, checks=CHECKS,
                                   timeout=60)  # fmt: skip

        check()
