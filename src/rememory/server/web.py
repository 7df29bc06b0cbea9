"""The web page at ``/``: server-rendered Jinja2 views whose own JavaScript fills them through the REST API.

The page has no private access: its script calls ``/v1`` like any client, with the API key the
person signed in with (kept in the tab's ``sessionStorage``, sent as ``Authorization: Bearer``,
never put in a URL). No cookies are used, so a page of another site cannot act for the person
(no CSRF). Every page answer carries a strict Content-Security-Policy: scripts only from this
server's own files, no inline scripts or event handlers, nothing fetched from elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from ..limits import MAX_BATCH, MAX_TOP_K

WEB_DIR = Path(__file__).parent / "web"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_RAW_HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
# Path → (template, title) of each view.
VIEWS = {
    "/": ("browse.html", "Browse"),
    "/recall": ("recall.html", "Recall"),
    "/episode": ("episode.html", "Episode"),
    "/add": ("add.html", "Add"),
    "/stats": ("stats.html", "Stats"),
}


class _Static(StaticFiles):
    """The page's script and style sheet, with the page's security headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_RAW_HEADERS]
            await send(message)

        await super().__call__(scope, receive, with_headers)


def install_web(app: FastAPI, *, auth: bool, explain: bool) -> None:
    """Serve the views at ``/``, ``/recall``, ``/episode``, ``/add`` and ``/stats``, and their files at ``/static``.

    ``auth`` tells the page whether to ask for an API key; ``explain`` whether recall can explain its hits.
    """
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    router = APIRouter(include_in_schema=False)
    settings = {"auth": auth, "explain": explain, "max_top_k": MAX_TOP_K, "max_batch": MAX_BATCH}

    def view(template: str, title: str, path: str) -> Callable[[Request], Awaitable[Response]]:
        async def page(request: Request) -> Response:
            response = templates.TemplateResponse(
                request, template, {"title": title, "path": path, "views": VIEWS, **settings}
            )
            response.headers.update(SECURITY_HEADERS)
            return response

        return page

    for path, (template, title) in VIEWS.items():
        router.add_api_route(path, view(template, title, path), methods=["GET"], response_class=HTMLResponse)
    app.include_router(router)
    app.mount("/static", _Static(directory=WEB_DIR / "static"), name="static")
