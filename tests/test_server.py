"""The service end to end: a real uvicorn server on 127.0.0.1, driven by a real HTTP client."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
import uvicorn
from click.testing import CliRunner

from rememory import Memory
from rememory.cli.main import cli
from rememory.server import KeyStore, create_app

from .conftest import REPO

pytestmark = pytest.mark.model

BIN = Path(sys.executable).parent
DOCS = REPO / "docs" / "service.md"


class LiveServer:
    """Runs ``app`` under uvicorn on a free 127.0.0.1 port in a thread; ``with`` gives its base URL."""

    def __init__(self, app: object):
        self.app = app

    def __enter__(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@dataclass
class Service:
    url: str
    app: object
    memory: Memory
    keys: KeyStore
    key: dict[str, str]

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    memory = Memory(root / "store", embedder=embedder)
    keys = KeyStore.for_store(memory.path)
    key = {"alice": keys.create("alice"), "bob": keys.create("bob", namespace="bobs-ns")}
    app = create_app(memory, keys=keys)
    with LiveServer(app) as url:
        yield Service(url, app, memory, keys, key)
    keys.close()
    memory.close()


def assert_error(res: httpx.Response, status: int, kind: str | None = None) -> dict:
    """The response is an error of the service's one shape."""
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error"} and {"type", "message"} <= set(body["error"]), body
    assert body["error"]["message"]
    if kind is not None:
        assert body["error"]["type"] == kind, body
    return body["error"]


def add(c: httpx.Client, *episodes: dict, **body: object) -> dict:
    """Add episodes and wait for their job; returns the answer (with the finished job)."""
    payload = {"episodes": list(episodes), **body} if len(episodes) != 1 else {**episodes[0], **body}
    res = c.post("/v1/memories", params={"wait": 60}, json=payload)
    assert res.status_code == 202, res.text
    return res.json()


def test_add_recall_get_list_forget(service: Service) -> None:
    texts = ["Дорогая бабушка, яблоки на даче созрели 🍎", "We fixed Sergey's van; the window was stuck.\n"]
    with service.client("alice") as c:
        out = add(c, {"keywords": "дача, яблоки", "text": texts[0], "time": "2023-08-01T10:00:00"},
                  {"keywords": "Sergey, van", "text": texts[1], "id": "van/1"})  # fmt: skip
        assert out["ids"][1] == "van/1" and out["job_id"] == out["job"]["id"]
        job = out["job"]
        assert job["status"] == "succeeded" and job["error"] is None and job["ids"] == out["ids"]
        assert job["progress"]["episodes_done"] == job["progress"]["episodes_total"] == 2

        res = c.post("/v1/recall", json={"query": "apples at grandma's dacha", "top_k": 2})
        assert res.status_code == 200
        hits = res.json()["hits"]
        assert set(hits[0]) == {"id", "score", "keywords", "text", "time"}
        assert {h["text"] for h in hits} == set(texts)  # byte-exact
        assert next(h for h in hits if h["id"] == out["ids"][0])["time"] == "2023-08-01T10:00:00+00:00"
        explained = c.post("/v1/recall", json={"query": "apples at grandma's dacha", "top_k": 2, "explain": True})
        for hit, plain in zip(explained.json()["hits"], hits):
            assert {k: hit[k] for k in plain} == plain and sum(hit["explain"].values()) == pytest.approx(hit["score"])
        assert_error(c.post("/v1/recall", json={"query": "x", "explain": "yes"}), 422, "invalid_request")

        got = c.get("/v1/memories/van/1").json()  # an id with a slash
        assert got == {"id": "van/1", "keywords": "Sergey, van", "text": texts[1], "time": None, "namespace": "alice"}
        page = c.get("/v1/memories", params={"limit": 1}).json()
        assert page["limit"] == 1 and page["total"] >= 2 and page["next_offset"] == 1 and len(page["items"]) == 1
        stats = c.get("/v1/stats").json()
        assert stats["episodes"] == page["total"] and stats["namespaces"] == {"alice": page["total"]}
        assert c.post("/v1/verify").json() == {"checked": page["total"], "failed": {}, "ok": True}

        assert c.delete("/v1/memories/van/1").json() == {"id": "van/1", "forgotten": True}
        assert_error(c.get("/v1/memories/van/1"), 404, "not_found")
        assert_error(c.delete("/v1/memories/van/1"), 404, "not_found")
        assert "van/1" not in [h["id"] for h in c.post("/v1/recall", json={"query": "Sergey's van"}).json()["hits"]]



def test_recall_since_until(service: Service) -> None:
    with service.client("alice") as c:
        kites = [
            {"keywords": "Ira, kite", "text": "Flew a red kite with Ira on the hill.", "time": "1999-04-10T10:00"},
            {"keywords": "Ira, kite, 12 April 1999", "text": "The kite string snapped in the wind."},
            {"keywords": "Ira, kite", "text": "Flew a kite with Ira again.", "time": "1999-05-02"},
        ]
        ids = add(c, *kites)["ids"]
        april = {"query": "flying a kite with Ira", "top_k": 2, "since": "1999-04-01", "until": "1999-04-30"}
        res = c.post("/v1/recall", json=april)
        assert res.status_code == 200, res.text
        assert {h["id"] for h in res.json()["hits"]} == set(ids[:2])  # one dated by its time, one by its keywords
        may = c.post("/v1/recall", json={**april, "top_k": 10, "since": "1999-05-01", "until": "1999-05-31"}).json()
        assert [h["id"] for h in may["hits"]] == [ids[2]]
        # Both at once: the filter, and a query naming a time whose time_match share the hits explain.
        named = {"query": "flying a kite with Ira in May 1999", "top_k": 3, "since": "1999-04-01", "explain": True}
        hits = c.post("/v1/recall", json=named).json()["hits"]
        assert hits[0]["id"] == ids[2] and hits[0]["explain"]["time_match"] > 0
        assert all(sum(h["explain"].values()) == pytest.approx(h["score"]) for h in hits)
        err = assert_error(c.post("/v1/recall", json={**april, "since": "April 1999"}), 400, "bad_request")
        assert "since='April 1999'" in err["message"] and "ISO 8601" in err["message"]


def test_training_is_a_job(service: Service) -> None:
    with service.client("alice") as c:
        res = c.post("/v1/memories", json={"keywords": "tea", "text": "Green tea at noon with Masha."})
        assert res.status_code == 202
        out = res.json()
        assert out["job"]["status"] in ("queued", "running", "succeeded")
        assert res.headers["location"] == f"/v1/jobs/{out['job_id']}"
        job = c.get(res.headers["location"], params={"wait": 60}).json()
        assert job["status"] == "succeeded" and job["ids"] == out["ids"] and job["finished_at"] >= job["created_at"]
        assert c.get(f"/v1/memories/{out['ids'][0]}").json()["text"] == "Green tea at noon with Masha."
        # A failure is reported by the job: a conflicting id.
        failed = add(c, {"keywords": "tea", "text": "Black tea instead.", "id": out["ids"][0]})["job"]
        assert failed["status"] == "failed" and failed["error"]["type"] == "duplicate_id"
        assert "another id" in failed["error"]["message"]
        assert_error(c.get("/v1/jobs/job-nope"), 404, "not_found")


def test_tenant_isolation_on_every_route(service: Service) -> None:
    """Bob's key never sees, finds, changes or deletes Alice's memory, on any route."""
    secret = "Alice's PIN is 4711 and her cat is called Murka."
    with service.client("alice") as alice, service.client("bob") as bob:
        out = add(alice, {"keywords": "PIN, cat, Murka", "text": secret, "id": "alice-secret"})
        job = out["job_id"]
        add(bob, {"keywords": "bob", "text": "Bob likes trains."})

        def no_trace(res: httpx.Response) -> None:
            assert secret not in res.text and "alice-secret" not in res.text and "Murka" not in res.text

        cross = {
            ("GET", "/v1/memories/{episode_id}"): lambda: assert_error(bob.get("/v1/memories/alice-secret"), 404),
            ("DELETE", "/v1/memories/{episode_id}"): lambda: assert_error(bob.delete("/v1/memories/alice-secret"), 404),
            ("GET", "/v1/memories"): lambda: no_trace(bob.get("/v1/memories", params={"limit": 100})),
            ("POST", "/v1/recall"): lambda: no_trace(bob.post("/v1/recall", json={"query": "Alice's PIN and cat"})),
            ("GET", "/v1/jobs/{job_id}"): lambda: assert_error(bob.get(f"/v1/jobs/{job}"), 404),
            ("GET", "/v1/stats"): lambda: no_trace(bob.get("/v1/stats")),
            ("POST", "/v1/verify"): lambda: no_trace(bob.post("/v1/verify")),
            ("GET", "/v1/browse"): lambda: no_trace(bob.get("/v1/browse", params={"limit": 100})),
            ("GET", "/v1/browse/{episode_id}"): lambda: assert_error(bob.get("/v1/browse/alice-secret"), 404),
            ("GET", "/v1/timeline"): lambda: no_trace(bob.get("/v1/timeline")),
            ("POST", "/v1/verify/jobs"): lambda: bobs_verify_job(),
            # Ids are per namespace: Bob's add with Alice's id answers as for any new id (no probing, no
            # blocking), and stores his own episode; hers is intact (checked below).
            ("POST", "/v1/memories"): lambda: same_id_is_new(),
        }

        def bobs_verify_job() -> None:
            job = bob.post("/v1/verify/jobs").json()
            job = bob.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).json()
            no_trace(bob.get(f"/v1/jobs/{job['id']}"))
            assert job["verify"]["checked"] == bob.get("/v1/stats").json()["episodes"], job
            assert_error(alice.get(f"/v1/jobs/{job['id']}"), 404)

        def same_id_is_new() -> None:
            job = add(bob, {"keywords": "x", "text": "overwrite", "id": "alice-secret"})["job"]
            assert job["status"] == "succeeded", job
            assert bob.get("/v1/memories/alice-secret").json()["text"] == "overwrite"

        routes = {(m.upper(), p) for p, ops in service.app.openapi()["paths"].items() for m in ops}
        assert set(cross) == routes  # a new route needs an isolation check here
        for attempt in cross.values():
            attempt()
        assert bob.get("/v1/stats").json()["namespaces"] == {"bobs-ns": 2}
        assert bob.get("/v1/memories").json()["total"] == 2

        # Naming Alice's namespace explicitly is refused on every route that takes one.
        for res in (
            bob.get("/v1/memories", params={"namespace": "alice"}),
            bob.get("/v1/memories/alice-secret", params={"namespace": "alice"}),
            bob.delete("/v1/memories/alice-secret", params={"namespace": "alice"}),
            bob.post("/v1/recall", json={"query": "PIN", "namespace": "alice"}),
            bob.post("/v1/memories", json={"keywords": "x", "text": "y", "namespace": "alice"}),
            bob.get("/v1/stats", params={"namespace": "alice"}),
            bob.post("/v1/verify", params={"namespace": "alice"}),
            bob.get("/v1/browse", params={"namespace": "alice"}),
            bob.get("/v1/browse/alice-secret", params={"namespace": "alice"}),
            bob.get("/v1/timeline", params={"namespace": "alice"}),
            bob.post("/v1/verify/jobs", params={"namespace": "alice"}),
        ):
            assert_error(res, 403, "forbidden")
            no_trace(res)
        assert alice.get("/v1/memories/alice-secret").json()["text"] == secret
        assert alice.post("/v1/recall", json={"query": "Alice's PIN", "top_k": 1}).json()["hits"][0]["text"] == secret


def test_one_tenants_damage_stays_its_own(service: Service) -> None:
    """A damaged row of Alice's: Bob's verify and get answer as usual; Alice's verify names it (issue 9)."""
    import sqlite3

    with service.client("alice") as alice, service.client("bob") as bob:
        add(alice, {"keywords": "damaged", "text": "This one will be damaged.", "id": "to-damage"})
        add(bob, {"keywords": "bob", "text": "Bob's own memory.", "id": "bobs-own"})
        db = sqlite3.connect(service.memory.path / "rememory.db", isolation_level=None)
        db.execute("UPDATE episodes SET cell = '{' WHERE id = 'to-damage'")
        db.close()
        try:
            res = bob.post("/v1/verify")
            assert res.status_code == 200 and res.json()["ok"], res.text
            assert_error(bob.get("/v1/memories/to-damage"), 404, "not_found")
            report = alice.post("/v1/verify").json()
            assert not report["ok"] and list(report["failed"]) == ["to-damage"]
            assert_error(alice.get("/v1/memories/to-damage"), 500, "integrity_error")
        finally:
            alice.delete("/v1/memories/to-damage")


def test_browse_inspect_timeline_and_verify_job(tmp_path: Path, embedder) -> None:
    """What the web page reads: pages newest first with sizes and a filter, an episode with its neighbours,
    counts by day, and verify as a job; a damaged episode is listed as such, not a failed page."""
    import sqlite3
    from datetime import datetime, timezone

    texts = {"e1": "We walked across the BRIDGE at night.", "e2": "Чай в саду в полдень.",
             "e3": "A van with a stuck window."}
    eps = [{"keywords": f"kw{i}", "text": t, "id": i} for i, t in texts.items()]
    with Memory(tmp_path / "store", embedder=embedder) as memory, LiveServer(create_app(memory, auth=False)) as url:
        c = httpx.Client(base_url=url, timeout=120, params={"namespace": "web"})
        add(c, *eps, namespace="web")
        page = c.get("/v1/browse", params={"limit": 2}).json()
        assert [v["id"] for v in page["items"]] == ["e3", "e2"] and page["total"] == 3 and page["next_offset"] == 2
        e2 = page["items"][1]
        assert e2["text"] == texts["e2"] and e2["verified"] and e2["damage"] is None
        assert e2["text_bytes"] == len(texts["e2"].encode()) and e2["cell_bytes"] > 0
        assert abs(e2["added_at"] - time.time()) < 3600
        last = c.get("/v1/browse", params={"limit": 2, "offset": 2}).json()
        assert [v["id"] for v in last["items"]] == ["e1"] and last["next_offset"] is None
        for needle, ids in (("bridge", ["e1"]), ("САДУ", ["e2"]), ("KWe3", ["e3"]), ("e", ["e3", "e2", "e1"])):
            found = c.get("/v1/browse", params={"contains": needle}).json()
            assert [v["id"] for v in found["items"]] == ids and found["total"] == len(ids), needle

        detail = c.get("/v1/browse/e2", params={"neighbours": 1}).json()
        assert detail["episode"]["text"] == texts["e2"]
        assert [v["id"] for v in detail["before"]] == ["e1"] and [v["id"] for v in detail["after"]] == ["e3"]
        first = c.get("/v1/browse/e1").json()
        assert first["before"] == [] and [v["id"] for v in first["after"]] == ["e2", "e3"]
        assert_error(c.get("/v1/browse/e9"), 404, "not_found")

        today = datetime.now(timezone.utc).date().isoformat()
        assert c.get("/v1/timeline").json() == {"days": [{"day": today, "episodes": 3}]}
        assert c.get("/v1/stats").json()["engine"] == "mlp-cell/1"

        db = sqlite3.connect(memory.path / "rememory.db", isolation_level=None)
        db.execute("UPDATE episodes SET cell = '{' WHERE id = 'e2'")
        db.close()
        damaged = c.get("/v1/browse").json()["items"][1]
        assert damaged["id"] == "e2" and not damaged["verified"] and damaged["text"] is None
        assert "e2" in damaged["damage"]
        started = c.post("/v1/verify/jobs")
        assert started.status_code == 202 and started.json()["kind"] == "verify", started.text
        job = c.get(started.headers["Location"], params={"wait": 60}).json()
        assert job["status"] == "succeeded", job
        assert job["progress"]["episodes_done"] == job["progress"]["episodes_total"] == 3
        assert job["verify"]["checked"] == 3 and not job["verify"]["ok"] and list(job["verify"]["failed"]) == ["e2"]


def test_auth_required(service: Service) -> None:
    routes = [("GET", "/v1/memories"), ("GET", "/v1/memories/x"), ("DELETE", "/v1/memories/x"),
              ("POST", "/v1/memories"), ("POST", "/v1/recall"), ("GET", "/v1/jobs/x"), ("GET", "/v1/stats"),
              ("POST", "/v1/verify"), ("POST", "/mcp")]  # fmt: skip
    body = {"keywords": "k", "text": "t"}
    with service.client(None) as c:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer rmk_000000000000_" + "x" * 43}, {"Authorization": "Basic x"}):
                res = c.request(method, path, json=body, headers=headers)
                err = assert_error(res, 401, "unauthorized")
                assert "rememory keys create" in err["message"] and res.headers["www-authenticate"] == "Bearer"
        assert c.get("/openapi.json").status_code == 200  # the schema is public
    # A revoked key stops working at once.
    temp = service.keys.create("temp")
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {temp}"}) as c:
        assert c.get("/v1/stats").status_code == 200
        service.keys.revoke("temp")
        assert_error(c.get("/v1/stats"), 401, "unauthorized")


def test_errors_have_one_shape(service: Service) -> None:
    with service.client("alice") as c:
        assert_error(c.get("/v2/nothing"), 404, "not_found")
        assert_error(c.put("/v1/recall", json={}), 405, "method_not_allowed")
        err = assert_error(c.post("/v1/recall", content=b"{not json", headers={"Content-Type": "application/json"}),
                           422, "invalid_request")  # fmt: skip
        assert err["details"]
        err = assert_error(c.post("/v1/recall", content=b"\xb9\xdfm", headers={"Content-Type": "application/json"}),
                           400, "bad_request")  # fmt: skip
        assert "UTF-8 JSON" in err["message"]
        assert_error(c.post("/v1/recall", json={"query": "x", "top_k": 3, "extra": 1}), 422, "invalid_request")
        assert_error(c.post("/v1/recall", json={"query": "   "}), 400, "bad_request")
        assert_error(c.post("/v1/memories", json={"keywords": 1, "text": "x"}), 422, "invalid_request")
        assert_error(c.post("/v1/memories", json={"keywords": "k", "text": "x", "time": "yesterday"}), 422,
                     "invalid_episode")  # fmt: skip
        lone_surrogate = b'{"keywords": "k", "text": "\\ud800"}'  # valid JSON, not valid UTF-8 text
        res = c.post("/v1/memories", content=lone_surrogate, headers={"Content-Type": "application/json"})
        assert_error(res, 422)
        assert_error(c.post("/v1/memories", json={"episodes": []}), 422, "invalid_request")
        assert_error(c.get("/v1/memories", params={"limit": "many"}), 422, "invalid_request")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[tuple[str, str]]:
    """A server with small limits: 2 KiB bodies, 64-byte episodes."""
    memory = Memory(tmp_path_factory.mktemp("small") / "store", embedder=embedder, max_text_bytes=64)
    keys = KeyStore.for_store(memory.path)
    key = keys.create("carol")
    with LiveServer(create_app(memory, keys=keys, max_body_bytes=2048)) as url:
        yield url, key
    keys.close()
    memory.close()


def test_limits(small: tuple[str, str]) -> None:
    url, key = small
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        big = {"keywords": "k", "text": "x" * 3000}
        err = assert_error(c.post("/v1/memories", json=big), 413, "payload_too_large")
        assert "--max-body-bytes" in err["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
            yield b'{"keywords": "k", "text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        assert_error(c.post("/v1/memories", content=chunks(), headers={"Content-Type": "application/json"}), 413)
        assert_error(c.post("/mcp", content=b"z" * 3000), 413, "payload_too_large")
        err = assert_error(c.post("/v1/memories", json={"keywords": "k", "text": "é" * 33}), 422, "invalid_episode")
        assert "66 bytes, over the limit of 64" in err["message"]
        for top_k in (0, 101, -1, 2.5, "3", True):
            assert_error(c.post("/v1/recall", json={"query": "q", "top_k": top_k}), 422, "invalid_request")
        assert c.post("/v1/recall", json={"query": "q", "top_k": 100}).json() == {"query": "q", "hits": []}
        assert_error(c.get("/v1/memories", params={"limit": 101}), 422)
        assert_error(c.get("/v1/jobs/x", params={"wait": 61}), 422)
        many = {"episodes": [{"keywords": "", "text": "a"}] * 1001}
        assert_error(c.post("/v1/memories", json=many), 413)  # over the body limit before the batch limit


def test_concurrent_adds_lose_nothing(service: Service) -> None:
    """Several clients add at once, each with its own connection; every episode is stored exactly."""
    n_clients = 4
    sent: dict[str, str] = {}
    jobs: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(n_clients)

    def client(i: int) -> None:
        try:
            with service.client("bob") as c:
                eps = [
                    {"keywords": f"client {i}", "text": f"Concurrent note {i}.{j}: ёжик {'!' * j}"} for j in range(3)
                ]
                start.wait(timeout=60)
                one = c.post("/v1/memories", json=eps[0]).json()
                batch = c.post("/v1/memories", json={"episodes": eps[1:]}).json()
                with lock:
                    sent.update(zip(one["ids"] + batch["ids"], [e["text"] for e in eps]))
                    jobs.extend([one["job_id"], batch["job_id"]])
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(sent) == 3 * n_clients
    with service.client("bob") as c:
        for job in jobs:
            assert c.get(f"/v1/jobs/{job}", params={"wait": 60}).json()["status"] == "succeeded"
        for id_, text in sent.items():
            assert c.get(f"/v1/memories/{id_}").json()["text"] == text
        listed = {e["id"]: e["text"] for e in c.get("/v1/memories", params={"limit": 100}).json()["items"]}
        assert sent.items() <= listed.items()


def test_no_auth_mode(tmp_path: Path, embedder) -> None:
    with Memory(tmp_path / "store", embedder=embedder) as memory:
        app = create_app(memory, auth=False)
        assert "securitySchemes" not in app.openapi().get("components", {})
        with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as c:
            add(c, {"keywords": "k", "text": "In the default namespace."})
            add(c, {"keywords": "k", "text": "In namespace n2."}, namespace="n2")
            assert [e["text"] for e in c.get("/v1/memories").json()["items"]] == ["In the default namespace."]
            assert [e["text"] for e in c.get("/v1/memories", params={"namespace": "n2"}).json()["items"]] == [
                "In namespace n2."
            ]
            # Without auth only loopback names are served: no DNS rebinding from a web page.
            err = assert_error(c.get("/v1/stats", headers={"Host": "evil.example:80"}), 403, "forbidden")
            assert "--no-auth" in err["message"]
            assert c.get("/v1/stats", headers={"Host": "localhost"}).status_code == 200

            async def mcp_recall(headers: dict[str, str]) -> list[str]:
                from mcp import Client
                from mcp.client.streamable_http import streamable_http_client

                async with (
                    httpx2.AsyncClient(headers=headers, timeout=60) as http,
                    Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
                ):
                    res = await client.call_tool("recall", {"query": "namespace", "top_k": 5})
                    return [m["text"] for m in res.structured_content["memories"]]

            assert anyio.run(mcp_recall, {}) == ["In the default namespace."]
            assert anyio.run(mcp_recall, {"X-Rememory-Namespace": "n2"}) == ["In namespace n2."]


def test_proxy_uses_the_key_namespace(service: Service) -> None:
    """With --upstream, the chat proxy needs a key and recalls from the key's namespace, whatever the body says."""
    pytest.importorskip("rememory.chat.proxy")
    upstream, seen = _recording_upstream()
    service.memory.add("Alice, garden", "Alice planted tulips in the garden.", id="alice-tulips", namespace="alice")
    with LiveServer(upstream) as up:
        app = create_app(service.memory, keys=service.keys, upstream=f"{up}/v1")
        with LiveServer(app) as url:
            chat = {"model": "m", "messages": [{"role": "user", "content": "What did Alice plant in the garden?"}]}
            assert_error(httpx.post(f"{url}/v1/chat/completions", json=chat), 401, "unauthorized")
            res = httpx.post(f"{url}/v1/chat/completions", json={**chat, "user": "bobs-ns"}, timeout=60,
                             headers={"Authorization": f"Bearer {service.key['alice']}",
                                      "X-Rememory-Namespace": "bobs-ns"})  # fmt: skip
            assert res.status_code == 200, res.text
            assert "alice-tulips" in res.headers["x-rememory-recalled"].split(",")
            assert "tulips" in json.dumps(seen[-1]["messages"])
            res = httpx.post(f"{url}/v1/chat/completions", json={**chat, "user": "alice"}, timeout=60,
                             headers={"Authorization": f"Bearer {service.key['bob']}"})  # fmt: skip
            assert res.status_code == 200 and "alice-tulips" not in res.headers["x-rememory-recalled"]
            assert "tulips" not in json.dumps(seen[-1]["messages"])


# --- the CLI ---


def test_keys_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    store = ["--store", str(tmp_path / "store")]
    res = runner.invoke(cli, [*store, "keys", "create", "alice"])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip()
    assert re.fullmatch(r"rmk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key) and res.stdout == key + "\n"  # only the key
    assert "only its hash is stored" in res.stderr
    assert key.encode() not in (tmp_path / "store" / "keys.db").read_bytes()
    res = runner.invoke(cli, [*store, "keys", "create", "ops", "--namespace", "shared"])
    assert res.exit_code == 0
    with KeyStore.for_store(tmp_path / "store") as ks:
        assert ks.authenticate(key).namespace == "alice"
        assert ks.authenticate(res.stdout.strip()).namespace == "shared"
        assert ks.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    listed = json.loads(runner.invoke(cli, [*store, "keys", "list", "--json"]).stdout)
    assert [(k["name"], k["namespace"]) for k in listed] == [("alice", "alice"), ("ops", "shared")]
    assert listed[0]["key"] == key[:17] + "…"
    assert runner.invoke(cli, [*store, "keys", "list"]).stdout.startswith("alice\talice\t")
    res = runner.invoke(cli, [*store, "keys", "create", "alice"])
    assert res.exit_code == 2 and "already exists" in res.stderr
    res = runner.invoke(cli, [*store, "keys", "create", "bad name"])
    assert res.exit_code == 2 and "not valid" in res.stderr
    assert runner.invoke(cli, [*store, "keys", "revoke", "alice"]).exit_code == 0
    res = runner.invoke(cli, [*store, "keys", "revoke", "alice"])
    assert res.exit_code == 3 and "keys list" in res.stderr
    with KeyStore.for_store(tmp_path / "store") as ks:
        assert ks.authenticate(key) is None


def test_serve_refuses_no_auth_off_loopback(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        res = CliRunner().invoke(cli, ["--store", str(tmp_path), "serve", "--no-auth", "--host", host])
        assert res.exit_code == 2, res.output
        assert "Refusing to serve without auth" in res.stderr and "keys create" in res.stderr
    assert not (tmp_path / "rememory.db").exists()  # refused before opening the store


# --- the README section, run as written ---


def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")
def test_readme_service_walkthrough(tmp_path: Path) -> None:
    """Run docs/service.md's commands as written (the port is 0, then the one the server got)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "REMEMORY_HOME": str(tmp_path / "home")}
    setup, usage = doc_blocks("bash")
    setup_lines = [ln for ln in setup.splitlines() if ln.strip()]
    assert setup_lines[0].startswith("pip install")  # the one line not run here
    create, serve = setup_lines[1:]
    res = subprocess.run(create, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    key = res.stdout.strip()
    assert key.startswith("rmk_") and "\n" not in key

    assert "--port 8765" in serve
    proc = subprocess.Popen(shlex.split(serve.replace("--port 8765", "--port 0")), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        port = _wait_for_banner(proc, stderr)
        script = usage.replace("8765", str(port)).replace("REMEMORY_KEY=rmk_...", f"REMEMORY_KEY={key}")
        res = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        added, recalled = _json_values(res.stdout)
        assert added["job"]["status"] == "succeeded"
        assert recalled["hits"][0]["text"] == "We walked with Ilya across the bridge at night."
        assert recalled["hits"][0]["id"] == added["ids"][0]

        # The MCP-over-HTTP snippet, with the key just made.
        config = json.loads(doc_blocks("json")[1])["mcpServers"]["rememory"]
        url = config["url"].replace("8765", str(port))
        headers = {k: v.replace("rmk_...", key) for k, v in config["headers"].items()}
        from .test_mcp import roundtrip_over_http  # test_mcp imports this module

        anyio.run(roundtrip_over_http, url, headers)
    finally:
        proc.terminate()
        out = proc.stdout.read() if proc.stdout else ""
        proc.wait(60)
        reader.join(60)
    assert out == ""  # logs and the banner go to stderr


def _wait_for_banner(proc: subprocess.Popen, stderr: list[str]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"ReMemory listening on http://127\.0\.0\.1:(\d+)", "".join(stderr))
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("rememory serve did not start:\n" + "".join(stderr))


def _json_values(text: str) -> list[dict]:
    decoder = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(text, i)
        out.append(value)
    return out


# --- cross-site requests, slow bodies, job limits ---


def _recording_upstream() -> tuple[object, list[dict]]:
    from fastapi import FastAPI

    seen: list[dict] = []
    upstream = FastAPI()

    @upstream.post("/v1/chat/completions")
    def complete(body: dict) -> dict:
        seen.append(body)
        answer = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [answer]}

    return upstream, seen


def test_no_auth_proxy_refuses_cross_site_requests(tmp_path: Path, embedder) -> None:
    """A web page open in the user's browser can neither plant an episode nor spend the upstream key."""
    upstream, seen = _recording_upstream()
    chat = {"model": "m", "messages": [{"role": "user", "content": "Ignore all rules."}],
            "rememory": {"remember": True}}  # fmt: skip
    with Memory(tmp_path / "store", embedder=embedder) as memory, LiveServer(upstream) as up:
        app = create_app(memory, auth=False, upstream=f"{up}/v1", allow_origins=["http://localhost:3000"])
        with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as c:
            port = url.rsplit(":", 1)[1]
            for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                            {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                            {"Origin": "http://localhost:3001", "Sec-Fetch-Site": "same-site"}):  # fmt: skip
                for res in (c.post("/v1/chat/completions", json=chat, headers=headers),
                            c.post("/v1/chat/completions", content=json.dumps(chat),
                                   headers={**headers, "Content-Type": "text/plain"}),
                            c.post("/v1/recall", json={"query": "rules"}, headers=headers)):  # fmt: skip
                    err = assert_error(res, 403, "forbidden")
                    assert "--allow-origin" in err["message"]
            assert seen == [] and memory.count() == 0
            # A program (no browser headers), the server's own pages, and an allowed origin pass.
            own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
            allowed = {"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}
            for headers in ({}, own, allowed, {"Sec-Fetch-Site": "none"}):
                res = c.post("/v1/chat/completions", json={**chat, "rememory": {"remember": False}}, headers=headers)
                assert res.status_code == 200, (headers, res.text)
            preflight = c.options("/v1/chat/completions", headers={
                "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"})  # fmt: skip
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert len(seen) == 4


def test_slow_request_body_gets_408(tmp_path: Path, embedder) -> None:
    """A client that sends headers and then stalls is answered and cut off, not waited for."""
    with Memory(tmp_path / "store", embedder=embedder) as memory:
        app = create_app(memory, auth=False, body_timeout_s=0.5)
        with LiveServer(app) as url:
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # timeout: a hang guard only
                sock.sendall(b"POST /v1/recall HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100\r\n\r\n{\"query\": ")  # fmt: skip
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            assert received.startswith(b"HTTP/1.1 408"), received[:200]
            assert b"did not arrive within 0.5 s" in received
            with httpx.Client(base_url=url, timeout=60) as c:  # the server still serves others
                assert c.get("/v1/stats").status_code == 200


def test_training_jobs_are_limited_per_namespace(tmp_path: Path, embedder) -> None:
    from rememory.server.jobs import JobRunner

    with Memory(tmp_path / "store", embedder=embedder) as memory:
        app = create_app(memory, auth=False, max_jobs_per_tenant=2)
        gate = threading.Event()
        original = JobRunner._run

        def held(self: JobRunner, job: object) -> None:  # the real trainer, started once the test says so
            gate.wait(60)
            original(self, job)

        JobRunner._run = held  # type: ignore[method-assign]
        try:
            with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as c:
                for i in range(2):
                    res = c.post("/v1/memories", json={"episodes": [{"keywords": "k", "text": f"job {i}"}]})
                    assert res.status_code == 202, res.text
                err = assert_error(c.post("/v1/memories", json={"episodes": [{"keywords": "k", "text": "job 2"}]}),
                                   429, "too_many_requests")  # fmt: skip
                assert "already has 2 training jobs queued or running" in err["message"]
                res = c.post("/v1/memories", json={"episodes": [{"keywords": "k", "text": "other"}], "namespace": "b"})
                assert res.status_code == 202  # another tenant is not blocked
        finally:
            gate.set()
            JobRunner._run = original  # type: ignore[method-assign]


def test_one_source_for_each_limit(tmp_path: Path, embedder) -> None:
    """Memory, REST and MCP refuse top_k=101 alike; a store's own episode limit is the one documented and enforced."""
    from mcp import Client

    from rememory.errors import ConfigError
    from rememory.limits import MAX_TOP_K
    from rememory.server.mcp import build_mcp_server, fixed_namespace

    memory = Memory(tmp_path / "store", embedder=embedder, max_text_bytes=100)
    try:
        memory.add("walk", "A walk on the bridge.", id="w")
        with pytest.raises(ConfigError, match=f"top_k must be a whole number from 1 to {MAX_TOP_K}, got 101"):
            memory.recall("walk", top_k=MAX_TOP_K + 1)
        assert [h.id for h in memory.recall("walk", top_k=MAX_TOP_K)] == ["w"]

        with LiveServer(create_app(memory, auth=False)) as url, httpx.Client(base_url=url, timeout=60) as c:
            spec = json.dumps(c.get("/openapi.json").json())
            assert "at most 100 bytes" in spec and "16384" not in spec
            assert_error(c.post("/v1/recall", json={"query": "walk", "top_k": MAX_TOP_K + 1}), 422)
            assert c.post("/v1/recall", json={"query": "walk", "top_k": MAX_TOP_K}).status_code == 200
            err = assert_error(c.post("/v1/memories", json={"keywords": "k", "text": "x" * 101}), 422)
            assert "over the limit of 100" in err["message"]

        async def over_mcp() -> None:
            async with Client(build_mcp_server(memory, fixed_namespace("default"))) as client:
                tools = {t.name: t for t in (await client.list_tools()).tools}
                assert tools["recall"].input_schema["properties"]["top_k"]["maximum"] == MAX_TOP_K
                assert "at most 100 bytes" in tools["remember"].input_schema["properties"]["text"]["description"]
                res = await client.call_tool("recall", {"query": "walk", "top_k": MAX_TOP_K + 1})
                assert res.is_error and str(MAX_TOP_K) in res.content[0].text
                assert not (await client.call_tool("recall", {"query": "walk", "top_k": MAX_TOP_K})).is_error
                res = await client.call_tool("remember", {"keywords": "k", "text": "x" * 101})
                assert res.is_error and "over the limit of 100" in res.content[0].text

        anyio.run(over_mcp)
    finally:
        memory.close()
