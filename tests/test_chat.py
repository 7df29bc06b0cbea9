"""The chat loop: keywords and episode text of exchanges, background remembering, the session,
and the ``rememory chat`` command as a real subprocess against the real local model server."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from rememory import Memory
from rememory.chat.client import ChatSession, Rememberer, derive_keywords, exchange_text
from rememory.chat.local import LOCAL_MODEL_ID
from rememory.errors import ConfigError, InvalidEpisodeError

from .conftest import REPO
from .test_proxy import ZOE, doc_command, documented_model_server, local_model_server

BIN = Path(sys.executable).parent / "rememory"


# --- pure parts ---


def test_keywords_are_salient_words_in_order() -> None:
    kw = derive_keywords("Yesterday my sister Zoe showed me her beehives on the roof.", "Beehives on a roof!")
    words = kw.split(", ")
    assert "Zoe" in words and "beehives" in words and "roof" in words
    assert not {"my", "the", "her", "on", "me"} & {w.lower() for w in words}
    assert len(words) <= 6
    assert words.index("Zoe") < words.index("beehives") < words.index("roof")


def test_keywords_of_other_languages_and_edge_cases() -> None:
    assert "Ильёй" in derive_keywords("Вчера мы с Ильёй гуляли по мосту.").split(", ")
    assert derive_keywords("", "") == ""
    assert derive_keywords("a b c 1234 !!!") == ""
    assert len(derive_keywords(" ".join(f"word{chr(97 + i)}xyz" for i in range(20)), max_keywords=3).split(", ")) == 3


def test_exchange_text_short_is_unchanged() -> None:
    assert exchange_text("  Hi  ", "Hello!\n") == "User: Hi\nAssistant: Hello!"


@pytest.mark.parametrize("max_bytes", [64, 101, 1000, 4096])
@pytest.mark.parametrize(("user", "answer"), [("ы" * 3000, "я" * 3001), ("x" * 10, "🐝" * 2000), ("u" * 9000, "ok")])
def test_exchange_text_is_cut_to_the_byte_limit(max_bytes: int, user: str, answer: str) -> None:
    text = exchange_text(user, answer, max_bytes=max_bytes)
    data = text.encode("utf-8")
    assert len(data) <= max_bytes and data.decode("utf-8") == text  # whole characters only
    head, _, tail = text.partition("\nAssistant: ")
    assert head.startswith("User: ") and tail
    for part, original in ((head[len("User: ") :], user), (tail, answer)):
        assert part == original or (part.endswith(" […]") and original.startswith(part[: -len(" […]")]))


def test_exchange_text_refuses_a_budget_too_small() -> None:
    with pytest.raises(ConfigError, match="at least 64"):
        exchange_text("hi", "there", max_bytes=20)


# --- background remembering with the real memory ---


@pytest.mark.model
def test_rememberer_stores_in_the_background_and_reports_failures(make_memory) -> None:
    mem = make_memory()
    rem = Rememberer(mem)
    good = rem.submit("My sister Zoe keeps bees.", "How lovely!", namespace="zoe")
    bad = rem.submit("This one has a bad namespace.", "It will fail.", namespace=" ")
    after = rem.submit("Still working after a failure?", "Yes.")
    assert rem.wait(120) and rem.pending == 0
    ep = mem.get(good, namespace="zoe")
    assert ep.text == "User: My sister Zoe keeps bees.\nAssistant: How lovely!"
    assert "Zoe" in ep.keywords.split(", ") and ep.time is not None
    errors = rem.pop_errors()
    assert [e[0] for e in errors] == [bad] and isinstance(errors[0][1], InvalidEpisodeError)
    assert rem.pop_errors() == []
    assert mem.get(after).text.startswith("User: Still working")
    assert rem.close(10)
    with pytest.raises(ConfigError, match="closed"):
        rem.submit("late", "too late")


# --- the session against the real model ---


@pytest.fixture(scope="module")
def upstream() -> tuple[str, list[dict[str, Any]], Any]:
    documented_model_server()  # test_proxy uses it; it loads in its own process meanwhile
    server, seen, model = local_model_server()
    return f"{server.url}/v1", seen, model


@pytest.mark.model
def test_session_remembers_and_recalls_in_a_later_turn(make_memory, upstream) -> None:
    base_url, seen, _ = upstream
    mem = make_memory()
    mem.add("Zoe, sister, bees, roof", ZOE, id="zoe-bees")
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    session = ChatSession(mem, client, LOCAL_MODEL_ID, remember=True, max_tokens=12, temperature=0)
    pieces: list[str] = []
    first = session.ask("My parrot Kiwi can whistle the Moonlight Sonata.", on_delta=pieces.append)
    assert first.text.strip() and "".join(pieces) == first.text and first.episode_id is not None
    assert [h.id for h in first.hits] == ["zoe-bees"]
    assert session.rememberer.wait(120)  # turns never wait; the test does, to make the next recall certain
    second = session.ask("What can Kiwi whistle?")
    assert [h.id for h in second.hits] == [first.episode_id, "zoe-bees"]  # the exchange is now most relevant
    assert "Kiwi can whistle the Moonlight Sonata" in session.last_system_prompt
    assert seen[-1]["messages"][0]["content"] == session.last_system_prompt  # what the model received
    assert [m["role"] for m in seen[-1]["messages"]] == ["system", "user", "assistant", "user"]  # recent context
    assert session.close(120) and mem.count() == 3


@pytest.mark.model
def test_session_surfaces_an_unreachable_server(make_memory) -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused", max_retries=0)
    session = ChatSession(make_memory(), client, "m")
    with pytest.raises(openai.APIConnectionError):
        session.ask("hello?")
    assert session.last_hits == [] and session.history == []


# --- the command, as users run it ---


@pytest.fixture
def store(tmp_path: Path, embedder) -> Path:
    path = tmp_path / "store"
    with Memory(path, embedder=embedder) as mem:
        mem.add("Zoe, sister, bees, roof", ZOE, id="zoe-bees", time="2025-06-01T10:00:00")
    return path


def rememory(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return subprocess.run([str(BIN), *args], input=stdin, capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)  # fmt: skip


@pytest.mark.model
def test_chat_command_remembers_across_sessions(store: Path, upstream, embedder) -> None:
    base_url, seen, _ = upstream
    documented = doc_command("rememory chat --base-url")  # as the docs show it, pointed at the local model
    documented = documented.replace("http://localhost:11434/v1", base_url).replace("llama3.2", LOCAL_MODEL_ID)
    args = ["--store", str(store), *shlex.split(documented)[1:], "--max-tokens", "12", "--temperature", "0"]
    assert "--remember" in args
    first = rememory(args, "My parrot Kiwi can whistle the Moonlight Sonata.\n/memories\n")
    assert first.returncode == 0, first.stderr
    assert "Chatting with smollm2-135m-instruct" in first.stderr and "You: " in first.stderr
    assert "(remembering this exchange as chat-" in first.stderr
    answer, listing = re.split(r"\d+ memor(?:y|ies) injected last turn:", first.stdout)
    assert answer.strip()  # the model's answer, then the /memories listing
    assert "zoe-bees  relevance=" in listing and "time=2025-06-01T10:00:00+00:00" in listing and ZOE in listing
    assert ZOE in seen[-1]["messages"][0]["content"]
    with Memory(store, embedder=embedder) as mem:
        (episode,) = [e for e in mem.list() if e.id.startswith("chat-")]  # stored before the command exited
    assert episode.text.startswith("User: My parrot Kiwi can whistle the Moonlight Sonata.\nAssistant: ")

    args[args.index("--remember")] = "--no-remember"
    second = rememory(args, "/memories\n/help\n/nope\nWhat can my parrot Kiwi whistle?\n/memories\n/exit\n")
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("No turn yet")
    assert "/memories  show the episodes" in second.stderr and "Unknown command '/nope'" in second.stderr
    injected = second.stdout.rsplit("injected last turn:", 1)[1]
    assert injected.index(f"{episode.id}  relevance=") < injected.index("zoe-bees")  # last session's, first

    assert "Kiwi can whistle the Moonlight Sonata" in seen[-1]["messages"][0]["content"]
    assert "remembering" not in second.stderr
    with Memory(store, embedder=embedder) as mem:
        assert mem.count() == 2  # --no-remember stored nothing


def test_chat_command_needs_a_model_or_local(monkeypatch: pytest.MonkeyPatch) -> None:
    from rememory.cli.main import cli

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    for args, message in [
        (["chat", "--base-url", "http://127.0.0.1:9/v1"], "Pass --model NAME"),
        (["chat", "--model", "gpt-4o-mini"], "Set OPENAI_API_KEY"),
        (["chat", "--local", "--base-url", "http://127.0.0.1:9/v1"], "cannot be combined"),
    ]:
        res = CliRunner().invoke(cli, args, input="")
        assert res.exit_code == 2 and message in res.stderr


@pytest.mark.model
def test_chat_local_runs_the_bundled_model(store: Path, upstream, embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """--local: the bundled model in-process behind its own server. The already-loaded model is reused
    (loading it again would cost ~20 s); everything else is the real command."""
    from rememory.chat import local
    from rememory.cli.main import cli

    _, _, model = upstream
    monkeypatch.setattr(local, "LocalChatModel", lambda: model)
    args = shlex.split(doc_command("rememory chat --local"))[1:]
    assert args == ["chat", "--local", "--remember"]
    result = CliRunner().invoke(
        cli,
        ["--store", str(store), *args, "--max-tokens", "8", "--temperature", "0"],
        input="Who keeps bees?\n/memories\n",
    )
    assert result.exit_code == 0, result.output
    assert "Loading the local model" in result.stderr and "(remembering this exchange as chat-" in result.stderr
    assert "zoe-bees  relevance=" in result.stdout
    with Memory(store, embedder=embedder) as mem:
        assert mem.count() == 2  # stored before the command returned
