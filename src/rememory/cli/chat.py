"""``rememory chat``: an interactive dialogue whose system prompt carries recalled episodes."""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import ExitStack

import click

from ..chat.client import ChatSession
from ..records import RecallHit
from .common import namespace_option, open_memory

HELP = """Commands:
  /memories  show the episodes injected into the last turn's system prompt
  /help      show this help
  /exit      leave (end of input or Ctrl+C works too)"""


def render_memories(hits: list[RecallHit] | None) -> str:
    if hits is None:
        return "No turn yet: memories are recalled when you send a message.\n"
    if not hits:
        return "No memories were injected last turn (nothing in this namespace yet).\n"
    lines = [f"{len(hits)} memor{'y' if len(hits) == 1 else 'ies'} injected last turn:"]
    for h in hits:
        when = f"  time={h.time}" if h.time else ""
        lines += [f"  {h.id}  relevance={h.score:.3f}{when}", f"    {h.text}"]
    return "\n".join(lines) + "\n"


def _require(modules: tuple[str, ...], why: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"{why} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed. "
            "Install it with: pip install 'rememory[chat]'"
        )


def _api_key(base_url: str | None) -> str:
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    if base_url is None:
        raise click.UsageError(
            "Set OPENAI_API_KEY to chat with OpenAI, or pass --base-url for another server "
            "(e.g. http://localhost:11434/v1 for Ollama), or --local for the bundled model."
        )
    return "unused"  # Ollama, vLLM and llama.cpp servers accept any key unless configured otherwise


@click.command()
@click.option("--base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible API base URL (default: OpenAI's).")
@click.option("--model", "-m", envvar="REMEMORY_CHAT_MODEL", help="Model name, e.g. llama3.2 or gpt-4o-mini.")
@click.option("--top-k", "-k", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Episodes recalled per turn.")  # fmt: skip
@click.option("--remember/--no-remember", default=False, show_default=True,
              help="Store each exchange as a new episode (trained in the background).")  # fmt: skip
@click.option("--local", is_flag=True, help="Run the bundled SmolLM2-135M-Instruct in-process (no server needed).")
@click.option("--max-tokens", type=click.IntRange(1), help="Longest answer, in tokens (default: the server's).")
@click.option("--temperature", type=click.FloatRange(0), help="Sampling temperature (default: the server's).")
@namespace_option
@click.pass_context
def chat(
    ctx: click.Context,
    base_url: str | None,
    model: str | None,
    top_k: int,
    remember: bool,
    local: bool,
    max_tokens: int | None,
    temperature: float | None,
    namespace: str,
) -> None:
    """Chat with an OpenAI-compatible model (Ollama, vLLM, llama.cpp, OpenAI) that remembers.

    Before each turn the episodes closest to your message are recalled and put into the
    system prompt. The API key comes from $OPENAI_API_KEY. Answers go to stdout.
    """
    _require(("openai",), "rememory chat")
    if local:
        _require(("fastapi", "uvicorn", "gguf"), "rememory chat --local")
    import openai

    if local and ctx.get_parameter_source("base_url") == click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--local runs the model in-process; it cannot be combined with --base-url.")
    with ExitStack() as stack:
        if local:
            from ..chat.local import LOCAL_MODEL_ID, BackgroundServer, LocalChatModel, create_local_app

            if model is not None and model != LOCAL_MODEL_ID:
                raise click.UsageError(f"--local serves {LOCAL_MODEL_ID!r}; leave out --model {model!r}.")
            click.echo("Loading the local model (SmolLM2-135M-Instruct)...", err=True)
            llm = LocalChatModel()
            server = stack.enter_context(BackgroundServer(create_local_app(llm)))
            base_url, model = f"{server.url}/v1", llm.model_id
        if model is None:
            raise click.UsageError(
                "Pass --model NAME (e.g. llama3.2 for Ollama, gpt-4o-mini for OpenAI), or use --local."
            )
        client = openai.OpenAI(base_url=base_url, api_key=_api_key(base_url), max_retries=1)
        mem = stack.enter_context(open_memory(ctx))
        session = ChatSession(mem, client, model, namespace=namespace, top_k=top_k, remember=remember,
                              max_tokens=max_tokens, temperature=temperature)  # fmt: skip
        try:
            _loop(session)
        finally:
            pending = session.rememberer.pending
            if pending:
                click.echo(f"Storing {pending} exchange(s) still training...", err=True)
            session.close()
            _report_errors(session)


def _report_errors(session: ChatSession) -> None:
    for eid, exc in session.rememberer.pop_errors():
        click.echo(f"Error: could not remember exchange {eid}: {exc}", err=True)


def _loop(session: ChatSession) -> None:
    import openai

    stdin = sys.stdin
    click.echo(f"Chatting with {session.model} (namespace {session.namespace!r}). Type /help for commands.", err=True)
    while True:
        _report_errors(session)
        click.echo("You: ", nl=False, err=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            click.echo("", err=True)
            return
        if not line:
            click.echo("", err=True)
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/help":
            click.echo(HELP, err=True)
            continue
        if text == "/memories":
            click.echo(render_memories(session.last_hits), nl=False)
            continue
        if text.startswith("/"):
            click.echo(f"Unknown command {text.split()[0]!r}.\n{HELP}", err=True)
            continue
        try:
            reply = session.ask(text, on_delta=lambda piece: click.echo(piece, nl=False))
        except KeyboardInterrupt:
            click.echo("\n(answer interrupted; it is not kept)", err=True)
            continue
        except openai.APIConnectionError as exc:
            url = session.client.base_url
            click.echo(f"\nError: cannot reach the model server at {url} ({exc}). Is it running? "
                       "Check --base-url.", err=True)  # fmt: skip
            continue
        except openai.APIStatusError as exc:
            click.echo(f"\nError: the model server answered HTTP {exc.status_code}: {exc.message}", err=True)
            continue
        except openai.APIError as exc:
            click.echo(f"\nError: the model server failed mid-answer: {exc.message}", err=True)
            continue
        click.echo("")
        if reply.episode_id is not None:
            click.echo(f"(remembering this exchange as {reply.episode_id})", err=True)
