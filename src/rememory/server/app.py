"""The service's one FastAPI app: REST under ``/v1``, MCP over streamable HTTP at ``/mcp``, the web
page at ``/`` (:mod:`rememory.server.web`), and (with an upstream) the OpenAI-compatible memory proxy.

Requests authenticate with ``Authorization: Bearer <key>`` (keys from ``rememory keys create``);
the key decides the namespace. Without auth (local use only) the app answers only requests
whose ``Host`` is a loopback name, so that a web page cannot reach it through DNS rebinding.
Requests a browser makes for a page of another origin (``Origin``, ``Sec-Fetch-Site``) are
refused unless that origin is allowed (``allow_origins``); a request body must arrive within
``body_timeout_s`` (else 408).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..episodes import validate_namespace
from ..errors import ConfigError, InvalidEpisodeError
from ..memory import Memory
from .auth import KeyStore
from .errors import ApiError, ErrorResponse, error_response, install_error_handlers
from .jobs import JobRunner
from .mcp import build_mcp_server, package_version
from .rest import RecallRequest, Tenant, build_rest_router
from .web import install_web

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 60.0  # to receive a whole request body, once its headers are in
DEFAULT_MAX_JOBS_PER_TENANT = 8  # training jobs queued or running, per namespace
NAMESPACE_HEADER = "X-Rememory-Namespace"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_SCOPE_NAMESPACE = "rememory.namespace"  # set on /mcp requests for the tools to read
_MISSING_KEY = (
    "Missing API key: send the header `Authorization: Bearer rmk_...`. Create a key with `rememory keys create NAME`."
)
_BAD_KEY = "Invalid or revoked API key. Check it, or create a new one with `rememory keys create NAME`."


def create_app(
    memory: Memory,
    *,
    auth: bool = True,
    keys: KeyStore | None = None,
    upstream: str | None = None,
    upstream_api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    proxy_top_k: int = 3,
    proxy_deadline_s: float | None = None,
    allow_origins: Sequence[str] = (),
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    max_jobs_per_tenant: int = DEFAULT_MAX_JOBS_PER_TENANT,
) -> FastAPI:
    """The service over ``memory``: REST (``/v1``), MCP (``/mcp``) and, with ``upstream``, the proxy.

    ``auth=False`` serves every request without a key (local use: loopback ``Host`` only).
    ``keys`` defaults to ``<store>/keys.db``. Request bodies over ``max_body_bytes`` get 413,
    bodies not received within ``body_timeout_s`` 408. A browser request from a page of another
    origin is a 403 unless its origin (``scheme://host[:port]``) is in ``allow_origins``, which
    also get CORS answers. ``proxy_deadline_s`` bounds a whole upstream exchange (default:
    :data:`rememory.chat.proxy.DEFAULT_DEADLINE_S`); a namespace may have at most
    ``max_jobs_per_tenant`` training jobs queued or running (429 past it).

    >>> import uvicorn
    >>> uvicorn.run(create_app(Memory("memories")), host="127.0.0.1", port=8765)  # doctest: +SKIP
    """
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be at least 1, got {max_body_bytes}.")
    if not body_timeout_s > 0:
        raise ConfigError(f"body_timeout_s must be positive seconds, got {body_timeout_s!r}.")
    origins = [_origin(o) for o in allow_origins]
    own_keys = auth and keys is None
    if auth and keys is None:
        keys = KeyStore.for_store(memory.path)
    jobs = JobRunner(memory, max_per_namespace=max_jobs_per_tenant)
    tenant = _tenant_dependency(keys if auth else None)

    mcp_server = build_mcp_server(memory, _namespace_from_scope)
    # Builds the session manager; the returned Starlette app is not used: /mcp is routed below,
    # inside this app, so that it shares its auth, limits and error handling.
    mcp_server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        max_request_body_size=max_body_bytes,
        # Host checks are done for the whole app (see _LoopbackOnly); with auth any host may serve.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    session_manager = mcp_server.session_manager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with session_manager.run():
            yield
        await anyio.to_thread.run_sync(jobs.close, 30.0)
        if own_keys and keys is not None:
            keys.close()

    app = FastAPI(
        title="ReMemory",
        version=package_version(),
        summary="Exact episodic memory for LLM agents: add episodes, recall them by meaning, byte-exact.",
        description="Authenticate with `Authorization: Bearer <key>` (create one with `rememory keys create NAME`); "
        "the key's namespace is the only one a request can see. Errors are "
        '`{"error": {"type": ..., "message": ...}}`. MCP over streamable HTTP is served at `/mcp`.',
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(build_rest_router(memory, jobs, tenant, max_text_bytes=_episode_limit(memory)),
                       responses=_SERVER_ERRORS)  # fmt: skip
    # The page asks for recall explanations only where the API offers them.
    install_web(app, auth=auth, explain="explain" in RecallRequest.model_fields)
    app.router.routes.append(Route("/mcp", endpoint=_McpGate(session_manager.handle_request, keys if auth else None),
                                   include_in_schema=False))  # fmt: skip
    if upstream is not None:
        from ..chat.proxy import DEFAULT_DEADLINE_S, build_proxy_router  # the chat stack loads only when proxying

        app.include_router(
            build_proxy_router(
                memory,
                upstream,
                namespace_for=_proxy_namespace if auth else None,  # None: header, else body 'user', else default
                upstream_api_key=upstream_api_key,
                top_k=proxy_top_k,
                deadline=DEFAULT_DEADLINE_S if proxy_deadline_s is None else proxy_deadline_s,
            ),
            dependencies=[Depends(tenant)],
            tags=["proxy"],
        )
    # Outermost last: the loopback check, the cross-site check, CORS, then the body limits, run
    # before anything else.
    app.add_middleware(_BodyLimit, max_body_bytes=max_body_bytes, timeout_s=body_timeout_s)
    if origins:
        exposed = ["X-Rememory-Recalled", "X-Rememory-Episode"]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["*"], expose_headers=exposed)  # fmt: skip
    app.add_middleware(_SameOriginOnly, allowed=frozenset(origins))
    if not auth:
        app.add_middleware(_LoopbackOnly)
    return app


_SERVER_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "A browser request from a page of an origin that is not allowed."},
    408: {"model": ErrorResponse, "description": "The request body did not arrive in time."},
    429: {"model": ErrorResponse, "description": "Too many training jobs of this namespace are queued or running."},
}


def _origin(value: str) -> str:
    """An allowed origin, checked: ``scheme://host[:port]`` with no path."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"An allowed origin is scheme://host[:port], such as http://localhost:3000, got {value!r}.")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _episode_limit(memory: Memory) -> int:
    # Memory checks episodes itself, but only when the background job trains them; the server
    # checks them up front, with the store's own limit, so that a bad episode gets a 4xx.
    return memory.max_text_bytes


# --- authentication ---


_bearer = HTTPBearer(auto_error=False, description="An API key from `rememory keys create NAME`.")


def _tenant_dependency(keys: KeyStore | None) -> Callable[..., Tenant]:
    """The FastAPI dependency that finds a request's tenant (and keeps it in ``request.state``)."""
    if keys is None:

        def anonymous(request: Request) -> Tenant:
            request.state.rememory_tenant = who = Tenant(None)
            return who

        return anonymous
    store: KeyStore = keys

    def authenticated(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Tenant:
        key = store.authenticate(creds.credentials) if creds is not None else None
        if key is None:
            message = _MISSING_KEY if creds is None else _BAD_KEY
            raise ApiError(401, message, type="unauthorized", headers={"WWW-Authenticate": "Bearer"})
        request.state.rememory_tenant = who = Tenant(key)
        return who

    return authenticated


def _proxy_namespace(request: Request, body: dict[str, Any]) -> str:
    """The proxy's namespace when auth is on: the API key's, whatever the request says."""
    return request.state.rememory_tenant.namespace(None)


def _namespace_from_scope(ctx: Context) -> str:
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    if not isinstance(scope, dict) or _SCOPE_NAMESPACE not in scope:
        raise ToolError("This MCP server has no namespace for the request; call it through /mcp.")
    return scope[_SCOPE_NAMESPACE]


class _McpGate:
    """Authenticates an ``/mcp`` request and records its namespace for the tools."""

    def __init__(self, app: ASGIApp, keys: KeyStore | None):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if self.keys is None:
            try:
                namespace = validate_namespace(headers.get(NAMESPACE_HEADER, "default"))
            except InvalidEpisodeError as exc:
                await error_response(400, str(exc), type="bad_request")(scope, receive, send)
                return
        else:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                await error_response(401, _MISSING_KEY, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
            key = await anyio.to_thread.run_sync(self.keys.authenticate, token.strip())
            if key is None:
                await error_response(401, _BAD_KEY, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
            namespace = key.namespace
        scope[_SCOPE_NAMESPACE] = namespace
        await self.app(scope, receive, send)


# --- limits ---


class _BodyLimit:
    """413 for a request body over the limit: at once from Content-Length, else while it streams in;
    408 for a body that has not fully arrived ``timeout_s`` after the request started (slow clients
    would otherwise hold a connection and a worker forever)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.app = app
        self.max = max_body_bytes
        self.timeout_s = timeout_s

    def _too_slow(self) -> ApiError:
        return ApiError(408, f"The request body did not arrive within {self.timeout_s:g} s; send it at once, "
                        "or retry over a faster connection.", type="request_timeout")  # fmt: skip

    def _too_large(self) -> ApiError:
        return ApiError(413, f"The request body is over the server's limit of {self.max} bytes. Send fewer "
                        "episodes per request, or start the server with a larger --max-body-bytes.")  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max:
            err = self._too_large()
            await error_response(413, err.detail)(scope, receive, send)
            return
        seen = 0
        started = False
        body_done = False
        ends = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() waits for a disconnect: for as long as a response streams
                return await receive()
            try:
                with anyio.fail_after(max(0.0, ends - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max:
                    raise self._too_large()  # an HTTPException: FastAPI re-raises it from body parsing
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ApiError as exc:
            if started or exc.status_code not in (408, 413):
                raise
            headers = {"Connection": "close"} if exc.status_code == 408 else None
            await error_response(exc.status_code, exc.detail, type=exc.type, headers=headers)(scope, receive, send)


class _LoopbackOnly:
    """Without auth, answer only requests addressed to a loopback name (no DNS rebinding)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
            if name not in LOOPBACK_HOSTS:
                await error_response(
                    403,
                    f"This server runs without auth and answers only requests to 127.0.0.1 or localhost, not "
                    f"{host!r}. To serve other hosts, drop --no-auth and use API keys.",
                    type="forbidden",
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Sec-Fetch-Site values of requests that a page of another origin did not make.
_OWN_SITE = frozenset({"same-origin", "none"})


class _SameOriginOnly:
    """403 for a request that a browser sends on behalf of a page of another origin.

    Browsers say so with ``Sec-Fetch-Site`` (anything but ``same-origin`` or ``none``) and with an
    ``Origin`` that is not the server's own; programs (curl, SDKs, agents) send neither and pass.
    A page of an origin in ``allowed`` passes too.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
            cross = (origin is not None and origin.lower() != own) or (site is not None and site not in _OWN_SITE)
            if cross and (origin or "").lower() not in self.allowed:
                await error_response(
                    403,
                    f"Refused a cross-site request from {origin or 'another site'!r}: a web page may not use this "
                    "server. To let a page of your own use it, start the server with --allow-origin ORIGIN "
                    "(create_app(allow_origins=[...])).",
                    type="forbidden",
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)
