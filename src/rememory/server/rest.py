"""The REST API (``/v1``): add, recall, get, list, browse, forget, stats, timeline, verify, and jobs.

Every route works inside one namespace, the request's tenant: the API key's namespace when auth
is on (asking for another one is a 403), else the ``namespace`` the request names, else
``"default"``. An episode of another namespace is simply not there (404, never its data).
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at
# runtime, and some name objects local to build_rest_router (the tenant dependency).
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from ..episodes import validate_many, validate_namespace
from ..limits import MAX_BATCH, MAX_ID_CHARS, MAX_KEYWORDS_BYTES, MAX_PAGE, MAX_QUERY_CHARS, MAX_TOP_K
from ..memory import Memory
from ..records import Episode, EpisodeView
from .auth import ApiKey
from .errors import ApiError, ErrorResponse
from .jobs import Job, JobRunner
from .schemas import KEYWORDS_DOC, SINCE_DOC, TIME_DOC, TOP_K_DOC, UNTIL_DOC, Forgotten, Hit, Stats, text_doc

MAX_WAIT_S = 60.0

# --- the tenant of a request ---


@dataclass(frozen=True)
class Tenant:
    """Who is asking: the API key (``None`` when the server runs without auth)."""

    key: ApiKey | None

    def namespace(self, requested: str | None) -> str:
        """The namespace this request works in; a key may only name its own."""
        if self.key is None:
            return validate_namespace("default" if requested is None else requested)
        if requested is not None and requested != self.key.namespace:
            raise ApiError(
                403,
                f"This API key belongs to namespace {self.key.namespace!r}, not {requested!r}. Leave out "
                "'namespace' (the key's own is used), or use a key of that namespace.",
                type="forbidden",
            )
        return self.key.namespace


TenantDep = Callable[..., Tenant]

# --- request and response bodies ---

_NAMESPACE_DOC = (
    "Namespace to work in. With an API key, leave it out (or give the key's own namespace); "
    "without auth it defaults to 'default'."
)


class EpisodeIn(BaseModel):
    """One episode. Its text's limit is the store's: each router's subclass states the value in force."""

    model_config = ConfigDict(extra="forbid")

    # max_length counts characters, a sound first bound for byte limits (a character is at least a byte).
    keywords: str = Field(max_length=MAX_KEYWORDS_BYTES, description=KEYWORDS_DOC, examples=["Ilya, bridge, night"])
    text: str = Field(min_length=1, examples=["We walked with Ilya across the bridge."])
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ID_CHARS,
        description="Your id for the episode, unique within the namespace. Leave it out to have it derived "
        "from the content (re-adding the same episode then stores nothing new).",
    )
    time: str | None = Field(default=None, description=TIME_DOC, examples=["2023-05-08T13:56:00"])


class Progress(BaseModel):
    """A job's progress, whichever memory engine encodes its episodes."""

    episodes_done: int
    episodes_total: int
    bytes_done: int
    bytes_total: int
    elapsed_s: float
    stage: str = Field(default="encode", description="What the job is doing: encode (a train job) or verify.")


class JobError(BaseModel):
    type: str
    message: str


class VerifyResponse(BaseModel):
    checked: int = Field(description="Cells of the namespace checked.")
    failed: dict[str, str] = Field(description="Id → why its cell did not reconstruct its exact text.")
    ok: bool


class JobOut(BaseModel):
    id: str = Field(description="The job id, for GET /v1/jobs/{job_id}.")
    status: str = Field(description="queued, running, succeeded or failed.")
    ids: list[str] = Field(description="The ids of the job's episodes, in input order.")
    progress: Progress
    error: JobError | None = Field(description="Why the job failed (null unless status is failed).")
    created_at: float = Field(description="Unix time.")
    finished_at: float | None = Field(description="Unix time, null until the job finishes.")
    kind: str = Field(description="train (POST /v1/memories) or verify (POST /v1/verify/jobs).")
    verify: VerifyResponse | None = Field(description="A verify job's outcome, once it has succeeded; else null.")


class AddResponse(BaseModel):
    ids: list[str] = Field(description="The episodes' ids, in input order (duplicates collapsed).")
    job_id: str = Field(description="The training job; GET /v1/jobs/{job_id} reports its progress.")
    job: JobOut


class RecallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to remember, in your words.")
    top_k: int = Field(default=3, ge=1, le=MAX_TOP_K, strict=True, description=TOP_K_DOC)
    namespace: str | None = Field(default=None, description=_NAMESPACE_DOC)
    since: str | None = Field(default=None, max_length=64, description=SINCE_DOC, examples=["2023-05-01"])
    until: str | None = Field(default=None, max_length=64, description=UNTIL_DOC, examples=["2023-05-31"])
    explain: bool = Field(default=False, strict=True, description="Add each hit's per-signal score shares.")


class RecallResponse(BaseModel):
    query: str
    hits: list[Hit]


class EpisodeOut(BaseModel):
    id: str
    keywords: str
    text: str = Field(description="The episode's exact text, reconstructed from its memory cell.")
    time: str | None
    namespace: str


class EpisodePage(BaseModel):
    items: list[EpisodeOut] = Field(description="Oldest first.")
    total: int = Field(description="Episodes in the namespace.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


class EpisodeViewOut(BaseModel):
    id: str
    keywords: str
    time: str | None
    added_at: int = Field(description="When it was stored, unix seconds.")
    text_bytes: int = Field(description="The text's size in UTF-8 bytes.")
    cell_bytes: int = Field(description="Its memory's stored size (weights and config), in bytes.")
    text: str | None = Field(description="The exact text, reconstructed from its memory; null if it is damaged.")
    verified: bool = Field(description="True: the text was just reconstructed and matched its digest.")
    damage: str | None = Field(description="Why the memory is unreadable, if it is.")


class BrowsePage(BaseModel):
    items: list[EpisodeViewOut] = Field(description="Newest first.")
    total: int = Field(description="Episodes in the namespace that match the filter.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


class EpisodeDetailOut(BaseModel):
    episode: EpisodeViewOut
    before: list[EpisodeViewOut] = Field(description="The episodes stored just before it, oldest first.")
    after: list[EpisodeViewOut] = Field(description="The episodes stored just after it, oldest first.")


class DayCountOut(BaseModel):
    day: str = Field(description="A UTC day, YYYY-MM-DD.")
    episodes: int = Field(description="Episodes stored that day.")


class Timeline(BaseModel):
    days: list[DayCountOut] = Field(description="Oldest first; days with no episodes are left out.")


def _view_out(v: EpisodeView) -> EpisodeViewOut:
    return EpisodeViewOut(id=v.id, keywords=v.keywords, time=v.time, added_at=v.added_at, text_bytes=v.text_bytes,
                          cell_bytes=v.cell_bytes, text=v.text, verified=v.verified, damage=v.damage)  # fmt: skip


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERROR_DOCS[code]} for code in codes}


_ERROR_DOCS = {
    400: "Bad argument, or a body that is not UTF-8 JSON.",
    401: "Missing, invalid or revoked API key.",
    403: "The API key belongs to another namespace.",
    404: "No such episode or job in this namespace.",
    413: "Request body over the server's limit.",
    422: "Invalid request or episode.",
    500: "A stored memory cell is damaged (integrity_error) or the store is unreadable.",
    503: "The store is busy; retry.",
}


def _episode_out(ep: Episode) -> EpisodeOut:
    return EpisodeOut(id=ep.id, keywords=ep.keywords, text=ep.text, time=ep.time, namespace=ep.namespace)


async def _wait(job: Job, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not job.done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def build_rest_router(memory: Memory, jobs: JobRunner, tenant: TenantDep, *, max_text_bytes: int) -> APIRouter:
    """The ``/v1`` routes over ``memory``; ``tenant`` is the dependency that authenticates a request."""
    router = APIRouter(prefix="/v1", responses=_errors(400, 401, 413, 422, 503))

    class EpisodeBody(EpisodeIn):
        text: str = Field(min_length=1, description=text_doc(max_text_bytes),
                          examples=["We walked with Ilya across the bridge."])  # fmt: skip

    class AddOne(EpisodeBody):
        """One episode."""

        namespace: str | None = Field(default=None, description=_NAMESPACE_DOC)

    class AddMany(BaseModel):
        """A batch of episodes, validated as a whole: one bad episode rejects the batch."""

        model_config = ConfigDict(extra="forbid")

        episodes: list[EpisodeBody] = Field(min_length=1, max_length=MAX_BATCH)
        namespace: str | None = Field(default=None, description=_NAMESPACE_DOC)

    TenantArg = Annotated[Tenant, Depends(tenant)]
    NamespaceQuery = Annotated[str | None, Query(description=_NAMESPACE_DOC)]
    EpisodeId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="The episode's id.")]
    Wait = Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the job to finish before answering (0: don't)."),
    ]

    @router.post("/memories", status_code=202, response_model=AddResponse, responses=_errors(403), tags=["memories"])
    async def add_memories(body: AddOne | AddMany, who: TenantArg, response: Response, wait: Wait = 0) -> AddResponse:
        """Add one episode or a batch. Training runs in the background: the answer has the ids and a job id."""
        ns = who.namespace(body.namespace)
        items = body.episodes if isinstance(body, AddMany) else [body]
        raw = [ep.model_dump(include={"keywords", "text", "id", "time"}, exclude_none=True) for ep in items]
        episodes = validate_many(raw, namespace=ns, max_text_bytes=max_text_bytes)
        job = jobs.submit(episodes, namespace=ns)
        if wait:
            await _wait(job, wait)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return AddResponse(ids=job.ids, job_id=job.id, job=JobOut(**job.to_dict()))

    @router.get("/jobs/{job_id}", response_model=JobOut, responses=_errors(404), tags=["memories"])
    async def get_job(job_id: str, who: TenantArg, wait: Wait = 0, namespace: NamespaceQuery = None) -> JobOut:
        """A training or verify job's status and progress."""
        job = jobs.get(job_id, namespace=who.namespace(namespace))
        if job is None:
            raise ApiError(404, f"No job {job_id!r} in this namespace (finished jobs are kept for a while only).")
        if wait:
            await _wait(job, wait)
        return JobOut(**job.to_dict())

    @router.post("/recall", response_model=RecallResponse, response_model_exclude_unset=True,
                 responses=_errors(403, 500), tags=["recall"])  # fmt: skip
    def recall(body: RecallRequest, who: TenantArg) -> RecallResponse:
        """The episodes closest in meaning to the query, best first, with their exact texts."""
        hits = memory.recall(body.query, top_k=body.top_k, namespace=who.namespace(body.namespace),
                             since=body.since, until=body.until, explain=body.explain)  # fmt: skip
        return RecallResponse(query=body.query, hits=[Hit.of(h) for h in hits])

    @router.get("/memories", response_model=EpisodePage, responses=_errors(403, 500), tags=["memories"])
    def list_memories(
        who: TenantArg,
        namespace: NamespaceQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 20,
        offset: Annotated[int, Query(ge=0, le=2**62, description="Episodes to skip.")] = 0,
    ) -> EpisodePage:
        """A page of the namespace's episodes, oldest first, with their exact texts."""
        ns = who.namespace(namespace)
        items = memory.list(ns, limit=limit, offset=offset)
        total = memory.count(ns)
        nxt = offset + len(items) if items and offset + len(items) < total else None
        return EpisodePage(items=[_episode_out(e) for e in items], total=total, limit=limit, offset=offset,
                           next_offset=nxt)  # fmt: skip

    @router.get("/browse", response_model=BrowsePage, responses=_errors(403), tags=["memories"])
    def browse(
        who: TenantArg,
        namespace: NamespaceQuery = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 20,
        offset: Annotated[int, Query(ge=0, le=2**62, description="Episodes to skip.")] = 0,
        contains: Annotated[
            str | None,
            Query(max_length=MAX_QUERY_CHARS, description="Keep episodes whose id, keywords, time or text contain "
                  "this (any case). It decodes every episode of the namespace: for a large one, use recall."),
        ] = None,
    ) -> BrowsePage:
        """A page of the namespace's episodes, newest first, with sizes; each is checked, and a damaged one is
        listed with its damage instead of failing the page."""
        page = memory.browse(who.namespace(namespace), limit=limit, offset=offset, contains=contains)
        return BrowsePage(items=[_view_out(v) for v in page.items], total=page.total, limit=limit, offset=offset,
                          next_offset=page.next_offset)  # fmt: skip

    @router.get(
        "/browse/{episode_id:path}", response_model=EpisodeDetailOut, responses=_errors(403, 404), tags=["memories"]
    )
    def inspect(
        episode_id: EpisodeId,
        who: TenantArg,
        namespace: NamespaceQuery = None,
        neighbours: Annotated[int, Query(ge=0, le=10, description="Episodes to show before and after it.")] = 2,
    ) -> EpisodeDetailOut:
        """One episode with its sizes and its neighbours in the conversation (stored just before and after)."""
        d = memory.inspect(episode_id, namespace=who.namespace(namespace), neighbours=neighbours)
        return EpisodeDetailOut(episode=_view_out(d.episode), before=[_view_out(v) for v in d.before],
                                after=[_view_out(v) for v in d.after])  # fmt: skip

    @router.get(
        "/memories/{episode_id:path}", response_model=EpisodeOut, responses=_errors(403, 404, 500), tags=["memories"]
    )
    def get_memory(episode_id: EpisodeId, who: TenantArg, namespace: NamespaceQuery = None) -> EpisodeOut:
        """One episode, its text reconstructed byte-exact."""
        return _episode_out(memory.get(episode_id, namespace=who.namespace(namespace)))

    @router.delete(
        "/memories/{episode_id:path}", response_model=Forgotten, responses=_errors(403, 404), tags=["memories"]
    )
    def forget(episode_id: EpisodeId, who: TenantArg, namespace: NamespaceQuery = None) -> Forgotten:
        """Delete an episode and erase its cell's weights."""
        memory.forget(episode_id, namespace=who.namespace(namespace))
        return Forgotten(id=episode_id)

    @router.get("/stats", response_model=Stats, responses=_errors(403), tags=["store"])
    def stats(who: TenantArg, namespace: NamespaceQuery = None) -> Stats:
        """Sizes of the namespace: episodes, text bytes, memory bytes (artifacts and shared models)."""
        return Stats.of(memory.stats(who.namespace(namespace)))

    @router.post("/verify", response_model=VerifyResponse, responses=_errors(403), tags=["store"])
    def verify(who: TenantArg, namespace: NamespaceQuery = None) -> VerifyResponse:
        """Decode every cell of the namespace and check it against its digest."""
        report = memory.verify(namespace=who.namespace(namespace))
        return VerifyResponse(checked=report.checked, failed=report.failed, ok=report.ok)

    @router.post("/verify/jobs", status_code=202, response_model=JobOut, responses=_errors(403), tags=["store"])
    async def verify_job(who: TenantArg, response: Response, namespace: NamespaceQuery = None) -> JobOut:
        """Verify the namespace in the background: GET /v1/jobs/{job_id} reports episodes checked and, at the end,
        the outcome (the same as POST /v1/verify's)."""
        job = jobs.submit_verify(namespace=who.namespace(namespace))
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobOut(**job.to_dict())

    @router.get("/timeline", response_model=Timeline, responses=_errors(403), tags=["store"])
    def timeline(who: TenantArg, namespace: NamespaceQuery = None) -> Timeline:
        """How many episodes were stored on each UTC day."""
        days = memory.timeline(who.namespace(namespace))
        return Timeline(days=[DayCountOut(day=d.day, episodes=d.episodes) for d in days])

    return router

