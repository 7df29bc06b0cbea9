"""``rememory serve`` (REST, MCP over HTTP, proxy) and ``rememory mcp`` (MCP over stdio)."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import ipaddress
import logging
import socket
import sys
from typing import Any

import click

from ..episodes import validate_namespace
from .common import namespace_option, open_memory

DEFAULT_PORT = 8765
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # rememory.server.app.DEFAULT_MAX_BODY_BYTES, without importing it
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def require_server_extras() -> None:
    """Fail with an install hint when the server's optional dependencies are missing."""
    missing = [m for m in ("fastapi", "uvicorn", "mcp") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"This command needs {', '.join(missing)}, which are not installed. "
            "Install them with: pip install 'rememory[server,mcp]'"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Pick another --port (0 picks a free one) "
            "or stop the program using it."
        ) from None
    sock.set_inheritable(True)
    return sock


def _log_config(level: str) -> dict[str, Any]:
    import uvicorn.config

    cfg = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    cfg["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is for data; logs go to stderr
    # Other libraries log to the root logger: their INFO (model loading...) is noise for a server.
    cfg["root"] = {"handlers": ["default"], "level": "DEBUG" if level == "debug" else "WARNING"}
    return cfg


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port; the address is printed on stderr).",
)
@click.option("--no-auth", is_flag=True, help="Serve without API keys (local use: refused unless --host is loopback).")
@click.option(
    "--upstream",
    metavar="URL",
    help="OpenAI-compatible server (e.g. http://localhost:11434/v1) to proxy /v1/chat/completions to, "
    "with memories injected.",
)
@click.option("--upstream-api-key", envvar="REMEMORY_UPSTREAM_API_KEY", help="API key for the upstream server.")
@click.option(
    "--max-body-bytes",
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    type=click.IntRange(1),
    help="Largest request body accepted; larger ones get 413.",
)
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let web pages of ORIGIN (e.g. http://localhost:3000) call the server; repeatable. Other cross-site "
    "browser requests are refused.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Server log level (logs go to stderr).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    no_auth: bool,
    upstream: str | None,
    upstream_api_key: str | None,
    max_body_bytes: int,
    allow_origins: tuple[str, ...],
    log_level: str,
) -> None:
    """Serve the web page (/), the REST API (/v1), MCP over HTTP (/mcp) and, with --upstream, the chat proxy."""
    if no_auth and not is_loopback(host):
        raise click.UsageError(
            f"Refusing to serve without auth on {host}: anyone who can reach it could read and delete every "
            "memory. Create a key (rememory keys create NAME) and drop --no-auth, or use --host 127.0.0.1."
        )
    require_server_extras()
    from ..server import KeyStore, create_app

    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(_bind(host, port))  # before loading the model: a busy port fails fast
        memory = stack.enter_context(open_memory(ctx))
        keys = None if no_auth else stack.enter_context(KeyStore.for_store(memory.path))
        if keys is not None and not keys.list():
            click.echo(
                f"No API keys yet, so every request will get 401. Create one: rememory --store {memory.location} "
                "keys create NAME",
                err=True,
            )
        app = create_app(
            memory,
            auth=not no_auth,
            keys=keys,
            upstream=upstream,
            upstream_api_key=upstream_api_key,
            max_body_bytes=max_body_bytes,
            allow_origins=allow_origins,
        )
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        url = f"http://{shown}:{sock.getsockname()[1]}"
        mode = "NO AUTH, local use only" if no_auth else "API keys required"
        banner = (
            f"ReMemory listening on {url} (web page {url}/, REST {url}/v1, MCP {url}/mcp, docs {url}/docs; {mode}). "
            "Press Ctrl+C to stop."
        )
        _run_uvicorn(app, sock, log_level=log_level, banner=banner)


def _run_uvicorn(app: Any, sock: socket.socket, *, log_level: str, banner: str) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # announce only once requests are answered
                click.echo(banner, err=True)

    config = uvicorn.Config(app, log_level=log_level, log_config=_log_config(log_level), timeout_graceful_shutdown=10)
    Server(config).run(sockets=[sock])


@click.command("mcp")
@namespace_option
@click.pass_context
def mcp_command(ctx: click.Context, namespace: str) -> None:
    """Serve the memory tools over MCP on stdin/stdout, for desktop agents. Logs go to stderr."""
    require_server_extras()
    validate_namespace(namespace)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format=_LOG_FORMAT)
    import anyio

    from ..server.mcp import build_mcp_server, fixed_namespace
    from ..server.stdio import serve_stdio

    # stdout is the JSON-RPC stream: anything a library prints while the model loads goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        memory = open_memory(ctx)
    try:
        anyio.run(serve_stdio, build_mcp_server(memory, fixed_namespace(namespace)))
    finally:
        memory.close()
