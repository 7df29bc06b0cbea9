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
    assert len(operations) == 8

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            headers = {"Authorization": f"Bearer {key}"}
            case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=60)

        check()  # a failure names the request, with a curl line to reproduce it
